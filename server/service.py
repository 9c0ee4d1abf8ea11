"""The coordinator service behind ``ztfl server up``: SuperLink, node registration, gateway.

Start-up order, each step checked before the next:

1. the files: the federation CA and CRL, the gateway's certificate and key (0600);
2. the SuperLink on ``127.0.0.1`` only, TLS from a loopback CA kept in the service folder,
   node authentication on, no runtime installs (:mod:`ztfl.server.superlink_process`);
3. every enrolled client's node key registered through the loopback Control API
   (:mod:`ztfl.server.control_channel`, :mod:`ztfl.server.enrolled_nodes`);
4. the gateway on the public address, client certificates required, forwarding only
   ``/v1/fleet/*`` to the SuperLink over its TLS (:mod:`ztfl.server.gateway`);
5. a plain-HTTP health endpoint on loopback and ``service.json``, which ``ztfl run``
   reads to reach the Control API.

Stop (SIGTERM/SIGINT, or the SuperLink dying) runs in reverse and leaves no process
behind. docs/deployment.md, docs/decisions/0010-superlink-isolation.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Final

from ztfl.client.launch_error import LaunchError, LaunchErrorReason
from ztfl.client.supervised_process import check_port_free
from ztfl.server.control_channel import ControlChannel, NodeRegistration
from ztfl.server.enrolled_nodes import enrolled_nodes, write_node_key
from ztfl.server.gateway import Gateway, GatewayConfig
from ztfl.server.gateway.health import HEALTH_PATH, HealthServer
from ztfl.server.metrics import GatewayMetrics, MetricsEndpoint, MetricsServer, serve_metrics
from ztfl.server.superlink_process import (
    LOOPBACK,
    SuperLinkConfig,
    SuperLinkProcess,
    ensure_superlink_tls,
)
from ztfl.trust.audit import AuditEventKind
from ztfl.trust.durable_files import write_atomically
from ztfl.trust.pki import (
    AuthorityLayout,
    CertificateRefused,
    ClientLayout,
    FederationTrust,
    PkiError,
    check_private_key_file,
)
from ztfl.trust.transport.lifecycle import serve_until_signalled

__all__ = [
    "DEFAULT_HEALTH_PORT",
    "DEFAULT_LISTEN",
    "DEFAULT_SUPERLINK_PORT",
    "CoordinatorService",
    "ServiceConfig",
    "ServiceLayout",
    "ServiceStatus",
    "parse_host_port",
    "read_service_status",
]

_log = logging.getLogger(__name__)

DEFAULT_LISTEN: Final = "0.0.0.0:9093"
DEFAULT_SUPERLINK_PORT: Final = 9091
DEFAULT_HEALTH_PORT: Final = 9096
STATUS_FORMAT: Final = "ztfl-service"
_WATCH_INTERVAL_S: Final = 1.0


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``; LaunchError(BAD_CONFIG) otherwise."""
    host, _, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise LaunchError(LaunchErrorReason.BAD_CONFIG, f"{what} must be host:port, got {text!r}")
    return host, int(port)


@dataclass(frozen=True)
class ServiceLayout:
    """The service folder: what ``ztfl server up`` makes and keeps (no federation secrets
    but the SuperLink's loopback TLS key)."""

    root: Path

    @property
    def superlink_tls(self) -> Path:
        """``superlink-tls/``: the SuperLink's loopback CA and server certificate (key 0600)."""
        return self.root / "superlink-tls"

    @property
    def superlink_home(self) -> Path:
        """``superlink-home/``: the SuperLink's ``FLWR_HOME``."""
        return self.root / "superlink-home"

    @property
    def superlink_database(self) -> Path:
        """``superlink.db``: runs and registered nodes, kept across restarts."""
        return self.root / "superlink.db"

    @property
    def control_home(self) -> Path:
        """``control/``: the ``flwr`` CLI's home with the loopback connection ``ztfl``."""
        return self.root / "control"

    @property
    def node_keys(self) -> Path:
        """``node-keys/``: the OpenSSH public keys registered with the SuperLink."""
        return self.root / "node-keys"

    @property
    def gateway_audit_log(self) -> Path:
        """``gateway-audit.db``: the gateway's refusals (hash-chained audit log)."""
        return self.root / "gateway-audit.db"

    @property
    def logs(self) -> Path:
        """``logs/``: the SuperLink's output."""
        return self.root / "logs"

    @property
    def status(self) -> Path:
        """``service.json``: where the running service listens; removed at stop."""
        return self.root / "service.json"

    @property
    def runs(self) -> Path:
        """``runs/``: the run-config files ``ztfl run`` submitted."""
        return self.root / "runs"


