"""Nearest-neighbour mixing (Allouah et al., 2023, "Fixing by mixing")."""

from __future__ import annotations

import torch

from ..distances import pairwise_squared_distances
from ..errors import ToleranceError
from ..matrix import check_update_matrix


def nearest_neighbour_mixing(
    updates: torch.Tensor, *, num_byzantine: int, validated: bool = False
) -> torch.Tensor:
    """Replace each row by the mean of its n − f nearest rows (itself included).

    Built as an n × n mixing matrix M (row i holds 1/(n − f) on i's neighbours)
    and applied as one product M @ X: one Gram pass, one output matrix, never
    the n × (n − f) × d gather that a direct implementation materialises.
    Needs f < n/2.
    """
    check_update_matrix(updates, validated=validated)
    n, f = updates.shape[0], num_byzantine
    if f < 0 or 2 * f >= n:
        raise ToleranceError(f"nnm needs 0 ≤ f < n/2, got n={n}, f={f}")
    if f == 0:
        mixing = torch.full((n, n), 1.0 / n, dtype=updates.dtype, device=updates.device)
        return mixing @ updates
    mixing = nnm_mixing_matrix(pairwise_squared_distances(updates), num_byzantine=f)
    return mixing.to(updates.dtype) @ updates


def nnm_mixing_matrix(distances: torch.Tensor, *, num_byzantine: int) -> torch.Tensor:
    """The (n, n) row-stochastic matrix averaging each row's n − f nearest neighbours.

    A stable sort keeps the row itself (distance exactly 0) first and breaks
    ties by index, so the result is deterministic.
    """
    n = distances.shape[0]
    k = n - num_byzantine
    neighbours = torch.sort(distances, dim=1, stable=True).indices[:, :k]
    mixing = torch.zeros((n, n), dtype=torch.float64, device=distances.device)
    mixing.scatter_(1, neighbours, 1.0 / k)
    return mixing
