"""L2 norm clipping: fixed threshold, and adaptive robust clipping (ARC).

Both return a new matrix and leave the input untouched (ByzFL's versions clip
in place, which corrupts the caller's copy of the updates).
"""

from __future__ import annotations

import torch

from ..distances import row_norms
from ..errors import PipelineConfigError, ToleranceError
from ..matrix import check_update_matrix


def clip_to_norm(
    updates: torch.Tensor, max_norm: float, *, validated: bool = False
) -> torch.Tensor:
    """Scale every row whose L2 norm exceeds ``max_norm`` down to exactly that norm."""
    check_update_matrix(updates, validated=validated)
    if not max_norm > 0:
        raise PipelineConfigError(f"clip needs max_norm > 0, got {max_norm}")
    return updates * clip_factors(row_norms(updates), max_norm).to(updates.dtype)[:, None]


def adaptive_robust_clip(
    updates: torch.Tensor, *, num_byzantine: int, validated: bool = False
) -> torch.Tensor:
    """ARC (Allouah et al., 2024): clip the k = ⌊2(f/n)(n − f)⌋ largest rows to the
    norm of the largest row left unclipped.

    The threshold adapts to the honest norms each round, so no clip norm needs
    tuning, and any row the attacker inflates is brought back to an honest
    magnitude. Needs f < n/2.
    """
    check_update_matrix(updates, validated=validated)
    n, f = updates.shape[0], num_byzantine
    if f < 0 or 2 * f >= n:
        raise ToleranceError(f"arc needs 0 ≤ f < n/2, got n={n}, f={f}")
    return updates * arc_factors(row_norms(updates), num_byzantine=f).to(updates.dtype)[:, None]


def clip_factors(norms: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Per-row scale min(1, max_norm / ‖xᵢ‖) that clips rows to ``max_norm``."""
    threshold = torch.as_tensor(max_norm, dtype=norms.dtype, device=norms.device)
    return torch.where(
        norms > threshold, threshold / norms.clamp(min=1e-30), torch.ones_like(norms)
    )


def arc_factors(norms: torch.Tensor, *, num_byzantine: int) -> torch.Tensor:
    """Per-row scale clipping ARC's k = ⌊2(f/n)(n − f)⌋ largest rows to the (k+1)-th largest
    norm."""
    n, f = norms.shape[0], num_byzantine
    num_clipped = int(2 * f * (n - f) / n)
    if num_clipped == 0:
        return torch.ones_like(norms)
    threshold = torch.sort(norms).values[n - num_clipped - 1]
    return clip_factors(norms, float(threshold))
