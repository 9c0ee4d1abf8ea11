"""Gaussian noise: send random noise instead of an update."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GaussianNoise:
    """Forged update ~ N(0, std²) per coordinate, independently per Byzantine client."""

    std: float = 0.5
    needs_honest_updates: bool = False

    def forge(
        self, own: torch.Tensor, honest: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        noise = torch.randn(own.shape, generator=generator, dtype=torch.float64)
        return (self.std * noise).to(own.dtype)
