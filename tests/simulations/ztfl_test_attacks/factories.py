"""User-defined attack factories, good and bad."""

from __future__ import annotations

from dataclasses import dataclass

import torch

NOT_CALLABLE = 3


@dataclass(frozen=True)
class PullTowardsZero:
    """Sends −strength × own honest update minus the honest mean (an omniscient attack)."""

    strength: float
    needs_honest_updates: bool = True

    def forge(
        self, own: torch.Tensor, honest: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        return -self.strength * own - honest.mean(dim=0)


def make_pull_towards_zero(strength: float = 1.0) -> PullTowardsZero:
    """The factory a scenario names: ``ztfl_test_attacks.factories:make_pull_towards_zero``."""
    return PullTowardsZero(strength)


def make_inert() -> object:
    """Returns an object that neither forges nor poisons."""
    return object()
