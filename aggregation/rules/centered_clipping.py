"""Centered clipping (Karimireddy et al., 2021)."""

from __future__ import annotations

import torch

from ..distances import row_squared_norms, squared_distances_to
from ..errors import InvalidUpdatesError, PipelineConfigError
from ..matrix import check_update_matrix, normalized_weights


def centered_clipping(
    updates: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    radius: float,
    iterations: int = 3,
    center: torch.Tensor | None = None,
    validated: bool = False,
) -> torch.Tensor:
    """Iterate v ← v + Σᵢ wᵢ · min(1, τ/‖xᵢ − v‖) · (xᵢ − v), from ``center``.

    Each row pulls the centre by at most the radius τ, so a Byzantine row's
    influence is bounded whatever its magnitude. ``center`` defaults to the
    zero vector (the paper starts from the previous momentum; a federated round
    with no momentum starts from "no change"). Each iteration reads the matrix
    twice and never copies it.
    """
    check_update_matrix(updates, validated=validated)
    if radius <= 0 or iterations < 1:
        raise PipelineConfigError("centered_clipping needs radius τ > 0 and iterations ≥ 1")
    n, d = updates.shape
    if center is not None and (
        tuple(center.shape) != (d,) or not bool(torch.isfinite(center).all())
    ):
        # The centre is an input like the rows: a NaN here would be the aggregate.
        raise InvalidUpdatesError(
            f"center must be a finite vector of shape ({d},), got shape {tuple(center.shape)}"
        )
    normalized = normalized_weights(weights, updates)
    base = (
        torch.full((n,), 1.0 / n, dtype=torch.float64, device=updates.device)
        if normalized is None
        else normalized.to(torch.float64)
    )
    squared_norms = row_squared_norms(updates)
    point = (
        torch.zeros(d, dtype=updates.dtype, device=updates.device)
        if center is None
        else center.to(dtype=updates.dtype, device=updates.device)
    )
    for _ in range(iterations):
        distances = squared_distances_to(updates, point, squared_norms).sqrt()
        scale = base * torch.clamp(radius / distances.clamp(min=1e-30), max=1.0)
        # v + Σ sᵢ(xᵢ − v) = (1 − Σ sᵢ) v + Σ sᵢ xᵢ : one matrix-vector product.
        point = (1.0 - scale.sum()).to(updates.dtype) * point + scale.to(updates.dtype) @ updates
    return point
