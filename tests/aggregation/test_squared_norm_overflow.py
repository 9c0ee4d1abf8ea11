"""Regressions: finite rows whose squared norms overflow their dtype.

A float32 entry above ~1.8e19 squares to inf. Distances then came out as
inf − inf = NaN, and a composed pipeline multiplied 0·inf: one Byzantine row
of 1e30 took over ``nnm -> trimmed_mean``, made Krum select it, turned the
geometric median into NaN and clipped rows to zero instead of to the norm.
Such products are now recomputed in float64; a float64 matrix whose squares
overflow is refused instead of aggregated.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from ztfl.aggregation import (
    InvalidUpdatesError,
    adaptive_robust_clip,
    build_pipeline,
    centered_clipping,
    clip_to_norm,
    coordinate_median,
    geometric_median,
    krum,
    nearest_neighbour_mixing,
    trimmed_mean,
)
from ztfl.aggregation.distances import pairwise_squared_distances

HUGE = 1e30  # finite in float32; its square is not


def attacked_float32(num_byzantine: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(4)
    honest = torch.randn(8, 5, generator=generator)
    byzantine = torch.full((num_byzantine, 5), HUGE)
    byzantine[1::2] *= -1.0
    return torch.cat([byzantine, honest]), honest


def test_float32_distances_to_a_huge_row_are_finite_and_ordered() -> None:
    updates, _ = attacked_float32(num_byzantine=3)  # rows 0 and 2 are equal: inf − inf
    distances = pairwise_squared_distances(updates)
    assert not bool(torch.isnan(distances).any())
    assert float(distances[0, 2]) == 0.0
    # Honest rows are nearer each other than any huge row.
    assert float(distances[3:, 3:].max()) < float(distances[3:, :3].min())


@pytest.mark.parametrize(
    "description",
    [
        "nnm -> trimmed_mean",
        "arc -> nnm -> trimmed_mean",
        "clip(max_norm=10) -> nnm -> median",
        "arc -> krum",
        "nnm -> krum",
        "arc -> geometric_median",
    ],
)
def test_float32_pipeline_with_a_huge_row_equals_the_direct_functions(description: str) -> None:
    updates, _ = attacked_float32(num_byzantine=1)
    paths: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "nnm -> trimmed_mean": lambda x: trimmed_mean(
            nearest_neighbour_mixing(x, num_byzantine=1), trim=1
        ),
        "arc -> nnm -> trimmed_mean": lambda x: trimmed_mean(
            nearest_neighbour_mixing(adaptive_robust_clip(x, num_byzantine=1), num_byzantine=1),
            trim=1,
        ),
        "clip(max_norm=10) -> nnm -> median": lambda x: coordinate_median(
            nearest_neighbour_mixing(clip_to_norm(x, 10.0), num_byzantine=1)
        ),
        "arc -> krum": lambda x: krum(adaptive_robust_clip(x, num_byzantine=1), num_byzantine=1),
        "nnm -> krum": lambda x: krum(
            nearest_neighbour_mixing(x, num_byzantine=1), num_byzantine=1
        ),
        "arc -> geometric_median": lambda x: geometric_median(
            adaptive_robust_clip(x, num_byzantine=1)
        ),
    }
    direct = paths[description]
    result = build_pipeline(description, num_byzantine=1)(updates).aggregate
    assert bool(torch.isfinite(result).all())
    assert float(result.abs().max()) < 10.0
    torch.testing.assert_close(result, direct(updates), rtol=1e-5, atol=1e-5)


def test_float32_krum_never_selects_huge_rows_whose_mutual_distance_overflows() -> None:
    updates, honest = attacked_float32(num_byzantine=3)
    result = krum(updates, num_byzantine=3)
    assert any(torch.equal(result, row) for row in honest)


def test_float32_clipping_brings_a_huge_row_to_the_norm_not_to_zero() -> None:
    updates, _ = attacked_float32(num_byzantine=1)
    clipped = clip_to_norm(updates, 2.0)
    norm = float(torch.linalg.vector_norm(clipped[0].double()))
    assert norm == pytest.approx(2.0, rel=1e-5)


def test_float32_arc_brings_a_huge_row_to_an_honest_norm_not_to_zero() -> None:
    updates, honest = attacked_float32(num_byzantine=1)
    clipped = adaptive_robust_clip(updates, num_byzantine=1)
    # n = 9, f = 1: k = ⌊2·8/9⌋ = 1 row clipped, to the largest honest norm.
    largest_honest = float(torch.linalg.vector_norm(honest.double(), dim=1).max())
    norm = float(torch.linalg.vector_norm(clipped[0].double()))
    assert norm == pytest.approx(largest_honest, rel=1e-5)


def test_float32_geometric_median_with_a_huge_row_is_finite_and_near_the_honest_rows() -> None:
    updates, honest = attacked_float32(num_byzantine=1)
    result = geometric_median(updates)
    assert bool(torch.isfinite(result).all())
    assert float(torch.linalg.vector_norm(result - honest.mean(dim=0))) < 2.0


def test_float32_centered_clipping_with_rows_near_the_float32_limit_is_finite() -> None:
    # ⟨x, v⟩ itself overflows float32 here, not only ‖x‖².
    updates, _ = attacked_float32(num_byzantine=1)
    updates[0] = 3e38
    result = centered_clipping(updates, radius=0.5, iterations=3, center=torch.full((5,), 10.0))
    assert bool(torch.isfinite(result).all())


@pytest.mark.parametrize(
    "rule",
    [
        lambda x: krum(x, num_byzantine=1),
        lambda x: geometric_median(x),
        lambda x: centered_clipping(x, radius=1.0),
        lambda x: nearest_neighbour_mixing(x, num_byzantine=1),
        lambda x: clip_to_norm(x, 1.0),
        lambda x: build_pipeline("arc -> nnm -> trimmed_mean", num_byzantine=1)(x).aggregate,
    ],
    ids=["krum", "geometric_median", "centered_clipping", "nnm", "clip", "pipeline"],
)
def test_float64_rows_whose_squares_overflow_float64_are_refused_not_aggregated(
    rule: object,
) -> None:
    updates = torch.randn(9, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    updates[0] = 1e200
    assert callable(rule)
    with pytest.raises(InvalidUpdatesError, match="overflow float64"):
        rule(updates)


def test_float64_median_and_trimmed_mean_still_take_any_finite_magnitude() -> None:
    # They never square a value, so 1e300 is just a very large number to them.
    updates = torch.randn(9, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    honest = updates[1:].clone()
    updates[0] = 1e300
    for result in (coordinate_median(updates), trimmed_mean(updates, trim=1)):
        assert bool((result <= honest.max(dim=0).values).all())
