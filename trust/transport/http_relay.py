"""A streaming HTTP/1.1 reverse-proxy core on asyncio and h11.

The gateway and the sidecar are the same machine with different policies: accept a
connection, read one request head, ask the policy whether and where to forward it, stream
the body through in chunks, stream the response back, repeat while the connection stays
alive. Bodies are never held whole: each chunk is written on and the writer drained before
the next is read, so a slow reader slows the sender (backpressure) and the relay holds a few
chunks per connection whatever the size of the model in transit. The one exception is a
response the policy asks to inspect (the sidecar's app bundle), buffered up to the
inspector's own limit.

Every refusal is an HTTP answer with a short text body naming the reason, followed by
closing the connection (a refused client may have left a body unread, and re-synchronising
on it is how request smuggling starts); internal errors answer 500 without detail. The
policy sees each refusal, so it can audit it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from http import HTTPStatus
from typing import Final, Protocol

import h11

__all__ = [
    "Forward",
    "HttpRelay",
    "Peer",
    "Reject",
    "RelayFailure",
    "RelayLimits",
    "RelayPolicy",
    "RelayServer",
    "RequestHead",
    "ResponseHead",
    "ResponseInspector",
    "UpstreamTarget",
]

_log = logging.getLogger(__name__)

# Hop-by-hop headers (RFC 9110 section 7.6.1) and the framing the relay sets itself.
_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    }
)
# An idle upstream connection older than this is not reused: uvicorn (the SuperLink's
# server) closes idle keep-alive connections after 5 s, and a request sent into a
# connection the server is closing fails after its body may already be gone.
_UPSTREAM_REUSE_IDLE_S: Final = 4.0
_CLOSE_GRACE_S: Final = 1.0

Headers = tuple[tuple[str, str], ...]


class RelayFailure(StrEnum):
    """Refusals the relay itself makes, whatever the policy; values are audit reasons."""

    MALFORMED_REQUEST = "malformed_request"
    AMBIGUOUS_FRAMING = "ambiguous_framing"
    """Both Content-Length and Transfer-Encoding: the classic request-smuggling shape."""
    HEADERS_TOO_LARGE = "headers_too_large"
    BODY_TOO_LARGE = "body_too_large"
    CLIENT_TIMEOUT = "client_timeout"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_PROTOCOL_ERROR = "upstream_protocol_error"
    RESPONSE_TOO_LARGE = "response_too_large"
    """A response that the policy inspects exceeded the inspector's buffer limit."""
    INTERNAL_ERROR = "internal_error"


_FAILURE_STATUS: Final = {
    RelayFailure.MALFORMED_REQUEST: HTTPStatus.BAD_REQUEST,
    RelayFailure.AMBIGUOUS_FRAMING: HTTPStatus.BAD_REQUEST,
    RelayFailure.HEADERS_TOO_LARGE: HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
    RelayFailure.BODY_TOO_LARGE: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    RelayFailure.CLIENT_TIMEOUT: HTTPStatus.REQUEST_TIMEOUT,
    RelayFailure.UPSTREAM_UNAVAILABLE: HTTPStatus.BAD_GATEWAY,
    RelayFailure.UPSTREAM_TIMEOUT: HTTPStatus.GATEWAY_TIMEOUT,
    RelayFailure.UPSTREAM_PROTOCOL_ERROR: HTTPStatus.BAD_GATEWAY,
    RelayFailure.RESPONSE_TOO_LARGE: HTTPStatus.BAD_GATEWAY,
    RelayFailure.INTERNAL_ERROR: HTTPStatus.INTERNAL_SERVER_ERROR,
}


