"""Real simulated clients refuse every kind of forged, replayed or stale global model.

A compromised transport (``TamperingTransport``, test-only) sits between the
coordinator and Flower's simulated SuperNodes and alters the broadcast to
chosen nodes in chosen rounds. Each such node must refuse with the right
reason, the coordinator must record it in the audit log and in its round
records, and the round must go on with the other clients. One Ray session runs
all eight tamperings (different nodes, different rounds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType
from flwr.serverapp import Grid

from ztfl.client import protocol
from ztfl.simulations.forwarding_grid import ForwardingGrid
from ztfl.simulations.runner import RunResult, SessionFiles, run_plan
from ztfl.simulations.scenario import Defence, RunSpec, Scenario
from ztfl.trust.audit import AuditEventKind, AuditHead, AuditLog, verify_audit_log
from ztfl.trust.keys import SigningKey, generate_signing_key, read_signing_key
from ztfl.trust.model_store import ModelStore
from ztfl.trust.refusal import ModelRefusalReason as Reason
from ztfl.trust.revocation import sign_revocation_list
from ztfl.trust.signing import SignedManifest, build_manifest, sign_manifest

pytestmark = pytest.mark.slow

NUM_CLIENTS = 5
SCENARIO = Scenario(
    name="tampering",
    num_clients=NUM_CLIENTS,
    num_byzantine=0,
    rounds=3,
    partition_alpha=None,
    local_epochs=1,
    clean_reference=False,
    defences=(Defence("mean", "mean", 0),),
)
SPEC = RunSpec(SCENARIO.defences[0], "none", 0, 0)
OTHER_PARENT = "ab" * 32

Tampering = Callable[["TamperingTransport", Message], None]

# (round, node index in sorted node ids) → (tampering, the reason the client must give)
PLAN: dict[tuple[int, int], tuple[str, Reason]] = {
    (1, 0): ("tensor_byte", Reason.TENSOR_MISMATCH),
    (1, 1): ("edited_manifest", Reason.BAD_SIGNATURE),
    (1, 2): ("wrong_key", Reason.UNKNOWN_KEY),
    (1, 3): ("wrong_run", Reason.WRONG_RUN),
    (2, 0): ("expired", Reason.EXPIRED),
    (2, 1): ("revoked", Reason.REVOKED),
    # Node 4 accepted rounds 0 and 1; node 3 accepted round 1 (in round 2).
    (3, 4): ("older_round", Reason.STALE_ROUND),
    (3, 3): ("other_lineage", Reason.BROKEN_LINEAGE),
}


class TamperingTransport(ForwardingGrid):
    """The compromised transport: delegates to a Grid, alters chosen broadcasts on the way."""

    def __init__(self, inner: Grid, state_dir: Path, key: SigningKey) -> None:
        super().__init__(inner)
        self._store = ModelStore(state_dir / "models")
        self._key = key
        self._round = 0

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        outgoing = list(messages)
        nodes = sorted(int(node) for node in self._inner.get_node_ids())
        for message in outgoing:
            if message.metadata.message_type != MessageType.TRAIN:
                continue
            server_round = int(message.metadata.group_id)
            index = nodes.index(message.metadata.dst_node_id)
            planned = PLAN.get((server_round, index))
            if planned is not None:
                getattr(self, planned[0])(message)
        return self._inner.send_and_receive(outgoing, timeout=timeout)

    # ------------------------------------------------------------ tamperings
    def _signed(self, message: Message) -> SignedManifest:
        record = message.content.config_records[protocol.MANIFEST_KEY]
        return SignedManifest.from_bytes(record[protocol.SIGNED_MANIFEST])  # type: ignore[arg-type]

    def _set_signed(self, message: Message, signed: SignedManifest) -> None:
        message.content[protocol.MANIFEST_KEY] = ConfigRecord(
            {protocol.SIGNED_MANIFEST: signed.to_bytes()}
        )

    def _arrays(self, message: Message) -> list[tuple[str, np.ndarray]]:
        record = message.content.array_records[protocol.GLOBAL_MODEL_KEY]
        return [(name, array.numpy()) for name, array in record.items()]

    def _resign(self, message: Message, **changes: object) -> None:
        manifest = self._signed(message).manifest
        arguments: dict[str, object] = {
            "run_id": manifest.run_id,
            "round": manifest.round,
            "parent_digest": manifest.parent_digest,
            "pipeline": manifest.pipeline,
            "participants": manifest.participants,
            "refused": manifest.refused,
            "privacy": None,
            "audit_head": manifest.audit_head,
            "valid_for": timedelta(hours=1),
        }
        arguments.update(changes)
        rebuilt = build_manifest(self._arrays(message), **arguments)  # type: ignore[arg-type]
        self._set_signed(message, sign_manifest(rebuilt, self._key))

    def tensor_byte(self, message: Message) -> None:
        arrays = self._arrays(message)
        name, first = arrays[0]
        tampered = first.copy()
        tampered.view(np.uint8).reshape(-1)[0] ^= 0x01
        arrays[0] = (name, tampered)
        message.content[protocol.GLOBAL_MODEL_KEY] = ArrayRecord(
            {key: Array(value) for key, value in arrays}
        )

    def edited_manifest(self, message: Message) -> None:
        signed = self._signed(message)
        edited = dataclasses.replace(signed.manifest, pipeline="median")
        self._set_signed(message, SignedManifest(edited, signed.bundle))

    def wrong_key(self, message: Message) -> None:
        self._set_signed(
            message, sign_manifest(self._signed(message).manifest, generate_signing_key())
        )

    def wrong_run(self, message: Message) -> None:
        self._resign(message, run_id="another-ztfl-run")

    def expired(self, message: Message) -> None:
        self._resign(
            message, now=datetime.now(UTC) - timedelta(days=2), valid_for=timedelta(hours=1)
        )

    def revoked(self, message: Message) -> None:
        signed = self._signed(message)
        revocation = sign_revocation_list(signed.manifest.run_id, 1, [signed.digest], self._key)
        message.content.config_records[protocol.MANIFEST_KEY][protocol.REVOCATIONS] = (
            revocation.to_bytes()
        )

    def older_round(self, message: Message) -> None:
        (root,) = [entry for entry in self._store.entries() if entry.round == 0]
        arrays, signed = self._store.load(root.digest)
        message.content[protocol.GLOBAL_MODEL_KEY] = ArrayRecord(
            {name: Array(values) for name, values in arrays}
        )
        self._set_signed(message, signed)

    def other_lineage(self, message: Message) -> None:
        self._resign(message, parent_digest=OTHER_PARENT)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, Path, list[int]]:
    """One simulated run behind the compromised transport; its result, state folder, nodes."""
    state_root = tmp_path_factory.mktemp("tampering") / "state"
    nodes: list[int] = []

    def wrap(adversary: Grid, spec: RunSpec, state_dir: Path) -> Grid:
        nodes.extend(sorted(int(node) for node in adversary.get_node_ids()))
        key = read_signing_key(SessionFiles(state_root).signing_key)
        return TamperingTransport(adversary, state_dir, key)

    (result,) = run_plan(SCENARIO, [SPEC], state_root=state_root, wrap_grid=wrap)
    return result, SessionFiles(state_root).run_state(0), nodes


def _audited_failures(state_dir: Path) -> set[tuple[int, int, str]]:
    with AuditLog.open(state_dir / "audit.db", create=False) as log:
        return {
            (int(record.round or 0), int(record.node_id or 0), str(record.reason))
            for record in log.records()
            if record.kind == AuditEventKind.CLIENT_VERIFICATION_FAILED
        }


@pytest.mark.parametrize(
    ("where", "tampering"), list(PLAN.items()), ids=[t for t, _ in PLAN.values()]
)
def test_the_client_refuses_the_tampered_model_and_the_audit_log_says_why(
    session: tuple[RunResult, Path, list[int]],
    where: tuple[int, int],
    tampering: tuple[str, Reason],
) -> None:
    result, state_dir, nodes = session
    server_round, index = where
    node = nodes[index]
    reason = tampering[1]
    assert (server_round, node, reason.value) in _audited_failures(state_dir)
    record = result.history.rounds[server_round - 1]
    assert {(f.node_id, f.reason) for f in record.verification_failures} >= {(node, reason)}
    assert node not in record.accepted_nodes


def test_every_refusal_is_audited_and_nothing_else_is_refused(
    session: tuple[RunResult, Path, list[int]],
) -> None:
    _, state_dir, nodes = session
    expected = {(r, nodes[i], reason.value) for (r, i), (_, reason) in PLAN.items()}
    assert _audited_failures(state_dir) == expected


def test_the_rounds_go_on_with_the_other_clients(
    session: tuple[RunResult, Path, list[int]],
) -> None:
    result, _, nodes = session
    for record in result.history.rounds:
        tampered = {nodes[i] for (r, i) in PLAN if r == record.server_round}
        assert record.committed
        assert set(record.accepted_nodes) == set(nodes) - tampered


def test_the_audit_log_verifies_against_every_signed_manifest(
    session: tuple[RunResult, Path, list[int]],
) -> None:
    _, state_dir, _ = session
    anchors = [AuditHead.parse(m.audit_head) for m in ModelStore(state_dir / "models").entries()]
    assert len(anchors) == SCENARIO.rounds + 1
    verification = verify_audit_log(state_dir / "audit.db", anchors)
    assert verification.ok, verification.detail
    assert verification.anchors_checked == len(anchors)
