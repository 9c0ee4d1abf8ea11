"""The coordinator's Prometheus metrics: what an operator watches while a run is live.

Everything is counted on a registry of its own (never prometheus-client's global one,
so two coordinators in one process, or a test, do not mix numbers) and labelled only
by bounded values: round outcome, refusal reason, client state. There are no
per-client labels: node ids would make the series count grow with the federation and
would publish who took part in which round (docs/metrics.md).

The endpoint binds to loopback by default. Binding anywhere else is refused unless
the caller opts in explicitly *and* protects it: a bearer token or basic-auth
credentials (compared in constant time) or a TLS context that requires client
certificates (mutual TLS).

    metrics = CoordinatorMetrics()
    coordinator = Coordinator(..., observers=[metrics])        # a RoundObserver
    with serve_metrics(metrics.registry, MetricsEndpoint(port=9100)):
        ...
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import math
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Self

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .history import RoundRecord

__all__ = [
    "DEFAULT_HOST",
    "METRICS_PATH",
    "METRICS_PORT_KEY",
    "CoordinatorMetrics",
    "GatewayMetrics",
    "MetricsAuth",
    "MetricsEndpoint",
    "MetricsServer",
    "metrics_port",
    "serve_metrics",
]

logger = logging.getLogger(__name__)

DEFAULT_HOST: Final = "127.0.0.1"
_TLS_HANDSHAKE_TIMEOUT_S: Final = 10.0
METRICS_PATH: Final = "/metrics"
METRICS_PORT_KEY: Final = "metrics-port"
"""The run-config key: the loopback port of the ServerApp's endpoint; 0 turns it off."""

_ROUND_SECONDS_BUCKETS: Final = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, math.inf)
_AGGREGATION_SECONDS_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, math.inf,
)  # fmt: skip


