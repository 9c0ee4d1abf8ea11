"""The ClientApp that simulated clients run: the real training code on a share of the bundled data.

It reads its data share and role from the ``ztfl.simulation`` record the
simulated adversary adds, poisons its data when it is a Byzantine client under
a data attack, then runs exactly what a real client runs: verification of the
signed model against its trust anchor, then the handlers. Flower's
``run_simulation`` gives simulated nodes no node config of their own, so the
runner provisions the anchor file and hands its path to this app (the
simulation's stand-in for ``--node-config trust-anchor=…``), and likewise a
lineage folder per simulated node (``lineage-dir``), so a resumed simulation's
clients remember what they accepted before the coordinator stopped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from ztfl.aggregation.secagg import GroupParams
from ztfl.client import protocol
from ztfl.client.app import (
    ClientRefusal,
    Weights,
    handle_evaluate,
    handle_train,
    node_config_anchor,
    node_config_lineage_dir,
    node_privacy_policy,
    run_verified,
)
from ztfl.client.data import ClientData
from ztfl.client.secure_aggregation import (
    MemberIdentity,
    handle_secure_setup,
    register_later_stages,
)
from ztfl.client.trust_anchor import read_trust_anchor
from ztfl.trust.pki.provisioning import FederationPaths
from ztfl.trust.verification import TrustAnchor

from .adversary import SIMULATION_KEY
from .attacks import resolve_attack
from .datasets import PartitionError, load_digits_partition


def build_simulation_client_app(
    trust_anchor: Path | None = None,
    lineage_root: Path | None = None,
    federation: FederationPaths | None = None,
) -> ClientApp:
    """A ClientApp for Flower's simulation engine, pinning the anchor in ``trust_anchor``.

    The file is read for every message: the runner rewrites it when one
    simulation session moves on to the next run (a new ztfl run id). With
    ``lineage_root`` each simulated node keeps its lineage files in
    ``<lineage_root>/partition-<id>`` (simulated node ids change from one
    session to the next; partition ids do not). With ``federation`` (the session's
    simulation CA, see ``runner.simulation_federation``) the nodes also take part in secure
    rounds, each with the identity enrolled for its partition.
    """
    client_app = ClientApp()

    def load_anchor(context: Context) -> TrustAnchor:
        if trust_anchor is None:
            return node_config_anchor(context)
        return read_trust_anchor(trust_anchor)

    def load_lineage_dir(context: Context) -> Path | None:
        if lineage_root is None:
            return node_config_lineage_dir(context)
        return lineage_root / f"partition-{_partition_id(context)}"

    @client_app.train()
    def train(message: Message, context: Context) -> Message:
        # Each simulated client gets one CPU from Ray; more torch threads would
        # only oversubscribe the host.
        torch.set_num_threads(1)

        def handle(weights: Weights) -> Message:
            _reseed(message, context)
            return handle_train(
                message,
                _simulated_data(message, context),
                weights=weights,
                policy=node_privacy_policy(context),
            )

        return _tag(
            run_verified(message, context, load_anchor, handle, load_lineage_dir=load_lineage_dir),
            context,
        )

    if federation is not None:
        _register_secure_stages(client_app, federation, load_anchor, load_lineage_dir)

    @client_app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        def handle(weights: Weights) -> Message:
            return handle_evaluate(
                message, _simulated_data(message, context, honest=True), weights=weights
            )

        return _tag(
            run_verified(message, context, load_anchor, handle, load_lineage_dir=load_lineage_dir),
            context,
        )

    return client_app


def _register_secure_stages(
    client_app: ClientApp,
    federation: FederationPaths,
    load_anchor: Callable[[Context], TrustAnchor],
    load_lineage_dir: Callable[[Context], Path | None],
) -> None:
    """The secure stages, with the partition's identity and data and, for a Byzantine
    partition, the attack run on its own input before masking."""

    def load_identity(context: Context) -> MemberIdentity:
        layout = federation.clients[partition_member(_partition_id(context))]
        return MemberIdentity.load(layout.root, federation.crl)

    @client_app.train(protocol.SECAGG_SETUP_ACTION)
    def setup(message: Message, context: Context) -> Message:
        torch.set_num_threads(1)

        def handle(weights: Weights) -> Message:
            _reseed(message, context)
            return handle_secure_setup(
                message,
                context,
                weights=weights,
                load_data=lambda ctx: _simulated_data(message, ctx),
                load_anchor=load_anchor,
                load_identity=load_identity,
                prepare_update=attack_own_input,
            )

        return _tag(
            run_verified(message, context, load_anchor, handle, load_lineage_dir=load_lineage_dir),
            context,
        )

    register_later_stages(client_app, load_identity=load_identity, wrap=_tag)


def partition_member(partition: int) -> str:
    """The name a partition's node is enrolled under in the simulation CA."""
    return f"partition-{partition}"


