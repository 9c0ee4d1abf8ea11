"""Bucketing (Karimireddy et al., 2022)."""

from __future__ import annotations

import math

import torch

from ..errors import PipelineConfigError
from ..matrix import check_update_matrix


def bucketing(
    updates: torch.Tensor,
    *,
    bucket_size: int,
    generator: torch.Generator | None = None,
    validated: bool = False,
) -> torch.Tensor:
    """Shuffle the rows, then average consecutive buckets of ``bucket_size`` rows.

    Returns ⌈n/s⌉ rows (the last bucket may be smaller). Averaging mixes
    heterogeneous honest rows so the next rule sees more homogeneous inputs.
    The shuffle must be unpredictable to clients: pass a generator seeded from
    a secure source (the pipeline does) or a fixed seed for a reproducible
    simulation. Applied as one (⌈n/s⌉, n) averaging matrix times the updates.
    """
    check_update_matrix(updates, validated=validated)
    if bucket_size < 1:
        raise PipelineConfigError(f"bucketing needs bucket_size ≥ 1, got {bucket_size}")
    averaging = bucket_matrix(updates.shape[0], bucket_size, generator=generator)
    return averaging.to(dtype=updates.dtype, device=updates.device) @ updates


def bucket_matrix(
    num_clients: int, bucket_size: int, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The (⌈n/s⌉, n) float64 matrix whose rows average one random bucket each."""
    order = torch.randperm(num_clients, generator=generator)
    num_buckets = math.ceil(num_clients / bucket_size)
    averaging = torch.zeros((num_buckets, num_clients), dtype=torch.float64)
    for bucket in range(num_buckets):
        members = order[bucket * bucket_size : (bucket + 1) * bucket_size]
        averaging[bucket, members] = 1.0 / len(members)
    return averaging