@dataclass(frozen=True)
class ServiceConfig:
    """Everything ``ztfl server up`` needs, validated when built.

    Args:
        service_dir: the service folder (:class:`ServiceLayout`).
        ca_dir: the CA folder, or a copy of its public part (``ca.pem``, ``crl.pem``,
            ``issued/``); its CRL is re-read by the gateway when it changes.
        gateway_dir: the gateway's member folder (role ``server``): ``certificate.pem``,
            ``key.pem`` (0600).
        listen_host, listen_port: the gateway's public address (port 0: a free port).
        superlink_port: the SuperLink's loopback port.
        health_port: the loopback health endpoint (port 0: a free port).
        state_dir, signing_key: the coordinator's run state and model-signing key, given to
            ``ztfl run`` (run config ``state-dir``, ``signing-key``); optional here.
        extra_node_keys: OpenSSH public keys to register besides the enrolled clients'.
        requests_per_second, burst: the gateway's per-client rate limit.
        metrics_port: >0: the gateway's refusals by kind and reason as Prometheus metrics on
            127.0.0.1:<port> (docs/metrics.md); 0: off.
    """

    service_dir: Path
    ca_dir: Path
    gateway_dir: Path
    listen_host: str = "0.0.0.0"  # noqa: S104 - the gateway is the public endpoint
    listen_port: int = 9093
    superlink_port: int = DEFAULT_SUPERLINK_PORT
    health_port: int = DEFAULT_HEALTH_PORT
    state_dir: Path | None = None
    signing_key: Path | None = None
    extra_node_keys: tuple[Path, ...] = ()
    requests_per_second: float = 50.0
    burst: int = 200
    metrics_port: int = 0

    def __post_init__(self) -> None:
        for name in ("service_dir", "ca_dir", "gateway_dir"):
            object.__setattr__(self, name, Path(getattr(self, name)).absolute())
        for name in ("state_dir", "signing_key"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).absolute())
        object.__setattr__(
            self, "extra_node_keys", tuple(Path(p).absolute() for p in self.extra_node_keys)
        )
        for name in ("listen_port", "health_port", "metrics_port"):
            port = getattr(self, name)
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                raise LaunchError(LaunchErrorReason.BAD_CONFIG, f"{name} must be 0..65535")
        port = self.superlink_port
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise LaunchError(LaunchErrorReason.BAD_CONFIG, "superlink_port must be 1..65535")
        if not self.listen_host:
            raise LaunchError(LaunchErrorReason.BAD_CONFIG, "listen_host must not be empty")

    @property
    def layout(self) -> ServiceLayout:
        """The service folder's layout."""
        return ServiceLayout(self.service_dir)

    @classmethod
    def from_toml(cls, path: Path, **overrides: Any) -> ServiceConfig:
        """Read the ``[server]`` table of a TOML file; relative paths are relative to it.

        Keys: ``service-dir``, ``ca-dir``, ``gateway-dir``, ``listen`` (host:port),
        ``superlink-port``, ``health-port``, ``state-dir``, ``signing-key``,
        ``node-keys`` (list), ``requests-per-second``, ``burst``, ``metrics-port``.
        ``overrides`` (field
        names) win over the file; None values are ignored.
        """
        try:
            document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as error:
            raise LaunchError(
                LaunchErrorReason.MISSING_FILE, f"cannot read {path}: {error.strerror or error}"
            ) from None
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise LaunchError(LaunchErrorReason.BAD_CONFIG, f"{path}: {error}") from None
        table = document.get("server", {})
        if not isinstance(table, dict):
            raise LaunchError(LaunchErrorReason.BAD_CONFIG, f"{path}: [server] must be a table")
        known = {
            "service-dir",
            "ca-dir",
            "gateway-dir",
            "listen",
            "superlink-port",
            "health-port",
            "state-dir",
            "signing-key",
            "node-keys",
            "requests-per-second",
            "burst",
            "metrics-port",
        }
        unknown = sorted(set(table) - known)
        if unknown:
            raise LaunchError(
                LaunchErrorReason.BAD_CONFIG, f"{path}: unknown [server] key(s) {unknown}"
            )
        base = Path(path).absolute().parent

        def resolved(value: object, key: str) -> Path:
            if not isinstance(value, str) or not value:
                raise LaunchError(LaunchErrorReason.BAD_CONFIG, f"{path}: {key} must be a path")
            return base / value

        values: dict[str, Any] = {}
        for key in ("service-dir", "ca-dir", "gateway-dir", "state-dir", "signing-key"):
            if key in table:
                values[key.replace("-", "_")] = resolved(table[key], key)
        if "listen" in table:
            values["listen_host"], values["listen_port"] = parse_host_port(
                str(table["listen"]), "listen"
            )
        for key in ("superlink-port", "health-port", "burst", "metrics-port"):
            if key in table:
                values[key.replace("-", "_")] = table[key]
        if "requests-per-second" in table:
            values["requests_per_second"] = table["requests-per-second"]
        if "node-keys" in table:
            keys = table["node-keys"]
            if not isinstance(keys, list):
                raise LaunchError(LaunchErrorReason.BAD_CONFIG, f"{path}: node-keys is a list")
            values["extra_node_keys"] = tuple(resolved(item, "node-keys") for item in keys)
        values.update({key: value for key, value in overrides.items() if value is not None})
        for required in ("service_dir", "ca_dir", "gateway_dir"):
            if required not in values:
                raise LaunchError(
                    LaunchErrorReason.BAD_CONFIG,
                    f"{path}: {required.replace('_', '-')} is required",
                )
        try:
            return cls(**values)
        except TypeError as error:
            raise LaunchError(LaunchErrorReason.BAD_CONFIG, f"{path}: {error}") from None

    def check_files(self) -> None:
        """LaunchError naming the first missing or unsafe file."""
        authority = AuthorityLayout(self.ca_dir)
        gateway = ClientLayout(self.gateway_dir)
        for path in (authority.ca_certificate, authority.crl, gateway.certificate, gateway.key):
            if not path.is_file():
                raise LaunchError(LaunchErrorReason.MISSING_FILE, f"{path} is missing")
        try:
            check_private_key_file(gateway.key)
        except PkiError as error:
            raise LaunchError(LaunchErrorReason.KEY_FILE_PERMISSIONS, error.message) from None
        try:
            FederationTrust.load(authority.ca_certificate, authority.crl).check_crl_fresh()
        except CertificateRefused as refusal:
            raise LaunchError(LaunchErrorReason.BAD_CONFIG, refusal.message) from None
        for path in self.extra_node_keys:
            if not path.is_file():
                raise LaunchError(LaunchErrorReason.MISSING_FILE, f"{path} is missing")
        if self.signing_key is not None and not self.signing_key.is_file():
            raise LaunchError(LaunchErrorReason.MISSING_FILE, f"{self.signing_key} is missing")