def attack_own_input(
    update: npt.NDArray[np.float32], params: GroupParams, message: Message, context: Context
) -> npt.NDArray[np.float32]:
    """A Byzantine partition's forged input in a secure round.

    The adversary sees no one else's update here, so the attack gets the attacker's own
    honest update as its only evidence (``honest`` is that update too, for attacks that
    estimate the honest mean), and its result goes through the attacker's client like any
    update: clipped to the group's C, quantized, masked. An attacker running its own code
    could skip the clipping; the coordinator's group-mean check then bounds its group's
    mean by C (tests/server/test_secure_round.py), which this simulation does not exploit.
    """
    record = message.content.config_records.get(SIMULATION_KEY)
    if record is None:
        return update
    description = str(record.get("update-attack", ""))
    byzantine = _partition_id(context) in record["byzantine-partitions"]  # type: ignore[operator]
    if not description or not byzantine:
        return update
    attack = resolve_attack(description).update_attack
    if attack is None:
        return update
    config = message.content.config_records.get(protocol.CONFIG_KEY)
    round_number = 0 if config is None else config.get(protocol.ROUND, 0)
    digest = hashlib.sha256(
        f"attack/{record['data-seed']!r}/{_partition_id(context)}/{round_number!r}".encode()
    ).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)
    own = torch.from_numpy(np.array(update, dtype=np.float32))[None]
    honest = own if attack.needs_honest_updates else own[:0]
    forged = attack.forge(own, honest, generator)[0]
    return forged.detach().to(torch.float32).numpy()


def _partition_id(context: Context) -> int:
    return int(context.node_config["partition-id"])


def _tag(reply: Message, context: Context) -> Message:
    """Tell the simulated adversary which partition answered (it strips this record)."""
    if reply.has_content():
        reply.content[SIMULATION_KEY] = ConfigRecord({"partition-id": _partition_id(context)})
    return reply


def _reseed(message: Message, context: Context) -> None:
    """Derive local randomness from (scenario seed, partition, round), not from node ids.

    Flower's simulated node ids are random per session, so the per-node seeds
    the coordinator draws would differ between two runs of one scenario; the
    simulation replaces them to replay exactly.
    """
    record = message.content.config_records.get(SIMULATION_KEY)
    config = message.content.config_records.get(protocol.CONFIG_KEY)
    if record is None or config is None:
        return
    round_number = config.get(protocol.ROUND, 0)
    digest = hashlib.sha256(
        f"{record['data-seed']!r}/{_partition_id(context)}/{round_number!r}".encode()
    ).digest()
    config[protocol.SEED] = int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _simulated_data(message: Message, context: Context, *, honest: bool = False) -> ClientData:
    record = message.content.config_records.get(SIMULATION_KEY)
    if record is None:
        raise ClientRefusal(protocol.ClientErrorCode.NO_DATA, "no simulation record in message")
    alpha = float(record["alpha"])  # type: ignore[arg-type]
    partition = _partition_id(context)
    try:
        data = _partition(
            partition,
            int(record["num-partitions"]),  # type: ignore[arg-type]
            None if alpha < 0 else alpha,
            int(record["data-seed"]),  # type: ignore[arg-type]
        )
    except PartitionError as error:
        raise ClientRefusal(protocol.ClientErrorCode.NO_DATA, str(error)) from error
    attack = str(record["attack"])
    byzantine = partition in record["byzantine-partitions"]  # type: ignore[operator]
    if honest or not byzantine or not attack:
        return data
    data_attack = resolve_attack(attack).data_attack
    return data if data_attack is None else data_attack.poison(data)


@lru_cache(maxsize=64)
def _partition(
    partition_id: int, num_partitions: int, alpha: float | None, seed: int
) -> ClientData:
    return load_digits_partition(partition_id, num_partitions, alpha=alpha, seed=seed)


app = build_simulation_client_app()
