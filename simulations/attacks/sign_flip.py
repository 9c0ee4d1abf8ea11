"""Sign flipping: send the opposite of the honest update, optionally scaled."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SignFlip:
    """Forged update = −scale · own honest update (scale > 1 gives the scaled sign flip)."""

    scale: float = 1.0
    needs_honest_updates: bool = False

    def forge(
        self, own: torch.Tensor, honest: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        return -self.scale * own
