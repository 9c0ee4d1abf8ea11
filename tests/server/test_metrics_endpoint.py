"""The coordinator's Prometheus endpoint: scraped over real HTTP on loopback and parsed with
prometheus-client's own parser; loopback by default, credentials checked, no per-client labels.
"""

from __future__ import annotations

import base64
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ztfl.aggregation import RefusalReason
from ztfl.server.config import CoordinatorConfig
from ztfl.server.gateway.refusal import RequestRefusalReason
from ztfl.server.history import RefusedUpdate, RoundRecord, VerificationFailure
from ztfl.server.metrics import (
    CoordinatorMetrics,
    GatewayMetrics,
    MetricsAuth,
    MetricsEndpoint,
    MetricsServer,
    metrics_port,
    serve_metrics,
)
from ztfl.trust.pki.local_tls import create_local_tls
from ztfl.trust.refusal import ModelRefusalReason
from ztfl.trust.transport.tls_contexts import client_tls_context, server_tls_context

NODES = (11_111_111_111, 22_222_222_222, 33_333_333_333, 44_444_444_444)
TOKEN = "t0ken-for-the-metrics-endpoint"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def record(
    server_round: int,
    *,
    committed: bool = True,
    epsilon: float | None = None,
    quarantined: tuple[int, ...] = (),
) -> RoundRecord:
    return RoundRecord(
        server_round=server_round,
        sampled_nodes=NODES,
        num_replies=3,
        accepted_nodes=NODES[:2],
        refused=(RefusedUpdate(NODES[2], RefusalReason.NORM_ABOVE_CAP, "norm 1e9"),),
        pipeline="median",
        committed=committed,
        aggregation_s=0.02,
        round_s=3.0,
        verification_failures=(
            VerificationFailure(NODES[3], ModelRefusalReason.BAD_SIGNATURE, "", "train"),
        ),
        privacy=None if epsilon is None else {"epsilon": epsilon, "delta": 1e-5},
        reputation={str(node): 0.9 for node in NODES},
        quarantined=quarantined,
    )


@pytest.fixture
def metrics() -> CoordinatorMetrics:
    """Two committed rounds (ε 0.5 then 0.9) and one skipped."""
    metrics = CoordinatorMetrics()
    metrics.on_run_start(5, {"accuracy": 0.1})
    metrics.on_round_end(record(1, epsilon=0.5))
    metrics.on_round_end(record(2, epsilon=0.9, quarantined=(NODES[2],)))
    metrics.on_round_end(record(3, committed=False))
    return metrics


@pytest.fixture
def server(metrics: CoordinatorMetrics) -> Iterator[MetricsServer]:
    with serve_metrics(metrics.registry, MetricsEndpoint(port=0)) as running:
        yield running


def scrape(
    url: str, headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None
) -> str:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return str(response.read().decode())