@dataclass(frozen=True)
class ServiceStatus:
    """What ``service.json`` records: public facts for ``ztfl run`` and monitors."""

    pid: int
    gateway: str
    health: str
    superlink: str
    control_home: Path
    superlink_ca: Path
    state_dir: Path | None
    signing_key: Path | None
    registered_nodes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The JSON document."""
        return {
            "format": STATUS_FORMAT,
            "pid": self.pid,
            "gateway": self.gateway,
            "health": self.health,
            "superlink": self.superlink,
            "control_home": str(self.control_home),
            "superlink_ca": str(self.superlink_ca),
            "state_dir": None if self.state_dir is None else str(self.state_dir),
            "signing_key": None if self.signing_key is None else str(self.signing_key),
            "registered_nodes": list(self.registered_nodes),
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ServiceStatus:
        """Parse ``service.json``; ValueError/KeyError/TypeError when it is not one."""
        if document.get("format") != STATUS_FORMAT:
            raise ValueError("not a ztfl service status file")
        optional = {
            key: None if document.get(key) is None else Path(document[key])
            for key in ("state_dir", "signing_key")
        }
        return cls(
            pid=int(document["pid"]),
            gateway=str(document["gateway"]),
            health=str(document["health"]),
            superlink=str(document["superlink"]),
            control_home=Path(document["control_home"]),
            superlink_ca=Path(document["superlink_ca"]),
            registered_nodes=tuple(str(n) for n in document["registered_nodes"]),
            **optional,
        )

    def control_channel(self) -> ControlChannel:
        """The local-only channel to this service's SuperLink."""
        return ControlChannel(self.control_home, self.superlink, self.superlink_ca)


