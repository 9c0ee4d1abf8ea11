"""Running an asyncio service (gateway, sidecar) in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Protocol


class AsyncService(Protocol):
    """Something that starts listening and stops cleanly (the gateway, the sidecar)."""

    async def start(self) -> None:
        """Begin serving."""

    async def stop(self) -> None:
        """Stop serving and release every resource."""


async def serve_until_signalled(service: AsyncService) -> None:
    """Start ``service``, run until SIGINT or SIGTERM, then stop it (also on an error)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.stop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signal_number)
