"""Encodings shared by the signing modules: canonical JSON, timestamps, digests, bounds.

Everything that is hashed or signed goes through :func:`canonical_json`, so one
value has exactly one byte representation; everything read back from
untrusted bytes goes through the ``require_*`` checks, which raise
``ValueError`` or ``TypeError`` with a message naming the field.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# No federated run has a billion rounds; the bound keeps every round exact in
# JSON readers that use doubles and refuses absurd values early.
MAX_ROUND = 10**9
MAX_TEXT_LENGTH = 4096


def canonical_json(value: object) -> bytes:
    """The one byte encoding of a JSON value: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse ``data`` as a JSON object, refusing other types, duplicate keys and NaN."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{what}: expected bytes, got {type(data).__name__}")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise ValueError(f"{what}: duplicate key {key!r}")
            result[key] = value
        return result

    def no_constants(name: str) -> object:
        raise ValueError(f"{what}: {name} is not JSON")

    try:
        value = json.loads(
            bytes(data).decode("utf-8"),
            object_pairs_hook=no_duplicates,
            parse_constant=no_constants,
        )
    except UnicodeDecodeError as error:
        raise ValueError(f"{what}: not UTF-8 ({error.reason})") from error
    except RecursionError as error:
        raise ValueError(f"{what}: nested too deeply") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{what}: not JSON ({error.msg} at offset {error.pos})") from error
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def format_timestamp(moment: datetime) -> str:
    """UTC with microseconds and a ``Z``, e.g. ``2026-11-25T22:05:38.000000Z``."""
    return require_aware(moment, "timestamp").astimezone(UTC).strftime(_TIMESTAMP_FORMAT)


def parse_timestamp(text: object, field: str) -> datetime:
    """Parse the exact format written by :func:`format_timestamp`."""
    if not isinstance(text, str):
        raise TypeError(f"{field}: expected a timestamp string, got {type(text).__name__}")
    try:
        return datetime.strptime(text, _TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError as error:
        raise ValueError(
            f"{field}: {text[:40]!r} is not a UTC timestamp like '2026-01-31T12:00:00.000000Z'"
        ) from error


def require_aware(moment: object, field: str) -> datetime:
    """A timezone-aware datetime (naive times are ambiguous across machines)."""
    if not isinstance(moment, datetime):
        raise TypeError(f"{field}: expected a datetime, got {type(moment).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{field}: datetime must be timezone-aware (use UTC)")
    return moment


def require_digest(value: object, field: str) -> str:
    """A lower-case hex SHA-256 digest (64 characters)."""
    if not isinstance(value, str):
        raise TypeError(f"{field}: expected a hex SHA-256 string, got {type(value).__name__}")
    if not _HEX_DIGEST.fullmatch(value):
        raise ValueError(f"{field}: {value[:80]!r} is not a lower-case hex SHA-256 digest")
    return value


def require_round(value: object, field: str = "round") -> int:
    """A round number: an integer in [0, MAX_ROUND] (booleans refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field}: expected an integer, got {type(value).__name__}")
    if not 0 <= value <= MAX_ROUND:
        raise ValueError(f"{field}: {value} is outside [0, {MAX_ROUND}]")
    return value


def require_text(value: object, field: str, *, allow_empty: bool = False) -> str:
    """A string without control characters, at most MAX_TEXT_LENGTH long."""
    if not isinstance(value, str):
        raise TypeError(f"{field}: expected a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise ValueError(f"{field}: must not be empty")
    if len(value) > MAX_TEXT_LENGTH:
        raise ValueError(f"{field}: longer than {MAX_TEXT_LENGTH} characters")
    if any(ord(character) < 0x20 or ord(character) == 0x7F for character in value):
        raise ValueError(f"{field}: contains control characters")
    return value


def require_json_value(value: object, field: str, depth: int = 0) -> object:
    """A plain JSON value (str, int, finite float, bool, None, list, str-keyed dict)."""
    if depth > 16:
        raise ValueError(f"{field}: nested too deeply")
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{field}: {value} is not a finite number")
        return value
    if isinstance(value, list | tuple):
        return [require_json_value(item, f"{field}[]", depth + 1) for item in value]
    if isinstance(value, Mapping):
        result: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{field}: keys must be strings, got {type(key).__name__}")
            result[key] = require_json_value(item, f"{field}.{key}", depth + 1)
        return result
    raise TypeError(f"{field}: {type(value).__name__} is not a JSON value")


def require_keys(obj: Mapping[str, object], expected: set[str], what: str) -> None:
    """Exactly the expected keys: missing or unknown fields are format errors."""
    missing = expected - obj.keys()
    unknown = obj.keys() - expected
    if missing:
        raise ValueError(f"{what}: missing field(s) {', '.join(sorted(missing))}")
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {', '.join(sorted(unknown)[:5])}")
