"""The gateway: the coordinator's only network-facing endpoint, in front of the SuperLink.

``Gateway(config)`` is a startable object: ``await start()`` / ``await stop()`` inside an
event loop (tests, a launcher that runs several services), or ``serve()`` to run until
SIGINT/SIGTERM (``python -m ztfl.server.gateway``). What it checks is in
``gateway_policy``; how to deploy it is in docs/gateway.md.
"""

from __future__ import annotations

import asyncio
import logging

from ztfl.server.gateway.config import GatewayConfig
from ztfl.server.gateway.federation_trust_file import FederationTrustFile
from ztfl.server.gateway.gateway_policy import GatewayPolicy
from ztfl.server.gateway.health import HealthServer
from ztfl.server.gateway.rate_limit import TokenBucketLimiter
from ztfl.server.gateway.refusal_audit import RefusalAuditor, RefusalCounter
from ztfl.trust.audit import AuditLog
from ztfl.trust.pki import CertificateRefused
from ztfl.trust.transport import (
    HttpRelay,
    RelayServer,
    UpstreamTarget,
    client_tls_context,
    server_tls_context,
)
from ztfl.trust.transport.lifecycle import serve_until_signalled

__all__ = ["Gateway", "run_gateway"]

_log = logging.getLogger(__name__)


class Gateway:
    """The mutual-TLS gateway; see the module docstring."""

    def __init__(self, config: GatewayConfig, *, on_refusal: RefusalCounter | None = None) -> None:
        """``on_refusal``: told of every refusal (audit kind, reason), e.g. to count it in
        ``ztfl.server.metrics.GatewayMetrics``; audit records may aggregate, it never does."""
        self.config = config
        self._on_refusal = on_refusal
        self._audit_log: AuditLog | None = None
        self._trust: FederationTrustFile | None = None
        self._policy: GatewayPolicy | None = None
        self._server: RelayServer | None = None
        self._health: HealthServer | None = None

    @property
    def port(self) -> int:
        """The bound public port."""
        if self._server is None:
            raise RuntimeError("the gateway is not started")
        return self._server.port

    @property
    def health_port(self) -> int | None:
        """The bound health port, if any."""
        return self._health.port if self._health is not None else None

    async def start(self) -> None:
        """Load the trust, open the audit log, and listen.

        Raises ``CertificateRefused`` when the CA or CRL is unusable at start (a gateway
        that would refuse every request should not look healthy), ``AuditLogError`` when
        the audit log cannot be opened, ``OSError`` when a port cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("the gateway is already started")
        config = self.config
        trust = FederationTrustFile(config.federation_ca, config.crl)
        tls = server_tls_context(
            config.server_certificate, config.server_key, client_ca_path=config.federation_ca
        )
        upstream_tls = (
            client_tls_context(config.upstream_ca)
            if config.upstream_uses_tls and config.upstream_ca is not None
            else None
        )
        upstream = UpstreamTarget(
            config.upstream_host,
            config.upstream_port,
            tls=upstream_tls,
            server_hostname=config.upstream_server_name,
        )
        audit_log = await asyncio.to_thread(
            AuditLog.open, config.audit_log, create=not config.audit_log.exists()
        )
        auditor = RefusalAuditor(
            audit_log,
            config.audit_run_id,
            config.refusal_audit_window_s,
            on_refusal=self._on_refusal,
        )
        limiter = TokenBucketLimiter(config.requests_per_second, config.burst)
        policy = GatewayPolicy(trust, limiter, auditor, config.max_request_bytes)
        server = RelayServer(
            HttpRelay(policy, upstream, config.limits),
            tls,
            on_handshake_failure=policy.handshake_failed,
        )
        try:
            await server.start(config.listen_host, config.listen_port)
            if config.health_port is not None:
                self._health = HealthServer(self._health_status)
                await self._health.start(config.health_port)
        except BaseException:
            await server.stop()
            audit_log.close()
            raise
        self._audit_log, self._trust, self._policy, self._server = (
            audit_log,
            trust,
            policy,
            server,
        )
        _log.info(
            "gateway for federation %r on %s:%d → %s",
            trust.federation,
            config.listen_host,
            server.port,
            config.upstream_url,
        )

    async def stop(self) -> None:
        """Stop listening, end connections, write pending audit counts, close the log."""
        if self._health is not None:
            await self._health.stop()
            self._health = None
        if self._server is not None:
            await self._server.stop()
            self._server = None
        if self._policy is not None:
            await self._policy.close()
            self._policy = None
        if self._audit_log is not None:
            await asyncio.to_thread(self._audit_log.close)
            self._audit_log = None

    def _health_status(self) -> tuple[bool, dict[str, str]]:
        if self._trust is None or self._server is None:
            return False, {"gateway": "stopped"}
        try:
            self._trust.current()
        except CertificateRefused as refusal:
            return False, {"trust": refusal.reason.value}
        return True, {"federation": self._trust.federation}

    async def serve_until_signalled(self) -> None:
        """Start, run until SIGINT or SIGTERM, then stop."""
        await serve_until_signalled(self)

    def serve(self) -> None:
        """Run the gateway in this thread until SIGINT or SIGTERM."""
        asyncio.run(self.serve_until_signalled())


def run_gateway(config: GatewayConfig) -> None:
    """Run a gateway with ``config`` until SIGINT or SIGTERM (for the CLI)."""
    Gateway(config).serve()
