"""Robustness: what f Byzantine rows of any magnitude can and cannot do to each rule.

Byzantine rows are planted at magnitudes up to 1e30 (finite in float32, whose
squares overflow it), pointing the same way or in opposite directions.
"""

from __future__ import annotations

import math

import pytest
import torch

from ztfl.aggregation import (
    adaptive_robust_clip,
    build_pipeline,
    bulyan,
    centered_clipping,
    clip_to_norm,
    coordinate_median,
    geometric_median,
    krum,
    multi_krum,
    nearest_neighbour_mixing,
    trimmed_mean,
)

MAGNITUDES = [1e3, 1e8, 1e30]
NUM_HONEST = 8
DIM = 5


def honest_rows(dtype: torch.dtype, device: torch.device, *, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(NUM_HONEST, DIM, generator=generator, dtype=torch.float64)
    return rows.to(dtype=dtype, device=device)


def byzantine_rows(
    count: int, magnitude: float, like: torch.Tensor, *, mixed_signs: bool
) -> torch.Tensor:
    """``count`` rows of entries ±magnitude; with mixed signs, alternating rows and coordinates."""
    rows = torch.full((count, like.shape[1]), magnitude, dtype=like.dtype, device=like.device)
    if mixed_signs:
        signs = torch.tensor(
            [[(-1.0) ** (i + j) for j in range(like.shape[1])] for i in range(count)]
        )
        rows = rows * signs.to(dtype=like.dtype, device=like.device)
    return rows


def with_byzantine(honest: torch.Tensor, byzantine: torch.Tensor) -> torch.Tensor:
    """Byzantine rows interleaved at the front, so no rule can rely on their position."""
    return torch.cat([byzantine, honest])


def assert_within_honest_range(result: torch.Tensor, honest: torch.Tensor) -> None:
    assert bool(torch.isfinite(result).all())
    low, high = honest.min(dim=0).values, honest.max(dim=0).values
    slack = 1e-5 * (1 + honest.abs().max())
    assert bool((result >= low - slack).all()), (result, low)
    assert bool((result <= high + slack).all()), (result, high)


@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("mixed_signs", [False, True])
@pytest.mark.parametrize("num_byzantine", [1, 4, 7])
def test_coordinate_median_stays_in_the_honest_range_whatever_f_below_half_sends(
    dtype: torch.dtype,
    device: torch.device,
    magnitude: float,
    mixed_signs: bool,
    num_byzantine: int,
) -> None:
    honest = honest_rows(dtype, device)
    updates = with_byzantine(
        honest, byzantine_rows(num_byzantine, magnitude, honest, mixed_signs=mixed_signs)
    )
    assert 2 * num_byzantine < updates.shape[0]
    assert_within_honest_range(coordinate_median(updates), honest)


@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("mixed_signs", [False, True])
@pytest.mark.parametrize(("num_byzantine", "trim"), [(1, 1), (3, 3), (3, 5), (7, 7)])
def test_trimmed_mean_with_trim_at_least_f_stays_in_the_honest_range(
    dtype: torch.dtype,
    device: torch.device,
    magnitude: float,
    mixed_signs: bool,
    num_byzantine: int,
    trim: int,
) -> None:
    honest = honest_rows(dtype, device)
    updates = with_byzantine(
        honest, byzantine_rows(num_byzantine, magnitude, honest, mixed_signs=mixed_signs)
    )
    assert_within_honest_range(trimmed_mean(updates, trim=trim), honest)


@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("num_byzantine", [1, 2, 3])
def test_krum_never_selects_a_planted_far_outlier(
    dtype: torch.dtype, device: torch.device, magnitude: float, num_byzantine: int
) -> None:
    honest = honest_rows(dtype, device)
    updates = with_byzantine(
        honest, byzantine_rows(num_byzantine, magnitude, honest, mixed_signs=True)
    )
    result = krum(updates, num_byzantine=num_byzantine)
    assert any(torch.equal(result, row) for row in honest)
    selected = build_pipeline("krum", num_byzantine=num_byzantine)(updates).selected_rows
    assert selected is not None
    assert min(selected) >= num_byzantine


@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("num_byzantine", [1, 2, 3])
def test_multi_krum_excludes_every_planted_outlier(
    dtype: torch.dtype, device: torch.device, magnitude: float, num_byzantine: int
) -> None:
    honest = honest_rows(dtype, device)
    updates = with_byzantine(
        honest, byzantine_rows(num_byzantine, magnitude, honest, mixed_signs=False)
    )
    pipeline = build_pipeline("multi_krum", num_byzantine=num_byzantine)
    result = pipeline(updates)
    # m = n − f selects exactly the honest rows, so the aggregate is their mean.
    assert result.selected_rows is not None
    assert sorted(result.selected_rows) == list(range(num_byzantine, updates.shape[0]))
    torch.testing.assert_close(result.aggregate, honest.mean(dim=0))
    torch.testing.assert_close(multi_krum(updates, num_byzantine=num_byzantine), honest.mean(dim=0))


@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("mixed_signs", [False, True])
def test_bulyan_stays_in_the_honest_coordinate_range(
    dtype: torch.dtype, device: torch.device, magnitude: float, mixed_signs: bool
) -> None:
    # n = 11 ≥ 4f + 3 with f = 2 (8 honest rows + 3 would break the bound, so 9 honest).
    honest = torch.cat([honest_rows(dtype, device), honest_rows(dtype, device, seed=1)[:1]])
    updates = with_byzantine(honest, byzantine_rows(2, magnitude, honest, mixed_signs=mixed_signs))
    assert_within_honest_range(bulyan(updates, num_byzantine=2), honest)


def geometric_median_bound(honest: torch.Tensor, num_rows: int, num_byzantine: int) -> float:
    """With more than half the rows within r of a centre c, argmin Σ‖z − xᵢ‖ lies within
    2(n − f)/(n − 2f)·r of c (compare the objective at z and at c, triangle inequality).
    """
    center = honest.double().mean(dim=0)
    radius = float(torch.linalg.vector_norm(honest.double() - center, dim=1).max())
    return 2 * (num_rows - num_byzantine) / (num_rows - 2 * num_byzantine) * radius


@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("mixed_signs", [False, True])
@pytest.mark.parametrize("num_byzantine", [1, 4, 7])
def test_geometric_median_moves_a_bounded_distance_whatever_f_below_half_sends(
    dtype: torch.dtype,
    device: torch.device,
    magnitude: float,
    mixed_signs: bool,
    num_byzantine: int,
) -> None:
    honest = honest_rows(dtype, device)
    updates = with_byzantine(
        honest, byzantine_rows(num_byzantine, magnitude, honest, mixed_signs=mixed_signs)
    )
    result = geometric_median(updates).double()
    center = honest.double().mean(dim=0)
    bound = geometric_median_bound(honest, updates.shape[0], num_byzantine)
    assert float(torch.linalg.vector_norm(result - center)) <= bound


@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("num_byzantine", [1, 3, 5])
@pytest.mark.parametrize(("radius", "iterations"), [(0.5, 1), (0.5, 3), (2.0, 5)])
def test_centered_clipping_moves_at_most_two_radii_per_byzantine_weight_and_iteration(
    dtype: torch.dtype,
    device: torch.device,
    magnitude: float,
    num_byzantine: int,
    radius: float,
    iterations: int,
) -> None:
    # Each step is v ↦ v + Σᵢ wᵢ·clip_τ(xᵢ − v). The honest part is 1-Lipschitz in v and a
    # Byzantine term moves v by at most wᵢ·τ, so replacing the Byzantine rows by anything
    # else changes the result by at most 2·iterations·(f/n)·τ.
    honest = honest_rows(dtype, device)
    attacked = with_byzantine(
        honest, byzantine_rows(num_byzantine, magnitude, honest, mixed_signs=True)
    )
    benign = with_byzantine(honest, honest[:num_byzantine])
    shift = centered_clipping(attacked, radius=radius, iterations=iterations) - centered_clipping(
        benign, radius=radius, iterations=iterations
    )
    bound = 2 * iterations * num_byzantine / attacked.shape[0] * radius
    assert float(torch.linalg.vector_norm(shift.double())) <= bound * (1 + 1e-5)


@pytest.mark.parametrize("magnitude", MAGNITUDES)
def test_clip_to_norm_bounds_every_row_norm(
    dtype: torch.dtype, device: torch.device, magnitude: float
) -> None:
    honest = honest_rows(dtype, device)
    updates = with_byzantine(honest, byzantine_rows(3, magnitude, honest, mixed_signs=True))
    norms = torch.linalg.vector_norm(clip_to_norm(updates, 1.5).double(), dim=1)
    assert bool((norms <= 1.5 * (1 + 1e-6)).all())
    # Clipped rows keep their direction and land on the sphere, not at the origin.
    assert bool((norms[:3] >= 1.5 * (1 - 1e-6)).all())


@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("num_byzantine", [1, 3, 5])
def test_adaptive_robust_clip_brings_byzantine_rows_to_an_honest_norm(
    dtype: torch.dtype, device: torch.device, magnitude: float, num_byzantine: int
) -> None:
    honest = honest_rows(dtype, device)
    updates = with_byzantine(
        honest, byzantine_rows(num_byzantine, magnitude, honest, mixed_signs=True)
    )
    clipped = adaptive_robust_clip(updates, num_byzantine=num_byzantine).double()
    largest_honest = float(torch.linalg.vector_norm(honest.double(), dim=1).max())
    norms = torch.linalg.vector_norm(clipped, dim=1)
    assert bool((norms <= largest_honest * (1 + 1e-6)).all())
    # ARC clips k = ⌊2f(n − f)/n⌋ ≥ f rows, so every Byzantine row is among them.
    n = updates.shape[0]
    assert (2 * num_byzantine * (n - num_byzantine)) // n >= num_byzantine


@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize("num_byzantine", [1, 3, 5])
def test_nearest_neighbour_mixing_keeps_honest_rows_among_honest_rows(
    dtype: torch.dtype, device: torch.device, magnitude: float, num_byzantine: int
) -> None:
    # The n − f nearest rows of an honest row are the n − f honest rows when the
    # Byzantine rows are far, so every honest row becomes the honest mean.
    honest = honest_rows(dtype, device)
    updates = with_byzantine(
        honest, byzantine_rows(num_byzantine, magnitude, honest, mixed_signs=True)
    )
    mixed = nearest_neighbour_mixing(updates, num_byzantine=num_byzantine)
    expected = honest.mean(dim=0).expand(NUM_HONEST, DIM)
    torch.testing.assert_close(mixed[num_byzantine:], expected)


@pytest.mark.parametrize("magnitude", MAGNITUDES)
@pytest.mark.parametrize(
    "description",
    ["arc -> nnm -> trimmed_mean", "nnm -> trimmed_mean", "arc -> nnm -> median", "nnm -> krum"],
)
def test_default_style_pipelines_stay_in_the_honest_range(
    dtype: torch.dtype, device: torch.device, magnitude: float, description: str
) -> None:
    honest = honest_rows(dtype, device)
    updates = with_byzantine(honest, byzantine_rows(3, magnitude, honest, mixed_signs=False))
    result = build_pipeline(description, num_byzantine=3)(updates)
    assert_within_honest_range(result.aggregate, honest)


def test_mean_is_what_the_robust_rules_protect_against(dtype: torch.dtype) -> None:
    # The undefended baseline: one row of 1e30 drags the mean to ~1e30 / n.
    honest = honest_rows(dtype, torch.device("cpu"))
    updates = with_byzantine(honest, byzantine_rows(1, 1e30, honest, mixed_signs=False))
    result = build_pipeline("mean", num_byzantine=0)(updates).aggregate
    assert float(result.double().min()) > 1e30 / updates.shape[0] / 2
    assert not math.isnan(float(result.double().sum()))
