"""What a run folder proves, checked again from its files, and the bundle an auditor takes away.

A run folder is untrusted input: a coordinator state folder (``state-dir``) or a
``ztfl simulate`` folder (``state/runs/NNN`` state folders plus ``metrics.json``).
:func:`inspect_run_folder` re-verifies each state folder from scratch — every signed
manifest (and, by default, every tensor byte) against the run's trust anchor or keys
the caller pins, and the audit hash chain anchored at the heads those manifests and
the state file recorded — and reads the round history defensively. Nothing it reads
is taken on trust, and it writes nothing to the folder (SQLite may create the log's
``-wal``/``-shm`` side files when it reads it).

:func:`export_evidence_bundle` copies the artefacts a compliance review asks for into
a folder or zip with an index that maps each file to the control it evidences and
gives its SHA-256. A run that does not verify is still exported — the bundle is the
evidence of the failure — but marked FAILED at the top of both index files
(docs/evidence.md). The coordinator's private signing key is never copied: only
files on an explicit list are.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import secrets
import shutil
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from ztfl.client.trust_anchor import TrustAnchorError, read_trust_anchor
from ztfl.trust.audit import AuditHead, AuditLogError, export_jsonl, verify_audit_log
from ztfl.trust.keys import SigningKeyError, VerifyingKey, read_verifying_key
from ztfl.trust.model_store import ModelStore, ModelStoreError
from ztfl.trust.refusal import ModelRefusal
from ztfl.trust.signing import MANIFEST_FILE, SIGNATURE_FILE, verify_signed_manifest

from .ledger import (
    AUDIT_FILE,
    MODELS_DIR,
    PUBLIC_KEY_FILE,
    REVOCATION_FILE,
    RUN_ID_FILE,
    STATE_FILE,
    TRUST_ANCHOR_FILE,
)
from .run_state import StateFileError, read_state

__all__ = [
    "BUNDLE_FORMAT",
    "AuditCheck",
    "CheckStatus",
    "Control",
    "EvidenceBundle",
    "ManifestCheck",
    "RunEvidence",
    "RunFolderError",
    "RunFolderEvidence",
    "SignatureCheck",
    "export_evidence_bundle",
    "inspect_run_folder",
]

BUNDLE_FORMAT: Final = "ztfl.evidence-bundle/v1"
SIMULATION_METRICS_FILE: Final = "metrics.json"
SIMULATION_STATE_RUNS: Final = ("state", "runs")
SIMULATION_PLAN_FILE: Final = ("state", "plan.json")
MAX_JSON_BYTES: Final = 256 << 20
"""metrics.json is read whole; a larger file is not a run folder ztfl wrote."""


class RunFolderError(ValueError):
    """The path is not a run folder that can be inspected; the message names it."""


class CheckStatus(StrEnum):
    """The outcome of one verification; anything but PASSED is not evidence of integrity."""

    PASSED = "passed"
    FAILED = "failed"
    NOT_CHECKED = "not_checked"
    """Nothing to check against (no trust anchor or key), so nothing was proven."""


class Control(StrEnum):
    """The controls a bundle's artefacts evidence (the index maps each file to these)."""

    MODEL_INTEGRITY = "model_integrity"
    ACCESS_CONTROL = "access_control"
    PRIVACY = "privacy"
    INCIDENT_RESPONSE = "incident_response"


@dataclass(frozen=True)
class ManifestCheck:
    """One stored model: whether its signed manifest (and tensors) verified, and why not."""

    digest: str
    round: int | None
    ok: bool
    problem: str = ""
    audit_head: str | None = None
    privacy: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class SignatureCheck:
    """Every signed manifest of one run's model store, checked against the trusted keys."""

    status: CheckStatus
    key_source: str
    """Where the keys came from: the folder's trust anchor, or keys the caller pinned."""
    key_ids: tuple[str, ...]
    manifests: tuple[ManifestCheck, ...]
    problem: str = ""

    @property
    def passed(self) -> int:
        """How many manifests verified."""
        return sum(1 for item in self.manifests if item.ok)

    @property
    def failed(self) -> int:
        """How many manifests did not verify."""
        return sum(1 for item in self.manifests if not item.ok)


