"""Krum and Multi-Krum (Blanchard et al., 2017)."""

from __future__ import annotations

import torch

from ..distances import pairwise_squared_distances
from ..errors import InvalidUpdatesError, ToleranceError
from ..matrix import check_update_matrix, normalized_weights


def krum_scores(distances: torch.Tensor, num_byzantine: int) -> torch.Tensor:
    """Score each row by the summed squared distance to its n − f − 2 nearest other rows.

    ``distances`` is the (n, n) matrix from ``pairwise_squared_distances`` (zero
    diagonal).
    """
    n = distances.shape[0]
    num_neighbours = n - num_byzantine - 2
    if num_neighbours < 1:
        raise ToleranceError(
            f"krum needs n > 2f + 2 (a neighbour per score), got n={n}, f={num_byzantine}"
        )
    return neighbour_scores(distances, num_neighbours)


def neighbour_scores(distances: torch.Tensor, num_neighbours: int) -> torch.Tensor:
    """Sum of each row's ``num_neighbours`` smallest distances to other rows.

    Sorting a row puts its zero self-distance first, so neighbours are
    positions 1 … num_neighbours.
    """
    nearest = torch.sort(distances, dim=1).values[:, 1 : num_neighbours + 1]
    return nearest.sum(dim=1)


def multi_krum_select(updates: torch.Tensor, num_byzantine: int, num_selected: int) -> torch.Tensor:
    """Indices of the ``num_selected`` rows with the lowest Krum scores, best first."""
    scores = krum_scores(pairwise_squared_distances(updates), num_byzantine)
    # A stable sort makes ties resolve to the lower index, deterministically.
    return torch.sort(scores, stable=True).indices[:num_selected]


def krum(
    updates: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    num_byzantine: int,
    validated: bool = False,
) -> torch.Tensor:
    """The single row with the lowest Krum score (a copy of it). Needs n > 2f + 2."""
    check_update_matrix(updates, validated=validated)
    normalized_weights(weights, updates)  # validated for shape; Krum selects, it does not weigh
    check_krum_tolerance(updates.shape[0], num_byzantine)
    best = multi_krum_select(updates, num_byzantine, 1)
    return updates[best[0]].clone()


def multi_krum(
    updates: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    num_byzantine: int,
    num_selected: int | None = None,
    validated: bool = False,
) -> torch.Tensor:
    """Average (weighted if given) of the m rows with the lowest Krum scores.

    ``num_selected`` defaults to n − f. Needs n > 2f + 2 and 1 ≤ m ≤ n − f.
    """
    check_update_matrix(updates, validated=validated)
    n = updates.shape[0]
    check_krum_tolerance(n, num_byzantine)
    m = n - num_byzantine if num_selected is None else num_selected
    if not 1 <= m <= n - num_byzantine:
        raise ToleranceError(f"multi_krum needs 1 ≤ m ≤ n − f, got m={m}, n={n}, f={num_byzantine}")
    chosen = multi_krum_select(updates, num_byzantine, m)
    # One matrix-vector product with zero weight on unselected rows: a single
    # pass over the matrix and no copy of the selected rows.
    mixing = torch.zeros(n, dtype=updates.dtype, device=updates.device)
    normalized = normalized_weights(weights, updates)
    mixing[chosen] = 1.0 if normalized is None else normalized[chosen]
    total = mixing.sum()
    if total <= 0:
        raise InvalidUpdatesError("multi_krum selected only rows of zero weight")
    return (mixing / total) @ updates


def check_krum_tolerance(num_clients: int, num_byzantine: int) -> None:
    """Krum's requirement n > 2f + 2."""
    if num_byzantine < 0 or num_clients <= 2 * num_byzantine + 2:
        raise ToleranceError(f"krum needs n > 2f + 2, got n={num_clients}, f={num_byzantine}")
