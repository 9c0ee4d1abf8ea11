"""Coordinate-wise median (Yin et al., 2018)."""

from __future__ import annotations

import torch

from ..kernels import column_median
from ..matrix import check_update_matrix, require_uniform


def coordinate_median(
    updates: torch.Tensor, weights: torch.Tensor | None = None, *, validated: bool = False
) -> torch.Tensor:
    """Per coordinate, the median of the n values (mean of the middle two for even n).

    Unmoved by any f < n/2 rows of any magnitude: each coordinate's median lies
    between honest values.
    """
    check_update_matrix(updates, validated=validated)
    require_uniform(weights, updates, "coordinate_median")
    return column_median(updates)