def read_service_status(service_dir: Path) -> ServiceStatus:
    """The running service's ``service.json``; LaunchError when no service runs there."""
    path = ServiceLayout(Path(service_dir)).status
    try:
        status = ServiceStatus.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise LaunchError(
            LaunchErrorReason.MISSING_FILE,
            f"no coordinator service runs with folder {service_dir} ({path} is missing); "
            "start it with `ztfl server up`",
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise LaunchError(LaunchErrorReason.BAD_CONFIG, f"{path}: {error}") from None
    return status


class CoordinatorService:
    """SuperLink + node registration + gateway + health; see the module docstring.

    ``await start()`` / ``await stop()`` inside an event loop, or :meth:`serve` until
    SIGINT/SIGTERM. ``start`` raises :class:`LaunchError` (and leaves nothing running).
    """

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.registrations: tuple[NodeRegistration, ...] = ()
        self._superlink: SuperLinkProcess | None = None
        self._gateway: Gateway | None = None
        self.gateway_metrics: GatewayMetrics | None = None
        self._metrics_server: MetricsServer | None = None
        self._health: HealthServer | None = None
        self._superlink_healthy = False
        self._watch: asyncio.Task[None] | None = None
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.failure: str | None = None

    @property
    def gateway_port(self) -> int:
        """The gateway's bound public port."""
        if self._gateway is None:
            raise RuntimeError("the service is not started")
        return self._gateway.port

    @property
    def health_port(self) -> int:
        """The bound health port."""
        if self._health is None:
            raise RuntimeError("the service is not started")
        return self._health.port

    async def start(self) -> None:
        """Start every part in order; on any failure stop what was started and raise."""
        config = self.config
        layout = config.layout
        config.check_files()
        check_port_free(config.listen_host, config.listen_port, "gateway")
        check_port_free(LOOPBACK, config.health_port, "health endpoint")
        layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            tls = ensure_superlink_tls(layout.superlink_tls)
        except PkiError as error:
            raise LaunchError(LaunchErrorReason.KEY_FILE_PERMISSIONS, error.message) from None
        superlink = SuperLinkProcess(
            SuperLinkConfig(
                port=config.superlink_port,
                tls=tls,
                flwr_home=layout.superlink_home,
                database=layout.superlink_database,
                log_file=layout.logs / "superlink.log",
            )
        )
        channel = ControlChannel(layout.control_home, superlink.config.address, tls.ca_certificate)
        try:
            await asyncio.to_thread(superlink.start)
            self._superlink = superlink
            self._superlink_healthy = True
            channel.write_connection()
            self.registrations = await self._register_nodes(channel)
            await self._start_gateway(tls.ca_certificate)
            self._health = HealthServer(self._health_status)
            await self._health.start(config.health_port)
            self._write_status(channel)
        except BaseException:
            await self.stop()
            raise
        self._watch = asyncio.create_task(self._watch_superlink())
        self.started.set()

    async def _register_nodes(self, channel: ControlChannel) -> tuple[NodeRegistration, ...]:
        folder = self.config.layout.node_keys
        keys = [
            (node.identity.name, write_node_key(folder, node))
            for node in enrolled_nodes(self.config.ca_dir)
        ]
        keys.extend((path.stem, path) for path in self.config.extra_node_keys)
        # One `flwr` process per key, a few at a time: each costs a Python start-up.
        limit = asyncio.Semaphore(4)

        async def register(name: str, path: Path) -> NodeRegistration:
            async with limit:
                return await asyncio.to_thread(channel.register_node, path, name)

        results = await asyncio.gather(*(register(name, path) for name, path in keys))
        for result in results:
            _log.info("node %s: %s", result.name, result.outcome.value)
        return tuple(results)

    async def _start_gateway(self, superlink_ca: Path) -> None:
        config = self.config
        authority = AuthorityLayout(config.ca_dir)
        member = ClientLayout(config.gateway_dir)
        on_refusal = None
        if config.metrics_port:
            metrics = GatewayMetrics()
            self.gateway_metrics = metrics

            def on_refusal(kind: AuditEventKind, reason: Enum) -> None:
                metrics.refused(reason, kind=kind.value)

            try:
                self._metrics_server = serve_metrics(
                    metrics.registry, MetricsEndpoint(port=config.metrics_port)
                )
            except OSError as error:
                raise LaunchError(
                    LaunchErrorReason.PORT_IN_USE,
                    f"the metrics endpoint cannot listen on 127.0.0.1:{config.metrics_port}: "
                    f"{error.strerror or error}",
                ) from None
        gateway = Gateway(
            GatewayConfig(
                listen_host=config.listen_host,
                listen_port=config.listen_port,
                server_certificate=member.certificate,
                server_key=member.key,
                federation_ca=authority.ca_certificate,
                crl=authority.crl,
                upstream_url=f"https://{LOOPBACK}:{config.superlink_port}",
                upstream_ca=superlink_ca,
                audit_log=config.layout.gateway_audit_log,
                requests_per_second=config.requests_per_second,
                burst=config.burst,
            ),
            on_refusal=on_refusal,
        )
        try:
            await gateway.start()
        except ssl.SSLError as error:
            raise LaunchError(
                LaunchErrorReason.BAD_CONFIG,
                f"{config.gateway_dir}: the gateway's TLS material does not load ({error.reason})",
            ) from None
        except OSError as error:
            raise LaunchError(
                LaunchErrorReason.PORT_IN_USE,
                f"the gateway cannot listen on {config.listen_host}:{config.listen_port}: "
                f"{error.strerror or error}",
            ) from None
        except CertificateRefused as refusal:
            raise LaunchError(LaunchErrorReason.BAD_CONFIG, refusal.message) from None
        self._gateway = gateway

    def _write_status(self, channel: ControlChannel) -> None:
        config = self.config
        status = ServiceStatus(
            pid=os.getpid(),
            gateway=f"{config.listen_host}:{self.gateway_port}",
            health=f"http://{LOOPBACK}:{self.health_port}{HEALTH_PATH}",
            superlink=channel.superlink_address,
            control_home=channel.flwr_home,
            superlink_ca=channel.root_certificates,
            state_dir=config.state_dir,
            signing_key=config.signing_key,
            registered_nodes=tuple(r.name for r in self.registrations),
        )
        document = json.dumps(status.to_json(), indent=2) + "\n"
        write_atomically(config.layout.status, document.encode())

    def _health_status(self) -> tuple[bool, dict[str, str]]:
        details: dict[str, str] = {}
        superlink = self._superlink
        details["superlink"] = (
            "running" if superlink is not None and superlink.running else "stopped"
        )
        details["gateway"] = "serving" if self._gateway is not None else "stopped"
        authority = AuthorityLayout(self.config.ca_dir)
        try:
            FederationTrust.load(authority.ca_certificate, authority.crl).check_crl_fresh()
            details["trust"] = "ok"
        except CertificateRefused as refusal:
            details["trust"] = refusal.reason.value
        healthy = (
            details["superlink"] == "running"
            and self._superlink_healthy
            and details["gateway"] == "serving"
            and details["trust"] == "ok"
        )
        return healthy, details

    async def _watch_superlink(self) -> None:
        """Poll the SuperLink; when it dies the service stops (a supervisor restarts it)."""
        while True:
            await asyncio.sleep(_WATCH_INTERVAL_S)
            superlink = self._superlink
            if superlink is None:
                return
            if not superlink.running:
                self.failure = f"the SuperLink exited with code {superlink.returncode}"
                _log.error("%s; stopping the service", self.failure)
                self.stopped.set()
                return
            self._superlink_healthy = await asyncio.to_thread(superlink.healthy)

    async def stop(self) -> list[int]:
        """Stop health, gateway, SuperLink (in that order); the pids that had to be killed."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        with contextlib.suppress(FileNotFoundError):
            self.config.layout.status.unlink()
        if self._health is not None:
            await self._health.stop()
            self._health = None
        if self._gateway is not None:
            await self._gateway.stop()
            self._gateway = None
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.close)
            self._metrics_server = None
        killed: list[int] = []
        if self._superlink is not None:
            killed = await asyncio.to_thread(self._superlink.stop)
            self._superlink = None
        self.stopped.set()
        return killed

    async def serve_until_signalled(self) -> None:
        """Start, run until SIGINT/SIGTERM or the SuperLink's death, then stop."""
        await serve_until_signalled(self, stopped=self.stopped)
