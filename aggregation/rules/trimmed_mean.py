"""Coordinate-wise trimmed mean (Yin et al., 2018)."""

from __future__ import annotations

import torch

from ..errors import PipelineConfigError, ToleranceError
from ..kernels import column_trimmed_mean
from ..matrix import check_update_matrix, require_uniform


def trimmed_mean(
    updates: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    trim: int,
    validated: bool = False,
) -> torch.Tensor:
    """Per coordinate, drop the ``trim`` largest and ``trim`` smallest values, average the rest.

    With ``trim ≥ f`` every extreme value a Byzantine row can place is dropped
    or bracketed by honest values. ``trim_count`` converts a fraction β.
    """
    check_update_matrix(updates, validated=validated)
    require_uniform(weights, updates, "trimmed_mean")
    n = updates.shape[0]
    if trim < 0 or 2 * trim >= n:
        raise ToleranceError(f"trimmed_mean needs 0 ≤ trim < n/2, got trim={trim} for n={n}")
    return column_trimmed_mean(updates, trim)


def trim_count(num_clients: int, beta: float) -> int:
    """Values dropped per side for a trimmed fraction β, as ``int(β·n)`` (Flower's convention)."""
    if not 0.0 <= beta < 0.5:
        raise PipelineConfigError(f"trimmed_mean needs 0 ≤ β < 0.5, got β={beta}")
    return int(beta * num_clients)
