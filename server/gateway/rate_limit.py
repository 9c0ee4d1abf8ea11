"""Per-identity token buckets: ``rate_per_s`` requests per SPIFFE id, in bursts of ``burst``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["TokenBucketLimiter"]


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBucketLimiter:
    """Token buckets keyed by identity; full buckets are forgotten so memory stays bounded.

    Keys are authenticated identities (certificate-verified SPIFFE ids), so the number of
    buckets is bounded by the federation's enrolled clients, not by attackers.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate_per_s > 0 or burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, key: str) -> bool:
        """Take one token from ``key``'s bucket; ``False`` when it is empty."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
        bucket.updated = now
        if len(self._buckets) > 4096:
            self._forget_full(now)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _forget_full(self, now: float) -> None:
        refill_s = self._burst / self._rate
        for key in [k for k, b in self._buckets.items() if now - b.updated > refill_s]:
            del self._buckets[key]
