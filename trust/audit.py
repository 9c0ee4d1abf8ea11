"""The tamper-evident audit log: an append-only, hash-chained event log in SQLite.

Every security-relevant event of a federation (admissions and refusals, rounds,
commits, refused updates, client-side verification failures, configuration
changes, key rotations, quarantine and privacy-budget events) becomes one
record. Each record holds the SHA-256 hash of the previous one, and the head
of the chain (``AuditHead``, written ``"<seq>:<hex>"``) goes into every signed
model manifest. Editing, deleting, reordering or inserting any record up to
the last anchored head therefore changes a hash that someone outside the
coordinator holds; ``verify_audit_log`` finds the first record that breaks.

What a hash chain cannot detect — truncation after the last anchor, a full
rewrite by whoever can sign manifests, deletion of the whole file — and how
off-host copies of the anchors close it is in docs/audit.md.

The record encoding, for an auditor who recomputes hashes without ztfl:
``hash = SHA-256(canonical_json(record without "hash"))`` where the record is
the JSON object with the keys ``details, kind, node_id, prev_hash, reason,
round, run_id, seq, time`` and canonical JSON is UTF-8 with sorted keys, no
whitespace and no NaN/Infinity (Python: ``json.dumps(obj, sort_keys=True,
separators=(",", ":"), ensure_ascii=False, allow_nan=False)``). The first
record's ``prev_hash`` is 64 zeros (``GENESIS_HASH``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum, StrEnum
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self, TypeAlias, cast

__all__ = [
    "AUDIT_FORMAT_NAME",
    "AUDIT_FORMAT_VERSION",
    "GENESIS_HASH",
    "AuditEvent",
    "AuditEventKind",
    "AuditFailure",
    "AuditHead",
    "AuditLog",
    "AuditLogError",
    "AuditRecord",
    "AuditVerification",
    "JsonValue",
    "canonical_json",
    "export_jsonl",
    "parse_anchor_lines",
    "verify_audit_log",
]

AUDIT_FORMAT_NAME: Final = "ztfl-audit"
AUDIT_FORMAT_VERSION: Final = 1
GENESIS_HASH: Final = "0" * 64
"""``prev_hash`` of record 1, and the hash of the empty log's head (seq 0)."""

MAX_DETAILS_BYTES: Final = 64 * 1024
"""Canonical size limit of one record's details: the log is evidence, not a data store."""
MAX_DETAILS_DEPTH: Final = 16
BUSY_TIMEOUT_MS: Final = 10_000

JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None

_HASH_PATTERN: Final = re.compile(r"[0-9a-f]{64}")
_HEAD_PATTERN: Final = re.compile(r"(0|[1-9][0-9]*):([0-9a-f]{64})")
_REASON_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_TIME_PATTERN: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_DECIMAL_PATTERN: Final = re.compile(r"0|[1-9][0-9]*")
_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"
_MAX_NODE_ID: Final = 2**64  # Flower node ids are unsigned 64-bit integers

# The secret guard: a detail key is refused when one of its words (split at
# non-letters and camelCase) is one of these, unless its last word says it only
# identifies the secret. A guard against mistakes, not a guarantee (docs/audit.md).
_SECRET_WORDS: Final = frozenset(
    {"key", "keys", "secret", "secrets", "password", "passwd", "passphrase", "token", "tokens"}
    | {"private", "credential", "credentials"}
)
_IDENTIFYING_WORDS: Final = frozenset({"id", "ids", "fingerprint", "fingerprints", "sha256"})
_PEM_PRIVATE_MARKER: Final = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_WORD_PATTERN: Final = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")

