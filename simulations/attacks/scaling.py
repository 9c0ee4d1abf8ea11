"""Scaling (boosting): send the own honest update multiplied by a large factor."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Scaling:
    """Forged update = factor · own honest update (Bhagoji et al., 2019 boosting)."""

    factor: float = 10.0
    needs_honest_updates: bool = False

    def forge(
        self, own: torch.Tensor, honest: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        return self.factor * own
