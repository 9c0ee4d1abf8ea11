"""L2 clipping of whole client updates to the DP clip norm, and the secure-mode checks.

DP-FedAvg (McMahan et al., 2018) bounds each client's contribution by clipping its whole
update (every tensor together, as one flattened row) to L2 norm C. In plaintext mode the
server re-clips every update itself: a client that skipped or faked its own clipping would
otherwise break the sensitivity the noise is calibrated for.

Each clipped row comes with a "not clipped" bit (1 when the row's norm was already ≤ C), the
signal adaptive clipping (Andrew et al., 2021) steers the clip norm with. The bit is an
integer 0 or 1 that a client computes with the same rule and can send as one extra
coordinate of its update, so under secure aggregation the server learns only the group's
sum of bits, never a client's own bit. Under secure aggregation the server cannot re-clip;
``check_group_mean`` and ``check_unclipped_count`` refuse group sums that no set of honestly
clipped members could have produced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..distances import row_norms
from ..matrix import check_update_matrix
from ..preaggregation.clipping import clip_factors
from ..validation import Refusal, RefusalReason


@dataclass(frozen=True)
class UnclippedCount:
    """How many of a round's ``num_clients`` updates had norm ≤ the clip norm (were not clipped).

    The only input adaptive clipping accepts: the count of *unclipped* updates, never of
    clipped ones, so the steering cannot be inverted by mistake.
    """

    count: int
    num_clients: int

    def __post_init__(self) -> None:
        if not 0 <= self.count <= self.num_clients:
            raise ValueError(
                f"unclipped count must lie in [0, {self.num_clients}], got {self.count}"
            )


@dataclass(frozen=True)
class ClippedUpdates:
    """Updates clipped to ``clip_norm`` and, per row, the integer bit 1 = "was not clipped"."""

    updates: torch.Tensor
    unclipped: torch.Tensor
    clip_norm: float

    def unclipped_count(self) -> UnclippedCount:
        """The round's count of unclipped updates, for adaptive clipping."""
        return UnclippedCount(int(self.unclipped.sum()), int(self.unclipped.shape[0]))


def clip_updates(
    updates: torch.Tensor, clip_norm: float, *, validated: bool = False
) -> ClippedUpdates:
    """Clip every row of an (n, d) update matrix to L2 norm ``clip_norm``.

    A row with norm ≤ ``clip_norm`` is kept as is and gets bit 1; a longer row is scaled to
    exactly ``clip_norm`` and gets bit 0. The bits are int64 zeros and ones, so they can be
    summed exactly (also under secure aggregation). The input is never modified.

    Args:
        updates: (n, d) finite float matrix, one flattened client update per row.
        clip_norm: the DP clip norm C > 0.
        validated: skip the finiteness scan when every row was already checked.
    """
    check_update_matrix(updates, validated=validated)
    _require_clip_norm(clip_norm)
    norms = row_norms(updates)
    factors = clip_factors(norms, clip_norm)
    unclipped = (norms <= clip_norm).to(torch.int64)
    return ClippedUpdates(updates * factors.to(updates.dtype)[:, None], unclipped, clip_norm)


def check_group_mean(
    group_sum: torch.Tensor,
    *,
    num_clients: int,
    clip_norm: float,
    relative_tolerance: float = 1e-5,
) -> Refusal | None:
    """Refuse a securely aggregated group whose mean update is longer than ``clip_norm``.

    The mean of rows of norm ≤ C has norm ≤ C (triangle inequality), so a longer mean proves
    that at least one member did not clip. The check is necessary, not sufficient: a member's
    excess can hide behind the others' short updates. ``relative_tolerance`` absorbs the
    rounding of clients that clip in float32.

    Args:
        group_sum: (d,) sum of the group members' updates, as secure aggregation reveals it.
        num_clients: members in the group (≥ 1).
        clip_norm: the round's clip norm C > 0.
        relative_tolerance: accepted relative excess of the mean's norm over C.
    """
    _require_clip_norm(clip_norm)
    if num_clients < 1:
        raise ValueError(f"a group needs at least one client, got {num_clients}")
    norm = float(torch.linalg.vector_norm(group_sum.to(torch.float64))) / num_clients
    if not norm <= clip_norm * (1.0 + relative_tolerance):
        return Refusal(
            RefusalReason.GROUP_MEAN_ABOVE_CLIP,
            f"mean of {num_clients} updates has L2 norm {norm:.6g} > clip norm {clip_norm:.6g}",
        )
    return None


def check_unclipped_count(count: int, *, num_clients: int) -> Refusal | None:
    """Refuse a group's summed "not clipped" bits unless they lie in [0, ``num_clients``].

    Honest members each send 0 or 1; a sum outside that range proves a member sent another
    value (which would otherwise drag the adaptive clip norm by more than one client's worth).
    """
    if num_clients < 1:
        raise ValueError(f"a group needs at least one client, got {num_clients}")
    if not 0 <= count <= num_clients:
        return Refusal(
            RefusalReason.UNCLIPPED_COUNT_OUT_OF_RANGE,
            f"{count} unclipped bits summed over {num_clients} clients",
        )
    return None


def _require_clip_norm(clip_norm: float) -> None:
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be finite and > 0, got {clip_norm}")