class CoordinatorMetrics:
    """Round metrics, updated from each ``RoundRecord``: a ``RoundObserver`` for the coordinator.

    Counters add up over the run; ``ztfl_round_clients`` holds the last round's numbers.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rounds = Counter(
            "ztfl_rounds", "Rounds finished, by outcome.", ["outcome"], registry=r
        )
        self.planned_rounds = Gauge("ztfl_rounds_planned", "Rounds this run plans.", registry=r)
        self.current_round = Gauge("ztfl_round", "The last finished round.", registry=r)
        self.round_seconds = Histogram(
            "ztfl_round_duration_seconds",
            "Wall time of a round, broadcast to commit.",
            buckets=_ROUND_SECONDS_BUCKETS,
            registry=r,
        )
        self.aggregation_seconds = Histogram(
            "ztfl_aggregation_duration_seconds",
            "Time spent in the robust aggregation pipeline per round.",
            buckets=_AGGREGATION_SECONDS_BUCKETS,
            registry=r,
        )
        self.clients = Counter(
            "ztfl_clients",
            "Clients per round summed over rounds: sampled, answered, accepted, refused, "
            "quarantined.",
            ["state"],
            registry=r,
        )
        self.round_clients = Gauge(
            "ztfl_round_clients", "Clients in the last round, by state.", ["state"], registry=r
        )
        self.updates_refused = Counter(
            "ztfl_updates_refused", "Updates not aggregated, by refusal reason.", ["reason"],
            registry=r,
        )  # fmt: skip
        self.model_refusals = Counter(
            "ztfl_client_model_refusals",
            "Broadcast models a client refused to load, by reason.",
            ["reason"],
            registry=r,
        )
        self.epsilon = Gauge(
            "ztfl_dp_epsilon_spent", "Privacy spent so far (ε at ztfl_dp_delta).", registry=r
        )
        self.delta = Gauge("ztfl_dp_delta", "The δ at which ε is accounted.", registry=r)
        for state in _CLIENT_STATES:
            self.clients.labels(state=state)
            self.round_clients.labels(state=state)
        for outcome in ("committed", "skipped"):
            self.rounds.labels(outcome=outcome)

    def on_run_start(self, num_rounds: int, initial_metrics: dict[str, float]) -> None:
        """Record the planned number of rounds."""
        self.planned_rounds.set(num_rounds)

    def on_round_end(self, record: RoundRecord) -> None:
        """Count one finished round (committed or skipped)."""
        self.rounds.labels(outcome="committed" if record.committed else "skipped").inc()
        self.current_round.set(record.server_round)
        self.round_seconds.observe(max(0.0, record.round_s))
        if record.committed:
            self.aggregation_seconds.observe(max(0.0, record.aggregation_s))
        counts = {
            "sampled": len(record.sampled_nodes),
            "answered": record.num_replies,
            "accepted": len(record.accepted_nodes),
            "refused": len(record.refused),
            "quarantined": len(record.quarantined),
        }
        for state, count in counts.items():
            self.clients.labels(state=state).inc(count)
            self.round_clients.labels(state=state).set(count)
        for refused in record.refused:
            self.updates_refused.labels(reason=refused.reason.value).inc()
        for failure in record.verification_failures:
            self.model_refusals.labels(reason=failure.reason.value).inc()
        privacy = record.privacy
        if privacy is not None:
            for gauge, key in ((self.epsilon, "epsilon"), (self.delta, "delta")):
                value = privacy.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    gauge.set(float(value))


_CLIENT_STATES: Final = ("sampled", "answered", "accepted", "refused", "quarantined")


class GatewayMetrics:
    """The gateway's refusals by reason; reasons are enum members, so the label stays bounded."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.refusals = Counter(
            "ztfl_gateway_refusals",
            "Connections and requests the gateway refused, by audit kind and reason.",
            ["kind", "reason"],
            registry=self.registry,
        )

    def refused(self, reason: Enum, *, kind: str = "request_refused") -> None:
        """Count one refusal. ``reason`` must be a refusal enum member, never free text."""
        if not isinstance(reason, Enum) or not isinstance(reason.value, str):
            raise TypeError(f"a refusal reason is an enum member, got {type(reason).__name__}")
        if kind not in _GATEWAY_KINDS:
            raise ValueError(f"kind must be one of {', '.join(sorted(_GATEWAY_KINDS))}")
        self.refusals.labels(kind=kind, reason=reason.value).inc()


_GATEWAY_KINDS: Final = frozenset({"node_refused", "request_refused"})


# ---------------------------------------------------------------- endpoint


