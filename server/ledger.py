"""The coordinator's evidence and memory for one run: model store, audit log, state file.

A state folder holds one ztfl run::

    run-id                 the ztfl run id (``secrets``, written once; Flower's changes on restart)
    coordinator.json       the state: the run's single commit point (docs/decisions/0008)
    audit.db               the hash-chained audit log (docs/audit.md)
    models/<digest>/       every committed global model with its signed manifest
    set-aside/<digest>/    models written after the last state commit, moved aside on resume
    trust-anchor.toml      what clients pin (run id, public key), with coordinator.pub.pem
    revocation-list.json   the coordinator's own signed revocation list, when it revoked models

:class:`RunLedger` starts a run (refusing a folder that already holds one) or
resumes it: it reads the state, checks the audit chain against the head the
state recorded, sets aside models beyond the commit point and records what it
reconciled — and revokes the models it set aside, so nodes that accepted one
restart their lineage before it. Every model it commits is signed with the coordinator's key and
names its parent, so a client can verify lineage from any model it accepted.
"""

from __future__ import annotations

import logging
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ztfl.client.trust_anchor import write_trust_anchor
from ztfl.trust.audit import (
    AuditEvent,
    AuditEventKind,
    AuditHead,
    AuditLog,
    AuditLogError,
    verify_audit_log,
)
from ztfl.trust.durable_files import write_atomically
from ztfl.trust.keys import SigningKey, VerifyingKey, read_verifying_key, write_verifying_key
from ztfl.trust.manifest import RefusedUpdate as ManifestRefusal
from ztfl.trust.model_store import ModelStore, ModelStoreError
from ztfl.trust.refusal import ModelRefusal, ModelRefusalReason
from ztfl.trust.revocation import RevocationList, sign_revocation_list
from ztfl.trust.rotation import KeyRotation, trusted_keys
from ztfl.trust.signing import (
    SignedManifest,
    build_manifest,
    sign_manifest,
    verify_signed_manifest,
)
from ztfl.trust.verification import MAX_CHAIN

from .run_state import (
    CoordinatorState,
    StateFileError,
    read_state,
    write_state,
)

logger = logging.getLogger(__name__)

RUN_ID_FILE = "run-id"
STATE_FILE = "coordinator.json"
AUDIT_FILE = "audit.db"
MODELS_DIR = "models"
SET_ASIDE_DIR = "set-aside"
TRUST_ANCHOR_FILE = "trust-anchor.toml"
PUBLIC_KEY_FILE = "coordinator.pub.pem"
REVOCATION_FILE = "revocation-list.json"

Arrays = Sequence[tuple[str, np.ndarray]]


class LedgerError(Exception):
    """The state folder cannot be used as asked; the message names the file and what to do."""


@dataclass(frozen=True)
class Reconciliation:
    """What a resume found beyond the state's commit point."""

    set_aside: tuple[str, ...]
    audit_records_after_state: int
    staging_removed: int

    @property
    def changed(self) -> bool:
        """Whether anything was beyond the commit point."""
        return bool(self.set_aside or self.audit_records_after_state or self.staging_removed)


def read_key_rotations(paths: Sequence[Path]) -> tuple[KeyRotation, ...]:
    """Parse the rotation statement files (``key-rotations``); LedgerError names a bad one."""
    rotations = []
    for path in paths:
        try:
            rotations.append(KeyRotation.from_bytes(path.read_bytes()))
        except (OSError, ModelRefusal) as error:
            raise LedgerError(f"{path}: unusable key-rotation statement: {error}") from None
    return tuple(rotations)


def signing_key_trust(
    pinned: VerifyingKey, key: VerifyingKey, rotations: Sequence[KeyRotation]
) -> tuple[VerifyingKey, ...]:
    """The keys clients that pin ``pinned`` trust through ``rotations``; ``key`` must be one.

    Raises LedgerError when a statement is forged or leads from no trusted key,
    or when the chain does not reach ``key``: clients would refuse its models.
    """
    try:
        trusted = trusted_keys([pinned], rotations)
    except ModelRefusal as refusal:
        raise LedgerError(f"key-rotations: {refusal.message}") from None
    if key.key_id not in {item.key_id for item in trusted}:
        raise LedgerError(
            f"signing key {key.key_id[:16]}… is neither the key clients pin "
            f"({PUBLIC_KEY_FILE}, {pinned.key_id[:16]}…) nor reached from it by key-rotations; "
            "clients would refuse its models (docs/signing.md, Rotation)"
        )
    return trusted


