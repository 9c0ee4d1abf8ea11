"""Pairwise squared Euclidean distances between the rows of an update matrix.

One Gram matrix product (a single BLAS pass over the data) gives all n² distances:
``‖xᵢ − xⱼ‖² = ‖xᵢ‖² + ‖xⱼ‖² − 2⟨xᵢ, xⱼ⟩``. The diagonal is set to exactly zero
and rounding negatives are clamped, so a row's distance to itself is 0 — the
assumption Krum makes and that a float32 Gram trick alone does not guarantee.
Distances come back in float64 so scores summed over many neighbours keep
their order.
"""

from __future__ import annotations

import torch


def pairwise_squared_distances(updates: torch.Tensor) -> torch.Tensor:
    """Return the (n, n) float64 matrix of squared L2 distances between rows."""
    gram = (updates @ updates.T).to(torch.float64)
    squared_norms = torch.diagonal(gram).clone()
    distances = squared_norms[:, None] + squared_norms[None, :] - 2.0 * gram
    distances.clamp_(min=0.0)
    distances.fill_diagonal_(0.0)
    return distances


def squared_distances_to(
    updates: torch.Tensor, point: torch.Tensor, squared_norms: torch.Tensor
) -> torch.Tensor:
    """Return ‖xᵢ − point‖² for every row, in float64, with one matrix-vector pass.

    ``squared_norms`` holds the rows' ‖xᵢ‖² (float64), computed once by iterative
    rules so each iteration reads the matrix only once.
    """
    inner = (updates @ point).to(torch.float64)
    point_norm = torch.dot(point.to(torch.float64), point.to(torch.float64))
    return (squared_norms - 2.0 * inner + point_norm).clamp_(min=0.0)


def row_squared_norms(updates: torch.Tensor) -> torch.Tensor:
    """Return ‖xᵢ‖² for every row in float64 (one pass over the matrix)."""
    # Norms in the matrix's own dtype (a dtype= argument would copy the matrix).
    norms: torch.Tensor = torch.linalg.vector_norm(updates, dim=1)
    return norms.to(torch.float64).square()
