"""Reputation: an exponentially weighted memory of how much each round's evidence trusts a node.

One round gives one observation ``t ∈ [0, 1]`` per sampled node (1: nothing
suspicious, 0: certainly misbehaving); the reputation follows
``r ← λ·r + (1 − λ)·t`` from ``r = 1``. A single bad round costs at most ``1 − λ``,
so a noisy honest client recovers, while a node that is suspicious round after
round falls geometrically (``λ^k`` after k rounds at t = 0). Rounds in which a
node is not sampled leave its reputation unchanged.

An anomaly score becomes an observation by a linear ramp: full trust at or
below ``trusted_score``, none at or above ``untrusted_score``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

INITIAL_REPUTATION = 1.0


@dataclass(frozen=True)
class TrustRamp:
    """Maps an anomaly score to a round's trust observation (linear between the two scores)."""

    trusted_score: float = 2.0
    """Scores at or below this are no evidence at all (t = 1)."""
    untrusted_score: float = 4.0
    """Scores at or above this are full evidence (t = 0)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.trusted_score) and self.trusted_score >= 0):
            raise ValueError(
                f"trusted_score must be a finite number ≥ 0, got {self.trusted_score!r}"
            )
        if not (math.isfinite(self.untrusted_score) and self.untrusted_score > self.trusted_score):
            raise ValueError(
                "untrusted_score must be finite and above trusted_score, "
                f"got {self.untrusted_score!r}"
            )

    def trust(self, score: float) -> float:
        """The observation for one anomaly score; NaN counts as full evidence."""
        if math.isnan(score):
            return 0.0
        span = self.untrusted_score - self.trusted_score
        return min(1.0, max(0.0, (self.untrusted_score - score) / span))


def updated_reputation(previous: float, trust: float, decay: float) -> float:
    """``λ·previous + (1 − λ)·trust``; ValueError for values outside [0, 1] (λ in [0, 1))."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay!r}")
    for name, value in (("previous", previous), ("trust", trust)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return decay * previous + (1.0 - decay) * trust


def rounds_to_fall(threshold: float, decay: float, trust: float = 0.0) -> int:
    """How many consecutive observations ``trust`` take a node from 1 below ``threshold``.

    ``r_k = trust + (1 − trust)·λ^k``; returns 0 when the threshold is above 1 and raises
    ValueError when ``trust`` never gets there (trust ≥ threshold).
    """
    if threshold > INITIAL_REPUTATION:
        return 0
    if trust >= threshold:
        raise ValueError(f"observations of {trust} never take a reputation below {threshold}")
    if decay == 0.0:
        return 1
    ratio = (threshold - trust) / (1.0 - trust)
    return math.floor(math.log(ratio) / math.log(decay)) + 1
