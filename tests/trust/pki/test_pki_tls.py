"""The issued material works in real TLS on loopback: the SuperNode → sidecar hop, and mTLS
between a client and the gateway with the verification API deciding who the peer is."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from ztfl.trust.pki import FederationTrust, Role, create_enrolment_request, verify_certificate
from ztfl.trust.pki.provisioning import FederationPaths


def _serve_once(context: ssl.SSLContext) -> tuple[int, Callable[[], bytes | None]]:
    """Accept one TLS connection on 127.0.0.1; return the port and a getter for the peer's
    DER certificate (None when the handshake failed)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    result: list[bytes | None] = [None]

    def accept() -> None:
        with listener:
            connection, _ = listener.accept()
            try:
                with context.wrap_socket(connection, server_side=True) as tls:
                    result[0] = tls.getpeercert(binary_form=True)
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                result[0] = None

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()

    def peer() -> bytes | None:
        thread.join(timeout=10)
        return result[0]

    return port, peer


@pytest.mark.parametrize("server_name", ["localhost", "127.0.0.1"])
def test_loopback_tls_material_serves_the_supernode_hop(tmp_path: Path, server_name: str) -> None:
    local = create_enrolment_request(tmp_path / "alice", "hospitals", "alice").local
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(local.server_certificate, local.server_key)
    port, _ = _serve_once(server)
    client = ssl.create_default_context(cafile=str(local.ca_certificate))
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        client.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        assert tls.recv(2) == b"ok"


def test_mutual_tls_with_federation_certificates_identifies_the_client(
    federation: FederationPaths, trust: FederationTrust
) -> None:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(federation.gateway.certificate, federation.gateway.key)
    server.load_verify_locations(cafile=str(federation.ca_certificate))
    server.verify_mode = ssl.CERT_REQUIRED
    port, peer = _serve_once(server)
    alice = federation.clients["alice"]
    client = ssl.create_default_context(cafile=str(alice.ca_certificate))
    client.load_cert_chain(alice.certificate, alice.key)
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        client.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.recv(2) == b"ok"
    der = peer()
    assert der is not None
    identity = verify_certificate(
        x509.load_der_x509_certificate(der), trust, required_role=Role.CLIENT
    )
    assert identity.spiffe_id == "spiffe://hospitals/client/alice"