@dataclass(frozen=True)
class Reject:
    """Answer ``status`` with a short body naming ``reason`` instead of forwarding."""

    status: HTTPStatus
    reason: Enum

    @classmethod
    def failure(cls, failure: RelayFailure) -> Reject:
        """The relay's own refusal for ``failure``, with its fixed status."""
        return cls(_FAILURE_STATUS[failure], failure)

    def to_bytes(self) -> bytes:
        """The whole HTTP/1.1 response: status line, headers, body; the connection closes."""
        body = f"{self.status.value} {self.status.phrase}: {self.reason.value}\n".encode()
        head = (
            f"HTTP/1.1 {self.status.value} {self.status.phrase}\r\n"
            "content-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        )
        return head.encode("ascii") + body


@dataclass(frozen=True)
class RequestHead:
    """A request line and headers as received (header names lower-case)."""

    method: str
    target: str
    headers: Headers

    def values(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key == wanted]


@dataclass(frozen=True)
class ResponseHead:
    """An upstream status and headers (names lower-case)."""

    status: int
    headers: Headers

    def values(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key == wanted]


class ResponseInspector(Protocol):
    """Looks at a whole (bounded) response before the client gets any of it."""

    @property
    def max_body_bytes(self) -> int:
        """The most bytes buffered; a longer response is refused (502)."""
        ...

    async def inspect(self, head: ResponseHead, body: bytes) -> Reject | None:
        """``None`` passes the response on unchanged; a ``Reject`` replaces it."""
        ...


@dataclass(frozen=True)
class Forward:
    """Forward the request to the upstream as ``target`` with these end-to-end headers."""

    target: str
    headers: Headers
    max_body_bytes: int
    inspector: ResponseInspector | None = None


@dataclass(frozen=True)
class Peer:
    """The connected client: its address and, over TLS, its certificate (DER) if it sent one."""

    address: str
    certificate_der: bytes | None


class RelayPolicy(Protocol):
    """What a relay forwards, and who hears about what it refuses."""

    async def decide(self, request: RequestHead, peer: Peer) -> Forward | Reject:
        """Forward the request, or refuse it (the policy records its own refusals)."""
        ...

    async def relay_refused(
        self, request: RequestHead | None, peer: Peer, failure: RelayFailure
    ) -> None:
        """The relay refused ``request`` itself (malformed, too large, upstream down)."""
        ...


@dataclass(frozen=True)
class UpstreamTarget:
    """Where forwarded requests go: plain TCP, or TLS with ``tls`` (verified by that context)."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    server_hostname: str | None = None

    @property
    def authority(self) -> str:
        """The Host header value for this upstream."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class RelayLimits:
    """Buffer sizes and timeouts; the defaults suit model transfers over a WAN."""

    chunk_bytes: int = 128 * 1024
    """The most bytes read (and relayed) at once. Per-chunk costs (h11 events, writes,
    wake-ups) dominate below this: 64 KiB chunks cost about twice the gateway CPU per
    megabyte (benchmarks/gateway.py), larger ones gain little; a connection holds a few
    chunks at most."""
    max_header_bytes: int = 16 * 1024
    idle_timeout_s: float = 75.0
    """How long a kept-alive client connection may wait for its next request."""
    read_timeout_s: float = 60.0
    """The longest silence while a request body is being received or a response sent."""
    connect_timeout_s: float = 10.0
    upstream_timeout_s: float = 120.0
    """The longest wait for the upstream's response head or for its next body chunk."""

    def __post_init__(self) -> None:
        for name in ("chunk_bytes", "max_header_bytes"):
            if getattr(self, name) < 1024:
                raise ValueError(f"{name} must be at least 1024")
        for name in ("idle_timeout_s", "read_timeout_s", "connect_timeout_s", "upstream_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


class _Refused(Exception):  # noqa: N818 - control flow: answer this refusal and close
    def __init__(self, reject: Reject, *, relay_failure: RelayFailure | None = None) -> None:
        super().__init__(reject.reason.value)
        self.reject = reject
        self.relay_failure = relay_failure


def _refusal(failure: RelayFailure) -> _Refused:
    return _Refused(Reject.failure(failure), relay_failure=failure)


class _Abort(Exception):  # noqa: N818 - the response was already started: just close
    pass


def _decode_headers(raw: list[tuple[bytes, bytes]]) -> Headers:
    return tuple((name.decode("ascii").lower(), value.decode("latin-1")) for name, value in raw)


def _end_to_end(headers: Headers) -> list[tuple[str, str]]:
    named_in_connection = {
        token.strip().lower()
        for key, value in headers
        if key == "connection"
        for token in value.split(",")
    }
    return [
        (key, value)
        for key, value in headers
        if key not in _HOP_BY_HOP and key not in named_in_connection
    ]


@dataclass
class _Side:
    """One HTTP/1.1 connection: its streams and its h11 state machine."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    http: h11.Connection
    chunk_bytes: int
    last_used: float = field(default_factory=time.monotonic)

    async def next_event(self, timeout_s: float) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                async with asyncio.timeout(timeout_s):  # no task per read, unlike wait_for
                    data = await self.reader.read(self.chunk_bytes)
                self.http.receive_data(data)
                continue
            return event  # type: ignore[return-value]

    async def send(self, event: h11.Event, timeout_s: float) -> None:
        # The pieces as h11 frames them, written as they are: joining them would copy
        # every body chunk once more on its way through.
        pieces = self.http.send_with_data_passthrough(event)
        if pieces:
            for piece in pieces:
                self.writer.write(piece)
            async with asyncio.timeout(timeout_s):
                await self.writer.drain()

    async def close(self) -> None:
        # A TLS close waits for the peer's close_notify (30 s by default); a peer still
        # sending a refused body never sends it, so after a grace second the socket is reset.
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), _CLOSE_GRACE_S)
        except Exception:
            self.writer.transport.abort()


class HttpRelay:
    """Relays HTTP/1.1 exchanges from accepted connections to one upstream, by a policy."""

    def __init__(
        self, policy: RelayPolicy, upstream: UpstreamTarget, limits: RelayLimits | None = None
    ) -> None:
        self._policy = policy
        self._upstream = upstream
        self._limits = limits or RelayLimits()

    @property
    def limits(self) -> RelayLimits:
        """The relay's buffer sizes and timeouts."""
        return self._limits

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer
    ) -> None:
        """Serve requests on one accepted (and, for TLS, handshaken) connection until it ends."""
        limits = self._limits
        client = _Side(
            reader,
            writer,
            h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes),
            limits.chunk_bytes,
        )
        upstream: _Side | None = None
        try:
            while True:
                request = await self._next_request(client, peer)
                if request is None:
                    return
                upstream = await self._handle(client, upstream, request, peer)
                if client.http.our_state is not h11.DONE or client.http.their_state is not h11.DONE:
                    return
                client.http.start_next_cycle()
        except _Refused as refused:
            if refused.relay_failure is not None:
                await self._policy.relay_refused(None, peer, refused.relay_failure)
            await self._answer(client, refused.reject)
        except (_Abort, ConnectionError, TimeoutError, ssl.SSLError, h11.ProtocolError):
            pass
        except Exception:
            _log.exception("relay connection from %s failed", peer.address)
            await self._answer(client, Reject.failure(RelayFailure.INTERNAL_ERROR))
        finally:
            if upstream is not None:
                await upstream.close()
            await client.close()

    async def _next_request(self, client: _Side, peer: Peer) -> RequestHead | None:
        try:
            event = await client.next_event(self._limits.idle_timeout_s)
        except TimeoutError:
            return None
        except h11.RemoteProtocolError as error:
            too_large = error.error_status_hint == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
            raise _refusal(
                RelayFailure.HEADERS_TOO_LARGE if too_large else RelayFailure.MALFORMED_REQUEST
            ) from None
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise _refusal(RelayFailure.MALFORMED_REQUEST)
        try:
            return RequestHead(
                event.method.decode("ascii"),
                event.target.decode("ascii"),
                _decode_headers(list(event.headers)),
            )
        except UnicodeDecodeError:
            raise _refusal(RelayFailure.MALFORMED_REQUEST) from None

    async def _handle(
        self, client: _Side, upstream: _Side | None, request: RequestHead, peer: Peer
    ) -> _Side | None:
        """One exchange; returns the upstream connection to reuse, if any."""
        decision = await self._policy.decide(request, peer)
        if isinstance(decision, Reject):
            raise _Refused(decision)
        try:
            return await self._forward(client, upstream, request, decision)
        except _Refused as refused:
            if refused.relay_failure is not None:
                await self._policy.relay_refused(request, peer, refused.relay_failure)
            raise _Refused(refused.reject) from None

    async def _forward(
        self, client: _Side, upstream: _Side | None, request: RequestHead, forward: Forward
    ) -> _Side | None:
        content_length = self._content_length(request, forward.max_body_bytes)
        upstream = await self._upstream_connection(upstream)
        try:
            framing = (
                [("transfer-encoding", "chunked")]
                if content_length is None
                else [("content-length", str(content_length))]
            )
            head = [("host", self._upstream.authority), *_end_to_end(forward.headers), *framing]
            await self._to_upstream(
                upstream, h11.Request(method=request.method, target=forward.target, headers=head)
            )
            await self._stream_request_body(client, upstream, forward.max_body_bytes)
            response = await self._response_head(upstream)
            if forward.inspector is not None:
                await self._relay_inspected(client, upstream, response, forward.inspector)
            else:
                await self._relay_streamed(client, upstream, response)
        except BaseException:
            await upstream.close()
            raise
        if upstream.http.our_state is h11.DONE and upstream.http.their_state is h11.DONE:
            upstream.http.start_next_cycle()
            upstream.last_used = time.monotonic()
            return upstream
        await upstream.close()
        return None

    @staticmethod
    def _content_length(request: RequestHead, max_body_bytes: int) -> int | None:
        """The declared body length (0 without a body), or ``None`` for a chunked body."""
        lengths = request.values("content-length")
        chunked = bool(request.values("transfer-encoding"))
        if chunked and lengths:
            raise _refusal(RelayFailure.AMBIGUOUS_FRAMING)
        if chunked:
            return None
        length = int(lengths[0]) if lengths else 0  # h11 validated the digits and duplicates
        if length > max_body_bytes:
            raise _refusal(RelayFailure.BODY_TOO_LARGE)
        return length

    async def _upstream_connection(self, upstream: _Side | None) -> _Side:
        if upstream is not None:
            fresh = time.monotonic() - upstream.last_used < _UPSTREAM_REUSE_IDLE_S
            if fresh and upstream.http.our_state is h11.IDLE and not upstream.reader.at_eof():
                return upstream
            await upstream.close()
        target = self._upstream
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    target.host,
                    target.port,
                    ssl=target.tls,
                    server_hostname=(target.server_hostname or target.host) if target.tls else None,
                    limit=self._limits.chunk_bytes,
                ),
                self._limits.connect_timeout_s,
            )
        except (OSError, TimeoutError, ssl.SSLError):
            raise _refusal(RelayFailure.UPSTREAM_UNAVAILABLE) from None
        return _Side(reader, writer, h11.Connection(h11.CLIENT), self._limits.chunk_bytes)

    async def _to_upstream(self, upstream: _Side, event: h11.Event) -> None:
        try:
            await upstream.send(event, self._limits.upstream_timeout_s)
        except TimeoutError:
            raise _refusal(RelayFailure.UPSTREAM_TIMEOUT) from None
        except (ConnectionError, ssl.SSLError):
            raise _refusal(RelayFailure.UPSTREAM_UNAVAILABLE) from None

    async def _stream_request_body(self, client: _Side, upstream: _Side, max_bytes: int) -> None:
        received = 0
        while True:
            try:
                event = await client.next_event(self._limits.read_timeout_s)
            except TimeoutError:
                raise _refusal(RelayFailure.CLIENT_TIMEOUT) from None
            except h11.RemoteProtocolError:
                raise _refusal(RelayFailure.MALFORMED_REQUEST) from None
            if isinstance(event, h11.Data):
                received += len(event.data)
                if received > max_bytes:
                    raise _refusal(RelayFailure.BODY_TOO_LARGE)
                await self._to_upstream(upstream, h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                await self._to_upstream(upstream, h11.EndOfMessage())
                return
            else:  # ConnectionClosed mid-body: the client is gone
                raise _Abort

    async def _upstream_event(self, upstream: _Side) -> h11.Event | type[h11.PAUSED]:
        try:
            return await upstream.next_event(self._limits.upstream_timeout_s)
        except TimeoutError:
            raise _refusal(RelayFailure.UPSTREAM_TIMEOUT) from None
        except (ConnectionError, ssl.SSLError, h11.RemoteProtocolError):
            raise _refusal(RelayFailure.UPSTREAM_PROTOCOL_ERROR) from None

    async def _response_head(self, upstream: _Side) -> ResponseHead:
        while True:
            event = await self._upstream_event(upstream)
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue and the like are answered by the relay's own flow
            if isinstance(event, h11.Response):
                return ResponseHead(event.status_code, _decode_headers(list(event.headers)))
            raise _refusal(RelayFailure.UPSTREAM_PROTOCOL_ERROR)

    async def _relay_streamed(self, client: _Side, upstream: _Side, response: ResponseHead) -> None:
        lengths = response.values("content-length")
        headers = _end_to_end(response.headers)
        if lengths:  # otherwise h11 frames the body as chunked
            headers.append(("content-length", lengths[0]))
        await client.send(
            h11.Response(status_code=response.status, headers=headers), self._limits.read_timeout_s
        )
        # From here on the client has a status line: a failure can only close the connection.
        while True:
            try:
                event = await self._upstream_event(upstream)
            except _Refused:
                raise _Abort from None
            if isinstance(event, h11.Data):
                await client.send(h11.Data(data=event.data), self._limits.read_timeout_s)
            elif isinstance(event, h11.EndOfMessage):
                await client.send(h11.EndOfMessage(), self._limits.read_timeout_s)
                return
            else:
                raise _Abort

    async def _relay_inspected(
        self, client: _Side, upstream: _Side, response: ResponseHead, inspector: ResponseInspector
    ) -> None:
        body = bytearray()
        while True:
            event = await self._upstream_event(upstream)
            if isinstance(event, h11.Data):
                if len(body) + len(event.data) > inspector.max_body_bytes:
                    raise _refusal(RelayFailure.RESPONSE_TOO_LARGE)
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise _refusal(RelayFailure.UPSTREAM_PROTOCOL_ERROR)
        verdict = await inspector.inspect(response, bytes(body))
        if verdict is not None:
            raise _Refused(verdict)
        headers = [*_end_to_end(response.headers), ("content-length", str(len(body)))]
        timeout_s = self._limits.read_timeout_s
        await client.send(h11.Response(status_code=response.status, headers=headers), timeout_s)
        await client.send(h11.Data(data=bytes(body)), timeout_s)
        await client.send(h11.EndOfMessage(), timeout_s)

    async def _answer(self, client: _Side, reject: Reject) -> None:
        """Send a refusal, unless a response was already started (then only close)."""
        if client.http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        with contextlib.suppress(Exception):
            client.writer.write(reject.to_bytes())
            await asyncio.wait_for(client.writer.drain(), 5.0)


HandshakeFailureHandler = Callable[[str, Exception], Awaitable[None]]


class RelayServer:
    """Accepts connections (TLS handshake included) and hands each to an ``HttpRelay``.

    The handshake runs inside the connection handler rather than in the listening socket,
    so a failed handshake (no client certificate, another CA, expired) reaches
    ``on_handshake_failure`` with the peer's address, for the audit log.
    """

    def __init__(
        self,
        relay: HttpRelay,
        tls: ssl.SSLContext | None,
        *,
        handshake_timeout_s: float = 15.0,
        on_handshake_failure: HandshakeFailureHandler | None = None,
    ) -> None:
        self._relay = relay
        self._tls = tls
        self._handshake_timeout_s = handshake_timeout_s
        self._on_handshake_failure = on_handshake_failure
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (useful after binding port 0)."""
        if self._server is None:
            raise RuntimeError("the relay server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, host: str, port: int) -> None:
        """Bind and start accepting connections."""
        if self._server is not None:
            raise RuntimeError("the relay server is already started")
        # The accepted streams buffer up to about two chunks before pausing the socket.
        self._server = await asyncio.start_server(
            self._accept, host, port, limit=self._relay.limits.chunk_bytes
        )

    async def stop(self) -> None:
        """Stop accepting, end open connections and wait for them."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            peer = await self._handshake(reader, writer)
            if peer is not None:
                await self._relay.serve_connection(reader, writer, peer)
        except asyncio.CancelledError:
            writer.close()
        finally:
            self._connections.discard(task)

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Peer | None:
        address = writer.get_extra_info("peername")
        where = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        if self._tls is None:
            return Peer(where, None)
        try:
            await writer.start_tls(self._tls, ssl_handshake_timeout=self._handshake_timeout_s)
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as error:
            writer.close()
            if self._on_handshake_failure is not None:
                await self._on_handshake_failure(where, error)
            return None
        ssl_object = writer.get_extra_info("ssl_object")
        certificate = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        return Peer(where, certificate)
