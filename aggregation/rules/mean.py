"""Weighted mean: the undefended baseline (breakdown point 0)."""

from __future__ import annotations

import torch

from ..matrix import check_update_matrix, normalized_weights


def weighted_mean(
    updates: torch.Tensor, weights: torch.Tensor | None = None, *, validated: bool = False
) -> torch.Tensor:
    """Average the rows of ``updates``, weighted when ``weights`` is given.

    One matrix-vector product: a single pass over the matrix, no copies.
    """
    check_update_matrix(updates, validated=validated)
    normalized = normalized_weights(weights, updates)
    if normalized is None:
        normalized = torch.full(
            (updates.shape[0],), 1.0 / updates.shape[0], dtype=updates.dtype, device=updates.device
        )
    return normalized @ updates
