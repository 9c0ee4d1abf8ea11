"""The data holder's ClientApp: receive the global model, train locally, reply with the update.

``build_client_app`` assembles a ClientApp around a data loader; the module-level
``app`` (what ``[tool.flwr.app.components]`` names) loads data through the node's
dataset hook, or, in a Flower simulation, from the bundled default data
partitioned by ``partition-id``. Every refusal is a Flower ``Error`` reply with a
``ClientErrorCode``, so the coordinator records why — nothing is trained on
input the client could not check.

Before any weights are loaded, :func:`verify_broadcast` checks the global
model against the node's own trust anchor (``trust-anchor`` in its node
config): the coordinator's signature, the ztfl run, validity, revocation, the
lineage from the last model this node accepted and the tensor bytes. A node
without an anchor refuses every round. The lineage is kept per ztfl run in a
file under ``lineage-dir`` when the node config names one (it outlives a
coordinator restart, see :mod:`ztfl.client.lineage_file`) and in Flower's
``Context.state``, which lasts one Flower run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

if TYPE_CHECKING:
    from .secure_aggregation import IdentityLoader, UpdateHook

from ztfl.trust.refusal import ModelRefusal, ModelRefusalReason
from ztfl.trust.revocation import RevocationList
from ztfl.trust.rotation import KeyRotation
from ztfl.trust.signing import SignedManifest
from ztfl.trust.verification import LineageState, TrustAnchor, verify_model

from . import protocol
from .data import ClientData, DatasetConfigError, load_node_data
from .lineage_file import (
    LineageFileError,
    lineage_file,
    node_lineage_dir,
    read_lineage_file,
    write_lineage_file,
)
from .models import UnknownModelError, build_model
from .policy import PolicyError, PolicyViolation, PrivacyPolicy, RoundPrivacy
from .trainer import TrainingConfig, evaluate, load_weights, train_update
from .trust_anchor import TrustAnchorError, node_trust_anchor

logger = logging.getLogger(__name__)

ContextDataLoader = Callable[[Context], ClientData]
AnchorLoader = Callable[[Context], TrustAnchor]
"""Where a node's trust anchor comes from: by default its node config (``trust-anchor``)."""

LineageDirLoader = Callable[[Context], Path | None]
Weights = dict[str, np.ndarray]
"""The global model's arrays by name, as verified against its signed manifest."""
VerifiedHandler = Callable[[Weights], Message]
"""Runs the round on the verified global weights (decoded once, during verification)."""
"""Where a node keeps its lineage files: by default its node config (``lineage-dir``), or None."""

LINEAGE_STATE_KEY = "ztfl.lineage"
"""``Context.state`` ConfigRecord: per ztfl run id, the LineageState JSON of this node."""


