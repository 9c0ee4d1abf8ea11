"""Signed revocation lists: the model digests a run's coordinator has withdrawn.

Each list is cumulative (it names every revoked model of the run) and carries a
sequence number that grows with each new list. A client remembers the newest
list it has seen (in its lineage state) and refuses an older one, so a mirror
cannot un-revoke a model by replaying an old list.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from .encoding import (
    format_timestamp,
    parse_timestamp,
    require_digest,
    require_keys,
    require_round,
    require_text,
)
from .keys import SigningKey, VerifyingKey
from .refusal import ModelRefusal, ModelRefusalReason
from .statements import open_statement, seal_statement, verify_statement

__all__ = ["REVOCATION_PREDICATE_TYPE", "RevocationList", "sign_revocation_list"]

REVOCATION_PREDICATE_TYPE = "https://ztfl/revocation-list/v1"
_SUBJECT = "ztfl-revocation-list"
_REASON = ModelRefusalReason.BAD_REVOCATION_LIST
MAX_REVOKED = 100_000


@dataclass(frozen=True)
class RevocationList:
    """Revoked model digests of one run, numbered by ``sequence``; verify with :meth:`verify`."""

    run_id: str
    sequence: int
    digests: frozenset[str]
    issued_at: datetime
    bundle: bytes

    def to_bytes(self) -> bytes:
        """The signed statement (a Sigstore bundle)."""
        return self.bundle

    @classmethod
    def from_bytes(cls, data: bytes) -> RevocationList:
        """Parse a signed list (not verified); format errors → ModelRefusal(BAD_REVOCATION_LIST)."""
        _, predicate = open_statement(data, REVOCATION_PREDICATE_TYPE, _SUBJECT, _REASON)
        try:
            require_keys(
                predicate, {"run_id", "sequence", "revoked", "issued_at"}, "revocation list"
            )
            revoked = predicate["revoked"]
            if not isinstance(revoked, list) or len(revoked) > MAX_REVOKED:
                raise ValueError(f"revoked must be a list of at most {MAX_REVOKED} digests")
            return cls(
                run_id=require_text(predicate["run_id"], "run_id"),
                sequence=require_round(predicate["sequence"], "sequence"),
                digests=frozenset(require_digest(item, "revoked digest") for item in revoked),
                issued_at=parse_timestamp(predicate["issued_at"], "issued_at"),
                bundle=bytes(data),
            )
        except (ValueError, TypeError) as error:
            raise ModelRefusal(_REASON, f"revocation list: {error}") from error

    def verify(self, keys: Sequence[VerifyingKey]) -> VerifyingKey:
        """The trusted key that signed this list; ModelRefusal(BAD_REVOCATION_LIST) otherwise."""
        envelope, _ = open_statement(self.bundle, REVOCATION_PREDICATE_TYPE, _SUBJECT, _REASON)
        return verify_statement(envelope, keys, _REASON)


def sign_revocation_list(
    run_id: str,
    sequence: int,
    digests: Iterable[str],
    key: SigningKey,
    now: datetime | None = None,
) -> RevocationList:
    """Sign the run's cumulative list of revoked model digests as list number ``sequence``."""
    revoked = sorted({require_digest(digest, "revoked digest") for digest in digests})
    predicate = {
        "run_id": require_text(run_id, "run_id"),
        "sequence": require_round(sequence, "sequence"),
        "revoked": revoked,
        "issued_at": format_timestamp(datetime.now(UTC) if now is None else now),
    }
    return RevocationList.from_bytes(
        seal_statement(REVOCATION_PREDICATE_TYPE, _SUBJECT, predicate, key)
    )
