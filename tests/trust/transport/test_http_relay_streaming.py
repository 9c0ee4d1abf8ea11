"""The relay streams bodies in both directions with bounded memory, limits sizes, keeps alive."""

from __future__ import annotations

import hashlib
import socket
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from http import HTTPStatus

import pytest

from tests.trust.transport.relay_test_servers import (
    CHUNK,
    HttpClient,
    LoopThread,
    TlsFiles,
    Upstream,
)
from ztfl.trust.transport import (
    Forward,
    HttpRelay,
    Peer,
    Reject,
    RelayFailure,
    RelayLimits,
    RelayServer,
    RequestHead,
    UpstreamTarget,
    server_tls_context,
)

MIB = 1024 * 1024


class PolicyRefusal(StrEnum):
    REFUSED_BY_POLICY = "refused_by_policy"


@dataclass
class RecordingPolicy:
    """Forwards every request except ``/refuse``; records the relay's own refusals."""

    max_body_bytes: int = 64 * MIB
    failures: list[RelayFailure] = field(default_factory=list)

    async def decide(self, request: RequestHead, peer: Peer) -> Forward | Reject:
        if request.target == "/refuse":
            return Reject(HTTPStatus.FORBIDDEN, PolicyRefusal.REFUSED_BY_POLICY)
        return Forward(request.target, request.headers, self.max_body_bytes)

    async def relay_refused(
        self, request: RequestHead | None, peer: Peer, failure: RelayFailure
    ) -> None:
        self.failures.append(failure)


@dataclass
class RunningRelay:
    port: int
    policy: RecordingPolicy


def _start_relay(
    loop_thread: LoopThread, tls_files: TlsFiles, upstream_port: int, policy: RecordingPolicy
) -> RelayServer:
    relay = HttpRelay(
        policy, UpstreamTarget("127.0.0.1", upstream_port), RelayLimits(upstream_timeout_s=10)
    )
    context = server_tls_context(tls_files.server_certificate, tls_files.server_key)
    server = RelayServer(relay, context)
    loop_thread.run(server.start("127.0.0.1", 0))
    return server


@pytest.fixture
def running_relay(
    loop_thread: LoopThread, tls_files: TlsFiles, upstream: Upstream
) -> Iterator[RunningRelay]:
    policy = RecordingPolicy(max_body_bytes=40 * MIB)
    server = _start_relay(loop_thread, tls_files, upstream.port, policy)
    yield RunningRelay(server.port, policy)
    loop_thread.run(server.stop())


def _expected_sha256(size: int) -> str:
    digest = hashlib.sha256()
    remaining = size
    while remaining:
        piece = CHUNK[: min(remaining, len(CHUNK))]
        digest.update(piece)
        remaining -= len(piece)
    return digest.hexdigest()


def _peak_while(action: object) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        baseline, _ = tracemalloc.get_traced_memory()
        assert callable(action)
        action()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - baseline


def test_a_large_request_body_reaches_the_upstream_intact_with_bounded_relay_memory(
    running_relay: RunningRelay, tls_files: TlsFiles, upstream: Upstream
) -> None:
    upstream.state.read_pause_s = 0.0005  # slower than the client: the relay must hold back
    size = 24 * MIB
    client = HttpClient(running_relay.port, tls_files)
    responses = []
    peak = _peak_while(lambda: responses.append(client.request("/upload", body_bytes=size)))
    client.close()
    assert responses[0].status == 200
    received = upstream.state.requests[-1]
    assert (received.body_bytes, received.body_sha256) == (size, _expected_sha256(size))
    assert peak < 2 * MIB, f"the relay held {peak} bytes while streaming {size}"


def test_a_large_chunked_request_body_streams_through(
    running_relay: RunningRelay, tls_files: TlsFiles, upstream: Upstream
) -> None:
    size = 8 * MIB + 123
    client = HttpClient(running_relay.port, tls_files)
    response = client.request("/upload", body_bytes=size, chunked=True)
    client.close()
    assert response.status == 200
    received = upstream.state.requests[-1]
    assert received.headers.get("transfer-encoding") == "chunked"
    assert (received.body_bytes, received.body_sha256) == (size, _expected_sha256(size))


def test_a_large_response_body_streams_back_with_bounded_relay_memory(
    running_relay: RunningRelay, tls_files: TlsFiles
) -> None:
    size = 24 * MIB
    client = HttpClient(running_relay.port, tls_files)
    responses = []
    peak = _peak_while(
        lambda: responses.append(
            client.request(
                "/download",
                headers=[("x-test-response-bytes", str(size))],
                read_pause_s=0.0005,  # a slow client: the relay must stop reading upstream
            )
        )
    )
    client.close()
    assert (responses[0].status, responses[0].body_bytes) == (200, size)
    assert responses[0].headers["content-length"] == str(size)
    assert peak < 2 * MIB, f"the relay held {peak} bytes while streaming {size}"


