"""Running an asyncio service (gateway, sidecar, launchers) in the foreground until signalled."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Protocol


class AsyncService(Protocol):
    """Something that starts listening and stops cleanly (the gateway, the sidecar)."""

    async def start(self) -> None:
        """Begin serving."""

    async def stop(self) -> object:
        """Stop serving and release every resource (safe after a start that failed half-way)."""


async def serve_until_signalled(
    service: AsyncService, *, stopped: asyncio.Event | None = None
) -> None:
    """Start ``service``, run until SIGINT or SIGTERM — or until ``stopped`` is set, e.g. by
    the service itself when a child process dies — then stop it, also after an error."""
    stop = stopped if stopped is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    try:
        await service.start()
        await stop.wait()
    finally:
        await service.stop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signal_number)
