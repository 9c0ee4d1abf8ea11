"""Bulyan (El Mhamdi et al., 2018)."""

from __future__ import annotations

import torch

from ..distances import pairwise_squared_distances
from ..errors import ToleranceError
from ..kernels import column_mean_around_median
from ..matrix import check_update_matrix, require_uniform
from .krum import neighbour_scores


def bulyan(
    updates: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    num_byzantine: int,
    validated: bool = False,
) -> torch.Tensor:
    """Select θ = n − 2f rows by iterated Krum, then average per coordinate the β = θ − 2f
    values closest to the median of the selection. Needs n ≥ 4f + 3.
    """
    check_update_matrix(updates, validated=validated)
    require_uniform(weights, updates, "bulyan")
    n, f = updates.shape[0], num_byzantine
    check_bulyan_tolerance(n, f)
    chosen = select_bulyan_rows(pairwise_squared_distances(updates), f)
    selection = updates.index_select(0, torch.tensor(chosen, device=updates.device))
    return column_mean_around_median(selection, len(chosen) - 2 * f)


def select_bulyan_rows(distances: torch.Tensor, num_byzantine: int) -> list[int]:
    """Bulyan's first stage: θ = n − 2f rows chosen by iterated Krum, in ascending index order.

    The n × n distance matrix is computed once; each Krum iteration scores the
    rows still in the pool on the sub-matrix, as the paper re-runs Krum on the
    remaining set.
    """
    n, f = distances.shape[0], num_byzantine
    pool = list(range(n))
    selected: list[int] = []
    for _ in range(n - 2 * f):
        pool_index = torch.tensor(pool, device=distances.device)
        sub = distances.index_select(0, pool_index).index_select(1, pool_index)
        # Late in the selection the pool can hold fewer than f + 3 rows; like
        # Flower's aggregate_bulyan, score with at least one neighbour then.
        num_neighbours = max(1, len(pool) - f - 2)
        winner = int(torch.argmin(neighbour_scores(sub, num_neighbours))) if len(pool) > 1 else 0
        selected.append(pool.pop(winner))
    return sorted(selected)


def check_bulyan_tolerance(num_clients: int, num_byzantine: int) -> None:
    """Bulyan's requirement n ≥ 4f + 3."""
    if num_byzantine < 0 or num_clients < 4 * num_byzantine + 3:
        raise ToleranceError(f"bulyan needs n ≥ 4f + 3, got n={num_clients}, f={num_byzantine}")