def test_a_response_without_length_reaches_the_client_chunked(
    running_relay: RunningRelay, tls_files: TlsFiles
) -> None:
    client = HttpClient(running_relay.port, tls_files)
    response = client.request(
        "/download",
        headers=[("x-test-response-bytes", str(MIB)), ("x-test-response-framing", "close")],
    )
    client.close()
    assert (response.status, response.body_bytes) == (200, MIB)


def test_a_declared_body_above_the_limit_is_refused_413_before_anything_is_forwarded(
    running_relay: RunningRelay, tls_files: TlsFiles, upstream: Upstream
) -> None:
    client = HttpClient(running_relay.port, tls_files)
    client.sock.sendall(
        b"POST /upload HTTP/1.1\r\nhost: localhost\r\ncontent-length: 41943041\r\n\r\n"
    )
    response = client.read_response()
    assert response.status == 413
    assert b"body_too_large" in response.body
    assert client.is_closed_by_peer()
    client.close()
    assert upstream.state.requests == []
    assert running_relay.policy.failures == [RelayFailure.BODY_TOO_LARGE]


def test_a_chunked_body_growing_past_the_limit_is_refused_413(
    running_relay: RunningRelay, tls_files: TlsFiles, upstream: Upstream
) -> None:
    client = HttpClient(running_relay.port, tls_files)
    try:
        status = client.request("/upload", body_bytes=48 * MIB, chunked=True).status
    except (ConnectionError, OSError):
        status = None  # the relay answered 413 and reset while the client was still sending
    client.close()
    assert status in (413, None)
    assert running_relay.policy.failures == [RelayFailure.BODY_TOO_LARGE]
    assert all(request.body_bytes <= 40 * MIB for request in upstream.state.requests)


def test_requests_on_one_kept_alive_connection_share_one_upstream_connection(
    running_relay: RunningRelay, tls_files: TlsFiles, upstream: Upstream
) -> None:
    client = HttpClient(running_relay.port, tls_files)
    statuses = [client.request(f"/call-{index}", body_bytes=1000).status for index in range(5)]
    client.close()
    assert statuses == [200] * 5
    assert [request.target for request in upstream.state.requests] == [
        f"/call-{index}" for index in range(5)
    ]
    assert upstream.state.connections == 1


def test_a_policy_refusal_answers_its_status_and_reason_and_closes(
    running_relay: RunningRelay, tls_files: TlsFiles, upstream: Upstream
) -> None:
    client = HttpClient(running_relay.port, tls_files)
    response = client.request("/refuse", body_bytes=10)
    assert response.status == 403
    assert response.body == b"403 Forbidden: refused_by_policy\n"
    assert response.headers["connection"] == "close"
    assert client.is_closed_by_peer()
    client.close()
    assert upstream.state.requests == []


def test_both_content_length_and_chunked_framing_is_refused_400(
    running_relay: RunningRelay, tls_files: TlsFiles, upstream: Upstream
) -> None:
    client = HttpClient(running_relay.port, tls_files)
    client.sock.sendall(
        b"POST /x HTTP/1.1\r\nhost: localhost\r\ncontent-length: 5\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    response = client.read_response()
    client.close()
    assert (response.status, response.body) == (400, b"400 Bad Request: ambiguous_framing\n")
    assert upstream.state.requests == []


def test_a_malformed_request_is_refused_400_without_a_traceback(
    running_relay: RunningRelay, tls_files: TlsFiles
) -> None:
    client = HttpClient(running_relay.port, tls_files)
    client.sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
    response = client.read_response()
    client.close()
    assert (response.status, response.body) == (400, b"400 Bad Request: malformed_request\n")


def test_an_unreachable_upstream_is_answered_502(
    loop_thread: LoopThread, tls_files: TlsFiles
) -> None:
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    policy = RecordingPolicy()
    server = _start_relay(loop_thread, tls_files, closed_port, policy)
    client = HttpClient(server.port, tls_files)
    response = client.request("/x", body_bytes=10)
    client.close()
    loop_thread.run(server.stop())
    assert (response.status, response.body) == (502, b"502 Bad Gateway: upstream_unavailable\n")
    assert policy.failures == [RelayFailure.UPSTREAM_UNAVAILABLE]
