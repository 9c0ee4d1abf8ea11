"""A provisioned federation, a running gateway in front of a recording upstream, and clients.

The federation is made by the PKI's own ``provision_federation`` (the CLI's steps), back-
dated three days so that a client certificate can be issued already expired. The gateway
runs on an event loop in a thread, as in its own process; the tests talk to it with
blocking TLS sockets that present a member's certificate and Flower's node-key header.
"""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.trust.transport.relay_test_servers import HttpClient, LoopThread, RawResponse, Upstream
from ztfl.server.gateway import Gateway, GatewayConfig
from ztfl.server.gateway.refusal_audit import RefusalCounter
from ztfl.trust.audit import AuditLog, AuditRecord
from ztfl.trust.pki import Identity, Role
from ztfl.trust.pki.keyfiles import read_private_key
from ztfl.trust.pki.layout import ClientLayout
from ztfl.trust.pki.provisioning import FederationPaths, enrol_member, provision_federation

FEDERATION = "gatewaytest"
THREE_DAYS_AGO = datetime.now(UTC) - timedelta(days=3)


@dataclass(frozen=True)
class ProvisionedFederation:
    paths: FederationPaths
    foreign: FederationPaths
    """Another CA that issued a client certificate with the same federation name."""
    expired: ClientLayout


def provision_test_federation(root: Path) -> ProvisionedFederation:
    paths = provision_federation(
        root / "federation",
        FEDERATION,
        clients=["alice", "bob", "revokee", "flooder"],
        operators=["ops"],
        now=THREE_DAYS_AGO,
    )
    foreign = provision_federation(root / "foreign", FEDERATION, clients=["alice"])
    expired = enrol_member(
        paths.authority.root,
        root / "expired",
        Identity(FEDERATION, Role.CLIENT, "expired"),
        days=1,
        require_client_anchors=False,
        now=THREE_DAYS_AGO,
    )
    return ProvisionedFederation(paths, foreign, expired)


def node_key_header(member: ClientLayout) -> str:
    """``flwr-public-key`` as Flower's SuperNode sends it: base64 of the PEM public key."""
    public_key = read_private_key(member.key).public_key()
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(pem).decode("ascii")


def member_context(member: ClientLayout | None, ca: Path) -> ssl.SSLContext:
    """A client TLS context verifying the gateway with ``ca``, presenting ``member``'s cert."""
    context = ssl.create_default_context(cafile=str(ca))
    if member is not None:
        context.load_cert_chain(str(member.certificate), str(member.key))
    return context


def fleet_call(
    client: HttpClient,
    member: ClientLayout,
    target: str = "/v1/fleet/pull-messages",
    **options: object,
) -> RawResponse:
    """A Fleet request carrying ``member``'s node key."""
    headers = [("flwr-public-key", node_key_header(member))]
    return client.request(target, body_bytes=16, headers=headers, **options)  # type: ignore[arg-type]


@dataclass
class RunningGateway:
    gateway: Gateway
    config: GatewayConfig
    federation: ProvisionedFederation

    @property
    def port(self) -> int:
        return self.gateway.port

    def connect(self, member: ClientLayout | None) -> HttpClient:
        return HttpClient(self.port, member_context(member, self.federation.paths.ca_certificate))

    def audit_records(self) -> list[AuditRecord]:
        log = AuditLog.open(self.config.audit_log, create=False)
        try:
            return list(log.records())
        finally:
            log.close()

    def wait_for_audit(
        self, matches: Callable[[AuditRecord], bool], timeout_s: float = 5.0
    ) -> AuditRecord:
        deadline = time.monotonic() + timeout_s
        while True:
            found = [record for record in self.audit_records() if matches(record)]
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                pytest.fail("no matching audit record")
            time.sleep(0.05)


def start_gateway(
    loop_thread: LoopThread,
    federation: ProvisionedFederation,
    upstream: Upstream,
    audit_log: Path,
    *,
    on_refusal: RefusalCounter | None = None,
    **overrides: object,
) -> Iterator[RunningGateway]:
    paths = federation.paths
    settings: dict[str, object] = {
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "server_certificate": paths.gateway.certificate,
        "server_key": paths.gateway.key,
        "federation_ca": paths.ca_certificate,
        "crl": paths.crl,
        "upstream_url": f"http://127.0.0.1:{upstream.port}",
        "audit_log": audit_log,
        "health_port": 0,
        **overrides,
    }
    config = GatewayConfig(**settings)  # type: ignore[arg-type]
    gateway = Gateway(config, on_refusal=on_refusal)
    loop_thread.run(gateway.start())
    try:
        yield RunningGateway(gateway, config, federation)
    finally:
        loop_thread.run(gateway.stop())
