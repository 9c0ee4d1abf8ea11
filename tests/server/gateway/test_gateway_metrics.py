"""The gateway counts every refusal by audit kind and reason in its Prometheus metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.server.gateway.gateway_test_federation import (
    ProvisionedFederation,
    RunningGateway,
    fleet_call,
    start_gateway,
)
from tests.trust.transport.relay_test_servers import LoopThread, Upstream
from ztfl.server.metrics import GatewayMetrics


@pytest.fixture
def metrics() -> GatewayMetrics:
    return GatewayMetrics()


@pytest.fixture
def counted_gateway(
    loop_thread: LoopThread,
    federation: ProvisionedFederation,
    upstream: Upstream,
    tmp_path: Path,
    metrics: GatewayMetrics,
) -> Iterator[RunningGateway]:
    yield from start_gateway(
        loop_thread,
        federation,
        upstream,
        tmp_path / "audit.sqlite",
        on_refusal=lambda kind, reason: metrics.refused(reason, kind=kind.value),
    )


def refusal_counts(metrics: GatewayMetrics) -> dict[tuple[str, str], float]:
    scraped = generate_latest(metrics.registry).decode()
    return {
        (sample.labels["kind"], sample.labels["reason"]): sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name == "ztfl_gateway_refusals_total"
    }


def test_each_refusal_is_counted_by_kind_and_reason_without_identities(
    counted_gateway: RunningGateway, metrics: GatewayMetrics
) -> None:
    paths = counted_gateway.federation.paths
    operator, alice = paths.operators["ops"], paths.clients["alice"]
    client = counted_gateway.connect(operator)
    assert fleet_call(client, operator).status == 403
    client.close()
    for target in ("/v1/control/list-runs", "/v1/fleet/%2e%2e/control/list-runs"):
        client = counted_gateway.connect(alice)
        assert fleet_call(client, alice, target).status in (400, 403, 404)
        client.close()
    counts = refusal_counts(metrics)
    assert counts[("node_refused", "wrong_role")] == 1
    assert sum(value for (kind, _), value in counts.items() if kind == "request_refused") == 2
    scraped = generate_latest(metrics.registry).decode()
    assert "alice" not in scraped
    assert "ops" not in scraped
