"""``GET /ztfl/health`` on a plain-HTTP loopback port, for ``ztfl server up`` and monitors.

A separate port, not a path on the public one: the public port answers nothing without a
client certificate, and a health probe should need no credentials. Loopback only, so it
tells nothing to the network. 200 when the gateway is serving and its trust is usable,
503 otherwise; the body is a small JSON object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

import h11

__all__ = ["HEALTH_PATH", "HealthServer"]

HEALTH_PATH = "/ztfl/health"


class HealthServer:
    """Answers health probes with ``status()``: ``(healthy, details)``."""

    def __init__(self, status: Callable[[], tuple[bool, dict[str, str]]]) -> None:
        self._status = status
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port."""
        if self._server is None:
            raise RuntimeError("the health server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, port: int) -> None:
        """Listen on 127.0.0.1:``port``."""
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", port)

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=4096)
        try:
            event = connection.next_event()
            while event is h11.NEED_DATA:
                connection.receive_data(await asyncio.wait_for(reader.read(4096), 5.0))
                event = connection.next_event()
            if not isinstance(event, h11.Request):
                return
            if event.method in (b"GET", b"HEAD") and event.target == HEALTH_PATH.encode():
                healthy, details = self._status()
                status = 200 if healthy else 503
                body = json.dumps({"status": "ok" if healthy else "unavailable", **details})
            else:
                status, body = 404, json.dumps({"status": "not_found"})
            payload = body.encode() + b"\n"
            headers = [
                ("content-type", "application/json"),
                ("content-length", str(len(payload))),
                ("connection", "close"),
            ]
            writer.write(connection.send(h11.Response(status_code=status, headers=headers)) or b"")
            if event.method != b"HEAD":
                writer.write(connection.send(h11.Data(data=payload)) or b"")
            writer.write(connection.send(h11.EndOfMessage()) or b"")
            await writer.drain()
        except (h11.ProtocolError, ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