def status_of(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> int:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def samples(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_scrape_over_loopback_counts_rounds_by_outcome(server: MetricsServer) -> None:
    parsed = samples(scrape(server.url))
    assert parsed[("ztfl_rounds_total", (("outcome", "committed"),))] == 2
    assert parsed[("ztfl_rounds_total", (("outcome", "skipped"),))] == 1
    assert parsed[("ztfl_round", ())] == 3
    assert parsed[("ztfl_rounds_planned", ())] == 5


def test_scrape_counts_clients_sampled_answered_refused(server: MetricsServer) -> None:
    parsed = samples(scrape(server.url))
    assert parsed[("ztfl_clients_total", (("state", "sampled"),))] == 3 * len(NODES)
    assert parsed[("ztfl_clients_total", (("state", "answered"),))] == 9
    assert parsed[("ztfl_clients_total", (("state", "refused"),))] == 3
    assert parsed[("ztfl_round_clients", (("state", "accepted"),))] == 2
    assert parsed[("ztfl_round_clients", (("state", "quarantined"),))] == 0


def test_quarantined_clients_are_counted_without_naming_them(server: MetricsServer) -> None:
    text = scrape(server.url)
    assert samples(text)[("ztfl_clients_total", (("state", "quarantined"),))] == 1
    assert str(NODES[2]) not in text


def test_refusals_are_counted_by_reason(server: MetricsServer) -> None:
    parsed = samples(scrape(server.url))
    assert parsed[("ztfl_updates_refused_total", (("reason", "norm_above_cap"),))] == 3
    assert parsed[("ztfl_client_model_refusals_total", (("reason", "bad_signature"),))] == 3


def test_epsilon_gauge_holds_the_privacy_spent_so_far(server: MetricsServer) -> None:
    parsed = samples(scrape(server.url))
    assert parsed[("ztfl_dp_epsilon_spent", ())] == 0.9
    assert parsed[("ztfl_dp_delta", ())] == 1e-5


def test_round_latency_histogram_observes_every_round(server: MetricsServer) -> None:
    parsed = samples(scrape(server.url))
    assert parsed[("ztfl_round_duration_seconds_count", ())] == 3
    assert parsed[("ztfl_round_duration_seconds_sum", ())] == 9.0
    assert parsed[("ztfl_aggregation_duration_seconds_count", ())] == 2


def test_no_metric_carries_a_per_client_label(server: MetricsServer) -> None:
    text = scrape(server.url)
    label_names = {name for _, labels in samples(text) for name, _ in labels}
    assert label_names <= {"outcome", "state", "reason", "kind", "le"}
    for node in NODES:
        assert str(node) not in text


def test_endpoint_binds_to_loopback_by_default(server: MetricsServer) -> None:
    assert server.host == "127.0.0.1"
    assert MetricsEndpoint(port=9100).host == "127.0.0.1"


def test_a_non_loopback_address_is_refused_without_explicit_opt_in() -> None:
    with pytest.raises(ValueError, match="only loopback"):
        MetricsEndpoint(port=9100, host="0.0.0.0", auth=MetricsAuth(bearer_token=TOKEN))


def test_a_non_loopback_address_is_refused_without_auth_or_mutual_tls() -> None:
    with pytest.raises(ValueError, match="needs auth"):
        MetricsEndpoint(port=9100, host="0.0.0.0", allow_remote=True)


def test_a_non_loopback_address_is_accepted_with_opt_in_and_auth() -> None:
    auth = MetricsAuth(bearer_token=TOKEN)
    endpoint = MetricsEndpoint(port=9100, host="0.0.0.0", allow_remote=True, auth=auth)
    assert endpoint.auth is auth


def test_bearer_auth_refuses_a_scrape_without_credentials(metrics: CoordinatorMetrics) -> None:
    endpoint = MetricsEndpoint(port=0, auth=MetricsAuth(bearer_token=TOKEN))
    with serve_metrics(metrics.registry, endpoint) as running:
        assert status_of(running.url) == 401
        assert status_of(running.url, {"Authorization": "Bearer wrong-token-0000000"}) == 401
        assert status_of(running.url, {"Authorization": f"Basic {TOKEN}"}) == 401
        assert "ztfl_rounds_total" in scrape(running.url, {"Authorization": f"Bearer {TOKEN}"})


def test_basic_auth_accepts_only_the_right_password(metrics: CoordinatorMetrics) -> None:
    endpoint = MetricsEndpoint(port=0, auth=MetricsAuth(username="prom", password="s3cret-pw"))

    def basic(user: str, password: str) -> dict[str, str]:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    with serve_metrics(metrics.registry, endpoint) as running:
        assert status_of(running.url) == 401
        assert status_of(running.url, basic("prom", "wrong")) == 401
        assert status_of(running.url, {"Authorization": "Basic !!not-base64"}) == 401
        assert "ztfl_rounds_total" in scrape(running.url, basic("prom", "s3cret-pw"))


def test_credentials_never_appear_in_repr() -> None:
    assert TOKEN not in repr(MetricsAuth(bearer_token=TOKEN))
    assert "s3cret-pw" not in repr(MetricsAuth(username="prom", password="s3cret-pw"))


def test_a_short_bearer_token_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        MetricsAuth(bearer_token="short")


def test_only_get_metrics_is_served(server: MetricsServer) -> None:
    base = server.url.removesuffix("/metrics")
    assert status_of(f"{base}/") == 404
    assert status_of(f"{base}/other") == 404
    assert status_of(server.url, method="POST") == 405


def test_metrics_are_served_over_tls_when_given_a_context(
    metrics: CoordinatorMetrics, tmp_path: Path
) -> None:
    layout = create_local_tls(tmp_path / "tls")
    tls = server_tls_context(layout.server_certificate, layout.server_key)
    with serve_metrics(metrics.registry, MetricsEndpoint(port=0, tls=tls)) as running:
        assert running.url.startswith("https://127.0.0.1:")
        client = client_tls_context(layout.ca_certificate)
        assert "ztfl_rounds_total" in scrape(running.url, context=client)
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            scrape(running.url.replace("https:", "http:"))


def test_gateway_refusals_are_counted_by_kind_and_reason() -> None:
    gateway = GatewayMetrics()
    gateway.refused(RequestRefusalReason.RATE_LIMITED)
    gateway.refused(RequestRefusalReason.RATE_LIMITED)
    gateway.refused(RequestRefusalReason.NODE_KEY_MISMATCH)
    with serve_metrics(gateway.registry, MetricsEndpoint(port=0)) as running:
        parsed = samples(scrape(running.url))
    key = ("ztfl_gateway_refusals_total", (("kind", "request_refused"), ("reason", "rate_limited")))
    assert parsed[key] == 2


def test_gateway_refusals_take_only_enum_reasons() -> None:
    gateway = GatewayMetrics()
    with pytest.raises(TypeError, match="enum member"):
        gateway.refused("node 1234 sent junk")  # type: ignore[arg-type]

    class Unknown(StrEnum):
        ODD = "odd"

    with pytest.raises(ValueError, match="kind must be"):
        gateway.refused(Unknown.ODD, kind="anything")


def test_each_coordinator_has_its_own_registry() -> None:
    first, second = CoordinatorMetrics(), CoordinatorMetrics()
    first.on_round_end(record(1))
    assert first.registry is not second.registry
    assert first.rounds.labels(outcome="committed")._value.get() == 1
    assert second.rounds.labels(outcome="committed")._value.get() == 0


def test_metrics_port_run_config_defaults_to_off_and_refuses_bad_values() -> None:
    assert metrics_port({}) == 0
    assert metrics_port({"metrics-port": 9100}) == 9100
    for bad in (-1, 70000, "9100", True):
        with pytest.raises(ValueError, match="metrics-port"):
            metrics_port({"metrics-port": bad})
    # The ServerApp reads it; the coordinator's own configuration leaves it alone.
    assert CoordinatorConfig.from_run_config({"metrics-port": 1, "pipeline": "mean"}).pipeline == (
        "mean"
    )
