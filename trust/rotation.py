"""Key rotation: a statement, signed by the old model-signing key, that names its successor.

A client that pins the old key accepts models signed by the new key once it
holds the rotation statement (the coordinator sends the chain of rotations with
each model). Rotation extends trust; it does not retire the old key — clients
stop trusting a key only when they re-pin (docs/signing.md). A rotation cannot
help after a compromise: whoever holds the stolen key can sign a rotation to a
key of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from .encoding import format_timestamp, parse_timestamp, require_digest, require_keys
from .keys import SigningKey, SigningKeyError, VerifyingKey
from .refusal import ModelRefusal, ModelRefusalReason
from .statements import open_statement, seal_statement, verify_statement

__all__ = ["ROTATION_PREDICATE_TYPE", "KeyRotation", "rotate_key", "trusted_keys"]

ROTATION_PREDICATE_TYPE = "https://ztfl/key-rotation/v1"
_SUBJECT = "ztfl-model-signing-key"
_REASON = ModelRefusalReason.BAD_ROTATION
MAX_ROTATIONS = 64


@dataclass(frozen=True)
class KeyRotation:
    """``previous_key_id`` hands trust over to ``new_key``; verified by :func:`trusted_keys`."""

    previous_key_id: str
    new_key: VerifyingKey
    issued_at: datetime
    bundle: bytes

    def to_bytes(self) -> bytes:
        """The signed statement (a Sigstore bundle)."""
        return self.bundle

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyRotation:
        """Parse a rotation statement; format errors → ModelRefusal(BAD_ROTATION)."""
        _, predicate = open_statement(data, ROTATION_PREDICATE_TYPE, _SUBJECT, _REASON)
        try:
            require_keys(predicate, {"previous_key_id", "new_public_key", "issued_at"}, "rotation")
            pem = predicate["new_public_key"]
            if not isinstance(pem, str):
                raise TypeError("new_public_key must be PEM text")
            return cls(
                previous_key_id=require_digest(predicate["previous_key_id"], "previous_key_id"),
                new_key=VerifyingKey.from_pem(pem.encode("ascii")),
                issued_at=parse_timestamp(predicate["issued_at"], "issued_at"),
                bundle=bytes(data),
            )
        except (ValueError, TypeError, UnicodeEncodeError) as error:
            raise ModelRefusal(_REASON, f"rotation statement: {error}") from error


def rotate_key(old: SigningKey, new: VerifyingKey, now: datetime | None = None) -> KeyRotation:
    """Sign, with ``old``, the statement that hands trust over to ``new``."""
    if new.key_id == old.key_id:
        raise SigningKeyError("a key cannot rotate to itself")
    issued_at = datetime.now(UTC) if now is None else now
    predicate = {
        "previous_key_id": old.key_id,
        "new_public_key": new.to_pem().decode("ascii"),
        "issued_at": format_timestamp(issued_at),
    }
    bundle = seal_statement(ROTATION_PREDICATE_TYPE, _SUBJECT, predicate, old)
    return KeyRotation.from_bytes(bundle)


def trusted_keys(
    anchors: Sequence[VerifyingKey], rotations: Sequence[KeyRotation] = ()
) -> tuple[VerifyingKey, ...]:
    """The pinned keys plus every key reached from them through valid rotation statements.

    Every rotation supplied must verify: one that is forged, or signed by a key
    no chain from the anchors reaches, is refused (BAD_ROTATION) rather than
    silently skipped, so a broken rotation chain is visible.
    """
    if len(rotations) > MAX_ROTATIONS:
        raise ModelRefusal(_REASON, f"more than {MAX_ROTATIONS} rotation statements")
    trusted = {key.key_id: key for key in anchors}
    pending = list(rotations)
    while pending:
        ready = [rotation for rotation in pending if rotation.previous_key_id in trusted]
        if not ready:
            raise ModelRefusal(
                _REASON,
                f"rotation to key {pending[0].new_key.key_id[:16]}… is signed by key "
                f"{pending[0].previous_key_id[:16]}…, which no pinned key reaches",
            )
        for rotation in ready:
            envelope, _ = open_statement(
                rotation.bundle, ROTATION_PREDICATE_TYPE, _SUBJECT, _REASON
            )
            signer = verify_statement(envelope, [trusted[rotation.previous_key_id]], _REASON)
            assert signer.key_id == rotation.previous_key_id
            trusted.setdefault(rotation.new_key.key_id, rotation.new_key)
            pending.remove(rotation)
    return tuple(trusted.values())