# A constant column list, interpolated into SQL text (never user input).
_RECORD_COLUMNS: Final = "seq, time, kind, run_id, round, node_id, reason, details, prev_hash, hash"
_SCHEMA: Final = (
    """CREATE TABLE audit_format (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        created TEXT NOT NULL
    )""",
    """CREATE TABLE audit_records (
        seq INTEGER PRIMARY KEY CHECK (seq >= 1),
        time TEXT NOT NULL,
        kind TEXT NOT NULL,
        run_id TEXT NOT NULL,
        round INTEGER,
        node_id TEXT,
        reason TEXT,
        details TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    # Defence in depth: anyone who can write the file can drop these triggers,
    # so the hash chain and its anchors remain the real guarantee.
    """CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
       BEGIN SELECT RAISE(ABORT, 'ztfl audit records are append-only'); END""",
    """CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
       BEGIN SELECT RAISE(ABORT, 'ztfl audit records are append-only'); END""",
    """CREATE TRIGGER audit_format_no_update BEFORE UPDATE ON audit_format
       BEGIN SELECT RAISE(ABORT, 'the ztfl audit format row is fixed'); END""",
    """CREATE TRIGGER audit_format_no_delete BEFORE DELETE ON audit_format
       BEGIN SELECT RAISE(ABORT, 'the ztfl audit format row is fixed'); END""",
)
_TRIGGERS: Final = frozenset(
    {
        "audit_records_no_update",
        "audit_records_no_delete",
        "audit_format_no_update",
        "audit_format_no_delete",
    }
)


class AuditEventKind(StrEnum):
    """What happened. Values are stable identifiers in the log and in exports."""

    RUN_STARTED = "run_started"
    """A coordinator run began (details: the effective configuration's digest or summary)."""
    RUN_RESUMED = "run_resumed"
    """A coordinator restarted and resumed a run from persisted state."""
    CONFIG_CHANGED = "config_changed"
    """A security-relevant setting changed (details: setting, old and new value)."""
    NODE_ADMITTED = "node_admitted"
    """A node passed admission (certificate, role, key binding)."""
    NODE_REFUSED = "node_refused"
    """A node was refused admission; ``reason`` says why."""
    ROUND_STARTED = "round_started"
    """A round began (details: sampled nodes or groups)."""
    ROUND_SKIPPED = "round_skipped"
    """A round ended without a new model; ``reason`` says why."""
    ROUND_COMPLETED = "round_completed"
    """A round aggregated and produced a model."""
    UPDATE_REFUSED = "update_refused"
    """A client update was not aggregated; ``reason`` is the validation refusal."""
    MODEL_COMMITTED = "model_committed"
    """A model and its signed manifest were written (details: digests)."""
    CLIENT_VERIFICATION_FAILED = "client_verification_failed"
    """A client refused a broadcast model or configuration; ``reason`` says why."""
    RECONCILED = "reconciled"
    """Resume clean-up: state that a crash left half-written was discarded or repaired."""
    KEY_ROTATED = "key_rotated"
    """A signing or transport key was replaced (details: fingerprints, never keys)."""
    MODEL_REVOKED = "model_revoked"
    """A committed model was revoked."""
    QUARANTINE = "quarantine"
    """A node was quarantined or released (details: scores, incident)."""
    DP_BUDGET = "dp_budget"
    """A privacy-budget event: spent so far, or a round refused for exceeding the budget."""
    CERTIFICATE_ISSUED = "certificate_issued"
    """The federation CA issued or renewed a certificate (details: identity, serial, expiry)."""
    CERTIFICATE_REVOKED = "certificate_revoked"
    """A certificate was revoked and the CRL reissued (details: identity, serial, reason)."""
    REQUEST_REFUSED = "request_refused"
    """The gateway refused an admitted peer's request; ``reason`` says why (path, size, rate)."""
    APP_BUNDLE_REFUSED = "app_bundle_refused"
    """A client's sidecar refused an app bundle whose hash is not allow-listed."""
    SECAGG_GROUP_ABORTED = "secagg_group_aborted"
    """A secure-aggregation group ended without a sum (below threshold, corrupt share…)."""
    SECAGG_REPLY_REFUSED = "secagg_reply_refused"
    """The coordinator refused a member's secure-aggregation reply (counted as a dropout)."""
    SECAGG_MEMBER_REFUSED = "secagg_member_refused"
    """A member refused a secure-aggregation stage (bad signature, roster mismatch…)."""
    GROUP_MEAN_REFUSED = "group_mean_refused"
    """A secure-aggregation group mean was refused (norm above C, malformed bits)."""


# Refusals must say why; round events must say which round.
_KINDS_NEEDING_REASON: Final = frozenset(
    {
        AuditEventKind.NODE_REFUSED,
        AuditEventKind.ROUND_SKIPPED,
        AuditEventKind.UPDATE_REFUSED,
        AuditEventKind.CLIENT_VERIFICATION_FAILED,
        AuditEventKind.REQUEST_REFUSED,
        AuditEventKind.APP_BUNDLE_REFUSED,
        AuditEventKind.SECAGG_GROUP_ABORTED,
        AuditEventKind.SECAGG_REPLY_REFUSED,
        AuditEventKind.SECAGG_MEMBER_REFUSED,
        AuditEventKind.GROUP_MEAN_REFUSED,
    }
)
_KINDS_NEEDING_ROUND: Final = frozenset(
    {
        AuditEventKind.ROUND_STARTED,
        AuditEventKind.ROUND_SKIPPED,
        AuditEventKind.ROUND_COMPLETED,
        AuditEventKind.UPDATE_REFUSED,
        AuditEventKind.MODEL_COMMITTED,
    }
)


class AuditFailure(StrEnum):
    """Why verification failed, at ``AuditVerification.first_bad_seq``."""

    HASH_MISMATCH = "hash_mismatch"
    """The record's stored hash is not the hash of its fields: it was edited."""
    BROKEN_LINK = "broken_link"
    """The record's ``prev_hash`` is not the previous record's hash: a record before it was
    edited and re-hashed, removed or moved, or this one was inserted."""
    SEQUENCE_GAP = "sequence_gap"
    """Sequence numbers are not 1, 2, 3, …: records were deleted (or added out of range)."""
    ANCHOR_MISSING = "anchor_missing"
    """An anchored record no longer exists: the log was truncated below an anchor."""
    ANCHOR_MISMATCH = "anchor_mismatch"
    """The record at an anchored seq has another hash: the chain up to it was rewritten."""
    MALFORMED_RECORD = "malformed_record"
    """A field has the wrong type or format (unknown kind, invalid JSON, bad hash text)."""


class AuditLogError(Exception):
    """The file is not a readable ztfl audit log: missing, corrupted, truncated or foreign.

    The message starts with the file's path; ``path`` holds it too.
    """

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class AuditHead:
    """The chain's head: the last record's seq and hash (seq 0 and ``GENESIS_HASH`` when empty).

    ``str(head)`` is the form that goes into manifests and anchor files: ``"<seq>:<hex>"``.
    """

    seq: int
    hash: str

    def __post_init__(self) -> None:
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 0:
            raise ValueError(f"audit head seq must be an integer >= 0, got {self.seq!r}")
        if not isinstance(self.hash, str) or not _HASH_PATTERN.fullmatch(self.hash):
            raise ValueError("audit head hash must be 64 lowercase hex digits")
        if self.seq == 0 and self.hash != GENESIS_HASH:
            raise ValueError(
                "an audit head at seq 0 (the empty log) must have the genesis hash (64 zeros)"
            )

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> AuditHead:
        """Parse ``"<seq>:<hex>"`` (surrounding whitespace allowed); raise ``ValueError``."""
        match = _HEAD_PATTERN.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"not an audit head '<seq>:<64 hex digits>': {text.strip()[:80]!r}")
        return cls(int(match.group(1)), match.group(2))


GENESIS_HEAD: Final = AuditHead(0, GENESIS_HASH)


def parse_anchor_lines(lines: Iterable[str]) -> list[AuditHead]:
    """Parse anchors, one ``"<seq>:<hex>"`` per line; blank lines and ``#`` comments are skipped.

    Raises ``ValueError`` naming the line number of the first malformed line.
    """
    anchors = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            anchors.append(AuditHead.parse(text))
        except ValueError as error:
            raise ValueError(f"line {number}: {error}") from None
    return anchors


def canonical_json(value: JsonValue) -> str:
    """The canonical JSON text that record hashes are computed over (see the module docstring)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _words(name: str) -> list[str]:
    return [word.lower() for word in _WORD_PATTERN.findall(name)]


def _looks_secret(name: str) -> bool:
    words = _words(name)
    if not words or words[-1] in _IDENTIFYING_WORDS:
        return False
    return any(word in _SECRET_WORDS for word in words)


def _normalise_json(value: object, where: str, depth: int) -> JsonValue:
    """A plain-JSON copy of ``value``; refuse bytes, secrets and anything JSON cannot hold."""
    if depth > MAX_DETAILS_DEPTH:
        raise ValueError(f"details nest deeper than {MAX_DETAILS_DEPTH} levels at {where}")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"details value at {where} is not finite: {value!r}")
        return float(value)
    if isinstance(value, str):
        if _PEM_PRIVATE_MARKER.search(value):
            raise ValueError(f"details value at {where} holds a PEM private key; never log keys")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"details value at {where} is not valid Unicode text") from None
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(
            f"details value at {where} is bytes; the audit log takes no raw bytes (log a "
            "fingerprint or digest as hex instead, never key material)"
        )
    if isinstance(value, Mapping):
        result: dict[str, JsonValue] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"details key {key!r} at {where} is not a string")
            if _looks_secret(key):
                raise ValueError(
                    f"details key {key!r} at {where} is named like a secret; never log keys, "
                    "tokens or passwords (a name ending in _id or _fingerprint is allowed)"
                )
            result[key] = _normalise_json(item, f"{where}.{key}", depth + 1)
        return result
    if isinstance(value, list | tuple):
        return [_normalise_json(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise TypeError(
        f"details value at {where} has type {type(value).__name__}, which is not JSON "
        "(use str, int, float, bool, None, lists and string-keyed mappings)"
    )


def _normalise_details(details: Mapping[str, object] | None) -> dict[str, JsonValue]:
    if details is None:
        return {}
    if not isinstance(details, Mapping):
        raise TypeError(f"details must be a mapping, got {type(details).__name__}")
    normalised = _normalise_json(details, "details", 0)
    assert isinstance(normalised, dict)
    size = len(canonical_json(normalised).encode("utf-8"))
    if size > MAX_DETAILS_BYTES:
        raise ValueError(f"details take {size} bytes as JSON, above {MAX_DETAILS_BYTES}")
    return normalised


def _reason_text(reason: str | Enum | None) -> str | None:
    if reason is None:
        return None
    text = reason.value if isinstance(reason, Enum) else reason
    if not isinstance(text, str) or not _REASON_PATTERN.fullmatch(text):
        raise ValueError(
            f"reason must be a refusal enum's value (an identifier such as 'norm_above_cap'), "
            f"got {text!r}; free text belongs in details"
        )
    return text


@dataclass(frozen=True)
class AuditEvent:
    """One event to append, before the log gives it a seq, a time and its place in the chain.

    Validated when built: ``kind`` is an ``AuditEventKind`` (or its value), ``run_id`` a
    non-empty string, ``round`` an integer >= 0, ``node_id`` a Flower node id (unsigned
    64-bit), ``reason`` a refusal enum or its value (required for refusals and skips),
    ``details`` a JSON-able mapping without bytes or secret-named keys. The stored
    fields are the normalised ones (enums as their values, tuples as lists).
    """

    kind: AuditEventKind
    run_id: str
    round: int | None = None
    node_id: int | None = None
    reason: str | None = None
    details: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", AuditEventKind(self.kind))
        if not isinstance(self.run_id, str) or not self.run_id:
            raise ValueError(f"run_id must be a non-empty string, got {self.run_id!r}")
        if self.round is not None and (
            isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0
        ):
            raise ValueError(f"round must be an integer >= 0 or None, got {self.round!r}")
        if self.node_id is not None and (
            isinstance(self.node_id, bool)
            or not isinstance(self.node_id, int)
            or not 0 <= self.node_id < _MAX_NODE_ID
        ):
            raise ValueError(f"node_id must be an unsigned 64-bit integer, got {self.node_id!r}")
        object.__setattr__(self, "reason", _reason_text(self.reason))
        if self.kind in _KINDS_NEEDING_REASON and self.reason is None:
            raise ValueError(f"a {self.kind.value} event needs a reason")
        if self.kind in _KINDS_NEEDING_ROUND and self.round is None:
            raise ValueError(f"a {self.kind.value} event needs a round")
        object.__setattr__(self, "details", _normalise_details(self.details))


@dataclass(frozen=True)
class AuditRecord:
    """One record of the log: the event, its place in the chain and its hash."""

    seq: int
    time: str
    kind: AuditEventKind
    run_id: str
    round: int | None
    node_id: int | None
    reason: str | None
    details: Mapping[str, JsonValue]
    prev_hash: str
    hash: str

    @property
    def head(self) -> AuditHead:
        """The chain's head when this record is the last one."""
        return AuditHead(self.seq, self.hash)

    def hashed_fields(self) -> dict[str, JsonValue]:
        """The JSON object whose canonical encoding is hashed: every field except ``hash``."""
        return _hashed_fields(
            self.seq,
            self.time,
            self.kind.value,
            self.run_id,
            self.round,
            self.node_id,
            self.reason,
            dict(self.details),
            self.prev_hash,
        )

    def compute_hash(self) -> str:
        """SHA-256 (hex) of the canonical encoding of ``hashed_fields()``."""
        return _digest(self.hashed_fields())

    def to_json(self) -> dict[str, JsonValue]:
        """Every field including ``hash``, as written by ``export_jsonl``."""
        return {**self.hashed_fields(), "hash": self.hash}


def _hashed_fields(
    seq: int,
    time: str,
    kind: str,
    run_id: str,
    round_: int | None,
    node_id: int | None,
    reason: str | None,
    details: dict[str, JsonValue],
    prev_hash: str,
) -> dict[str, JsonValue]:
    return {
        "seq": seq,
        "time": time,
        "kind": kind,
        "run_id": run_id,
        "round": round_,
        "node_id": node_id,
        "reason": reason,
        "details": details,
        "prev_hash": prev_hash,
    }


def _digest(fields: dict[str, JsonValue]) -> str:
    return hashlib.sha256(canonical_json(fields).encode("utf-8")).hexdigest()


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _format_time(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("the audit clock must return timezone-aware datetimes")
    return moment.astimezone(UTC).strftime(_TIME_FORMAT)


# ---------------------------------------------------------------- reading rows


class _MalformedRowError(Exception):
    def __init__(self, seq: int, problem: str) -> None:
        super().__init__(problem)
        self.seq = seq
        self.problem = problem


def _decode_row(row: tuple[Any, ...]) -> AuditRecord:
    """Decode one stored row strictly; raise ``_MalformedRowError`` for anything off-format."""
    seq, time, kind, run_id, round_, node_id, reason, details, prev_hash, hash_ = row

    def bad(problem: str) -> _MalformedRowError:
        return _MalformedRowError(seq, problem)

    if not isinstance(time, str) or not _TIME_PATTERN.fullmatch(time):
        raise bad(f"time {time!r} is not UTC ISO 8601 with microseconds")
    try:
        kind_value = AuditEventKind(kind)
    except ValueError:
        raise bad(f"unknown event kind {kind!r}") from None
    if not isinstance(run_id, str) or not run_id:
        raise bad("run_id is not a non-empty string")
    if round_ is not None and (not isinstance(round_, int) or round_ < 0):
        raise bad(f"round {round_!r} is not an integer >= 0")
    node: int | None = None
    if node_id is not None:
        if not isinstance(node_id, str) or not _DECIMAL_PATTERN.fullmatch(node_id):
            raise bad(f"node_id {node_id!r} is not a decimal integer")
        node = int(node_id)
        if node >= _MAX_NODE_ID:
            raise bad("node_id is not an unsigned 64-bit integer")
    if reason is not None and (
        not isinstance(reason, str) or not _REASON_PATTERN.fullmatch(reason)
    ):
        raise bad(f"reason {reason!r} is not an identifier")
    if not isinstance(details, str):
        raise bad("details are not JSON text")
    try:
        parsed = json.loads(details)
    except ValueError:
        raise bad("details are not valid JSON") from None
    if not isinstance(parsed, dict) or canonical_json(parsed) != details:
        raise bad("details are not a canonical JSON object")
    for name, value in (("prev_hash", prev_hash), ("hash", hash_)):
        if not isinstance(value, str) or not _HASH_PATTERN.fullmatch(value):
            raise bad(f"{name} is not 64 lowercase hex digits")
    return AuditRecord(
        seq, time, kind_value, run_id, round_, node, reason, parsed, prev_hash, hash_
    )


def _file_uri(path: Path, mode: str) -> str:
    return f"{path.resolve().as_uri()}?mode={mode}"


def _check_file_size(path: Path) -> None:
    """Refuse a file shorter than its SQLite header says (a truncated copy or a cut write).

    In WAL mode the main file lags behind its ``-wal`` file between checkpoints, so
    the check only applies when no ``-wal`` file is next to it.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            header = handle.read(100)
    except OSError as error:
        raise AuditLogError(path, f"cannot read the file: {error.strerror or error}") from None
    if size == 0:
        raise AuditLogError(path, "the file is empty, not a ztfl audit log")
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        raise AuditLogError(path, "not an SQLite database, so not a ztfl audit log (corrupted?)")
    if Path(f"{path}-wal").exists():
        return
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    change_counter = header[24:28]
    page_count = int.from_bytes(header[28:32], "big")
    # The header's page count is only authoritative when its valid-for counter matches.
    if page_count and header[92:96] == change_counter and size < page_count * page_size:
        raise AuditLogError(
            path,
            f"the file is truncated: {size} bytes, its header says {page_count * page_size}",
        )


def _connect(path: Path, mode: str) -> sqlite3.Connection:
    """Connect to an existing file (never create one); ``mode`` is ``"ro"`` or ``"rw"``."""
    if not path.exists():
        raise AuditLogError(path, "no such audit log (refusing to start a fresh one silently)")
    if not path.is_file():
        raise AuditLogError(path, "not a regular file")
    _check_file_size(path)
    try:
        connection = sqlite3.connect(
            _file_uri(path, mode),
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
    except sqlite3.Error as error:
        raise AuditLogError(path, f"cannot open as SQLite: {error}") from None
    return connection


def _check_format(connection: sqlite3.Connection, path: Path) -> None:
    """Refuse anything but a ztfl audit log of a version this code reads."""
    try:
        tables = {
            name
            for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if "audit_format" not in tables or "audit_records" not in tables:
            raise AuditLogError(path, "not a ztfl audit log (no audit_format/audit_records table)")
        rows = connection.execute("SELECT name, version FROM audit_format").fetchall()
    except sqlite3.DatabaseError as error:
        raise AuditLogError(path, f"unreadable or not a database: {error}") from None
    if len(rows) != 1 or rows[0][0] != AUDIT_FORMAT_NAME:
        raise AuditLogError(path, "not a ztfl audit log (audit_format does not name ztfl-audit)")
    if rows[0][1] != AUDIT_FORMAT_VERSION:
        raise AuditLogError(
            path,
            f"audit log format version {rows[0][1]!r}; this ztfl reads {AUDIT_FORMAT_VERSION}",
        )


def _tail_head(connection: sqlite3.Connection, path: Path) -> AuditHead:
    """The last record's head, after checking its hash and its link to the one before."""
    try:
        rows = connection.execute(
            f"SELECT {_RECORD_COLUMNS} FROM audit_records ORDER BY seq DESC LIMIT 2"  # noqa: S608
        ).fetchall()
    except sqlite3.DatabaseError as error:
        raise AuditLogError(path, f"cannot read the last records: {error}") from None
    if not rows:
        return GENESIS_HEAD
    try:
        records = [_decode_row(row) for row in rows]
    except _MalformedRowError as error:
        raise AuditLogError(
            path, f"record {error.seq} is malformed ({error.problem}); run `ztfl audit verify`"
        ) from None
    last = records[0]
    problem = ""
    if last.compute_hash() != last.hash:
        problem = "its stored hash does not match its fields"
    elif len(records) == 1:
        if last.seq != 1:
            problem = "the records before it are missing"
        elif last.prev_hash != GENESIS_HASH:
            problem = "it does not start the chain (prev_hash is not the genesis hash)"
    elif records[1].seq != last.seq - 1:
        problem = f"the record before it is {records[1].seq}, not {last.seq - 1}"
    elif last.prev_hash != records[1].hash:
        problem = "it does not link to the record before it"
    if problem:
        raise AuditLogError(
            path,
            f"the last record ({last.seq}) is inconsistent: {problem}; run `ztfl audit verify`",
        )
    return last.head


# ---------------------------------------------------------------- the log


class AuditLog:
    """An open audit log. Use ``AuditLog.open``; safe to share between threads.

    Each ``append``/``append_many`` is one SQLite transaction in WAL mode with
    ``synchronous=FULL``: once it returns, the records survive a killed process
    (and a power cut, as far as the disk honours fsync). Several processes may
    append to one log; each transaction links to the tail it finds.
    """

    def __init__(
        self,
        path: Path,
        connection: sqlite3.Connection,
        head: AuditHead,
        clock: Callable[[], datetime],
    ) -> None:
        """Internal: use ``AuditLog.open``."""
        self._path = path
        self._connection: sqlite3.Connection | None = connection
        self._head = head
        self._clock = clock
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        create: bool,
        clock: Callable[[], datetime] = _utc_now,
    ) -> AuditLog:
        """Open the log at ``path``.

        Args:
            path: the SQLite file.
            create: ``True`` creates a new, empty log and refuses if the file exists;
                ``False`` opens an existing log and refuses if it is missing. A lost or
                corrupted log is never replaced by a fresh one behind anyone's back.
            clock: source of record times (timezone-aware); for tests.

        Raises:
            AuditLogError: naming the file, when it is missing (``create=False``), exists
                (``create=True``), is not a ztfl audit log, is corrupted or truncated, lacks
                its append-only triggers, or its last record's hash or link is inconsistent.
        """
        file = Path(path)
        if create:
            cls._create_file(file)
        connection = _connect(file, "rw")
        try:
            _check_format(connection, file)
            cls._check_triggers(connection, file)
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise AuditLogError(file, f"cannot switch to WAL journaling (got {mode!r})")
            connection.execute("PRAGMA synchronous = FULL")
            head = _tail_head(connection, file)
        except AuditLogError:
            connection.close()
            raise
        except sqlite3.DatabaseError as error:
            connection.close()
            raise AuditLogError(file, f"unreadable: {error}") from None
        return cls(file, connection, head, clock)

    @staticmethod
    def _create_file(path: Path) -> None:
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            raise AuditLogError(
                path, "already exists; open it with create=False instead of starting a new log"
            ) from None
        except OSError as error:
            raise AuditLogError(path, f"cannot create: {error.strerror or error}") from None
        os.close(descriptor)
        # An empty file is a valid empty SQLite database, so _connect's header check
        # is skipped for this one connection that lays down the schema.
        connection = sqlite3.connect(str(path), isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                connection.execute(statement)
            connection.execute(
                "INSERT INTO audit_format (name, version, created) VALUES (?, ?, ?)",
                (AUDIT_FORMAT_NAME, AUDIT_FORMAT_VERSION, _format_time(_utc_now())),
            )
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            raise AuditLogError(path, f"cannot create the audit log: {error}") from None
        finally:
            connection.close()

    @staticmethod
    def _check_triggers(connection: sqlite3.Connection, path: Path) -> None:
        present = {
            name
            for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'"
            )
        }
        missing = sorted(_TRIGGERS - present)
        if missing:
            raise AuditLogError(
                path,
                f"append-only triggers missing ({', '.join(missing)}): the file was altered "
                "outside ztfl; run `ztfl audit verify`",
            )

    @property
    def path(self) -> Path:
        """The log's file."""
        return self._path

    @property
    def head(self) -> AuditHead:
        """The head after this process's last append (or at open): ``str()`` it into manifests."""
        return self._head

    def append(
        self,
        kind: AuditEventKind,
        *,
        run_id: str,
        round: int | None = None,
        node_id: int | None = None,
        reason: str | Enum | None = None,
        details: Mapping[str, object] | None = None,
    ) -> AuditRecord:
        """Append one event in its own durable transaction and return its record.

        Raises ``ValueError``/``TypeError`` for an invalid event (see ``AuditEvent``) and
        ``AuditLogError`` when the file cannot be written.
        """
        event = AuditEvent(kind, run_id, round, node_id, _reason_text(reason), details or {})
        return self.append_many((event,))[0]

    def append_many(self, events: Iterable[AuditEvent]) -> list[AuditRecord]:
        """Append events in order in one durable transaction (all or none); return their records."""
        batch = list(events)
        for event in batch:
            if not isinstance(event, AuditEvent):
                raise TypeError(f"append_many takes AuditEvent objects, got {type(event).__name__}")
        if not batch:
            return []
        with self._lock:
            connection = self._require_open()
            try:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    records = self._insert(connection, batch)
                    connection.execute("COMMIT")
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
            except sqlite3.Error as error:
                raise AuditLogError(self._path, f"cannot append: {error}") from None
            self._head = records[-1].head
            return records

    def _insert(self, connection: sqlite3.Connection, batch: list[AuditEvent]) -> list[AuditRecord]:
        # Link to the tail in the file, not the cached head: another process may have appended.
        row = connection.execute(
            "SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        seq, prev_hash = (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))
        time = _format_time(self._clock())
        records: list[AuditRecord] = []
        rows: list[tuple[object, ...]] = []
        for event in batch:
            seq += 1
            details = cast("dict[str, JsonValue]", event.details)
            fields = _hashed_fields(
                seq,
                time,
                event.kind.value,
                event.run_id,
                event.round,
                event.node_id,
                event.reason,
                details,
                prev_hash,
            )
            hash_ = _digest(fields)
            records.append(
                AuditRecord(
                    seq,
                    time,
                    event.kind,
                    event.run_id,
                    event.round,
                    event.node_id,
                    event.reason,
                    details,
                    prev_hash,
                    hash_,
                )
            )
            rows.append(
                (
                    seq,
                    time,
                    event.kind.value,
                    event.run_id,
                    event.round,
                    None if event.node_id is None else str(event.node_id),
                    event.reason,
                    canonical_json(details),
                    prev_hash,
                    hash_,
                )
            )
            prev_hash = hash_
        connection.executemany(
            f"INSERT INTO audit_records ({_RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
            rows,
        )
        return records

    def records(self, start: int = 1) -> Iterator[AuditRecord]:
        """Iterate over the records from seq ``start`` on, streaming, on its own connection.

        Raises ``AuditLogError`` on a record that does not decode (run ``verify_audit_log``).
        """
        self._require_open()
        return _iter_records(self._path, start)

    def close(self) -> None:
        """Checkpoint the WAL into the main file (so the file alone is the whole log) and close."""
        with self._lock:
            if self._connection is None:
                return
            with contextlib.suppress(sqlite3.Error):
                self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._connection.close()
            self._connection = None

    def _require_open(self) -> sqlite3.Connection:
        if self._connection is None:
            raise AuditLogError(self._path, "the audit log is closed")
        return self._connection

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _open_reader(path: Path) -> sqlite3.Connection:
    connection = _connect(path, "ro")
    try:
        _check_format(connection, path)
    except AuditLogError:
        connection.close()
        raise
    return connection


def _rows(connection: sqlite3.Connection, path: Path, start: int) -> Iterator[tuple[Any, ...]]:
    """Stream raw rows in seq order; a storage-level error becomes ``AuditLogError``."""
    try:
        cursor = connection.execute(
            f"SELECT {_RECORD_COLUMNS} FROM audit_records WHERE seq >= ? ORDER BY seq",  # noqa: S608
            (start,),
        )
        while True:
            batch = cursor.fetchmany(1024)
            if not batch:
                return
            yield from batch
    except sqlite3.DatabaseError as error:
        raise AuditLogError(path, f"unreadable records (corrupted or truncated): {error}") from None


def _iter_records(path: Path, start: int) -> Iterator[AuditRecord]:
    connection = _open_reader(path)
    try:
        for row in _rows(connection, path, start):
            try:
                yield _decode_row(row)
            except _MalformedRowError as error:
                raise AuditLogError(
                    path,
                    f"record {error.seq} is malformed ({error.problem}); run `ztfl audit verify`",
                ) from None
    finally:
        connection.close()


# ---------------------------------------------------------------- verification and export


@dataclass(frozen=True)
class AuditVerification:
    """The verdict on one log: ``ok`` or the first bad record and why.

    ``records`` counts the records that verified before the first failure (all of them
    when ``ok``); ``head`` is the last verified record's head; ``anchors_checked`` how many
    anchors matched.
    """

    path: Path
    ok: bool
    records: int
    head: AuditHead
    anchors_checked: int
    first_bad_seq: int | None = None
    failure: AuditFailure | None = None
    detail: str = ""


def verify_audit_log(
    path: str | os.PathLike[str], anchors: Sequence[AuditHead] = ()
) -> AuditVerification:
    """Check the whole chain and every anchor; stream records, so memory stays bounded.

    Args:
        path: the log file (opened read-only).
        anchors: heads recorded elsewhere (signed manifests, an off-host copy). Each
            must still be in the log with the same hash; one beyond the log's end
            means the log was truncated.

    Returns:
        ``AuditVerification``: ``ok``, or the first bad seq and an ``AuditFailure``.
        Without anchors, a consistent re-write of the chain or a truncation cannot be
        detected (docs/audit.md).

    Raises:
        AuditLogError: naming the file, when it is missing, not a ztfl audit log, or
            unreadable at the storage level (corrupted or truncated pages).
    """
    file = Path(path)
    pending = sorted(set(anchors), key=lambda anchor: (anchor.seq, anchor.hash))
    checked = 0
    head = GENESIS_HEAD

    def failed(seq: int, failure: AuditFailure, detail: str) -> AuditVerification:
        return AuditVerification(file, False, head.seq, head, checked, seq, failure, detail)

    while pending and pending[0].seq == 0:
        # Seq 0 is the empty chain; only the genesis hash can anchor it (AuditHead checks).
        pending.pop(0)
        checked += 1
    connection = _open_reader(file)
    try:
        expected = 1
        # From the smallest possible seq: a row numbered below 1 must be seen, not skipped.
        for row in _rows(connection, file, -(2**63)):
            seq = row[0]
            if not isinstance(seq, int) or seq != expected:
                bad = seq if isinstance(seq, int) and seq < expected else expected
                return failed(
                    bad,
                    AuditFailure.SEQUENCE_GAP,
                    f"expected record {expected}, found {seq!r}: records deleted or renumbered",
                )
            try:
                record = _decode_row(row)
            except _MalformedRowError as error:
                return failed(seq, AuditFailure.MALFORMED_RECORD, error.problem)
            if record.compute_hash() != record.hash:
                return failed(
                    seq,
                    AuditFailure.HASH_MISMATCH,
                    f"record {seq}'s stored hash is not the hash of its fields: it was edited",
                )
            if record.prev_hash != head.hash:
                return failed(
                    seq,
                    AuditFailure.BROKEN_LINK,
                    f"record {seq} does not link to record {seq - 1}: a record was edited and "
                    "re-hashed, removed, moved or inserted at or before this point",
                )
            while pending and pending[0].seq == seq:
                anchor = pending.pop(0)
                if anchor.hash != record.hash:
                    return failed(
                        seq,
                        AuditFailure.ANCHOR_MISMATCH,
                        f"anchor {anchor} does not match record {seq} (hash {record.hash}): "
                        "the chain up to it was rewritten",
                    )
                checked += 1
            head = record.head
            expected += 1
    finally:
        connection.close()
    if pending:
        return failed(
            head.seq + 1,
            AuditFailure.ANCHOR_MISSING,
            f"anchor {pending[0]} is beyond the log's last record ({head.seq}): records "
            f"{head.seq + 1}..{pending[-1].seq} at least were removed (truncation)",
        )
    return AuditVerification(file, True, head.seq, head, checked)


def export_jsonl(path: str | os.PathLike[str], out: IO[str]) -> int:
    """Write every record as one canonical JSON object per line (with ``hash``); return the count.

    Streams the log read-only. Records are exported as stored, not verified: a SIEM
    can recompute every hash from the lines (docs/audit.md). Raises ``AuditLogError``
    for an unreadable file or a record that does not decode.
    """
    count = 0
    for record in _iter_records(Path(path), 1):
        out.write(canonical_json(record.to_json()))
        out.write("\n")
        count += 1
    return count
