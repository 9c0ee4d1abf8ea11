"""Writing the gateway's refusals to the audit log without letting a flood drown it.

Most refusals are rare and each one is evidence, so each becomes its own record. Two kinds
are cheap for anyone to cause in bulk: rate-limit refusals (by an admitted client) and
failed TLS handshakes (by anyone who can reach the port). Those are aggregated per key
(reason and identity or source address) and window: the first in a window is written at
once, the rest are counted and written as one record with ``suppressed_count`` when the
next one arrives after the window, or when the gateway stops.

Appends are durable SQLite transactions (an fsync each), so they run in a worker thread,
never on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

from ztfl.trust.audit import AuditEventKind, AuditLog

__all__ = ["RefusalAuditor"]


@dataclass
class _Window:
    started: float
    suppressed: int
    kind: AuditEventKind
    reason: Enum
    details: Mapping[str, object]


RefusalCounter = Callable[[AuditEventKind, Enum], None]
"""Told of each refusal by audit kind and reason enum (e.g. the gateway's Prometheus counter)."""


class RefusalAuditor:
    """Appends refusals to an ``AuditLog``; ``aggregate_key`` turns on per-window aggregation."""

    def __init__(
        self,
        audit_log: AuditLog,
        run_id: str,
        window_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_refusal: RefusalCounter | None = None,
    ) -> None:
        """``on_refusal`` sees every refusal, also those the window folds into one record
        (the metrics count them all)."""
        self._on_refusal = on_refusal
        self._log = audit_log
        self._run_id = run_id
        self._window_s = window_s
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    async def record(
        self,
        kind: AuditEventKind,
        reason: Enum,
        details: Mapping[str, object],
        *,
        aggregate_key: str | None = None,
    ) -> None:
        """Audit one refusal (or count it into its key's open window)."""
        if self._on_refusal is not None:
            self._on_refusal(kind, reason)
        if aggregate_key is None:
            await self._append(kind, reason, details)
            return
        now = self._clock()
        window = self._windows.get(aggregate_key)
        if window is not None and now - window.started < self._window_s:
            window.suppressed += 1
            return
        if window is not None and window.suppressed:
            await self._flush(window)
        self._windows[aggregate_key] = _Window(now, 0, kind, reason, details)
        if len(self._windows) > 10_000:
            await self.flush_all()
        await self._append(kind, reason, details)

    async def flush_all(self) -> None:
        """Write every window's suppressed count (at shutdown)."""
        windows, self._windows = list(self._windows.values()), {}
        for window in windows:
            if window.suppressed:
                await self._flush(window)

    async def _flush(self, window: _Window) -> None:
        details = dict(window.details)
        details["suppressed_count"] = window.suppressed
        details["window_s"] = self._window_s
        await self._append(window.kind, window.reason, details)

    async def _append(
        self, kind: AuditEventKind, reason: Enum, details: Mapping[str, object]
    ) -> None:
        await asyncio.to_thread(
            self._log.append, kind, run_id=self._run_id, reason=reason, details=details
        )
