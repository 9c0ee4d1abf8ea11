"""Adaptive clip norm (Andrew et al., 2021, "Differentially private learning with adaptive
clipping").

Each round the clip norm C moves geometrically towards the γ-quantile of the clients' update
norms: C ← C · exp(−η (b̃ − γ)), where b̃ is a noisy estimate of the fraction of clients whose
update was *not* clipped. Too many unclipped updates (b̃ > γ) shrink C; too few grow it. The
round's own C clips the round's updates and scales the round's noise; the new C is for the
next round.

The count is private too. Following the paper, the bits are centred (bᵢ − ½, sensitivity ½
under add/remove) and the estimate uses the fixed denominator m:
b̃ = (Σᵢ (bᵢ − ½) + N(0, σ_b²)) / m + ½. Releasing it with the noisy update is one Gaussian
mechanism whose noise multiplier z satisfies z⁻² = z_Δ⁻² + (2σ_b)⁻², so for a target z the
update gets z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) (``update_noise_multiplier``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from .clipping import UnclippedCount
from .sensitivity import DPConfigurationError, NeighbouringRelation

STEP_NAME = "adaptive clipping"


@dataclass(frozen=True)
class AdaptiveClippingConfig:
    """Adaptive clipping's parameters, validated when built.

    Attributes:
        initial_clip_norm: C₀ > 0, the first round's clip norm.
        count_noise_stddev: σ_b ≥ 0, the noise on the count of unclipped updates, in clients
            (the paper suggests expected_clients / 20).
        expected_clients: m ≥ 1, the fixed denominator (expected clients per round).
        learning_rate: η > 0 of the geometric update (the paper uses 0.2).
        target_unclipped_quantile: γ in (0, 1), the fraction of updates to leave unclipped.
    """

    initial_clip_norm: float
    count_noise_stddev: float
    expected_clients: int
    learning_rate: float = 0.2
    target_unclipped_quantile: float = 0.5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial_clip_norm) and self.initial_clip_norm > 0):
            _refuse(f"initial_clip_norm must be finite and > 0, got {self.initial_clip_norm}")
        if not (math.isfinite(self.count_noise_stddev) and self.count_noise_stddev >= 0):
            _refuse(f"count_noise_stddev must be finite and ≥ 0, got {self.count_noise_stddev}")
        if self.expected_clients < 1:
            _refuse(f"expected_clients must be ≥ 1, got {self.expected_clients}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            _refuse(f"learning_rate must be finite and > 0, got {self.learning_rate}")
        if not 0 < self.target_unclipped_quantile < 1:
            _refuse(
                "target_unclipped_quantile must lie in (0, 1), "
                f"got {self.target_unclipped_quantile}"
            )


def update_noise_multiplier(
    noise_multiplier: float,
    count_noise_stddev: float,
    *,
    relation: NeighbouringRelation = "add_or_remove_one",
) -> float:
    """The update's noise multiplier z_Δ = (z⁻² − (s/σ_b)²)^(−1/2) for a total multiplier z.

    s is the centred count's sensitivity: ½ under add-or-remove-one (the paper's
    (z⁻² − (2σ_b)⁻²)^(−1/2)), 1 under replace-one (a bit flips from −½ to ½). Refused
    (DPConfigurationError) when σ_b ≤ s·z: the count alone would then spend the whole budget,
    and no update noise could keep the total at z. Raise σ_b.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        _refuse(f"noise_multiplier must be finite and > 0, got {noise_multiplier}")
    count_sensitivity = _COUNT_SENSITIVITY.get(relation)
    if count_sensitivity is None:
        _refuse(f"unknown neighbouring relation {relation!r}")
    if not count_noise_stddev > count_sensitivity * noise_multiplier:
        _refuse(
            f"count_noise_stddev σ_b = {count_noise_stddev:g} is too small for the noise "
            f"multiplier z = {noise_multiplier:g} under {relation}; it needs "
            f"σ_b > {count_sensitivity:g}·z"
        )
    remaining = noise_multiplier**-2 - (count_sensitivity / count_noise_stddev) ** 2
    return 1.0 / math.sqrt(remaining)