class ClientRefusal(Exception):  # noqa: N818 — a refusal carried to the reply, not a fault
    """A round this client will not run, with the code it replies with."""

    def __init__(self, code: protocol.ClientErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def node_config_anchor(context: Context) -> TrustAnchor:
    """The trust anchor the node's configuration names (``trust-anchor``)."""
    return node_trust_anchor(context.node_config)


def node_privacy_policy(context: Context) -> PrivacyPolicy:
    """The privacy policy floor in the node's configuration (``ztfl.client.policy``).

    Raises ClientRefusal(INVALID_POLICY) for a malformed setting: a node that cannot read
    its own floor trains in no round.
    """
    try:
        return PrivacyPolicy.from_node_config(context.node_config)
    except PolicyError as error:
        raise ClientRefusal(protocol.ClientErrorCode.INVALID_POLICY, str(error)) from error


def node_config_lineage_dir(context: Context) -> Path | None:
    """The lineage folder the node's configuration names (``lineage-dir``), if any."""
    return node_lineage_dir(context.node_config)


def build_client_app(
    load_data: ContextDataLoader,
    *,
    load_anchor: AnchorLoader = node_config_anchor,
    load_identity: IdentityLoader | None = None,
    prepare_update: UpdateHook | None = None,
) -> ClientApp:
    """A ClientApp that verifies each broadcast model, then trains or evaluates on ``load_data``,
    and takes part in secure rounds (``ztfl.client.secure_aggregation``).

    ``load_identity``: where the node's federation identity comes from (default: the node
    config's ``identity-dir``); ``prepare_update``: tests and simulated attackers only.
    """
    client_app = ClientApp()

    # secure_aggregation builds on this module: imported here, where the app is assembled.
    from .secure_aggregation import (
        check_plaintext_allowed,
        node_config_identity,
        register_secure_aggregation,
    )

    @client_app.train()
    def train(message: Message, context: Context) -> Message:
        def handle(weights: Weights) -> Message:
            check_plaintext_allowed(context)
            return handle_train(
                message, load_data(context), weights=weights, policy=node_privacy_policy(context)
            )

        return run_verified(message, context, load_anchor, handle)

    @client_app.evaluate()
    def evaluate_model(message: Message, context: Context) -> Message:
        return run_verified(
            message,
            context,
            load_anchor,
            lambda weights: handle_evaluate(message, load_data(context), weights=weights),
        )

    register_secure_aggregation(
        client_app,
        load_data,
        load_anchor=load_anchor,
        load_identity=load_identity or node_config_identity,
        prepare_update=prepare_update,
    )
    return client_app


def run_verified(
    message: Message,
    context: Context,
    load_anchor: AnchorLoader,
    handle: VerifiedHandler,
    *,
    load_lineage_dir: LineageDirLoader = node_config_lineage_dir,
) -> Message:
    """Verify the broadcast model, then run ``handle`` on its verified weights.

    Every refusal becomes an error reply. ``handle`` receives the very arrays
    that were hashed against the manifest, so nothing is decoded twice and
    nothing unverified is loaded.

    The new lineage state is stored (lineage file, then ``context.state``)
    only after the handler succeeded, and the reply tells the coordinator
    which model this node accepted (so it can send the next chain from there).
    A lineage file that cannot be read or written is a MALFORMED_LINEAGE_STATE
    refusal naming the file.
    """
    try:
        try:
            anchor = load_anchor(context)
        except TrustAnchorError as error:
            raise ClientRefusal(protocol.ClientErrorCode.NO_TRUST_ANCHOR, str(error)) from error
        try:
            folder = load_lineage_dir(context)
        except LineageFileError as error:
            raise _lineage_file_refusal(error) from error
        lineage, weights = verify_broadcast_model(
            message, anchor, read_lineage(context, anchor.run_id, folder)
        )
        reply = handle(weights)
        write_lineage(context, anchor.run_id, lineage, folder)
    except ClientRefusal as refusal:
        return refusal_reply(message, refusal)
    except DatasetConfigError as error:
        return refusal_reply(message, ClientRefusal(protocol.ClientErrorCode.NO_DATA, str(error)))
    if reply.has_content() and lineage.last is not None:
        reply.content[protocol.LINEAGE_KEY] = ConfigRecord(
            {protocol.ACCEPTED_DIGEST: lineage.last.digest}
        )
    return reply


def read_lineage(context: Context, run_id: str, folder: Path | None = None) -> LineageState:
    """This node's lineage state for ``run_id`` (empty on first contact).

    From the run's file in ``folder`` when there is one, else from
    ``Context.state``. Raises ClientRefusal(MODEL_MALFORMED_LINEAGE_STATE)
    for a file or record that exists but cannot be read.
    """
    if folder is not None:
        try:
            stored = read_lineage_file(lineage_file(folder, run_id))
        except LineageFileError as error:
            raise _lineage_file_refusal(error) from error
        if stored is not None:
            return stored
    record = context.state.config_records.get(LINEAGE_STATE_KEY)
    data = None if record is None else record.get(run_id)
    if not isinstance(data, bytes):
        return LineageState.empty()
    try:
        return LineageState.from_json(data)
    except ModelRefusal as refusal:
        raise _model_refusal(refusal) from refusal


def write_lineage(
    context: Context, run_id: str, lineage: LineageState, folder: Path | None = None
) -> None:
    """Keep ``lineage`` for ``run_id`` in ``folder``'s file (if any) and in ``Context.state``.

    The file outlives the Flower run; ``Context.state`` does not (Flower keeps
    it per run).
    """
    if folder is not None:
        try:
            write_lineage_file(lineage_file(folder, run_id), lineage)
        except LineageFileError as error:
            raise _lineage_file_refusal(error) from error
    record = context.state.config_records.get(LINEAGE_STATE_KEY)
    if record is None:
        record = ConfigRecord()
        context.state[LINEAGE_STATE_KEY] = record
    record[run_id] = lineage.to_json()


def _lineage_file_refusal(error: LineageFileError) -> ClientRefusal:
    return ClientRefusal(protocol.ClientErrorCode.MODEL_MALFORMED_LINEAGE_STATE, str(error))


def verify_broadcast(message: Message, anchor: TrustAnchor, lineage: LineageState) -> LineageState:
    """Check the message's model against ``anchor`` and ``lineage``; return the new lineage."""
    return verify_broadcast_model(message, anchor, lineage)[0]


def verify_broadcast_model(
    message: Message, anchor: TrustAnchor, lineage: LineageState
) -> tuple[LineageState, Weights]:
    """Check the message's model against ``anchor`` and ``lineage``; return lineage and weights.

    Raises ClientRefusal with the ``MODEL_*`` code of the ModelRefusalReason
    (no signed manifest at all counts as MALFORMED_MANIFEST). Nothing of the
    message is trusted before this returns.
    """
    if not message.has_content():
        raise ClientRefusal(protocol.ClientErrorCode.INVALID_MESSAGE, "message has no content")
    content = message.content
    if protocol.GLOBAL_MODEL_KEY not in content.array_records:
        raise ClientRefusal(protocol.ClientErrorCode.INVALID_MESSAGE, "no global model in message")
    record = content.config_records.get(protocol.MANIFEST_KEY)
    try:
        if record is None or not isinstance(record.get(protocol.SIGNED_MANIFEST), bytes):
            raise ModelRefusal(
                ModelRefusalReason.MALFORMED_MANIFEST,
                "the global model comes without a signed manifest",
            )
        signed = SignedManifest.from_bytes(record[protocol.SIGNED_MANIFEST])  # type: ignore[arg-type]
        chain_bytes = record.get(protocol.CHAIN, [])
        if not isinstance(chain_bytes, list) or not all(isinstance(b, bytes) for b in chain_bytes):
            raise ModelRefusal(
                ModelRefusalReason.MALFORMED_MANIFEST, "chain is not a list of bytes"
            )
        chain = [SignedManifest.from_bytes(item) for item in chain_bytes]  # type: ignore[arg-type]
        revocation_bytes = record.get(protocol.REVOCATIONS)
        revocations = None
        if revocation_bytes is not None:
            if not isinstance(revocation_bytes, bytes):
                raise ModelRefusal(
                    ModelRefusalReason.BAD_REVOCATION_LIST, "revocation list is not bytes"
                )
            revocations = RevocationList.from_bytes(revocation_bytes)
        rotation_bytes = record.get(protocol.ROTATIONS, [])
        if not isinstance(rotation_bytes, list) or not all(
            isinstance(item, bytes) for item in rotation_bytes
        ):
            raise ModelRefusal(
                ModelRefusalReason.BAD_ROTATION, "key rotations are not a list of bytes"
            )
        rotations = [KeyRotation.from_bytes(item) for item in rotation_bytes]  # type: ignore[arg-type]
        arrays = _received_arrays(content.array_records[protocol.GLOBAL_MODEL_KEY])
        accepted = verify_model(
            arrays,
            signed,
            anchor=anchor,
            lineage=lineage,
            chain=chain,
            revocations=revocations,
            rotations=rotations,
        )
    except ModelRefusal as refusal:
        raise _model_refusal(refusal) from refusal
    return accepted, dict(arrays)


def _received_arrays(record: ArrayRecord) -> list[tuple[str, np.ndarray]]:
    try:
        return [(name, array.numpy()) for name, array in record.items()]
    except Exception as error:
        raise ModelRefusal(
            ModelRefusalReason.TENSOR_MISMATCH, f"global model cannot be decoded: {error!r}"
        ) from error


def _model_refusal(refusal: ModelRefusal) -> ClientRefusal:
    return ClientRefusal(protocol.refusal_code(refusal.reason), str(refusal))


def handle_train(
    message: Message,
    data: ClientData,
    *,
    weights: Weights | None = None,
    policy: PrivacyPolicy | None = None,
) -> Message:
    """Check the round against ``policy``, train on ``data``; reply with update and metrics.

    ``weights``: the verified global arrays (``run_verified`` passes them);
    without them the message's arrays are decoded here. In a DP round the whole
    update is clipped to the round's clip norm here, on the client, and the reply
    carries the "unclipped" bit but no training loss or accuracy (per-client figures
    computed from private data are not released without noise).
    """
    round_privacy = check_round_privacy(message, policy or PrivacyPolicy())
    model, config = _prepare(message, weights)
    training = _training_config(config)
    if data.num_train == 0:
        raise ClientRefusal(protocol.ClientErrorCode.NO_DATA, "no training examples")
    result = train_update(model, data, training)
    update = result.update
    metrics = MetricRecord({protocol.NUM_EXAMPLES: result.num_examples})
    if round_privacy.dp:
        assert round_privacy.clip_norm is not None
        update, unclipped = clip_update(update, round_privacy.clip_norm)
        metrics[protocol.UNCLIPPED] = int(unclipped)
    else:
        metrics[protocol.TRAIN_LOSS] = result.loss
        metrics[protocol.TRAIN_ACCURACY] = result.accuracy
    content = RecordDict(
        {
            protocol.UPDATE_KEY: ArrayRecord(
                {name: Array(values) for name, values in update.items()}
            ),
            protocol.METRICS_KEY: metrics,
        }
    )
    return Message(content, reply_to=message)


def check_round_privacy(message: Message, policy: PrivacyPolicy) -> RoundPrivacy:
    """The round's declared DP settings, refused (POLICY_FLOOR) when weaker than ``policy``."""
    record = (
        message.content.config_records.get(protocol.PRIVACY_KEY) if message.has_content() else None
    )
    try:
        round_privacy = RoundPrivacy.from_record(record)
        policy.check(round_privacy)
    except PolicyViolation as violation:
        raise ClientRefusal(protocol.ClientErrorCode.POLICY_FLOOR, str(violation)) from violation
    return round_privacy


def clip_update(update: Weights, clip_norm: float) -> tuple[Weights, bool]:
    """The update scaled to L2 norm ≤ ``clip_norm`` (all tensors as one vector), and whether
    it was within the norm already: DP-FedAvg's client-side clipping (McMahan et al., 2018).

    The norm is taken in float64 over every tensor together, the same rule the coordinator
    re-clips with (``ztfl.aggregation.privacy.clipping``).
    """
    squared = sum(float(np.sum(np.square(values, dtype=np.float64))) for values in update.values())
    norm = math.sqrt(squared)
    if norm <= clip_norm:
        return update, True
    scale = clip_norm / norm
    return {name: (values * scale).astype(values.dtype) for name, values in update.items()}, False


def handle_evaluate(
    message: Message, data: ClientData, *, weights: Weights | None = None
) -> Message:
    """Evaluate the global model (``weights`` as for ``handle_train``) on the local test split."""
    model, _ = _prepare(message, weights)
    loss, accuracy = evaluate(model, data.test_features, data.test_labels)
    metrics = MetricRecord(
        {
            protocol.NUM_EXAMPLES: data.num_test,
            protocol.EVAL_LOSS: loss,
            protocol.EVAL_ACCURACY: accuracy,
        }
    )
    return Message(RecordDict({protocol.METRICS_KEY: metrics}), reply_to=message)


def _prepare(
    message: Message, weights: Weights | None = None
) -> tuple[torch.nn.Module, ConfigRecord]:
    """Check the message and build the named model holding the global weights."""
    if not message.has_content():
        raise ClientRefusal(protocol.ClientErrorCode.INVALID_MESSAGE, "message has no content")
    content = message.content
    if protocol.GLOBAL_MODEL_KEY not in content.array_records:
        raise ClientRefusal(protocol.ClientErrorCode.INVALID_MESSAGE, "no global model in message")
    if protocol.CONFIG_KEY not in content.config_records:
        raise ClientRefusal(protocol.ClientErrorCode.INVALID_MESSAGE, "no round configuration")
    config = content.config_records[protocol.CONFIG_KEY]
    model_name = config.get(protocol.MODEL)
    if not isinstance(model_name, str):
        raise ClientRefusal(protocol.ClientErrorCode.INVALID_CONFIG, "round names no model")
    try:
        model = build_model(model_name)
    except UnknownModelError as error:
        raise ClientRefusal(protocol.ClientErrorCode.UNKNOWN_MODEL, str(error)) from error
    arrays = weights
    if arrays is None:
        try:
            arrays = {
                name: array.numpy()
                for name, array in content.array_records[protocol.GLOBAL_MODEL_KEY].items()
            }
        except Exception as error:
            raise ClientRefusal(
                protocol.ClientErrorCode.INVALID_MESSAGE,
                f"global model cannot be decoded: {error!r}",
            ) from error
    try:
        load_weights(model, arrays)
    except (ValueError, TypeError) as error:
        raise ClientRefusal(protocol.ClientErrorCode.MODEL_MISMATCH, str(error)) from error
    return model, config


def _training_config(config: ConfigRecord) -> TrainingConfig:
    """Read and range-check the coordinator's training settings."""
    try:
        return TrainingConfig(
            local_epochs=_int_setting(config, protocol.LOCAL_EPOCHS),
            learning_rate=_float_setting(config, protocol.LEARNING_RATE),
            batch_size=_int_setting(config, protocol.BATCH_SIZE),
            seed=_int_setting(config, protocol.SEED),
        )
    except ValueError as error:
        raise ClientRefusal(protocol.ClientErrorCode.INVALID_CONFIG, str(error)) from error


def _int_setting(config: ConfigRecord, key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    return value


def _float_setting(config: ConfigRecord, key: str) -> float:
    value = config.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{key} must be a number, got {value!r}")
    return float(value)


def refusal_reply(message: Message, refusal: ClientRefusal) -> Message:
    """The error reply that tells the coordinator why this client refused the round."""
    logger.warning("refusing round: %s (%s)", refusal.reason, refusal.code.name)
    return Message(Error(code=int(refusal.code), reason=refusal.reason), reply_to=message)


@lru_cache(maxsize=4)
def _simulation_partition(
    partition_id: int, num_partitions: int, alpha: float, seed: int
) -> ClientData:
    from ztfl.simulations.datasets import load_digits_partition

    return load_digits_partition(partition_id, num_partitions, alpha=alpha, seed=seed)


def load_context_data(context: Context) -> ClientData:
    """The node's dataset hook, or in a Flower simulation its share of the bundled digits."""
    if "dataset" in context.node_config:
        return load_node_data(context.node_config)
    if "partition-id" in context.node_config and "num-partitions" in context.node_config:
        alpha = context.run_config.get("partition-alpha", 0.5)
        seed = context.run_config.get("seed", 0)
        return _simulation_partition(
            int(context.node_config["partition-id"]),
            int(context.node_config["num-partitions"]),
            float(alpha) if isinstance(alpha, int | float) else 0.5,
            int(seed) if isinstance(seed, int) else 0,
        )
    return load_node_data(context.node_config)


app = build_client_app(load_context_data)
