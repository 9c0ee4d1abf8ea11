"""A client enrolled with an app-bundle allow-list, a gateway, and its sidecar, all running.

The chain is the deployed one: Flower's own Fleet HTTP client (with its node-auth
interceptor) → sidecar (loopback TLS, the client's local CA) → gateway (mutual TLS) → a
recording upstream that serves app bundles as the SuperLink's get-fab does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flwr.proto.fab_pb2 import Fab, GetFabRequest, GetFabResponse
from flwr.supernode.fleet_http_client import FleetHttpClient
from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

from tests.trust.transport.relay_test_servers import LoopThread, Upstream
from ztfl.client.sidecar import Sidecar, SidecarConfig, app_bundle_sha256
from ztfl.server.gateway import Gateway, GatewayConfig
from ztfl.trust.audit import AuditLog, AuditRecord
from ztfl.trust.pki import Identity, Role
from ztfl.trust.pki.keyfiles import read_private_key
from ztfl.trust.pki.layout import ClientLayout
from ztfl.trust.pki.provisioning import FederationPaths, enrol_member, provision_federation

FEDERATION = "sidecartest"
APPROVED_BUNDLE = b"PK\x03\x04 the approved app bundle"
APPROVED_SHA256 = app_bundle_sha256(APPROVED_BUNDLE)


@dataclass(frozen=True)
class EnrolledClient:
    federation: FederationPaths
    client: ClientLayout


def enrol_test_client(root: Path) -> EnrolledClient:
    federation = provision_federation(root / "federation", FEDERATION)
    client = enrol_member(
        federation.authority.root,
        root / "alice",
        Identity(FEDERATION, Role.CLIENT, "alice"),
        app_bundles=[APPROVED_SHA256],
        require_client_anchors=False,
    )
    return EnrolledClient(federation, client)


def get_fab_response(content: bytes, claimed_sha256: str | None = None) -> bytes:
    """A SuperLink get-fab response carrying ``content``, claiming its hash (or another)."""
    fab = Fab(hash_str=claimed_sha256 or app_bundle_sha256(content), content=content)
    serialized: bytes = GetFabResponse(fab=fab).SerializeToString()
    return serialized


@dataclass
class RunningSidecar:
    sidecar: Sidecar
    enrolled: EnrolledClient

    @property
    def port(self) -> int:
        return self.sidecar.port

    def flower_client(self) -> FleetHttpClient:
        """Flower's SuperNode Fleet client, as ``flower-supernode --root-certificates`` makes it."""
        key = read_private_key(self.enrolled.client.key)
        return FleetHttpClient.from_server_address(
            f"127.0.0.1:{self.port}",
            insecure=False,
            root_certificates=str(self.enrolled.client.local.ca_certificate),
            interceptors=[NodeAuthHttpInterceptor(key, key.public_key())],
        )

    def get_fab(self) -> GetFabResponse:
        with self.flower_client() as client:
            return client.GetFab(GetFabRequest(hash_str=APPROVED_SHA256, run_id=1))

    def audit_records(self) -> list[AuditRecord]:
        log = AuditLog.open(self.sidecar.config.audit_log, create=False)
        try:
            return list(log.records())
        finally:
            log.close()


def run_sidecar_chain(
    loop_thread: LoopThread, enrolled: EnrolledClient, upstream: Upstream, work: Path
) -> Iterator[RunningSidecar]:
    """Start a gateway in front of ``upstream`` and the client's sidecar in front of it."""
    gateway = Gateway(
        GatewayConfig(
            listen_host="127.0.0.1",
            listen_port=0,
            server_certificate=enrolled.federation.gateway.certificate,
            server_key=enrolled.federation.gateway.key,
            federation_ca=enrolled.federation.ca_certificate,
            crl=enrolled.federation.crl,
            upstream_url=f"http://127.0.0.1:{upstream.port}",
            audit_log=work / "gateway-audit.sqlite",
        )
    )
    loop_thread.run(gateway.start())
    config = SidecarConfig.from_client_dir(
        enrolled.client.root,
        "localhost",
        gateway.port,
        audit_log=work / "sidecar-audit.sqlite",
    )
    sidecar = Sidecar(config)
    loop_thread.run(sidecar.start())
    try:
        yield RunningSidecar(sidecar, enrolled)
    finally:
        loop_thread.run(sidecar.stop())
        loop_thread.run(gateway.stop())
