"""A Little Is Enough (Baruch et al., 2019)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import torch


def alie_z_max(num_clients: int, num_byzantine: int) -> float:
    """Baruch et al.'s z_max: s = ⌊n/2 + 1⌋ − f supporters needed, z = Φ⁻¹((n − s)/n)."""
    supporters = math.floor(num_clients / 2 + 1) - num_byzantine
    quantile = (num_clients - supporters) / num_clients
    quantile = min(max(quantile, 1e-6), 1 - 1e-6)
    return NormalDist().inv_cdf(quantile)


@dataclass(frozen=True)
class ALittleIsEnough:
    """All Byzantine clients send μ − z·σ of the honest updates, coordinate-wise.

    ``z`` defaults to the paper's z_max for the round's n and f, with no extra
    scaling: small enough to hide inside the honest spread, so median-like
    rules follow it while a plain mean barely moves.
    """

    z: float | None = None
    needs_honest_updates: bool = True

    def forge(
        self, own: torch.Tensor, honest: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        num_byzantine = own.shape[0]
        z = (
            self.z
            if self.z is not None
            else alie_z_max(num_byzantine + honest.shape[0], num_byzantine)
        )
        mean = honest.mean(dim=0)
        std = honest.std(dim=0, correction=1) if honest.shape[0] > 1 else torch.zeros_like(mean)
        return (mean - z * std).expand_as(own).clone()
