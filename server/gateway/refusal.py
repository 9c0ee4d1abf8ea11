"""Why the gateway refused a connection or a request: enums whose values are audit reasons.

Certificate checks refuse with the PKI's ``CertificateRefusalReason`` (the same values
whether the TLS handshake or the per-request check caught it) and path checks with the
transport's ``PathRefusal``; what only the gateway decides is here.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["HandshakeRefusalReason", "RequestRefusalReason"]


class HandshakeRefusalReason(StrEnum):
    """A TLS handshake that failed for a reason the PKI's enum does not name (NODE_REFUSED)."""

    NO_CLIENT_CERTIFICATE = "no_client_certificate"
    """The peer presented no certificate."""
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"
    """Any other failure: protocol version, cipher, a certificate OpenSSL would not accept."""


class RequestRefusalReason(StrEnum):
    """A request from an admitted client that the gateway did not forward (REQUEST_REFUSED)."""

    METHOD_NOT_ALLOWED = "method_not_allowed"
    """The Fleet API is POST only."""
    NODE_KEY_MISSING = "node_key_missing"
    """No (or more than one) ``flwr-public-key`` header: node authentication is required."""
    NODE_KEY_MALFORMED = "node_key_malformed"
    """The header is not base64 of a PEM EC public key."""
    NODE_KEY_MISMATCH = "node_key_mismatch"
    """The node key is not the client certificate's key: headers replayed over another TLS
    identity, or a SuperNode using a key other than its enrolled one."""
    RATE_LIMITED = "rate_limited"
    """The identity exceeded its request rate (audited in aggregate, see docs/gateway.md)."""
