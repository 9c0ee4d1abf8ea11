"""Which nodes take part in a round.

Sampling must be unpredictable to clients (an attacker who knows when it will
be sampled can time its attack), so without a seed the generator is seeded
from the operating system's secure source; a seed makes simulations
reproducible.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class NodeSampler:
    """Uniform sampling without replacement from the eligible nodes."""

    def __init__(self, seed: int | None = None) -> None:
        self._generator = np.random.default_rng(secrets.randbits(128) if seed is None else seed)

    def sample(self, node_ids: Sequence[int], count: int) -> tuple[int, ...]:
        """``count`` distinct nodes (all of them when ``count`` is 0 or too large), sorted."""
        ordered = sorted(node_ids)
        if count <= 0 or count >= len(ordered):
            return tuple(ordered)
        chosen = self._generator.choice(len(ordered), size=count, replace=False)
        return tuple(sorted(ordered[int(index)] for index in chosen))

    def sample_poisson(
        self, node_ids: Sequence[int], rate: float, generator: np.random.Generator | None = None
    ) -> tuple[int, ...]:
        """Each node independently with probability ``rate`` (possibly none), sorted.

        ``generator`` (a secure one for DP without a seed) replaces this sampler's own.
        """
        ordered = sorted(node_ids)
        draws = (generator or self._generator).random(len(ordered))
        return tuple(node for node, draw in zip(ordered, draws, strict=True) if draw < rate)

    def draw_seed(self) -> int:
        """A fresh 31-bit seed for a client's local randomness."""
        return int(self._generator.integers(0, 2**31 - 1))

    def state(self) -> dict[str, Any]:
        """The generator's state, JSON-ready: a resumed run samples exactly as this one would."""
        return dict(self._generator.bit_generator.state)

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state` snapshot."""
        self._generator.bit_generator.state = dict(state)
