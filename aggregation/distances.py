"""Pairwise squared Euclidean distances between the rows of an update matrix.

One Gram matrix product (a single BLAS pass over the data) gives all n² distances:
``‖xᵢ − xⱼ‖² = ‖xᵢ‖² + ‖xⱼ‖² − 2⟨xᵢ, xⱼ⟩``. The diagonal is set to exactly zero
and rounding negatives are clamped, so a row's distance to itself is 0 — the
assumption Krum makes and that a float32 Gram trick alone does not guarantee.
Distances come back in float64 so scores summed over many neighbours keep
their order.

A finite row can still have a squared norm beyond its dtype (float32 values
above ~1.8e19), and one such Byzantine row would turn distances into
``inf − inf = NaN``, which decides neighbours at random. Products that
overflow the matrix's dtype are therefore recomputed in float64 (a copy, paid
only on that path; float32 squares always fit in float64); a float64 matrix
whose squares overflow is refused. Validation's norm cap keeps the coordinator
on the fast path.
"""

from __future__ import annotations

import torch

from .errors import InvalidUpdatesError


def pairwise_squared_distances(updates: torch.Tensor) -> torch.Tensor:
    """Return the (n, n) float64 matrix of squared L2 distances between rows."""
    gram = gram_matrix(updates)
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
    inner = inner_products_with(updates, point)
    point_norm = torch.dot(point.to(torch.float64), point.to(torch.float64))
    return (squared_norms - 2.0 * inner + point_norm).clamp_(min=0.0)


def inner_products_with(updates: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """Return ⟨xᵢ, point⟩ for every row in float64 (one matrix-vector pass, no copy of the
    matrix unless the product overflows its own dtype)."""
    inner = (updates @ point.to(updates.dtype)).to(torch.float64)
    if not bool(torch.isfinite(inner).all()):
        inner = _widened(updates) @ point.to(torch.float64)
        _require_finite(inner)
    return inner


def row_squared_norms(updates: torch.Tensor) -> torch.Tensor:
    """Return ‖xᵢ‖² for every row in float64 (one pass over the matrix)."""
    return row_norms(updates).square()


def row_norms(updates: torch.Tensor) -> torch.Tensor:
    """Return ‖xᵢ‖ for every row in float64 (one pass over the matrix)."""
    # Norms in the matrix's own dtype (a dtype= argument would copy the matrix).
    norms: torch.Tensor = torch.linalg.vector_norm(updates, dim=1).to(torch.float64)
    if not bool(torch.isfinite(norms).all()):
        norms = torch.linalg.vector_norm(_widened(updates), dim=1)
        _require_finite(norms)
    return norms


def gram_matrix(updates: torch.Tensor) -> torch.Tensor:
    """Return the (n, n) float64 Gram matrix X Xᵀ (one BLAS pass over the matrix)."""
    gram = (updates @ updates.T).to(torch.float64)
    if not bool(torch.isfinite(gram).all()):
        wide = _widened(updates)
        gram = wide @ wide.T
        _require_finite(gram)
    return gram


def _widened(updates: torch.Tensor) -> torch.Tensor:
    """The matrix in float64 after a product overflowed its own dtype."""
    if updates.dtype == torch.float64:
        raise _overflow_error()
    return updates.to(torch.float64)


def _require_finite(values: torch.Tensor) -> None:
    if not bool(torch.isfinite(values).all()):
        raise _overflow_error()


def _overflow_error() -> InvalidUpdatesError:
    return InvalidUpdatesError(
        "squared L2 norms of the updates overflow float64; "
        "cap update norms (validation) before a distance-based rule"
    )
