"""Inner product manipulation (Xie et al., 2020)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class InnerProductManipulation:
    """All Byzantine clients send −ε · mean of the honest updates.

    Small ε (0.1) makes the aggregate's inner product with the true gradient
    negative under median-like rules; large ε (e.g. 10) overwhelms a plain mean.
    """

    epsilon: float = 0.1
    needs_honest_updates: bool = True

    def forge(
        self, own: torch.Tensor, honest: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        return (-self.epsilon * honest.mean(dim=0)).expand_as(own).clone()
