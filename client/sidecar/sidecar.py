"""The client sidecar: the SuperNode's TLS endpoint on loopback, mutual TLS to the gateway.

Flower 1.42's SuperNode HTTP client cannot present a client certificate, so the SuperNode
connects to this sidecar instead of the coordinator (``--superlink 127.0.0.1:<port>
--root-certificates <client>/local/ca.pem``; TLS on loopback too, since Flower refuses
node authentication without TLS). The sidecar relays Fleet API requests to the gateway,
presenting the client certificate and verifying the gateway against the federation CA,
and refuses app bundles outside the enrolled allow-list (docs/decisions/0009).

``Sidecar(config)`` with ``await start()`` / ``await stop()``, or ``serve()`` until
SIGINT/SIGTERM (``python -m ztfl.client.sidecar``).
"""

from __future__ import annotations

import asyncio
import logging

from ztfl.client.sidecar.app_bundle_check import AppBundleCheck
from ztfl.client.sidecar.config import SidecarConfig
from ztfl.client.sidecar.sidecar_policy import SidecarPolicy
from ztfl.trust.audit import AuditLog
from ztfl.trust.transport import (
    HttpRelay,
    RelayServer,
    UpstreamTarget,
    client_tls_context,
    server_tls_context,
)
from ztfl.trust.transport.lifecycle import serve_until_signalled

__all__ = ["Sidecar", "run_sidecar"]

_log = logging.getLogger(__name__)


class Sidecar:
    """The client sidecar; see the module docstring."""

    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self._audit_log: AuditLog | None = None
        self._server: RelayServer | None = None

    @property
    def port(self) -> int:
        """The bound loopback port."""
        if self._server is None:
            raise RuntimeError("the sidecar is not started")
        return self._server.port

    async def start(self) -> None:
        """Load the TLS material, open the client audit log, and listen on loopback."""
        if self._server is not None:
            raise RuntimeError("the sidecar is already started")
        config = self.config
        local_tls = server_tls_context(config.local_certificate, config.local_key)
        gateway_tls = client_tls_context(
            config.federation_ca,
            certificate_path=config.client_certificate,
            key_path=config.client_key,
        )
        upstream = UpstreamTarget(
            config.gateway_host,
            config.gateway_port,
            tls=gateway_tls,
            server_hostname=config.gateway_server_name or config.gateway_host,
        )
        audit_log = await asyncio.to_thread(
            AuditLog.open, config.audit_log, create=not config.audit_log.exists()
        )
        check = AppBundleCheck(
            config.app_bundle_allow_list,
            audit_log,
            config.audit_run_id,
            config.max_app_bundle_bytes,
        )
        policy = SidecarPolicy(check, config.max_request_bytes)
        server = RelayServer(HttpRelay(policy, upstream, config.limits), local_tls)
        try:
            await server.start(config.listen_host, config.listen_port)
        except BaseException:
            audit_log.close()
            raise
        self._audit_log, self._server = audit_log, server
        _log.info(
            "sidecar on %s:%d → gateway %s:%d",
            config.listen_host,
            server.port,
            config.gateway_host,
            config.gateway_port,
        )

    async def stop(self) -> None:
        """Stop listening, end connections, close the audit log."""
        if self._server is not None:
            await self._server.stop()
            self._server = None
        if self._audit_log is not None:
            await asyncio.to_thread(self._audit_log.close)
            self._audit_log = None

    async def serve_until_signalled(self) -> None:
        """Start, run until SIGINT or SIGTERM, then stop."""
        await serve_until_signalled(self)

    def serve(self) -> None:
        """Run the sidecar in this thread until SIGINT or SIGTERM."""
        asyncio.run(self.serve_until_signalled())


def run_sidecar(config: SidecarConfig) -> None:
    """Run a sidecar with ``config`` until SIGINT or SIGTERM (for the CLI)."""
    Sidecar(config).serve()
