"""The gateway's configuration: one frozen dataclass, validated when built."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from ztfl.trust.transport import RelayLimits

__all__ = ["GatewayConfig"]

MIB: Final = 1024 * 1024


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(name: str, port: int, *, allow_zero: bool = True) -> None:
    if (
        isinstance(port, bool)
        or not isinstance(port, int)
        or not (0 if allow_zero else 1) <= port <= 65535
    ):
        raise ValueError(f"{name} must be a TCP port number, got {port!r}")


@dataclass(frozen=True)
class GatewayConfig:
    """Where the gateway listens, what it trusts, where it forwards, and its limits.

    Args:
        listen_host, listen_port: the public endpoint SuperNodes (their sidecars) reach;
            port 0 binds a free port (tests).
        server_certificate, server_key: the gateway's TLS certificate (role ``server``).
        federation_ca, crl: the federation CA certificate and its CRL (PEM); both are
            re-read when they change.
        upstream_url: the SuperLink's Fleet API, ``http://`` or ``https://`` on loopback
            only (the SuperLink must never be reachable but through the gateway).
        audit_log: the coordinator's audit log (SQLite); created when missing.
        upstream_ca: for an ``https`` upstream, the CA that signed the SuperLink's certificate.
        upstream_server_name: the name to verify the SuperLink's certificate against
            (default: the URL's host).
        health_port: a plain-HTTP port on 127.0.0.1 answering ``GET /ztfl/health``;
            ``None`` for none, 0 for a free port.
        audit_run_id: the ``run_id`` of the gateway's audit records.
        requests_per_second, burst: each client identity's token bucket.
        max_request_bytes: the largest request body forwarded (Flower sends arrays in
            chunks of 5 MiB, so the default leaves a wide margin).
        refusal_audit_window_s: the aggregation window for rate-limit and handshake refusals.
        limits: buffer sizes and timeouts of the relay.
    """

    listen_host: str
    listen_port: int
    server_certificate: Path
    server_key: Path
    federation_ca: Path
    crl: Path
    upstream_url: str
    audit_log: Path
    upstream_ca: Path | None = None
    upstream_server_name: str | None = None
    health_port: int | None = None
    audit_run_id: str = "gateway"
    requests_per_second: float = 50.0
    burst: int = 200
    max_request_bytes: int = 128 * MIB
    refusal_audit_window_s: float = 60.0
    limits: RelayLimits = field(default_factory=RelayLimits)

    def __post_init__(self) -> None:
        _check_port("listen_port", self.listen_port)
        if self.health_port is not None:
            _check_port("health_port", self.health_port)
        for name in ("server_certificate", "server_key", "federation_ca", "crl", "audit_log"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        if self.upstream_ca is not None:
            object.__setattr__(self, "upstream_ca", Path(self.upstream_ca))
        parts = urlsplit(self.upstream_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
            raise ValueError(
                f"upstream_url must be http(s)://<loopback host>:<port>, got {self.upstream_url!r}"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError(f"upstream_url takes no path, query or user: {self.upstream_url!r}")
        if not _is_loopback(parts.hostname):
            raise ValueError(
                f"upstream_url host {parts.hostname!r} is not loopback: the SuperLink must "
                "listen on loopback only, reachable through the gateway alone"
            )
        if parts.scheme == "https" and self.upstream_ca is None:
            raise ValueError("an https upstream_url needs upstream_ca to verify the SuperLink")
        if not self.requests_per_second > 0 or self.burst < 1:
            raise ValueError("requests_per_second must be positive and burst at least 1")
        if self.max_request_bytes < 1:
            raise ValueError("max_request_bytes must be positive")
        if not self.refusal_audit_window_s > 0:
            raise ValueError("refusal_audit_window_s must be positive")
        if not self.audit_run_id:
            raise ValueError("audit_run_id must not be empty")

    @property
    def upstream_host(self) -> str:
        """The SuperLink's host (loopback)."""
        host = urlsplit(self.upstream_url).hostname
        assert host is not None
        return host

    @property
    def upstream_port(self) -> int:
        """The SuperLink's Fleet API port."""
        port = urlsplit(self.upstream_url).port
        assert port is not None
        return port

    @property
    def upstream_uses_tls(self) -> bool:
        """Whether the SuperLink is reached over TLS."""
        return urlsplit(self.upstream_url).scheme == "https"
