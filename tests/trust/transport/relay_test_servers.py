"""Real loopback servers for the relay tests: TLS material, an event-loop thread, an upstream.

Imported by this folder's conftest (fixtures) and tests (types and the client).

The relay runs on its own event loop in a thread, as it would in a process of its own; the
tests talk to it with blocking sockets and the upstream is a threaded h11 server that
hashes what it receives and streams back bodies made from one reused buffer, so the
memory the test process holds in flight is the relay's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import h11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

T = TypeVar("T")
CHUNK = bytes(range(256)) * 256  # 64 KiB, reused for every body the tests send


class LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_certificate: Path
    server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost."""
    root = tmp_path_factory.mktemp("tls")
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("relay test CA"))
        .issuer_name(_name("relay test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(root / "ca.pem", root / "server.pem", root / "server-key.pem")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.server_key.chmod(0o600)
    return files


@dataclass
class ReceivedRequest:
    method: str
    target: str
    headers: dict[str, str]
    body_bytes: int
    body_sha256: str


@dataclass
class UpstreamState:
    requests: list[ReceivedRequest] = field(default_factory=list)
    connections: int = 0
    read_pause_s: float = 0.0
    """Pause after each chunk read: a slow upstream, so the relay must apply backpressure."""
    lock: threading.Lock = field(default_factory=threading.Lock)


class _UpstreamHandler(socketserver.BaseRequestHandler):
    server: _UpstreamServer

    def handle(self) -> None:
        state = self.server.state
        with state.lock:
            state.connections += 1
        connection = h11.Connection(h11.SERVER)
        sock: socket.socket = self.request
        if self.server.tls is not None:
            sock = self.server.tls.wrap_socket(sock, server_side=True)
        buffer = bytearray(64 * 1024)
        while True:
            head: h11.Request | None = None
            digest = hashlib.sha256()
            size = 0
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    count = sock.recv_into(buffer)
                    connection.receive_data(bytes(buffer[:count]) if count else b"")
                    if state.read_pause_s:
                        time.sleep(state.read_pause_s)
                    continue
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
                if isinstance(event, h11.Request):
                    head = event
                elif isinstance(event, h11.Data):
                    digest.update(event.data)
                    size += len(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
            assert head is not None
            headers = {k.decode().lower(): v.decode("latin-1") for k, v in head.headers}
            with state.lock:
                state.requests.append(
                    ReceivedRequest(
                        head.method.decode(),
                        head.target.decode(),
                        headers,
                        size,
                        digest.hexdigest(),
                    )
                )
            response_bytes = int(headers.get("x-test-response-bytes", "2"))
            framing = headers.get("x-test-response-framing", "length")
            response_headers = [("content-type", "application/octet-stream")]
            if framing == "length":
                response_headers.append(("content-length", str(response_bytes)))
            sock.sendall(connection.send(h11.Response(status_code=200, headers=response_headers)))
            remaining = response_bytes
            while remaining:
                piece = CHUNK[: min(remaining, len(CHUNK))]
                sock.sendall(connection.send(h11.Data(data=piece)))
                remaining -= len(piece)
            sock.sendall(connection.send(h11.EndOfMessage()))
            if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                return
            connection.start_next_cycle()


class _UpstreamServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _UpstreamHandler)
        self.state = UpstreamState()
        self.tls = tls


@dataclass
class Upstream:
    port: int
    state: UpstreamState


@contextlib.contextmanager
def running_upstream(tls: ssl.SSLContext | None = None) -> Iterator[Upstream]:
    """An upstream on loopback (plain HTTP, or TLS with ``tls``) that records what it receives."""
    server = _UpstreamServer(tls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Upstream(server.server_address[1], server.state)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """A plain-HTTP upstream on loopback that records what it receives."""
    with running_upstream() as server:
        yield server


def client_context(tls: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls.ca))
    return context


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body_bytes: int
    body: bytes


class HttpClient:
    """A blocking HTTP/1.1 client over one TLS connection, for keep-alive tests."""

    def __init__(self, port: int, tls: TlsFiles | ssl.SSLContext) -> None:
        context = tls if isinstance(tls, ssl.SSLContext) else client_context(tls)
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.http = h11.Connection(h11.CLIENT)
        self._buffer = bytearray(64 * 1024)

    def _send(self, event: h11.Event) -> None:
        data = self.http.send(event)
        assert data is not None
        self.sock.sendall(data)

    def request(
        self,
        target: str,
        *,
        body_bytes: int = 0,
        chunked: bool = False,
        headers: list[tuple[str, str]] | None = None,
        keep_body: int = 4096,
        read_pause_s: float = 0.0,
    ) -> RawResponse:
        framing = (
            [("transfer-encoding", "chunked")] if chunked else [("content-length", str(body_bytes))]
        )
        all_headers = [("host", "localhost"), *framing, *(headers or [])]
        self._send(h11.Request(method="POST", target=target, headers=all_headers))
        remaining = body_bytes
        while remaining:
            piece = CHUNK[: min(remaining, len(CHUNK))]
            self._send(h11.Data(data=piece))
            remaining -= len(piece)
        self._send(h11.EndOfMessage())
        return self.read_response(keep_body, read_pause_s)

    def read_response(self, keep_body: int = 4096, read_pause_s: float = 0.0) -> RawResponse:
        status = 0
        headers: dict[str, str] = {}
        size = 0
        kept = bytearray()
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                count = self.sock.recv_into(self._buffer)
                self.http.receive_data(bytes(self._buffer[:count]) if count else b"")
                if read_pause_s:
                    time.sleep(read_pause_s)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if len(kept) < keep_body:
                    kept += event.data[: keep_body - len(kept)]
            elif isinstance(event, h11.EndOfMessage):
                if self.http.our_state is h11.DONE and self.http.their_state is h11.DONE:
                    self.http.start_next_cycle()
                return RawResponse(status, headers, size, bytes(kept))
            else:
                raise ConnectionError(f"connection ended before the response: {event!r}")

    def is_closed_by_peer(self) -> bool:
        """True when the server has closed the connection (EOF on the next read)."""
        self.sock.settimeout(5)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.sock.close()
