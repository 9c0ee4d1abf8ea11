"""The sidecar's configuration: one frozen dataclass, validated when built."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ztfl.trust.pki.layout import ClientLayout
from ztfl.trust.transport import RelayLimits

__all__ = ["SidecarConfig"]

MIB: Final = 1024 * 1024
AUDIT_LOG_NAME: Final = "sidecar-audit.sqlite"


@dataclass(frozen=True)
class SidecarConfig:
    """Where the sidecar listens (loopback), which gateway it reaches, with what material.

    Args:
        listen_port: the loopback port the SuperNode connects to (``--superlink
            127.0.0.1:<port> --root-certificates <client>/local/ca.pem``); 0 for a free port.
        local_certificate, local_key: the loopback TLS server certificate made at enrolment.
        gateway_host, gateway_port: the coordinator's gateway.
        federation_ca: the federation CA; the gateway's certificate must chain to it.
        client_certificate, client_key: the client's certificate and key (the same key
            is the SuperNode's node key).
        app_bundle_allow_list: the enrolled SHA-256 hashes of approved app bundles (FABs).
        audit_log: the client-side audit log (created when missing).
        gateway_server_name: the name the gateway's certificate must carry (default: host).
        listen_host: a loopback address; nothing off the host may use the client's identity.
        audit_run_id: the ``run_id`` of the sidecar's audit records.
        max_app_bundle_bytes: the largest get-fab response buffered for inspection.
        max_request_bytes: the largest request body relayed.
        limits: buffer sizes and timeouts of the relay.
    """

    listen_port: int
    local_certificate: Path
    local_key: Path
    gateway_host: str
    gateway_port: int
    federation_ca: Path
    client_certificate: Path
    client_key: Path
    app_bundle_allow_list: Path
    audit_log: Path
    gateway_server_name: str | None = None
    listen_host: str = "127.0.0.1"
    audit_run_id: str = "sidecar"
    max_app_bundle_bytes: int = 256 * MIB
    max_request_bytes: int = 128 * MIB
    limits: RelayLimits = field(default_factory=RelayLimits)

    def __post_init__(self) -> None:
        for name in ("listen_port", "gateway_port"):
            port = getattr(self, name)
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                raise ValueError(f"{name} must be a TCP port number, got {port!r}")
        if self.gateway_port == 0:
            raise ValueError("gateway_port must not be 0")
        try:
            loopback = ipaddress.ip_address(self.listen_host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(
                f"listen_host {self.listen_host!r} is not a loopback address: the sidecar "
                "lends the client's identity to whoever connects, so only this host may"
            )
        for name in (
            "local_certificate",
            "local_key",
            "federation_ca",
            "client_certificate",
            "client_key",
            "app_bundle_allow_list",
            "audit_log",
        ):
            object.__setattr__(self, name, Path(getattr(self, name)))
        if not self.gateway_host:
            raise ValueError("gateway_host must not be empty")
        if self.max_app_bundle_bytes < 1 or self.max_request_bytes < 1:
            raise ValueError("max_app_bundle_bytes and max_request_bytes must be positive")

    @classmethod
    def from_client_dir(
        cls,
        client_dir: Path,
        gateway_host: str,
        gateway_port: int,
        *,
        listen_port: int = 0,
        **options: object,
    ) -> SidecarConfig:
        """The configuration for an enrolment folder (``ztfl client enrol``)."""
        layout = ClientLayout(Path(client_dir))
        settings: dict[str, object] = {
            "listen_port": listen_port,
            "local_certificate": layout.local.server_certificate,
            "local_key": layout.local.server_key,
            "gateway_host": gateway_host,
            "gateway_port": gateway_port,
            "federation_ca": layout.ca_certificate,
            "client_certificate": layout.certificate,
            "client_key": layout.key,
            "app_bundle_allow_list": layout.app_bundle_allow_list,
            "audit_log": layout.root / AUDIT_LOG_NAME,
        }
        settings.update(options)  # explicit options win over the folder's defaults
        return cls(**settings)  # type: ignore[arg-type]
