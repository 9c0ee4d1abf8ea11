"""Checks and helpers shared by every rule over an (n, d) update matrix."""

from __future__ import annotations

import torch

from .errors import InvalidUpdatesError

SUPPORTED_DTYPES = (torch.float32, torch.float64)


def check_update_matrix(updates: torch.Tensor, *, validated: bool = False) -> None:
    """Refuse anything that is not a finite, non-empty (n, d) float matrix.

    Rules never see NaN or Inf: validation refuses such updates before
    aggregation, and this check makes a caller bug loud instead of letting a
    NaN spread into the global model. ``validated=True`` skips the finiteness
    scan (a full pass over the matrix) when the caller has already checked every
    row, as the coordinator does while validating updates.
    """
    if not isinstance(updates, torch.Tensor):
        raise InvalidUpdatesError(f"updates must be a torch.Tensor, got {type(updates).__name__}")
    if updates.ndim != 2:
        raise InvalidUpdatesError(
            f"updates must be an (n, d) matrix, got shape {tuple(updates.shape)}"
        )
    if updates.shape[0] == 0 or updates.shape[1] == 0:
        raise InvalidUpdatesError(f"updates must be non-empty, got shape {tuple(updates.shape)}")
    if updates.dtype not in SUPPORTED_DTYPES:
        raise InvalidUpdatesError(f"updates must be float32 or float64, got {updates.dtype}")
    if not validated and not _all_finite(updates):
        raise InvalidUpdatesError("updates contain NaN or Inf; validate updates before aggregating")


def normalized_weights(weights: torch.Tensor | None, updates: torch.Tensor) -> torch.Tensor | None:
    """Return weights summing to one in the updates' dtype and device, or None if uniform.

    Uniform weights come back as None so rules can take their unweighted fast path.
    """
    if weights is None:
        return None
    if not isinstance(weights, torch.Tensor):
        raise InvalidUpdatesError(f"weights must be a torch.Tensor, got {type(weights).__name__}")
    if weights.shape != (updates.shape[0],):
        raise InvalidUpdatesError(
            f"weights must have shape ({updates.shape[0]},), got {tuple(weights.shape)}"
        )
    weights = weights.to(device=updates.device, dtype=torch.float64)
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise InvalidUpdatesError("weights must be finite and non-negative")
    total = weights.sum()
    if total <= 0:
        raise InvalidUpdatesError("weights must not all be zero")
    if bool((weights == weights[0]).all()):
        return None
    return (weights / total).to(updates.dtype)


def require_uniform(weights: torch.Tensor | None, updates: torch.Tensor, rule: str) -> None:
    """Refuse non-uniform weights for a rule whose definition has none.

    Silently ignoring weights would let a configuration look weighted while it
    is not; a clear error makes the operator choose.
    """
    if normalized_weights(weights, updates) is not None:
        raise InvalidUpdatesError(
            f"{rule} does not use client weights; configure uniform weighting for it"
        )


def _all_finite(updates: torch.Tensor) -> bool:
    """Whether every entry is finite, at the cost of one streaming sum in the common case.

    Any NaN or ±Inf makes the sum NaN or infinite; a finite sum proves the
    matrix finite. Only an infinite sum of finite values (overflow) needs the
    element-wise scan, which allocates an (n, d) mask.
    """
    if bool(torch.isfinite(updates.sum())):
        return True
    return bool(torch.isfinite(updates).all())
