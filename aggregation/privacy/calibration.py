"""Calibrate the noise multiplier: the smallest z that meets a target (ε, δ) over a run."""

from __future__ import annotations

import math
from typing import Any

from .accounting import AccountantConfig, AccountingError, PrivacyAccountant

DEFAULT_MAX_NOISE_MULTIPLIER = 1000.0
MIN_NOISE_MULTIPLIER = 1e-3
"""Below this z the search stops halving; a smaller answer is reported as this bracket's top."""
DEFAULT_TOLERANCE = 1e-3
"""Relative width of the final bisection bracket on z."""


class CalibrationError(AccountingError):
    """No noise multiplier up to the allowed maximum meets the target ε."""


def calibrate_noise_multiplier(
    target_epsilon: float,
    rounds: int,
    config: AccountantConfig,
    *,
    max_noise_multiplier: float = DEFAULT_MAX_NOISE_MULTIPLIER,
    tolerance: float = DEFAULT_TOLERANCE,
) -> float:
    """Return the smallest z (to ``tolerance``, relative) with ε(z, rounds) ≤ target_epsilon.

    ε decreases in z: the search brackets the answer by doubling or halving from z = 1,
    then bisects. The returned z is the upper end of the final
    bracket, so it always meets the target; z × (1 − tolerance) may not.

    Args:
        target_epsilon: the run's budget; > 0.
        rounds: the number of rounds the run will release; ≥ 1.
        config: the accountant kind, sampling, δ (its ``noise_multiplier`` is ignored).
        max_noise_multiplier: the largest z tried; beyond it the target is refused.
        tolerance: relative bracket width at which bisection stops, in (0, 1).

    Raises:
        CalibrationError: even ``max_noise_multiplier`` gives ε above the target.
    """
    if not math.isfinite(target_epsilon) or target_epsilon <= 0:
        raise AccountingError(f"target_epsilon must be finite and > 0, got {target_epsilon!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise AccountingError(f"rounds must be an integer >= 1, got {rounds!r}")
    if not 0.0 < tolerance < 1.0:
        raise AccountingError(f"tolerance must be in (0, 1), got {tolerance!r}")
    if not math.isfinite(max_noise_multiplier) or max_noise_multiplier <= 0:
        raise AccountingError(f"max_noise_multiplier must be > 0, got {max_noise_multiplier!r}")
    settings: dict[str, Any] = config.to_dict()

    def epsilon_for(noise_multiplier: float) -> float:
        settings["noise_multiplier"] = noise_multiplier
        return PrivacyAccountant(AccountantConfig(**settings)).epsilon_after(rounds)

    # Bracket [low, high] with ε(low) > target ≥ ε(high), doubling or halving from
    # z = 1 (where practical multipliers lie), then bisect.
    maximum = float(max_noise_multiplier)
    high = min(1.0, maximum)
    if epsilon_for(high) > target_epsilon:
        while True:
            if high >= maximum:
                raise CalibrationError(
                    f"target ε={target_epsilon} at δ={config.delta} over {rounds} rounds is "
                    f"unreachable with noise_multiplier <= {maximum}"
                )
            low, high = high, min(2.0 * high, maximum)
            if epsilon_for(high) <= target_epsilon:
                break
    else:
        low = high / 2.0
        while low > MIN_NOISE_MULTIPLIER and epsilon_for(low) <= target_epsilon:
            high, low = low, low / 2.0
    while high - low > tolerance * high:
        middle = (low + high) / 2.0
        if epsilon_for(middle) > target_epsilon:
            low = middle
        else:
            high = middle
    return high
