"""Sigstore bundles carrying a DSSE envelope with an in-toto v1 statement, local key, offline.

This is the signature file OpenSSF model-signing 1.x writes when signing with an
elliptic-curve key (``model.sig``): a Sigstore bundle (media type v0.3) whose
verification material is a public-key hint, no transparency-log entries, and a
DSSE envelope (payload type ``application/vnd.in-toto+json``) signed with ECDSA
over the DSSE pre-authentication encoding. ztfl writes and reads the same
structure with ``cryptography`` alone, for model manifests and for its own
trust statements (key rotation, revocation lists). Nothing here imports
model_signing.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .encoding import parse_json_object
from .keys import SigningKey, VerifyingKey
from .refusal import ModelRefusal, ModelRefusalReason

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "IN_TOTO_PAYLOAD_TYPE",
    "IN_TOTO_STATEMENT_TYPE",
    "Envelope",
    "pre_authentication_encoding",
    "read_bundle",
    "write_bundle",
]

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
IN_TOTO_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
MAX_BUNDLE_BYTES = 32 << 20
MAX_SIGNATURES = 8

_MALFORMED = ModelRefusalReason.MALFORMED_MANIFEST


def pre_authentication_encoding(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 PAE: what the signature is computed over (DSSE protocol, v1.0.0)."""
    encoded_type = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(encoded_type), encoded_type, len(payload), payload)


def _b64decode(value: object, field: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"{field}: not valid base64") from error


@dataclass(frozen=True)
class Envelope:
    """A parsed, not yet verified, bundle: DSSE payload, its type, signatures, key hint."""

    payload: bytes
    payload_type: str
    signatures: tuple[tuple[bytes, str], ...]  # (DER signature, keyid)
    key_hint: str

    def verify(self, keys: Sequence[VerifyingKey]) -> VerifyingKey:
        """The trusted key that signed the payload; ModelRefusal otherwise.

        A signature is checked against the keys its ``keyid`` or the bundle's
        model-signing key hint name (both unauthenticated labels); a signature
        without either label is tried against every trusted key.
        """
        pae = pre_authentication_encoding(self.payload_type, self.payload)
        named_a_trusted_key = False
        for signature, keyid in self.signatures:
            candidates = [
                key
                for key in keys
                if (keyid and key.key_id == keyid)
                or (not keyid and self.key_hint and key.model_signing_hint == self.key_hint)
                or (not keyid and not self.key_hint)
            ]
            named_a_trusted_key = named_a_trusted_key or bool(candidates)
            for key in candidates:
                if key.verify(signature, pae):
                    return key
        if not named_a_trusted_key:
            labels = [keyid[:16] for _, keyid in self.signatures if keyid] or (
                [f"hint {self.key_hint[:16]}"] if self.key_hint else ["no key id"]
            )
            raise ModelRefusal(
                ModelRefusalReason.UNKNOWN_KEY,
                f"signed by a key that is not trusted ({', '.join(labels)}…)",
            )
        raise ModelRefusal(ModelRefusalReason.BAD_SIGNATURE, "the DSSE signature does not verify")

    def statement(self) -> dict[str, Any]:
        """The in-toto v1 statement in the payload (not verified by itself: call verify)."""
        if self.payload_type != IN_TOTO_PAYLOAD_TYPE:
            raise ModelRefusal(
                _MALFORMED, f"payload type {self.payload_type[:60]!r} is not in-toto"
            )
        try:
            statement = parse_json_object(self.payload, "in-toto statement")
        except ValueError as error:
            raise ModelRefusal(_MALFORMED, str(error)) from error
        if statement.get("_type") != IN_TOTO_STATEMENT_TYPE:
            raise ModelRefusal(_MALFORMED, f"statement _type is not {IN_TOTO_STATEMENT_TYPE}")
        return statement


def read_bundle(data: bytes) -> Envelope:
    """Parse a Sigstore bundle with a DSSE envelope; bad format → MALFORMED_MANIFEST."""
    try:
        if not isinstance(data, bytes | bytearray):
            raise TypeError(f"expected bytes, got {type(data).__name__}")
        if len(data) > MAX_BUNDLE_BYTES:
            raise ValueError(f"{len(data)} bytes, more than {MAX_BUNDLE_BYTES}")
        bundle = parse_json_object(bytes(data), "signature bundle")
        if bundle.get("mediaType") != BUNDLE_MEDIA_TYPE:
            raise ValueError(f"media type is not {BUNDLE_MEDIA_TYPE}")
        material = bundle.get("verificationMaterial")
        hint = ""
        if isinstance(material, dict) and isinstance(material.get("publicKey"), dict):
            raw_hint = material["publicKey"].get("hint")
            hint = raw_hint if isinstance(raw_hint, str) else ""
        envelope = bundle.get("dsseEnvelope")
        if not isinstance(envelope, dict):
            raise ValueError("no DSSE envelope (ztfl signs offline with a local key)")
        payload_type = envelope.get("payloadType")
        if not isinstance(payload_type, str):
            raise ValueError("DSSE payloadType missing")
        payload = _b64decode(envelope.get("payload"), "DSSE payload")
        raw_signatures = envelope.get("signatures")
        if not isinstance(raw_signatures, list) or not 1 <= len(raw_signatures) <= MAX_SIGNATURES:
            raise ValueError(f"DSSE envelope needs 1 to {MAX_SIGNATURES} signatures")
        signatures = []
        for item in raw_signatures:
            if not isinstance(item, dict):
                raise ValueError("DSSE signature entries must be objects")
            keyid = item.get("keyid", "")
            if not isinstance(keyid, str):
                raise ValueError("DSSE keyid must be a string")
            signatures.append((_b64decode(item.get("sig"), "DSSE signature"), keyid))
    except (ValueError, TypeError) as error:
        raise ModelRefusal(_MALFORMED, f"signature bundle: {error}") from error
    return Envelope(payload, payload_type, tuple(signatures), hint)


def write_bundle(statement: dict[str, Any], key: SigningKey) -> bytes:
    """Sign an in-toto statement into a bundle byte-compatible with model-signing's reader."""
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode("utf-8")
    signature = key.sign(pre_authentication_encoding(IN_TOTO_PAYLOAD_TYPE, payload))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": key.public_key().model_signing_hint},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode("ascii"),
            "payloadType": IN_TOTO_PAYLOAD_TYPE,
            "signatures": [
                {"sig": base64.b64encode(signature).decode("ascii"), "keyid": key.key_id}
            ],
        },
    }
    return json.dumps(bundle, separators=(",", ":")).encode("utf-8")
