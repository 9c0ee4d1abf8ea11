"""Binding Flower's node key to the TLS identity: the ``flwr-public-key`` header.

Flower's SuperNode sends ``flwr-public-key: base64(PEM SubjectPublicKeyInfo)`` on every
Fleet request and signs only a timestamp with it, so captured headers replay for minutes.
The gateway demands that this key be the client certificate's key: replayed headers are
then useless without the client's TLS private key.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ztfl.server.gateway.refusal import RequestRefusalReason

__all__ = ["NODE_KEY_HEADER", "check_node_key", "node_key_der"]

NODE_KEY_HEADER: Final = "flwr-public-key"
"""``flwr.supercore.constant.FLEET_HTTP_PUBLIC_KEY_HEADER`` in Flower 1.42."""
_MAX_HEADER_CHARACTERS: Final = 4096


def node_key_der(header_value: str) -> bytes | RequestRefusalReason:
    """The DER SubjectPublicKeyInfo the header carries, or NODE_KEY_MALFORMED.

    Flower encodes ``public_key_to_bytes`` (PEM SubjectPublicKeyInfo) in base64.
    """
    if len(header_value) > _MAX_HEADER_CHARACTERS:
        return RequestRefusalReason.NODE_KEY_MALFORMED
    try:
        pem = base64.b64decode(header_value.strip(), validate=True)
        key = serialization.load_pem_public_key(pem)
    except (binascii.Error, ValueError, TypeError):
        return RequestRefusalReason.NODE_KEY_MALFORMED
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return RequestRefusalReason.NODE_KEY_MALFORMED
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_node_key(
    header_values: list[str], certificate_key_der: bytes
) -> RequestRefusalReason | None:
    """``None`` when exactly one header carries the certificate's key; the refusal otherwise."""
    if len(header_values) != 1:
        return RequestRefusalReason.NODE_KEY_MISSING
    presented = node_key_der(header_values[0])
    if isinstance(presented, RequestRefusalReason):
        return presented
    if not hmac.compare_digest(presented, certificate_key_der):
        return RequestRefusalReason.NODE_KEY_MISMATCH
    return None
