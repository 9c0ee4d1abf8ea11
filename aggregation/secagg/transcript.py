"""Domain-separated byte strings: what is signed, what an AEAD binds, what HKDF derives from.

Every signed or derived value starts with the protocol label and a purpose, then the group's
fingerprint (which covers run id, round, group id, roster, threshold and quantization), then the
member ids involved. Fields are type-tagged and length-prefixed, so no two different field
lists encode to the same bytes.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PROTOCOL_LABEL = "ztfl/secagg+/v1"

Field = str | bytes | int


def encode_fields(*fields: Field | tuple[str, ...]) -> bytes:
    """An unambiguous encoding of ``fields`` (a tuple of strings is one list field)."""
    parts = []
    for field in fields:
        if isinstance(field, tuple):
            parts.append(b"l" + len(field).to_bytes(4, "big"))
            parts.extend(_encode_one(item) for item in field)
        else:
            parts.append(_encode_one(field))
    return b"".join(parts)


def labelled(purpose: str, *fields: Field | tuple[str, ...]) -> bytes:
    """The protocol label, ``purpose`` and ``fields``, encoded."""
    return encode_fields(PROTOCOL_LABEL, purpose, *fields)


def derive_key(secret: bytes, purpose: str, *fields: Field | tuple[str, ...]) -> bytes:
    """A 256-bit key from ``secret`` by HKDF-SHA256, bound to ``purpose`` and ``fields``."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=labelled(purpose, *fields)
    ).derive(secret)


def _encode_one(field: Field) -> bytes:
    if isinstance(field, bool):
        raise TypeError("booleans are not transcript fields")
    if isinstance(field, int):
        data, tag = str(field).encode("ascii"), b"i"
    elif isinstance(field, str):
        data, tag = field.encode("utf-8"), b"s"
    elif isinstance(field, bytes):
        data, tag = field, b"b"
    else:
        raise TypeError(f"unsupported transcript field {type(field).__name__}")
    return tag + len(data).to_bytes(4, "big") + data
