"""Geometric median by smoothed Weiszfeld iterations (RFA, Pillutla et al., 2022)."""

from __future__ import annotations

import torch

from ..distances import row_squared_norms, squared_distances_to
from ..errors import PipelineConfigError
from ..kernels import column_median
from ..matrix import check_update_matrix, normalized_weights


def geometric_median(
    updates: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    smoothing: float = 1e-6,
    max_iterations: int = 100,
    tolerance: float = 1e-6,
    validated: bool = False,
) -> torch.Tensor:
    """Approximate argmin_z Σᵢ wᵢ‖z − xᵢ‖ (breakdown point 1/2).

    Each Weiszfeld step re-weights rows by wᵢ / max(ν, ‖z − xᵢ‖); the smoothing
    ν keeps the step defined when z lands on a row. Stops when the relative
    decrease of the objective falls below ``tolerance``. Each iteration reads
    the matrix twice (distances, new point) and never copies it.

    Starts from the coordinate-wise median, which f < n/2 rows cannot move
    beyond the honest values, rather than from RFA's weighted mean: from a
    mean dragged far away by huge rows, Weiszfeld walks back only by a factor
    of about f/(n − f) per step, and the relative-decrease test (dominated by
    the huge rows' distances) stops it long before it arrives.
    """
    check_update_matrix(updates, validated=validated)
    if smoothing <= 0 or max_iterations < 1 or tolerance < 0:
        raise PipelineConfigError(
            "geometric_median needs smoothing > 0, max_iterations ≥ 1 and tolerance ≥ 0"
        )
    n = updates.shape[0]
    normalized = normalized_weights(weights, updates)
    base = (
        torch.full((n,), 1.0 / n, dtype=torch.float64, device=updates.device)
        if normalized is None
        else normalized.to(torch.float64)
    )
    squared_norms = row_squared_norms(updates)
    point = column_median(updates)
    distances = squared_distances_to(updates, point, squared_norms).sqrt()
    objective = float((base * distances).sum())
    for _ in range(max_iterations):
        beta = base / distances.clamp(min=smoothing)
        point = (beta / beta.sum()).to(updates.dtype) @ updates
        distances = squared_distances_to(updates, point, squared_norms).sqrt()
        new_objective = float((base * distances).sum())
        converged = abs(objective - new_objective) <= tolerance * max(new_objective, 1e-30)
        objective = new_objective
        if converged:
            break
    return point
