"""Admitted clients reach only the Fleet API, with their own node key, within rate and size."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.gateway.gateway_test_federation import (
    ProvisionedFederation,
    RunningGateway,
    fleet_call,
    node_key_header,
    start_gateway,
)
from tests.trust.transport.relay_test_servers import (
    LoopThread,
    TlsFiles,
    Upstream,
    running_upstream,
)
from ztfl.server.gateway import GatewayConfig
from ztfl.trust.audit import AuditEventKind, AuditRecord
from ztfl.trust.transport import server_tls_context


def _request_refusals(gateway: RunningGateway) -> list[AuditRecord]:
    return [
        record
        for record in gateway.audit_records()
        if record.kind is AuditEventKind.REQUEST_REFUSED
    ]


@pytest.mark.parametrize(
    ("target", "status", "reason"),
    [
        ("/v1/control/start-run", 403, "path_not_fleet_api"),
        ("/v1/fleet/../control/start-run", 400, "path_dot_segment"),
        ("/v1/fleet/%2e%2e/x", 400, "path_dot_segment"),
        ("/v1%2Ffleet/pull-messages", 400, "path_encoded_separator"),
        ("//v1/fleet/pull-messages", 400, "path_empty_segment"),
        ("/health", 403, "path_not_fleet_api"),
        ("/v1/runtime/pull-messages", 403, "path_not_fleet_api"),
    ],
)
def test_paths_outside_the_fleet_api_are_refused_and_audited(
    gateway: RunningGateway, upstream: Upstream, target: str, status: int, reason: str
) -> None:
    alice = gateway.federation.paths.clients["alice"]
    client = gateway.connect(alice)
    response = fleet_call(client, alice, target)
    client.close()
    assert response.status == status
    assert response.body.decode().endswith(f": {reason}\n")
    assert upstream.state.requests == []
    [record] = _request_refusals(gateway)
    assert record.reason == reason
    assert record.details["path"] == target
    assert (
        record.details["identity"] == f"spiffe://{gateway.federation.paths.federation}/client/alice"
    )


def test_a_node_key_header_of_another_client_is_refused_as_a_mismatch(
    gateway: RunningGateway, upstream: Upstream
) -> None:
    clients = gateway.federation.paths.clients
    client = gateway.connect(clients["alice"])
    # Bob's Flower headers replayed over Alice's TLS identity.
    response = client.request(
        "/v1/fleet/pull-messages",
        body_bytes=16,
        headers=[("flwr-public-key", node_key_header(clients["bob"]))],
    )
    client.close()
    assert (response.status, response.body) == (403, b"403 Forbidden: node_key_mismatch\n")
    assert [record.reason for record in _request_refusals(gateway)] == ["node_key_mismatch"]
    assert upstream.state.requests == []


def test_a_request_without_a_node_key_header_is_refused(
    gateway: RunningGateway, upstream: Upstream
) -> None:
    client = gateway.connect(gateway.federation.paths.clients["alice"])
    response = client.request("/v1/fleet/pull-messages", body_bytes=16)
    client.close()
    assert (response.status, response.body) == (403, b"403 Forbidden: node_key_missing\n")
    assert [record.reason for record in _request_refusals(gateway)] == ["node_key_missing"]
    assert upstream.state.requests == []


def test_a_malformed_node_key_header_is_refused(gateway: RunningGateway) -> None:
    client = gateway.connect(gateway.federation.paths.clients["alice"])
    response = client.request(
        "/v1/fleet/pull-messages", body_bytes=16, headers=[("flwr-public-key", "bm90IGEga2V5")]
    )
    client.close()
    assert (response.status, response.body) == (403, b"403 Forbidden: node_key_malformed\n")


def test_a_method_other_than_post_is_refused(gateway: RunningGateway) -> None:
    alice = gateway.federation.paths.clients["alice"]
    client = gateway.connect(alice)
    client.sock.sendall(
        b"GET /v1/fleet/pull-messages HTTP/1.1\r\nhost: localhost\r\nflwr-public-key: "
        + node_key_header(alice).encode()
        + b"\r\n\r\n"
    )
    response = client.read_response()
    client.close()
    assert (response.status, response.body) == (
        405,
        b"405 Method Not Allowed: method_not_allowed\n",
    )


def test_a_body_above_the_limit_is_refused_413_and_audited(
    loop_thread: LoopThread,
    federation: ProvisionedFederation,
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    for running in start_gateway(
        loop_thread, federation, upstream, tmp_path / "audit.sqlite", max_request_bytes=1024
    ):
        alice = federation.paths.clients["alice"]
        client = running.connect(alice)
        response = client.request(
            "/v1/fleet/push-object",
            body_bytes=4096,
            headers=[("flwr-public-key", node_key_header(alice))],
        )
        client.close()
        assert response.status == 413
        assert [record.reason for record in _request_refusals(running)] == ["body_too_large"]
        assert upstream.state.requests == []


@pytest.fixture
def rate_limited_gateway(
    loop_thread: LoopThread,
    federation: ProvisionedFederation,
    upstream: Upstream,
    tmp_path: Path,
) -> Iterator[RunningGateway]:
    yield from start_gateway(
        loop_thread,
        federation,
        upstream,
        tmp_path / "audit.sqlite",
        requests_per_second=0.01,
        burst=3,
    )


def test_requests_beyond_the_rate_limit_are_refused_429_and_audited_in_aggregate(
    rate_limited_gateway: RunningGateway, loop_thread: LoopThread
) -> None:
    flooder = rate_limited_gateway.federation.paths.clients["flooder"]
    statuses = []
    for _ in range(8):  # a refusal closes the connection, so each request connects anew
        client = rate_limited_gateway.connect(flooder)
        statuses.append(fleet_call(client, flooder).status)
        client.close()
    assert statuses == [200] * 3 + [429] * 5
    records = _request_refusals(rate_limited_gateway)
    assert [(record.reason, record.details.get("suppressed_count")) for record in records] == [
        ("rate_limited", None)
    ]
    loop_thread.run(rate_limited_gateway.gateway.stop())  # stopping flushes the window
    records = _request_refusals(rate_limited_gateway)
    assert [(record.reason, record.details.get("suppressed_count")) for record in records] == [
        ("rate_limited", None),
        ("rate_limited", 4),
    ]


def test_one_client_exhausting_its_rate_does_not_limit_another(
    rate_limited_gateway: RunningGateway,
) -> None:
    clients = rate_limited_gateway.federation.paths.clients
    for _ in range(4):
        client = rate_limited_gateway.connect(clients["flooder"])
        fleet_call(client, clients["flooder"])
        client.close()
    client = rate_limited_gateway.connect(clients["bob"])
    assert fleet_call(client, clients["bob"]).status == 200
    client.close()


def test_the_gateway_forwards_to_a_superlink_that_speaks_tls(
    loop_thread: LoopThread,
    federation: ProvisionedFederation,
    tls_files: TlsFiles,
    tmp_path: Path,
) -> None:
    upstream_tls = server_tls_context(tls_files.server_certificate, tls_files.server_key)
    with running_upstream(upstream_tls) as tls_upstream:
        for running in start_gateway(
            loop_thread,
            federation,
            tls_upstream,
            tmp_path / "audit.sqlite",
            upstream_url=f"https://127.0.0.1:{tls_upstream.port}",
            upstream_ca=tls_files.ca,
            upstream_server_name="localhost",
        ):
            alice = federation.paths.clients["alice"]
            client = running.connect(alice)
            response = fleet_call(client, alice, "/v1/fleet/get-run")
            client.close()
        assert response.status == 200
        assert [request.target for request in tls_upstream.state.requests] == ["/v1/fleet/get-run"]


@pytest.mark.parametrize(
    "upstream_url",
    ["http://10.0.0.5:9095", "http://superlink.example:9095", "ftp://127.0.0.1:9095"],
)
def test_an_upstream_off_loopback_or_not_http_is_refused_by_the_configuration(
    upstream_url: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="upstream_url"):
        GatewayConfig(
            listen_host="127.0.0.1",
            listen_port=0,
            server_certificate=tmp_path / "s.pem",
            server_key=tmp_path / "k.pem",
            federation_ca=tmp_path / "ca.pem",
            crl=tmp_path / "crl.pem",
            upstream_url=upstream_url,
            audit_log=tmp_path / "audit.sqlite",
        )
