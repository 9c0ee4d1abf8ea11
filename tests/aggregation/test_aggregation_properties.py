"""Hypothesis property tests: bounds and invariances that hold for every input.

Runs are derandomized (the same examples on every run) and short.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ztfl.aggregation import (
    adaptive_robust_clip,
    build_pipeline,
    clip_to_norm,
    coordinate_median,
    krum,
    trimmed_mean,
    weighted_mean,
)

DETERMINISTIC = settings(max_examples=40, derandomize=True, deadline=None, database=None)

PIPELINES = (
    "arc -> nnm -> trimmed_mean",
    "clip(max_norm=1.0) -> median",
    "nnm -> krum",
    "arc -> multi_krum",
    "bulyan",
    "arc -> geometric_median",
    "centered_clipping(radius=0.5)",
    "bucketing(bucket_size=2) -> median",
)


@st.composite
def update_matrices(
    draw: st.DrawFn, *, max_magnitude: float = 1e30, min_rows: int = 1, max_rows: int = 9
) -> torch.Tensor:
    """A finite (n, d) float32 or float64 matrix with entries up to ``max_magnitude``."""
    num_rows = draw(st.integers(min_rows, max_rows))
    dim = draw(st.integers(1, 4))
    if draw(st.booleans()):
        bound = float(np.float32(max_magnitude))  # the nearest value float32 holds
        elements = st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=32)
        return torch.from_numpy(draw(arrays(np.float32, (num_rows, dim), elements=elements)))
    elements = st.floats(-max_magnitude, max_magnitude, allow_nan=False, allow_infinity=False)
    return torch.from_numpy(draw(arrays(np.float64, (num_rows, dim), elements=elements)))


def order_statistic(updates: torch.Tensor, index: int) -> torch.Tensor:
    return torch.sort(updates.double(), dim=0).values[index]


def slack(updates: torch.Tensor) -> float:
    """Rounding room for an average of values of this size in this dtype."""
    eps = torch.finfo(updates.dtype).eps
    return 4 * eps * float(updates.double().abs().max()) + 1e-300


@DETERMINISTIC
@given(update_matrices())
def test_coordinate_median_lies_between_each_coordinates_min_and_max(
    updates: torch.Tensor,
) -> None:
    result = coordinate_median(updates).double()
    assert bool((result >= updates.double().min(dim=0).values).all())
    assert bool((result <= updates.double().max(dim=0).values).all())


@DETERMINISTIC
@given(update_matrices(min_rows=1), st.data())
def test_trimmed_mean_lies_between_the_kept_order_statistics(
    updates: torch.Tensor, data: st.DataObject
) -> None:
    num_rows = updates.shape[0]
    trim = data.draw(st.integers(0, (num_rows - 1) // 2))
    result = trimmed_mean(updates, trim=trim).double()
    low = order_statistic(updates, trim)
    high = order_statistic(updates, num_rows - 1 - trim)
    assert bool((result >= low - slack(updates)).all())
    assert bool((result <= high + slack(updates)).all())


@DETERMINISTIC
@given(update_matrices(max_magnitude=1e6), st.data())
def test_median_and_trimmed_mean_ignore_the_order_of_rows(
    updates: torch.Tensor, data: st.DataObject
) -> None:
    num_rows = updates.shape[0]
    order = data.draw(st.permutations(list(range(num_rows))))
    permuted = updates[torch.tensor(order)]
    trim = (num_rows - 1) // 2
    torch.testing.assert_close(coordinate_median(permuted), coordinate_median(updates))
    torch.testing.assert_close(
        trimmed_mean(permuted, trim=trim), trimmed_mean(updates, trim=trim), atol=1e-6, rtol=1e-5
    )


@DETERMINISTIC
@given(
    update_matrices(max_magnitude=1e3, min_rows=3, max_rows=7),
    st.integers(1, 3),
    st.floats(-1e30, 1e30, allow_nan=False),
    st.data(),
)
def test_median_stays_in_the_honest_range_whatever_the_byzantine_rows_hold(
    honest: torch.Tensor, num_byzantine: int, magnitude: float, data: st.DataObject
) -> None:
    num_byzantine = min(num_byzantine, honest.shape[0] - 1)
    signs = data.draw(
        arrays(np.float64, (num_byzantine, honest.shape[1]), elements=st.sampled_from([-1.0, 1.0]))
    )
    byzantine = (magnitude * torch.from_numpy(signs)).to(honest.dtype)
    result = coordinate_median(torch.cat([byzantine, honest])).double()
    assert bool((result >= honest.double().min(dim=0).values).all())
    assert bool((result <= honest.double().max(dim=0).values).all())


@DETERMINISTIC
@given(update_matrices(max_magnitude=1e6), st.data())
def test_weighted_mean_lies_in_each_coordinates_range(
    updates: torch.Tensor, data: st.DataObject
) -> None:
    weights = data.draw(arrays(np.float64, (updates.shape[0],), elements=st.floats(0.0, 100.0)))
    weight_tensor = torch.from_numpy(weights) if weights.sum() > 0 else None
    result = weighted_mean(updates, weight_tensor).double()
    assert bool((result >= updates.double().min(dim=0).values - slack(updates)).all())
    assert bool((result <= updates.double().max(dim=0).values + slack(updates)).all())


@DETERMINISTIC
@given(update_matrices(max_magnitude=1e6, min_rows=5), st.data())
def test_krum_returns_one_of_the_input_rows(updates: torch.Tensor, data: st.DataObject) -> None:
    num_byzantine = data.draw(st.integers(0, (updates.shape[0] - 3) // 2))
    result = krum(updates, num_byzantine=num_byzantine)
    assert any(torch.equal(result, row) for row in updates)


@DETERMINISTIC
@given(update_matrices(max_magnitude=1e30), st.floats(1e-3, 1e3))
def test_clip_to_norm_output_rows_never_exceed_the_norm(
    updates: torch.Tensor, max_norm: float
) -> None:
    norms = torch.linalg.vector_norm(clip_to_norm(updates, max_norm).double(), dim=1)
    assert bool((norms <= max_norm * (1 + 1e-5)).all())


@DETERMINISTIC
@given(update_matrices(max_magnitude=1e30, min_rows=1), st.data())
def test_adaptive_robust_clip_never_raises_a_norm_and_clips_only_k_rows(
    updates: torch.Tensor, data: st.DataObject
) -> None:
    num_rows = updates.shape[0]
    num_byzantine = data.draw(st.integers(0, (num_rows - 1) // 2))
    clipped = adaptive_robust_clip(updates, num_byzantine=num_byzantine)
    before = torch.linalg.vector_norm(updates.double(), dim=1)
    after = torch.linalg.vector_norm(clipped.double(), dim=1)
    assert bool((after <= before * (1 + 1e-5)).all())
    num_clipped = (2 * num_byzantine * (num_rows - num_byzantine)) // num_rows
    changed = sum(not torch.equal(a, b) for a, b in zip(clipped, updates, strict=True))
    assert changed <= num_clipped


@DETERMINISTIC
@given(
    st.sampled_from(PIPELINES),
    st.integers(0, 4),
    st.integers(1, 5),
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(0, 2**32 - 1),
)
def test_pipeline_returns_one_finite_row_of_the_input_dtype(
    description: str, extra_rows: int, dim: int, dtype: torch.dtype, seed: int
) -> None:
    pipeline = build_pipeline(description, num_byzantine=1)
    num_rows = pipeline.minimum_clients() + extra_rows
    generator = torch.Generator().manual_seed(seed)
    updates = torch.randn(num_rows, dim, generator=generator, dtype=dtype)
    result = pipeline(updates, generator=generator)
    assert result.aggregate.shape == (dim,)
    assert result.aggregate.dtype == dtype
    assert bool(torch.isfinite(result.aggregate).all())
