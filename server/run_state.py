"""The coordinator's persisted state: one JSON file, replaced atomically after every round.

The file is the run's single commit point (docs/decisions/0008): a round counts
as committed when, and only when, the state file naming it has been renamed
into place. It is written to a temporary file in the same folder, fsynced,
renamed over the old file, and the folder fsynced, so a crash at any moment
leaves either the old state or the new one — never a mix.

The body carries its own SHA-256, so a truncated or edited file is refused
with an error naming it instead of being taken for a fresh start.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ztfl.trust.audit import AuditHead
from ztfl.trust.durable_files import write_atomically

STATE_SCHEMA = "ztfl.coordinator-state/v1"
MAX_STATE_BYTES = 64 << 20


class StateFileError(Exception):
    """The state file is missing, truncated, corrupted or of another format; ``path`` names it."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class CoordinatorState:
    """Everything needed to continue a run exactly where its last committed round left it."""

    run_id: str
    round: int
    """The last finished round (committed or skipped); 0 before the first."""
    model_digest: str
    """Digest of the current global model in the model store."""
    audit_head: str
    """The audit log's head right after the round's last event (``"<seq>:<hex>"``)."""
    config: Mapping[str, Any]
    """The run configuration in force (kebab-case keys); a resume compares against it."""
    sampler: Mapping[str, Any]
    """The node sampler's random generator state."""
    aggregation_generator: str
    """The aggregation generator's state (hex of torch's state bytes)."""
    node_digests: Mapping[str, str] = field(default_factory=dict)
    """Per node id: the last model digest that node reported it accepted."""
    history: Mapping[str, Any] = field(default_factory=dict)
    """``RunHistory.to_json()`` up to this round."""
    privacy: Mapping[str, Any] | None = None
    """With DP: the accountant's state and the population N, so a resume never resets ε."""
    quarantine: Mapping[str, Any] | None = None
    """The quarantine policy: reputations, quarantined nodes and their evidence."""

    def to_json(self) -> bytes:
        """The file's bytes: the body and its SHA-256."""
        body = {
            "schema": STATE_SCHEMA,
            "run_id": self.run_id,
            "round": self.round,
            "model_digest": self.model_digest,
            "audit_head": self.audit_head,
            "config": dict(self.config),
            "sampler": dict(self.sampler),
            "aggregation_generator": self.aggregation_generator,
            "node_digests": dict(self.node_digests),
            "history": dict(self.history),
        }
        if self.privacy is not None:
            body["privacy"] = dict(self.privacy)
        if self.quarantine is not None:
            body["quarantine"] = dict(self.quarantine)
        return json.dumps(
            {"body": body, "sha256": _checksum(body)}, sort_keys=True, indent=1, allow_nan=True
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, path: Path) -> CoordinatorState:
        """Parse and check :meth:`to_json` output; any problem → StateFileError naming ``path``."""
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as error:
            raise StateFileError(
                path, f"not valid JSON (truncated or corrupted): {error}"
            ) from None
        if not isinstance(document, dict) or set(document) != {"body", "sha256"}:
            raise StateFileError(path, "not a ztfl coordinator state file")
        body = document["body"]
        if not isinstance(body, dict) or body.get("schema") != STATE_SCHEMA:
            raise StateFileError(path, f"schema is not {STATE_SCHEMA}")
        if _checksum(body) != document["sha256"]:
            raise StateFileError(path, "checksum mismatch: the file was corrupted or edited")
        try:
            state = cls(
                run_id=_typed(body, "run_id", str),
                round=_typed(body, "round", int),
                model_digest=_typed(body, "model_digest", str),
                audit_head=_typed(body, "audit_head", str),
                config=_typed(body, "config", dict),
                sampler=_typed(body, "sampler", dict),
                aggregation_generator=_typed(body, "aggregation_generator", str),
                node_digests=_typed(body, "node_digests", dict),
                history=_typed(body, "history", dict),
                privacy=None if body.get("privacy") is None else _typed(body, "privacy", dict),
                quarantine=(
                    None if body.get("quarantine") is None else _typed(body, "quarantine", dict)
                ),
            )
            AuditHead.parse(state.audit_head)
            bytes.fromhex(state.aggregation_generator)
        except (TypeError, ValueError) as error:
            raise StateFileError(path, f"malformed field: {error}") from None
        if state.round < 0:
            raise StateFileError(path, "round is negative")
        return state


def _typed(body: Mapping[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{key} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _checksum(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_state(path: Path, state: CoordinatorState) -> None:
    """Replace ``path`` with ``state`` atomically: temp file, fsync, rename, fsync the folder."""
    write_atomically(path, state.to_json())


def read_state(path: Path) -> CoordinatorState:
    """Read and check the state file; StateFileError naming it if it is missing or damaged."""
    try:
        size = path.stat().st_size
        if size > MAX_STATE_BYTES:
            raise StateFileError(path, f"larger than {MAX_STATE_BYTES} bytes")
        data = path.read_bytes()
    except FileNotFoundError:
        raise StateFileError(path, "missing") from None
    except OSError as error:
        raise StateFileError(path, f"cannot be read: {error}") from None
    if not data:
        raise StateFileError(path, "empty (truncated)")
    return CoordinatorState.from_json(data, path)