@dataclass(frozen=True)
class AuditCheck:
    """The audit log's hash chain, checked against every anchor the run recorded."""

    status: CheckStatus
    records: int = 0
    anchors: int = 0
    anchors_checked: int = 0
    head: str = ""
    first_bad_seq: int | None = None
    failure: str = ""
    detail: str = ""


@dataclass(frozen=True)
class RunEvidence:
    """One coordinator state folder: what it claims (history, config) and what verified."""

    label: str
    path: Path
    run_id: str | None
    description: Mapping[str, Any]
    """From a simulation's metrics.json (defence, attack, pipeline, seed …); untrusted text."""
    config: Mapping[str, Any]
    history: Mapping[str, Any]
    """``RunHistory.to_json()`` as read (state file first, metrics.json otherwise); untrusted."""
    state_status: CheckStatus
    state_problem: str
    signatures: SignatureCheck
    audit: AuditCheck
    audit_records: tuple[Mapping[str, Any], ...] | None
    """Every audit record as exported, or None when the log could not be read."""

    @property
    def verified(self) -> bool:
        """Whether the state file, every signed manifest and the audit chain verified."""
        return (
            self.state_status is CheckStatus.PASSED
            and self.signatures.status is CheckStatus.PASSED
            and self.audit.status is CheckStatus.PASSED
        )

    @property
    def rounds(self) -> list[Mapping[str, Any]]:
        """The history's round records that are JSON objects (anything else is skipped)."""
        rounds = self.history.get("rounds")
        if not isinstance(rounds, list):
            return []
        return [item for item in rounds if isinstance(item, Mapping)]

    def events(self, kind: str) -> list[Mapping[str, Any]]:
        """The audit records of one kind (e.g. ``"quarantine"``); empty when the log is unread."""
        return [item for item in self.audit_records or () if item.get("kind") == kind]


@dataclass(frozen=True)
class RunFolderEvidence:
    """A whole run folder: one or more state folders, and the simulation's plan if any."""

    root: Path
    kind: str
    """``deployment`` (a coordinator state folder) or ``simulation`` (a ztfl simulate folder)."""
    runs: tuple[RunEvidence, ...]
    scenario: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()

    @property
    def verified(self) -> bool:
        """Whether every run verified."""
        return all(run.verified for run in self.runs)


# ---------------------------------------------------------------- inspection


def inspect_run_folder(
    path: Path, *, public_keys: Sequence[VerifyingKey] = (), check_tensors: bool = True
) -> RunFolderEvidence:
    """Re-verify and read a run folder; raise RunFolderError when it is not one.

    Args:
        path: a coordinator state folder or a ``ztfl simulate`` run folder.
        public_keys: keys to verify the manifests with instead of each run's own trust
            anchor. Keys kept apart from the folder (the copy clients pin) make the check
            meaningful against whoever could rewrite the whole folder.
        check_tensors: also hash every tensor file against its manifest (reads every model).
    """
    root = Path(path)
    if not root.is_dir():
        raise RunFolderError(f"{root}: not a folder")
    if _is_state_dir(root):
        run = _inspect_state_dir(root, root.name, {}, None, public_keys, check_tensors)
        return RunFolderEvidence(root, "deployment", (run,))
    runs_dir = root.joinpath(*SIMULATION_STATE_RUNS)
    state_dirs = (
        sorted(item for item in runs_dir.iterdir() if item.is_dir() and _is_state_dir(item))
        if runs_dir.is_dir()
        else []
    )
    if not state_dirs:
        raise RunFolderError(
            f"{root}: not a ztfl run folder (expected a coordinator state folder with "
            f"{STATE_FILE} or {AUDIT_FILE}, or a ztfl simulate folder with state/runs/NNN)"
        )
    notes: list[str] = []
    metrics = _read_json_object(root / SIMULATION_METRICS_FILE, notes)
    listed = metrics.get("runs")
    described: list[Any] = listed if isinstance(listed, list) else []
    scenario = metrics.get("scenario") if isinstance(metrics.get("scenario"), Mapping) else None
    runs = []
    for state_dir in state_dirs:
        index = int(state_dir.name) if state_dir.name.isdigit() else -1
        entry = described[index] if 0 <= index < len(described) else None
        description = entry if isinstance(entry, Mapping) else {}
        fallback = description.get("history")
        label = str(description.get("label") or f"runs/{state_dir.name}")
        runs.append(
            _inspect_state_dir(
                state_dir,
                label,
                {key: value for key, value in description.items() if key != "history"},
                fallback if isinstance(fallback, Mapping) else None,
                public_keys,
                check_tensors,
            )
        )
    return RunFolderEvidence(root, "simulation", tuple(runs), scenario, tuple(notes))


