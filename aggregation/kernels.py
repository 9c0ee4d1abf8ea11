"""Column-wise order statistics over an (n, d) update matrix.

Median, trimmed mean and Bulyan's "mean around the median" all reduce each
column of the matrix through its sorted values. This module is the one place
that does it, so the compiled CPU kernels and the torch path (CUDA, or CPU
without the compiled kernels) stay interchangeable behind three functions.
"""

from __future__ import annotations

import torch


def column_median(updates: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median; for even n the mean of the two middle values."""
    n = updates.shape[0]
    ordered = torch.sort(updates, dim=0).values
    if n % 2 == 1:
        return ordered[n // 2].clone()
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def column_trimmed_mean(updates: torch.Tensor, trim: int) -> torch.Tensor:
    """Coordinate-wise mean after dropping the ``trim`` smallest and largest values."""
    n = updates.shape[0]
    if trim == 0:
        return updates.mean(dim=0)
    ordered = torch.sort(updates, dim=0).values
    return ordered[trim : n - trim].mean(dim=0)


def column_mean_around_median(updates: torch.Tensor, keep: int) -> torch.Tensor:
    """Per coordinate, the mean of the ``keep`` values closest to the median.

    Bulyan's second stage (El Mhamdi et al., 2018). The ``keep`` closest values
    form a contiguous window of the sorted column, so a sliding window over the
    sorted values finds them without a second sort.
    """
    n = updates.shape[0]
    ordered = torch.sort(updates, dim=0).values
    median = column_median_sorted(ordered)
    # Window w covers ordered[w : w + keep]; its spread around the median is
    # max(median - ordered[w], ordered[w + keep - 1] - median). The window with
    # the smallest spread holds the `keep` values closest to the median.
    lows = median - ordered[: n - keep + 1]
    highs = ordered[keep - 1 :] - median
    spread = torch.maximum(lows, highs)
    best = spread.argmin(dim=0)
    cumulative = torch.cat([torch.zeros_like(ordered[:1]), torch.cumsum(ordered, dim=0)], dim=0)
    window_sum = cumulative.gather(0, (best + keep)[None]) - cumulative.gather(0, best[None])
    return window_sum[0] / keep


def column_median_sorted(ordered: torch.Tensor) -> torch.Tensor:
    """Median of each column of an already column-sorted matrix."""
    n = ordered.shape[0]
    if n % 2 == 1:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2