_COUNT_SENSITIVITY = {"add_or_remove_one": 0.5, "replace_one": 1.0}


def noisy_unclipped_fraction(
    unclipped: UnclippedCount,
    *,
    count_noise_stddev: float,
    expected_clients: int,
    generator: np.random.Generator,
) -> float:
    """b̃ = (Σᵢ (bᵢ − ½) + N(0, σ_b²)) / m + ½, the private fraction of unclipped updates.

    Args:
        unclipped: the round's count of unclipped updates and of clients.
        count_noise_stddev: σ_b, in clients.
        expected_clients: the fixed denominator m.
        generator: source of the noise (a secure generator in production).
    """
    centred = unclipped.count - unclipped.num_clients / 2
    noise = float(generator.normal(0.0, count_noise_stddev)) if count_noise_stddev > 0 else 0.0
    return (centred + noise) / expected_clients + 0.5


def next_clip_norm(
    clip_norm: float,
    unclipped_fraction: float,
    *,
    learning_rate: float,
    target_unclipped_quantile: float,
) -> float:
    """C · exp(−η (b̃ − γ)): the next round's clip norm (pure; the noise is already in b̃)."""
    return clip_norm * math.exp(-learning_rate * (unclipped_fraction - target_unclipped_quantile))


class AdaptiveClipNorm:
    """The coordinator's running clip norm; its state is a JSON-able mapping.

    Use ``clip_norm`` to clip (and scale the noise of) the current round, then ``advance``
    with that round's ``UnclippedCount`` to move to the next round's clip norm.
    """

    def __init__(
        self, config: AdaptiveClippingConfig, *, clip_norm: float | None = None, rounds: int = 0
    ) -> None:
        current = config.initial_clip_norm if clip_norm is None else clip_norm
        if not (math.isfinite(current) and current > 0):
            _refuse(f"clip_norm must be finite and > 0, got {current}")
        if rounds < 0:
            _refuse(f"rounds must be ≥ 0, got {rounds}")
        self.config = config
        self._clip_norm = float(current)
        self._rounds = rounds

    @property
    def clip_norm(self) -> float:
        """The current round's clip norm."""
        return self._clip_norm

    @property
    def rounds(self) -> int:
        """Rounds advanced so far."""
        return self._rounds

    def advance(self, unclipped: UnclippedCount, generator: np.random.Generator) -> float:
        """Record the round's unclipped count and return the next round's clip norm."""
        fraction = noisy_unclipped_fraction(
            unclipped,
            count_noise_stddev=self.config.count_noise_stddev,
            expected_clients=self.config.expected_clients,
            generator=generator,
        )
        self._clip_norm = next_clip_norm(
            self._clip_norm,
            fraction,
            learning_rate=self.config.learning_rate,
            target_unclipped_quantile=self.config.target_unclipped_quantile,
        )
        self._rounds += 1
        return self._clip_norm

    def state(self) -> dict[str, float | int]:
        """JSON-able state for the coordinator's persisted state."""
        return {"clip_norm": self._clip_norm, "rounds": self._rounds}

    @classmethod
    def from_state(
        cls, config: AdaptiveClippingConfig, state: Mapping[str, Any]
    ) -> AdaptiveClipNorm:
        """Resume from ``state()``'s output (as read back from JSON)."""
        clip_norm, rounds = state.get("clip_norm"), state.get("rounds")
        if not isinstance(clip_norm, int | float) or isinstance(clip_norm, bool):
            _refuse(f"state needs a numeric clip_norm, got {clip_norm!r}")
        if not isinstance(rounds, int) or isinstance(rounds, bool):
            _refuse(f"state needs an integer rounds, got {rounds!r}")
        return cls(config, clip_norm=float(clip_norm), rounds=rounds)


def _refuse(reason: str) -> NoReturn:
    raise DPConfigurationError(STEP_NAME, reason)