def prepare_state_dir(
    state_dir: Path, public_key: VerifyingKey, rotations: Sequence[KeyRotation] = ()
) -> str:
    """Give a new state folder its run id and the anchor clients pin; returns the run id.

    Idempotent: an existing run id is kept, so an operator can provision clients
    before the coordinator first starts. A folder prepared for another key is
    refused unless ``rotations`` lead from that key to ``public_key``.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    run_id_path = state_dir / RUN_ID_FILE
    if run_id_path.exists():
        run_id = _read_run_id(run_id_path)
    else:
        run_id = secrets.token_hex(16)
        temporary = run_id_path.with_name(f".{RUN_ID_FILE}.tmp")
        temporary.write_text(run_id + "\n", encoding="ascii")
        temporary.replace(run_id_path)
    key_path = state_dir / PUBLIC_KEY_FILE
    if not key_path.exists():
        write_verifying_key(public_key, key_path)
    elif read_verifying_key(key_path) != public_key:
        if not rotations:
            raise LedgerError(
                f"{key_path}: the folder was prepared for another signing key; its clients pin "
                "that one (configure key-rotations to it from that key)"
            )
        signing_key_trust(read_verifying_key(key_path), public_key, rotations)
    write_trust_anchor(state_dir / TRUST_ANCHOR_FILE, run_id, [Path(PUBLIC_KEY_FILE)])
    return run_id


def _read_run_id(path: Path) -> str:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise LedgerError(f"{path}: cannot read the run id: {error}") from None
    if len(text) != 32 or any(c not in "0123456789abcdef" for c in text):
        raise LedgerError(f"{path}: not a ztfl run id (32 hex digits)")
    return text


class RunLedger:
    """Signs, stores and records one run's models and events; persists its state."""

    def __init__(
        self,
        state_dir: Path,
        key: SigningKey,
        *,
        run_id: str,
        audit: AuditLog,
        model_validity: timedelta,
        pipeline: str,
        revocation_list: Path | None = None,
        rotations: Sequence[KeyRotation] = (),
    ) -> None:
        self.state_dir = state_dir
        self.run_id = run_id
        self.audit = audit
        self.store = ModelStore(state_dir / MODELS_DIR)
        self._key = key
        self._public_key = key.public_key()
        self._rotations = tuple(rotations)
        self._trusted_keys = signing_key_trust(
            read_verifying_key(state_dir / PUBLIC_KEY_FILE), self._public_key, self._rotations
        )
        self._validity = model_validity
        self._pipeline = pipeline
        self._revocation_list = revocation_list
        self._manifests: dict[str, SignedManifest] = {}
        self.model_digest = ""
        self.state: CoordinatorState | None = None

    # ------------------------------------------------------------ start / resume
    @classmethod
    def start(
        cls,
        state_dir: Path,
        key: SigningKey,
        *,
        config: Mapping[str, Any],
        initial: Arrays,
        model_validity: timedelta,
        pipeline: str,
        revocation_list: Path | None = None,
        key_rotations: Sequence[Path] = (),
    ) -> RunLedger:
        """Begin a new run in ``state_dir``; refuses a folder that already holds one.

        Logs RUN_STARTED and commits the initial model as round 0, so the first
        broadcast already travels signed. The state file is written by the
        coordinator's first :meth:`commit_state`.
        """
        for name in (STATE_FILE, AUDIT_FILE, MODELS_DIR):
            if (state_dir / name).exists():
                raise LedgerError(
                    f"{state_dir / name}: the state folder already holds a run; resume it "
                    "(ztfl simulate --resume / run config resume=true) or choose a new folder"
                )
        rotations = read_key_rotations(key_rotations)
        run_id = prepare_state_dir(state_dir, key.public_key(), rotations)
        audit = AuditLog.open(state_dir / AUDIT_FILE, create=True)
        ledger = cls(
            state_dir,
            key,
            run_id=run_id,
            audit=audit,
            model_validity=model_validity,
            pipeline=pipeline,
            revocation_list=revocation_list,
            rotations=rotations,
        )
        audit.append(
            AuditEventKind.RUN_STARTED,
            run_id=run_id,
            details={
                "config": dict(config),
                "signing_key_id": key.public_key().key_id,
            },
        )
        ledger.commit_model(0, initial, participants=(), refused=())
        return ledger

    @classmethod
    def resume(
        cls,
        state_dir: Path,
        key: SigningKey,
        *,
        config: Mapping[str, Any],
        model_validity: timedelta,
        pipeline: str,
        revocation_list: Path | None = None,
        key_rotations: Sequence[Path] = (),
    ) -> RunLedger:
        """Continue the run in ``state_dir`` from its state file; reconcile what lies beyond it.

        Raises LedgerError (or StateFileError / AuditLogError / ModelStoreError,
        all naming the file) when the state, the log or the current model is
        missing, truncated, corrupted or was not signed by ``key`` or a key that
        ``key_rotations`` lead to from the pinned key; LedgerError when they do not
        lead to ``key``.
        """
        rotations = read_key_rotations(key_rotations)
        state = read_state(state_dir / STATE_FILE)
        run_id = _read_run_id(state_dir / RUN_ID_FILE)
        if state.run_id != run_id:
            raise StateFileError(
                state_dir / STATE_FILE, f"is for run {state.run_id}, the folder for {run_id}"
            )
        audit_path = state_dir / AUDIT_FILE
        head = AuditHead.parse(state.audit_head)
        verification = verify_audit_log(audit_path, [head])
        if not verification.ok:
            raise LedgerError(
                f"{audit_path}: the audit log does not verify against the state's head {head} "
                f"({verification.failure}: {verification.detail})"
            )
        audit = AuditLog.open(audit_path, create=False)
        ledger = cls(
            state_dir,
            key,
            run_id=run_id,
            audit=audit,
            model_validity=model_validity,
            pipeline=pipeline,
            revocation_list=revocation_list,
            rotations=rotations,
        )
        ledger.state = state
        ledger.model_digest = state.model_digest
        try:
            _, current = ledger.store.load(state.model_digest, keys=ledger._trusted_keys)
        except ModelRefusal as refusal:
            raise LedgerError(
                f"{ledger.store.path(state.model_digest)}: signed by neither the pinned key nor "
                f"a key rotated to ({refusal.message})"
            ) from None
        previous_key = verify_signed_manifest(current, ledger._trusted_keys)
        reconciliation = ledger._reconcile(verification.head.seq - head.seq)
        audit.append(
            AuditEventKind.RUN_RESUMED,
            run_id=run_id,
            round=state.round,
            details={"model_digest": state.model_digest, "state_audit_head": state.audit_head},
        )
        if previous_key.key_id != ledger._public_key.key_id:
            audit.append(
                AuditEventKind.KEY_ROTATED,
                run_id=run_id,
                round=state.round,
                details={
                    "previous_key_id": previous_key.key_id,
                    "signing_key_id": ledger._public_key.key_id,
                    "rotations": len(rotations),
                },
            )
        if reconciliation.changed:
            audit.append(
                AuditEventKind.RECONCILED,
                run_id=run_id,
                round=state.round,
                details={
                    "models_set_aside": list(reconciliation.set_aside),
                    "audit_records_after_state": reconciliation.audit_records_after_state,
                    "staging_entries_removed": reconciliation.staging_removed,
                },
            )
        if reconciliation.set_aside:
            # A node may have accepted a set-aside model (during federated evaluation);
            # revoked, it is no lineage anchor, and the node accepts the rerun's model.
            ledger.revoke(reconciliation.set_aside)
        old = {k: v for k, v in state.config.items() if k != "resume"}
        new = {k: v for k, v in config.items() if k != "resume"}
        for setting in sorted(set(old) | set(new)):
            if old.get(setting) != new.get(setting):
                audit.append(
                    AuditEventKind.CONFIG_CHANGED,
                    run_id=run_id,
                    round=state.round,
                    details={"setting": setting, "old": old.get(setting), "new": new.get(setting)},
                )
        return ledger

    def _reconcile(self, audit_records_after_state: int) -> Reconciliation:
        """Move models beyond the state's commit point aside; drop half-written commits."""
        lineage = {signed.digest for signed in self.store.chain(None, self.model_digest)}
        set_aside = []
        for manifest in self.store.entries():
            if manifest.digest in lineage:
                continue
            target = self.state_dir / SET_ASIDE_DIR / manifest.digest
            target.parent.mkdir(exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            self.store.path(manifest.digest).rename(target)
            set_aside.append(manifest.digest)
            logger.warning(
                "resume: model of round %d (%s) was written after the last state commit; "
                "moved to %s",
                manifest.round,
                manifest.digest,
                target,
            )
        staging = self.store.root / ".staging"
        removed = 0
        if staging.is_dir():
            removed = sum(1 for _ in staging.iterdir())
            shutil.rmtree(staging)
        return Reconciliation(tuple(set_aside), audit_records_after_state, removed)

    # ------------------------------------------------------------ models
    def load_current(self) -> list[tuple[str, np.ndarray]]:
        """The current global model, every byte checked against its signed manifest."""
        arrays, _ = self.store.load(self.model_digest, keys=self._trusted_keys)
        return arrays

    def commit_model(
        self,
        server_round: int,
        arrays: Arrays,
        *,
        participants: Sequence[int],
        refused: Sequence[tuple[int, str]],
        privacy: Mapping[str, object] | None = None,
    ) -> SignedManifest:
        """Sign and store the round's model (parent: the current one); log MODEL_COMMITTED."""
        manifest = build_manifest(
            arrays,
            run_id=self.run_id,
            round=server_round,
            parent_digest=self.model_digest or None,
            pipeline=self._pipeline,
            participants=[str(node) for node in participants],
            refused=[ManifestRefusal(str(node), reason) for node, reason in refused],
            privacy=privacy,
            audit_head=str(self.audit.head),
            valid_for=self._validity,
        )
        signed = sign_manifest(manifest, self._key)
        self.store.commit(arrays, signed)
        self._manifests[signed.digest] = signed
        self.audit.append(
            AuditEventKind.MODEL_COMMITTED,
            run_id=self.run_id,
            round=server_round,
            details={"model_digest": signed.digest, "parent_digest": manifest.parent_digest},
        )
        self.model_digest = signed.digest
        return signed

    def signed_manifest(self, digest: str) -> SignedManifest:
        """A stored model's signed manifest (cached)."""
        signed = self._manifests.get(digest)
        if signed is None:
            signed = self.store.signed_manifest(digest)
            self._manifests[digest] = signed
        return signed

    def chain_for(self, accepted_digest: str | None) -> list[SignedManifest]:
        """What a node that last accepted ``accepted_digest`` needs to reach the current model.

        Nothing when the node accepted the current model or its parent. For a
        node whose accepted model is unknown here (``None``: a first contact,
        or a node that came back under a new node id, as simulated nodes do
        after a resume) or not in this lineage: the whole lineage before the
        current model, newest ``MAX_CHAIN`` at most, so a client that kept its
        lineage across a coordinator restart finds its accepted model in it.
        """
        if accepted_digest == self.model_digest:
            return []
        chain: list[SignedManifest] = []
        digest: str | None = self.signed_manifest(self.model_digest).manifest.parent_digest
        while digest is not None and digest != accepted_digest and len(chain) < MAX_CHAIN:
            if digest not in self._manifests and digest not in self.store:
                break
            signed = self.signed_manifest(digest)
            chain.append(signed)
            digest = signed.manifest.parent_digest
        chain.reverse()
        return chain

    def rotations(self) -> list[bytes]:
        """The configured key-rotation statements (checked at start), as sent to clients."""
        return [rotation.to_bytes() for rotation in self._rotations]

    def revocations(self) -> bytes | None:
        """The newest revocation list, as sent to clients; None when there is none.

        The newest of the configured ``revocation-list`` and the coordinator's own
        (``revocation-list.json``), each checked against the trusted keys and the
        run. Lists are cumulative: when the newest does not name every digest the
        other names, the coordinator signs their union as the next list.
        """
        known = self._known_revocations()
        if not known:
            return None
        newest = max(known, key=lambda item: item.sequence)
        everything = frozenset().union(*(item.digests for item in known))
        if newest.digests != everything:
            newest = self.revoke(())
        return newest.to_bytes()

    def revoke(self, digests: Sequence[str]) -> RevocationList:
        """Sign the next cumulative revocation list with ``digests`` added; store and audit it.

        The list numbers one past the newest known list and names every digest
        revoked so far (configured list included); it is written atomically to
        ``revocation-list.json`` and sent with every broadcast from then on.
        """
        known = self._known_revocations()
        previous = frozenset().union(*(item.digests for item in known)) if known else frozenset()
        sequence = max((item.sequence for item in known), default=0) + 1
        newest = max(known, key=lambda item: item.sequence) if known else None
        revocation = sign_revocation_list(self.run_id, sequence, previous | set(digests), self._key)
        write_atomically(self.state_dir / REVOCATION_FILE, revocation.to_bytes())
        already = newest.digests if newest is not None else frozenset()
        self.audit.append(
            AuditEventKind.MODEL_REVOKED,
            run_id=self.run_id,
            round=None if self.state is None else self.state.round,
            details={
                "models_revoked": sorted(revocation.digests - already),
                "sequence": sequence,
                "revocation_list": REVOCATION_FILE,
            },
        )
        logger.warning(
            "revoked %d model(s); revocation list #%d in %s",
            len(revocation.digests - already),
            sequence,
            self.state_dir / REVOCATION_FILE,
        )
        return revocation

    def _known_revocations(self) -> list[RevocationList]:
        """The configured and the stored revocation lists, each checked; LedgerError if bad."""
        stored = self.state_dir / REVOCATION_FILE
        paths = [path for path in (self._revocation_list, stored) if path is not None]
        known = []
        for path in paths:
            if path == stored and not path.exists():
                continue
            try:
                revocation = RevocationList.from_bytes(path.read_bytes())
                revocation.verify(self._trusted_keys)
            except (OSError, ModelRefusal) as error:
                raise LedgerError(f"{path}: unusable revocation list: {error}") from None
            if revocation.run_id != self.run_id:
                raise LedgerError(f"{path}: revocation list of another run")
            known.append(revocation)
        return known

    # ------------------------------------------------------------ events
    def round_started(self, server_round: int, sampled: Sequence[int]) -> None:
        """Log ROUND_STARTED with the sampled nodes."""
        self.audit.append(
            AuditEventKind.ROUND_STARTED,
            run_id=self.run_id,
            round=server_round,
            details={"sampled_nodes": [str(node) for node in sampled]},
        )

    def updates_refused(self, server_round: int, refused: Sequence[Any]) -> None:
        """Log one UPDATE_REFUSED per refused update (``node_id``, ``reason``, ``detail``)."""
        self.audit.append_many(
            AuditEvent(
                AuditEventKind.UPDATE_REFUSED,
                self.run_id,
                round=server_round,
                node_id=int(item.node_id),
                reason=item.reason,
                details={"detail": item.detail[:500]},
            )
            for item in refused
        )

    def client_verification_failed(
        self, server_round: int, node_id: int, reason: ModelRefusalReason, detail: str
    ) -> None:
        """Log that a client refused the broadcast model, and why."""
        self.audit.append(
            AuditEventKind.CLIENT_VERIFICATION_FAILED,
            run_id=self.run_id,
            round=server_round,
            node_id=node_id,
            reason=reason,
            details={"detail": detail[:500]},
        )

    def round_skipped(self, server_round: int, reason: str, detail: str) -> None:
        """Log ROUND_SKIPPED."""
        self.audit.append(
            AuditEventKind.ROUND_SKIPPED,
            run_id=self.run_id,
            round=server_round,
            reason=reason,
            details={"detail": detail[:500]},
        )

    def dp_budget_refused(self, server_round: int, details: Mapping[str, object]) -> None:
        """Log DP_BUDGET: the round was not run because it would exceed the ε budget."""
        self.audit.append(
            AuditEventKind.DP_BUDGET,
            run_id=self.run_id,
            round=server_round,
            reason="budget_exceeded",
            details=details,
        )

    def quarantine_decided(
        self, server_round: int, node_id: int, decision: str, details: Mapping[str, object]
    ) -> None:
        """Log QUARANTINE: a node quarantined (or the decision deferred) with its evidence."""
        self.audit.append(
            AuditEventKind.QUARANTINE,
            run_id=self.run_id,
            round=server_round,
            node_id=node_id,
            reason=decision,
            details=details,
        )

    def round_completed(self, server_round: int) -> None:
        """Log ROUND_COMPLETED for the committed model."""
        self.audit.append(
            AuditEventKind.ROUND_COMPLETED,
            run_id=self.run_id,
            round=server_round,
            details={"model_digest": self.model_digest},
        )

    # ------------------------------------------------------------ state
    def commit_state(self, state: CoordinatorState) -> None:
        """Persist ``state`` (the commit point), stamped with this ledger's run, model and head."""
        stamped = replace(
            state,
            run_id=self.run_id,
            model_digest=self.model_digest,
            audit_head=str(self.audit.head),
        )
        write_state(self.state_dir / STATE_FILE, stamped)
        self.state = stamped

    def close(self) -> None:
        """Close the audit log."""
        self.audit.close()


__all__ = [
    "AUDIT_FILE",
    "MODELS_DIR",
    "REVOCATION_FILE",
    "STATE_FILE",
    "TRUST_ANCHOR_FILE",
    "AuditLogError",
    "LedgerError",
    "ModelStoreError",
    "Reconciliation",
    "RunLedger",
    "StateFileError",
    "prepare_state_dir",
    "read_key_rotations",
    "signing_key_trust",
]