@dataclass(frozen=True)
class MetricsAuth:
    """What a scraper must present: a bearer token, or basic-auth user and password.

    Never printed: ``repr`` hides the secrets.
    """

    bearer_token: str | None = None
    username: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        basic = self.username is not None or self.password is not None
        if self.bearer_token is not None and basic:
            raise ValueError("give a bearer token or basic-auth credentials, not both")
        if self.bearer_token is not None and len(self.bearer_token) < 16:
            raise ValueError("a bearer token must be at least 16 characters (use secrets)")
        if basic and (not self.username or not self.password or ":" in self.username):
            raise ValueError("basic auth needs a username without ':' and a non-empty password")
        if self.bearer_token is None and not basic:
            raise ValueError("give a bearer token or basic-auth credentials")

    def __repr__(self) -> str:
        scheme = "bearer" if self.bearer_token is not None else f"basic user={self.username!r}"
        return f"MetricsAuth({scheme}, secret hidden)"

    def accepts(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries these credentials (constant time)."""
        if authorization is None:
            return False
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if self.bearer_token is not None:
            return scheme.lower() == "bearer" and hmac.compare_digest(
                value.encode("utf-8"), self.bearer_token.encode("utf-8")
            )
        if scheme.lower() != "basic":
            return False
        try:
            presented = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return False
        expected = f"{self.username}:{self.password}".encode()
        return hmac.compare_digest(presented, expected)


@dataclass(frozen=True)
class MetricsEndpoint:
    """Where and how to serve metrics. Loopback and no auth by default.

    A non-loopback ``host`` is refused unless ``allow_remote`` is set and the endpoint is
    protected by ``auth`` or by a ``tls`` context that requires client certificates.
    """

    port: int
    host: str = DEFAULT_HOST
    auth: MetricsAuth | None = None
    tls: ssl.SSLContext | None = None
    allow_remote: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise TypeError("port must be an integer")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        if self.tls is not None and not isinstance(self.tls, ssl.SSLContext):
            raise TypeError("tls must be an ssl.SSLContext")
        if _is_loopback(self.host):
            return
        if not self.allow_remote:
            raise ValueError(
                f"metrics endpoint on {self.host!r}: only loopback is allowed by default; "
                "set allow_remote and protect it with auth or mutual TLS"
            )
        mutual_tls = self.tls is not None and self.tls.verify_mode == ssl.CERT_REQUIRED
        if self.auth is None and not mutual_tls:
            raise ValueError(
                f"metrics endpoint on {self.host!r} needs auth (bearer or basic) or a TLS "
                "context that requires client certificates"
            )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _MetricsHandler(BaseHTTPRequestHandler):
    server: _MetricsHTTPServer
    server_version = "ztfl-metrics"
    sys_version = ""

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != METRICS_PATH:
            self._reply(404, b"not found\n")
            return
        auth = self.server.auth
        if auth is not None and not auth.accepts(self.headers.get("Authorization")):
            scheme = "Bearer" if auth.bearer_token is not None else 'Basic realm="ztfl metrics"'
            self._reply(401, b"unauthorized\n", {"WWW-Authenticate": scheme})
            return
        self._reply(
            200, generate_latest(self.server.registry), {"Content-Type": CONTENT_TYPE_LATEST}
        )

    def do_POST(self) -> None:
        self._reply(405, b"method not allowed\n", {"Allow": "GET"})

    def do_PUT(self) -> None:
        self.do_POST()

    def do_DELETE(self) -> None:
        self.do_POST()

    def _reply(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged: one line every few seconds would drown the coordinator's log."""


class _MetricsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, endpoint: MetricsEndpoint, registry: CollectorRegistry, auth: MetricsAuth | None
    ) -> None:
        if ":" in endpoint.host:
            self.address_family = socket.AF_INET6
        super().__init__((endpoint.host, endpoint.port), _MetricsHandler)
        self.registry = registry
        self.auth = auth
        self._tls = endpoint.tls

    def get_request(self) -> tuple[Any, Any]:
        connection, address = super().get_request()
        if self._tls is not None:
            # The handshake runs on the request's own thread, not in the accept loop.
            connection.settimeout(_TLS_HANDSHAKE_TIMEOUT_S)
            connection = self._tls.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        return connection, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A failed handshake or a dropped scraper is the scraper's problem: log it quietly."""
        logger.debug("metrics request from %s failed", client_address, exc_info=True)


class MetricsServer:
    """A running endpoint; ``close`` (or leaving the ``with`` block) stops it."""

    def __init__(self, server: _MetricsHTTPServer) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="ztfl-metrics", daemon=True
        )
        self._thread.start()

    @property
    def host(self) -> str:
        """The bound address."""
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The scrape URL."""
        scheme = "https" if self._server._tls is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{METRICS_PATH}"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def serve_metrics(registry: CollectorRegistry, endpoint: MetricsEndpoint) -> MetricsServer:
    """Serve ``registry`` at ``GET /metrics`` on ``endpoint`` in a background thread."""
    return MetricsServer(_MetricsHTTPServer(endpoint, registry, endpoint.auth))


def metrics_port(run_config: Mapping[str, object]) -> int:
    """The ``metrics-port`` run-config value (0, off, when absent); ValueError when invalid."""
    value = run_config.get(METRICS_PORT_KEY, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"{METRICS_PORT_KEY} must be an integer port 0..65535, got {value!r}")
    return value
