"""Helpers shared by ztfl's own signed statements (key rotation, revocation lists)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .dsse import IN_TOTO_STATEMENT_TYPE, Envelope, read_bundle, write_bundle
from .encoding import canonical_json, require_digest, require_keys, sha256_hex
from .keys import SigningKey, VerifyingKey
from .refusal import ModelRefusal, ModelRefusalReason

__all__ = ["open_statement", "seal_statement", "verify_statement"]


def seal_statement(
    predicate_type: str, subject_name: str, predicate: Mapping[str, object], key: SigningKey
) -> bytes:
    """Sign ``predicate`` in an in-toto statement whose subject digest is the predicate's hash."""
    statement = {
        "_type": IN_TOTO_STATEMENT_TYPE,
        "subject": [
            {"name": subject_name, "digest": {"sha256": sha256_hex(canonical_json(predicate))}}
        ],
        "predicateType": predicate_type,
        "predicate": dict(predicate),
    }
    return write_bundle(statement, key)


def open_statement(
    data: bytes, predicate_type: str, subject_name: str, reason: ModelRefusalReason
) -> tuple[Envelope, dict[str, Any]]:
    """Parse, without verifying, a statement sealed by :func:`seal_statement`."""
    try:
        envelope = read_bundle(data)
        statement = envelope.statement()
        require_keys(statement, {"_type", "subject", "predicateType", "predicate"}, "statement")
        if statement["predicateType"] != predicate_type:
            raise ValueError(f"predicate type is not {predicate_type}")
        predicate = statement["predicate"]
        subjects = statement["subject"]
        if not isinstance(predicate, dict) or not isinstance(subjects, list) or len(subjects) != 1:
            raise ValueError("expected one subject and an object predicate")
        subject = subjects[0]
        if not isinstance(subject, dict) or subject.get("name") != subject_name:
            raise ValueError(f"subject is not {subject_name!r}")
        digest = subject.get("digest")
        if not isinstance(digest, dict):
            raise ValueError("subject has no digest")
        if require_digest(digest.get("sha256"), "subject sha256") != sha256_hex(
            canonical_json(predicate)
        ):
            raise ValueError("subject digest is not the predicate's hash")
    except ModelRefusal as refusal:
        raise ModelRefusal(reason, refusal.message) from refusal
    except (ValueError, TypeError) as error:
        raise ModelRefusal(reason, str(error)) from error
    return envelope, predicate


def verify_statement(
    envelope: Envelope, keys: Sequence[VerifyingKey], reason: ModelRefusalReason
) -> VerifyingKey:
    """The trusted key that signed ``envelope``; any failure is refused with ``reason``."""
    try:
        return envelope.verify(keys)
    except ModelRefusal as refusal:
        raise ModelRefusal(reason, f"{refusal.reason.name.lower()}: {refusal.message}") from refusal