def _is_state_dir(path: Path) -> bool:
    return (path / STATE_FILE).is_file() or (path / AUDIT_FILE).is_file()


def _read_json_object(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.is_file():
        notes.append(f"{path.name}: missing")
        return {}
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ValueError(f"larger than {MAX_JSON_BYTES} bytes")
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        notes.append(f"{path.name}: unreadable ({error})")
        return {}
    if not isinstance(document, dict):
        notes.append(f"{path.name}: not a JSON object")
        return {}
    return document


def _inspect_state_dir(
    state_dir: Path,
    label: str,
    description: Mapping[str, Any],
    fallback_history: Mapping[str, Any] | None,
    public_keys: Sequence[VerifyingKey],
    check_tensors: bool,
) -> RunEvidence:
    run_id, keys, key_source, key_problem = _trusted_keys(state_dir, public_keys)
    state_head: AuditHead | None = None
    config: Mapping[str, Any] = {}
    history: Mapping[str, Any] = fallback_history or {}
    try:
        state = read_state(state_dir / STATE_FILE)
    except StateFileError as error:
        state_status, state_problem = CheckStatus.FAILED, str(error)
    else:
        state_status, state_problem = CheckStatus.PASSED, ""
        config, history = state.config, state.history
        if run_id is not None and state.run_id != run_id:
            state_status = CheckStatus.FAILED
            state_problem = f"{state_dir / STATE_FILE}: is for run {state.run_id}, not {run_id}"
        run_id = run_id or state.run_id
        try:
            state_head = AuditHead.parse(state.audit_head)
        except ValueError:
            state_head = None
    signatures = _check_signatures(state_dir, run_id, keys, key_source, key_problem, check_tensors)
    anchors = [item.audit_head for item in signatures.manifests if item.ok and item.audit_head]
    audit = _check_audit(state_dir / AUDIT_FILE, anchors, state_head)
    return RunEvidence(
        label=label,
        path=state_dir,
        run_id=run_id,
        description=description,
        config=config,
        history=history,
        state_status=state_status,
        state_problem=state_problem,
        signatures=signatures,
        audit=audit,
        audit_records=_audit_records(state_dir / AUDIT_FILE),
    )


def _trusted_keys(
    state_dir: Path, public_keys: Sequence[VerifyingKey]
) -> tuple[str | None, tuple[VerifyingKey, ...], str, str]:
    """The run id and keys to verify against, where they came from, and any problem."""
    run_id: str | None = None
    anchor_file = state_dir / TRUST_ANCHOR_FILE
    anchor_problem = ""
    anchor_keys: tuple[VerifyingKey, ...] = ()
    try:
        anchor = read_trust_anchor(anchor_file)
        run_id, anchor_keys = anchor.run_id, anchor.keys
    except TrustAnchorError as error:
        anchor_problem = str(error)
        run_id = _read_run_id(state_dir / RUN_ID_FILE)
    if public_keys:
        return run_id, tuple(public_keys), "pinned keys given by the caller", ""
    if anchor_keys:
        return run_id, anchor_keys, f"the run's own trust anchor ({TRUST_ANCHOR_FILE})", ""
    try:
        key = read_verifying_key(state_dir / PUBLIC_KEY_FILE)
    except (SigningKeyError, OSError) as error:
        return run_id, (), "none", f"{anchor_problem}; {error}"
    return run_id, (key,), f"the run's own public key ({PUBLIC_KEY_FILE})", ""


def _read_run_id(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if len(text) == 32 and all(c in "0123456789abcdef" for c in text) else None


def _check_signatures(
    state_dir: Path,
    run_id: str | None,
    keys: tuple[VerifyingKey, ...],
    key_source: str,
    key_problem: str,
    check_tensors: bool,
) -> SignatureCheck:
    key_ids = tuple(key.key_id for key in keys)
    store = ModelStore(state_dir / MODELS_DIR)
    try:
        digests = store.digests()
    except OSError as error:
        return SignatureCheck(CheckStatus.FAILED, key_source, key_ids, (), f"{store.root}: {error}")
    if not keys:
        problem = f"no key to verify against ({key_problem})"
        return SignatureCheck(CheckStatus.NOT_CHECKED, key_source, key_ids, (), problem)
    checks = [_check_manifest(store, digest, run_id, keys, check_tensors) for digest in digests]
    present = set(digests)
    for index, item in enumerate(checks):
        parent = _parent_digest(store, item.digest) if item.ok else None
        if parent is not None and parent not in present:
            checks[index] = ManifestCheck(
                item.digest,
                item.round,
                False,
                f"parent model {parent} is missing from the store: lineage broken",
                item.audit_head,
                item.privacy,
            )
    if not checks:
        return SignatureCheck(
            CheckStatus.FAILED, key_source, key_ids, (), f"{store.root}: no signed models"
        )
    status = CheckStatus.PASSED if all(item.ok for item in checks) else CheckStatus.FAILED
    return SignatureCheck(status, key_source, key_ids, tuple(checks))


def _parent_digest(store: ModelStore, digest: str) -> str | None:
    return store.signed_manifest(digest).manifest.parent_digest


def _check_manifest(
    store: ModelStore,
    digest: str,
    run_id: str | None,
    keys: Sequence[VerifyingKey],
    check_tensors: bool,
) -> ManifestCheck:
    try:
        signed = store.signed_manifest(digest)
    except (ModelStoreError, OSError) as error:
        return ManifestCheck(digest, None, False, str(error))
    manifest = signed.manifest
    privacy = None if manifest.privacy is None else dict(manifest.privacy)
    try:
        verify_signed_manifest(signed, keys)
        if check_tensors:
            store.load(digest, keys)
    except ModelRefusal as refusal:
        return ManifestCheck(
            digest, manifest.round, False, f"{refusal.reason.value}: {refusal.message}"
        )
    except (ModelStoreError, OSError) as error:
        return ManifestCheck(digest, manifest.round, False, str(error))
    if run_id is not None and manifest.run_id != run_id:
        return ManifestCheck(
            digest, manifest.round, False, f"manifest of run {manifest.run_id}, not {run_id}"
        )
    return ManifestCheck(digest, manifest.round, True, "", manifest.audit_head or None, privacy)


def _check_audit(
    path: Path, anchor_texts: Iterable[str], state_head: AuditHead | None
) -> AuditCheck:
    anchors: list[AuditHead] = [] if state_head is None else [state_head]
    for text in anchor_texts:
        try:
            anchors.append(AuditHead.parse(text))
        except ValueError:
            continue  # a signed manifest with an unparsable head: nothing to anchor
    if not path.is_file():
        return AuditCheck(CheckStatus.FAILED, failure="missing", detail=f"{path}: missing")
    try:
        result = verify_audit_log(path, anchors)
    except AuditLogError as error:
        return AuditCheck(
            CheckStatus.FAILED, anchors=len(anchors), failure="unreadable", detail=str(error)
        )
    return AuditCheck(
        CheckStatus.PASSED if result.ok else CheckStatus.FAILED,
        records=result.records,
        anchors=len(set(anchors)),
        anchors_checked=result.anchors_checked,
        head=str(result.head),
        first_bad_seq=result.first_bad_seq,
        failure="" if result.failure is None else result.failure.value,
        detail=result.detail,
    )


def _audit_records(path: Path) -> tuple[Mapping[str, Any], ...] | None:
    if not path.is_file():
        return None
    buffer = io.StringIO()
    try:
        export_jsonl(path, buffer)
    except AuditLogError:
        return None
    return tuple(json.loads(line) for line in buffer.getvalue().splitlines() if line)


# ---------------------------------------------------------------- bundle


@dataclass(frozen=True)
class EvidenceBundle:
    """Where the bundle went and whether the run it holds verified."""

    path: Path
    verified: bool
    artefacts: int


@dataclass
class _BundleWriter:
    root: Path
    source: Path
    """The run folder: only regular files inside it are copied."""
    artefacts: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def copy(
        self,
        relative: str,
        path: Path,
        controls: Sequence[Control],
        description: str,
        run: str | None = None,
    ) -> None:
        """Add a file of the run folder, unless it is a link or leads outside the folder.

        A run folder is untrusted: a symbolic link named like an artefact would otherwise
        copy any file the exporting user can read into the bundle.
        """
        problem = _unsafe_source(path, self.source)
        if problem:
            self.skipped.append({"path": str(path), "problem": problem})
            return
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as error:
            self.skipped.append({"path": str(path), "problem": f"unreadable: {error.strerror}"})
            return
        with os.fdopen(descriptor, "rb") as handle:
            data = handle.read()
        self.add(relative, data, controls, description, run)

    def add(
        self,
        relative: str,
        data: bytes,
        controls: Sequence[Control],
        description: str,
        run: str | None = None,
    ) -> None:
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.artefacts.append(
            {
                "path": relative,
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
                "controls": [control.value for control in controls],
                "description": description,
                "run": run,
            }
        )


def export_evidence_bundle(
    run_dir: Path,
    out: Path,
    *,
    public_keys: Sequence[VerifyingKey] = (),
    check_tensors: bool = True,
) -> EvidenceBundle:
    """Write the evidence bundle of ``run_dir`` to the new folder (or ``.zip`` file) ``out``.

    Refuses (FileExistsError) an ``out`` that exists; RunFolderError when ``run_dir``
    is not a run folder. A run that fails verification is exported and marked FAILED.
    """
    evidence = inspect_run_folder(run_dir, public_keys=public_keys, check_tensors=check_tensors)
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; choose a new bundle path")
    as_zip = out.suffix == ".zip"
    staging = out.with_name(f".{out.name}.{secrets.token_hex(6)}.tmp")
    staging.mkdir(parents=True)
    try:
        writer = _BundleWriter(staging, evidence.root)
        _write_folder_artefacts(writer, evidence)
        for index, run in enumerate(evidence.runs):
            _write_run_artefacts(writer, run, f"runs/{index:03d}")
        _write_index(writer, evidence)
        if as_zip:
            _zip_folder(staging, out)
        else:
            staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return EvidenceBundle(out, evidence.verified, len(writer.artefacts))


def _json_bytes(value: Any) -> bytes:
    return (
        json.dumps(value, indent=2, sort_keys=True, default=str, allow_nan=True) + "\n"
    ).encode()


def _write_folder_artefacts(writer: _BundleWriter, evidence: RunFolderEvidence) -> None:
    plan = evidence.root.joinpath(*SIMULATION_PLAN_FILE)
    if evidence.kind == "simulation" and plan.is_file():
        writer.copy(
            "configuration/plan.json",
            plan,
            [Control.PRIVACY, Control.ACCESS_CONTROL],
            "the simulation plan: scenario, defences, attacks, seeds",
        )


def _write_run_artefacts(writer: _BundleWriter, run: RunEvidence, prefix: str) -> None:
    label = run.label
    integrity, access = Control.MODEL_INTEGRITY, Control.ACCESS_CONTROL
    privacy, incident = Control.PRIVACY, Control.INCIDENT_RESPONSE
    for name, description in (
        (TRUST_ANCHOR_FILE, "the trust anchor clients pin: run id and public key file"),
        (PUBLIC_KEY_FILE, "the coordinator's model-signing public key"),
        (REVOCATION_FILE, "the coordinator's signed revocation list"),
    ):
        source = run.path / name
        if source.is_file():
            writer.copy(f"{prefix}/keys/{name}", source, [integrity], description, label)
    store = ModelStore(run.path / MODELS_DIR)
    for check in run.signatures.manifests:
        folder = store.root / check.digest
        for name in (MANIFEST_FILE, SIGNATURE_FILE):
            if (folder / name).is_file():
                writer.copy(
                    f"{prefix}/manifests/{check.digest}/{name}",
                    folder / name,
                    [integrity, access, privacy],
                    f"signed manifest of round {check.round}"
                    + (" (DID NOT VERIFY)" if not check.ok else ""),
                    label,
                )
    writer.add(
        f"{prefix}/verification/signatures.json",
        _json_bytes(_signature_report(run.signatures)),
        [integrity],
        f"signature verification: {run.signatures.status.value.upper()}",
        label,
    )
    audit_path = run.path / AUDIT_FILE
    for suffix in ("", "-wal"):
        source = audit_path.with_name(audit_path.name + suffix)
        if source.is_file() and source.stat().st_size > 0:
            writer.copy(
                f"{prefix}/audit/{source.name}",
                source,
                [integrity, access, incident],
                "the hash-chained audit log as stored (verify with `ztfl audit verify`)",
                label,
            )
    if run.audit_records is not None:
        lines = "".join(json.dumps(item, sort_keys=True) + "\n" for item in run.audit_records)
        writer.add(
            f"{prefix}/audit/audit-log.jsonl",
            lines.encode(),
            [integrity, access, incident],
            "every audit record with its hash, one JSON object per line",
            label,
        )
    writer.add(
        f"{prefix}/verification/audit-chain.json",
        _json_bytes(_audit_report(run.audit)),
        [integrity, incident],
        f"audit chain verification: {run.audit.status.value.upper()}",
        label,
    )
    writer.add(
        f"{prefix}/verification/state-file.json",
        _json_bytes({"status": run.state_status.value, "problem": run.state_problem}),
        [integrity],
        f"coordinator state file checksum: {run.state_status.value.upper()}",
        label,
    )
    writer.add(
        f"{prefix}/configuration.json",
        _json_bytes({"run_id": run.run_id, "run": run.description, "config": run.config}),
        [privacy, access],
        "the run configuration in force (state file) and the simulation's description",
        label,
    )
    writer.add(
        f"{prefix}/privacy-ledger.csv",
        _privacy_ledger_csv(run),
        [privacy],
        "ε spent per round with δ, z, C, q and the accountant; 'signed' says the signed "
        "manifest of that round states the same",
        label,
    )
    writer.add(
        f"{prefix}/participants.csv",
        _participants_csv(run),
        [access, privacy],
        "per round: nodes sampled, answered, accepted, refused (with reasons), quarantined",
        label,
    )
    quarantine = run.events("quarantine")
    writer.add(
        f"{prefix}/incidents.json",
        _json_bytes(
            {
                "quarantine_events": quarantine,
                "refused_updates": _refusals(run),
                "audit_refusals": [
                    item
                    for item in run.audit_records or ()
                    if item.get("reason") is not None and item.get("kind") != "quarantine"
                ],
            }
        ),
        [incident, access],
        "quarantine events, refused updates and every audit record with a refusal reason",
        label,
    )


def _signature_report(check: SignatureCheck) -> dict[str, Any]:
    return {
        "status": check.status.value,
        "key_source": check.key_source,
        "key_ids": list(check.key_ids),
        "passed": check.passed,
        "failed": check.failed,
        "problem": check.problem,
        "manifests": [
            {"digest": item.digest, "round": item.round, "ok": item.ok, "problem": item.problem}
            for item in check.manifests
        ],
    }


def _audit_report(check: AuditCheck) -> dict[str, Any]:
    return {
        "status": check.status.value,
        "records_verified": check.records,
        "anchors": check.anchors,
        "anchors_checked": check.anchors_checked,
        "head": check.head,
        "first_bad_seq": check.first_bad_seq,
        "failure": check.failure,
        "detail": check.detail,
    }


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _privacy_ledger_csv(run: RunEvidence) -> bytes:
    signed = {item.digest: item.privacy for item in run.signatures.manifests if item.ok}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = ("epsilon", "delta", "noise_multiplier", "clip_norm", "sampling_rate", "accountant")
    writer.writerow(["round", "committed", *columns, "model_digest", "signed"])
    for record in run.rounds:
        privacy = record.get("privacy")
        if not isinstance(privacy, Mapping):
            continue
        digest = record.get("model_digest")
        stated = signed.get(digest) if isinstance(digest, str) else None
        writer.writerow(
            [
                record.get("server_round"),
                record.get("committed"),
                *(privacy.get(column, "") for column in columns),
                digest or "",
                "yes" if stated is not None and dict(stated) == dict(privacy) else "no",
            ]
        )
    return buffer.getvalue().encode()


def _node_list(value: object) -> str:
    if not isinstance(value, list | tuple):
        return ""
    return " ".join(str(item) for item in value)


def _participants_csv(run: RunEvidence) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["round", "committed", "sampled", "answered", "accepted", "refused", "quarantined"]
    )
    for record in run.rounds:
        refused = record.get("refused")
        refusals = [
            f"{item.get('node_id')}:{item.get('reason')}"
            for item in (refused if isinstance(refused, list) else [])
            if isinstance(item, Mapping)
        ]
        writer.writerow(
            [
                record.get("server_round"),
                record.get("committed"),
                _node_list(record.get("sampled_nodes")),
                record.get("num_replies", ""),
                _node_list(record.get("accepted_nodes")),
                " ".join(refusals),
                _node_list(record.get("quarantined")),
            ]
        )
    return buffer.getvalue().encode()


def _refusals(run: RunEvidence) -> list[dict[str, Any]]:
    found = []
    for record in run.rounds:
        for key in ("refused", "verification_failures"):
            items = record.get(key)
            for item in items if isinstance(items, list) else []:
                if isinstance(item, Mapping):
                    found.append({"round": record.get("server_round"), "kind": key, **item})
    return found


def _write_index(writer: _BundleWriter, evidence: RunFolderEvidence) -> None:
    verdict = "PASSED" if evidence.verified else "FAILED"
    runs = [
        {
            "run": run.label,
            "folder": f"runs/{index:03d}",
            "run_id": run.run_id,
            "verification": "PASSED" if run.verified else "FAILED",
            "state_file": run.state_status.value,
            "signatures": {
                "status": run.signatures.status.value,
                "passed": run.signatures.passed,
                "failed": run.signatures.failed,
            },
            "audit_chain": {
                "status": run.audit.status.value,
                "records_verified": run.audit.records,
                "failure": run.audit.failure,
            },
        }
        for index, run in enumerate(evidence.runs)
    ]
    index = {
        "format": BUNDLE_FORMAT,
        "verification": verdict,
        "created_at": datetime.now(UTC).isoformat(),
        "source": str(evidence.root),
        "kind": evidence.kind,
        "runs": runs,
        "notes": list(evidence.notes),
        "skipped": writer.skipped,
        "controls": {control.value: _CONTROL_TEXT[control] for control in Control},
        "artefacts": writer.artefacts,
    }
    (writer.root / "index.json").write_bytes(_json_bytes(index))
    (writer.root / "index.md").write_text(_index_markdown(index), encoding="utf-8")
    sums = "".join(f"{item['sha256']}  {item['path']}\n" for item in writer.artefacts)
    (writer.root / "SHA256SUMS").write_text(sums, encoding="utf-8")


_CONTROL_TEXT: Final = {
    Control.MODEL_INTEGRITY: "every released model is signed, its bytes hash to the signed "
    "manifest, and the audit chain is anchored in those manifests",
    Control.ACCESS_CONTROL: "who took part in each round, who was refused and why",
    Control.PRIVACY: "the differential-privacy parameters and ε spent per round",
    Control.INCIDENT_RESPONSE: "refusals, quarantine decisions and their evidence, "
    "revocations, and the verification of the log that records them",
}


def _markdown_cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _index_markdown(index: Mapping[str, Any]) -> str:
    lines = []
    if index["verification"] == "FAILED":
        lines += [
            "# VERIFICATION FAILED",
            "",
            "**At least one run in this bundle did not verify: a signature, the audit chain or "
            "the state file failed. The artefacts are the evidence of that failure; do not "
            "rely on the models or the log without investigating (see verification/ of each "
            "run).**",
            "",
        ]
    lines += [
        "# ztfl evidence bundle",
        "",
        f"- format: `{index['format']}`",
        f"- verification: **{index['verification']}**",
        f"- created: {index['created_at']}",
        f"- source: `{_markdown_cell(index['source'])}` ({index['kind']})",
        "- check the files: `sha256sum -c SHA256SUMS`",
        "",
        "## Runs",
        "",
        "| folder | run | run id | verification | state file | signatures (ok/failed) | "
        "audit chain |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in index["runs"]:
        signatures = run["signatures"]
        audit = run["audit_chain"]
        failure = f", {audit['failure']}" if audit["failure"] else ""
        lines.append(
            f"| {run['folder']} | {_markdown_cell(run['run'])} | {run['run_id']} | "
            f"**{run['verification']}** | {run['state_file']} | {signatures['status']} "
            f"({signatures['passed']}/{signatures['failed']}) | {audit['status']} "
            f"({audit['records_verified']} records{failure}) |"
        )
    if index["skipped"]:
        lines += ["", "## Not copied", ""]
        lines += [
            f"- `{_markdown_cell(item['path'])}`: {_markdown_cell(item['problem'])}"
            for item in index["skipped"]
        ]
    lines += ["", "## Controls", ""]
    for control, text in index["controls"].items():
        lines.append(f"- **{control}**: {text}")
    lines += ["", "## Artefacts", "", "| file | controls | what | sha256 |", "|---|---|---|---|"]
    for item in index["artefacts"]:
        lines.append(
            f"| `{item['path']}` | {', '.join(item['controls'])} | "
            f"{_markdown_cell(item['description'])} | `{item['sha256']}` |"
        )
    return "\n".join(lines) + "\n"


def _unsafe_source(path: Path, root: Path) -> str:
    """Why ``path`` must not be copied (a link, or outside ``root``); empty when it may."""
    if path.is_symlink():
        return "a symbolic link: not copied"
    try:
        inside = path.resolve(strict=True).is_relative_to(root.resolve(strict=True))
    except OSError as error:
        return f"unreadable: {error}"
    return "" if inside else "leads outside the run folder: not copied"


def _zip_folder(folder: Path, out: Path) -> None:
    temporary = out.with_name(f".{out.name}.{secrets.token_hex(6)}.tmp")
    try:
        with zipfile.ZipFile(temporary, "x", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(folder).as_posix())
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)
