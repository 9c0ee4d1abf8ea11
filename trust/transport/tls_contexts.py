"""TLS contexts for the gateway and the sidecar, with the secure settings fixed in one place.

Both ends speak TLS 1.2 or newer (1.3 preferred by OpenSSL), HTTP/1.1 by ALPN, and refuse
renegotiation. A server context that is given a client CA requires a client certificate
chained to it; it also issues no session tickets, so every connection makes a full handshake
and a certificate revoked since a previous connection is never resumed. (The gateway checks
revocation on every request anyway; this only removes a second path to the same mistake.)
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["client_tls_context", "server_tls_context"]

_ALPN_PROTOCOLS = ["http/1.1"]


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(_ALPN_PROTOCOLS)


def server_tls_context(
    certificate_path: Path,
    key_path: Path,
    *,
    client_ca_path: Path | None = None,
) -> ssl.SSLContext:
    """A server context presenting ``certificate_path``; with ``client_ca_path``, mutual TLS.

    With ``client_ca_path`` the handshake fails unless the peer presents a certificate that
    chains to that CA and is within its validity period (role and revocation are the
    gateway's per-request checks).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    context.load_cert_chain(certfile=str(certificate_path), keyfile=str(key_path))
    if client_ca_path is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(client_ca_path))
        context.num_tickets = 0
        context.options |= ssl.OP_NO_TICKET
    return context


def client_tls_context(
    ca_path: Path,
    *,
    certificate_path: Path | None = None,
    key_path: Path | None = None,
) -> ssl.SSLContext:
    """A client context that verifies the server (chain to ``ca_path`` and its host name).

    With ``certificate_path`` and ``key_path`` it presents that client certificate.
    """
    if (certificate_path is None) != (key_path is None):
        raise ValueError("a client certificate needs both certificate_path and key_path")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    _harden(context)
    context.load_verify_locations(cafile=str(ca_path))
    if certificate_path is not None and key_path is not None:
        context.load_cert_chain(certfile=str(certificate_path), keyfile=str(key_path))
    return context
