"""Each rule and pre-aggregation step against a small case worked out by hand.

The expected numbers are written in the test with the arithmetic beside them,
so a reader can check them without running any code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ztfl.aggregation import (
    adaptive_robust_clip,
    bucketing,
    bulyan,
    centered_clipping,
    clip_to_norm,
    coordinate_median,
    geometric_median,
    krum,
    multi_krum,
    nearest_neighbour_mixing,
    trimmed_mean,
    weighted_mean,
)


def matrix(
    rows: Sequence[Sequence[float]], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype, device=device)


def expect(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def test_weighted_mean_without_weights_averages_rows(
    dtype: torch.dtype, device: torch.device
) -> None:
    updates = matrix([[1, 2], [3, 6], [5, 1]], dtype, device)
    # ((1 + 3 + 5) / 3, (2 + 6 + 1) / 3) = (3, 3)
    torch.testing.assert_close(weighted_mean(updates), expect([3, 3], updates))


def test_weighted_mean_weighs_rows_by_their_weights(
    dtype: torch.dtype, device: torch.device
) -> None:
    updates = matrix([[1, 2], [3, 6]], dtype, device)
    weights = torch.tensor([1.0, 3.0], device=device)
    # (1·(1, 2) + 3·(3, 6)) / 4 = (10, 20) / 4 = (2.5, 5)
    torch.testing.assert_close(weighted_mean(updates, weights), expect([2.5, 5], updates))


def test_coordinate_median_of_odd_rows_is_the_middle_value(
    dtype: torch.dtype, device: torch.device
) -> None:
    updates = matrix([[1, 9], [5, 2], [3, 4]], dtype, device)
    # column 0 sorted: 1 3 5 → 3; column 1 sorted: 2 4 9 → 4
    torch.testing.assert_close(coordinate_median(updates), expect([3, 4], updates))


def test_coordinate_median_of_even_rows_averages_the_middle_two(
    dtype: torch.dtype, device: torch.device
) -> None:
    updates = matrix([[1, 9], [5, 2], [3, 4], [10, 0]], dtype, device)
    # column 0 sorted: 1 3 5 10 → (3 + 5) / 2 = 4; column 1 sorted: 0 2 4 9 → (2 + 4) / 2 = 3
    torch.testing.assert_close(coordinate_median(updates), expect([4, 3], updates))


def test_trimmed_mean_drops_the_extremes_of_each_coordinate(
    dtype: torch.dtype, device: torch.device
) -> None:
    updates = matrix([[1, -100], [2, 0], [3, 1], [100, 2], [4, 3]], dtype, device)
    # column 0 sorted: 1 [2 3 4] 100 → 9 / 3 = 3; column 1 sorted: -100 [0 1 2] 3 → 3 / 3 = 1
    torch.testing.assert_close(trimmed_mean(updates, trim=1), expect([3, 1], updates))


def test_trimmed_mean_with_zero_trim_is_the_mean(dtype: torch.dtype, device: torch.device) -> None:
    updates = matrix([[1, -100], [2, 0], [3, 1], [100, 2], [4, 3]], dtype, device)
    # (1 + 2 + 3 + 100 + 4) / 5 = 22; (-100 + 0 + 1 + 2 + 3) / 5 = -18.8
    torch.testing.assert_close(trimmed_mean(updates, trim=0), expect([22, -18.8], updates))


# Krum cases: points on a line (second coordinate constant, so it adds nothing to distances).
# n = 5, f = 1, so each score sums the n − f − 2 = 2 smallest squared distances to other rows:
#   x = 0 : to 1, 3, 5, 20 → 1, 9, 25, 400 → 1 + 9  = 10
#   x = 1 : to 0, 3, 5, 20 → 1, 4, 16, 361 → 1 + 4  = 5
#   x = 3 : to 1, 5, 0, 20 → 4, 4, 9, 289  → 4 + 4  = 8
#   x = 5 : to 3, 1, 0, 20 → 4, 16, 25, 225 → 4 + 16 = 20
#   x = 20: to 5, 3, 1, 0  → 225, 289, ...  → 514
KRUM_ROWS = [[0, 7], [1, 7], [3, 7], [5, 7], [20, 7]]


def test_krum_selects_the_row_with_the_lowest_score(
    dtype: torch.dtype, device: torch.device
) -> None:
    updates = matrix(KRUM_ROWS, dtype, device)
    # lowest score 5 → the row (1, 7)
    torch.testing.assert_close(krum(updates, num_byzantine=1), expect([1, 7], updates))


def test_multi_krum_averages_the_m_best_scored_rows(
    dtype: torch.dtype, device: torch.device
) -> None:
    updates = matrix(KRUM_ROWS, dtype, device)
    # three best scores 5, 8, 10 → rows x = 1, 3, 0 → (1 + 3 + 0) / 3 = 4/3
    result = multi_krum(updates, num_byzantine=1, num_selected=3)
    torch.testing.assert_close(result, expect([4 / 3, 7], updates))


def test_multi_krum_selects_n_minus_f_rows_by_default(
    dtype: torch.dtype, device: torch.device
) -> None:
    updates = matrix(KRUM_ROWS, dtype, device)
    # m = n − f = 4 best scores 5, 8, 10, 20 → x = 1, 3, 0, 5 → 9 / 4 = 2.25
    torch.testing.assert_close(multi_krum(updates, num_byzantine=1), expect([2.25, 7], updates))


def test_multi_krum_weighs_the_selected_rows(dtype: torch.dtype, device: torch.device) -> None:
    updates = matrix(KRUM_ROWS, dtype, device)
    weights = torch.tensor([1.0, 2.0, 1.0, 1.0, 100.0], device=device)
    # selected x = 1, 3, 0 with weights 2, 1, 1 → (2·1 + 1·3 + 1·0) / 4 = 1.25;
    # the unselected outlier's weight 100 plays no part
    result = multi_krum(updates, weights, num_byzantine=1, num_selected=3)
    torch.testing.assert_close(result, expect([1.25, 7], updates))


def test_bulyan_selects_by_iterated_krum_then_averages_around_the_median(
    dtype: torch.dtype, device: torch.device
) -> None:
    # n = 7, f = 1: θ = n − 2f = 5 rows selected, β = θ − 2f = 3 values kept per coordinate.
    # Values 0 1 2 3 5 9 100; each pick scores the pool with max(1, |pool| − f − 2) neighbours:
    #   pool of 7, 4 neighbours: 0→1+4+9+16=30... exactly: 0:39 1:22 2:15 3:18 5:45 9:165 → pick 2
    #   pool 0 1 3 5 9 100, 3 neighbours: 0:35 1:21 3:17 5:36 9:116 → pick 3
    #   pool 0 1 5 9 100, 2 neighbours: 0:1+25=26 1:1+16=17 5:16+16=32 9:16+64=80 → pick 1
    #   pool 0 5 9 100, 1 neighbour: 0:25 5:16 9:16 → tie, the lower index wins → pick 5
    #   pool 0 9 100, 1 neighbour: 0:81 9:81 → tie, the lower index wins → pick 0
    # Selection 0 1 2 3 5: median 2; the 3 values closest to it are 1 2 3 → mean 2.
    # Second coordinate is ten times the first: same picks, result 20.
    values = [0, 1, 2, 3, 5, 9, 100]
    updates = matrix([[v, 10 * v] for v in values], dtype, device)
    torch.testing.assert_close(bulyan(updates, num_byzantine=1), expect([2, 20], updates))


def test_geometric_median_of_a_triangle_is_its_fermat_point(
    dtype: torch.dtype, device: torch.device
) -> None:
    # A = (−1, 0), B = (1, 0), C = (0, 3): every angle is below 120°, so the median is the
    # Fermat point, where AB subtends 120°: on the axis at height tan(30°) = 1/√3 ≈ 0.577
    # (the mean is (0, 1)).
    updates = matrix([[-1, 0], [1, 0], [0, 3]], dtype, device)
    result = geometric_median(updates, tolerance=1e-12, max_iterations=1000)
    torch.testing.assert_close(result, expect([0, 1 / math.sqrt(3)], updates), atol=1e-4, rtol=0.0)


def test_geometric_median_of_collinear_points_is_their_median(
    dtype: torch.dtype, device: torch.device
) -> None:
    # On a line, Σ|z − xᵢ| is minimised at the median: 0 1 [2] 10 20 → 2 (the mean is 6.6).
    updates = matrix([[v, -v] for v in (0, 1, 2, 10, 20)], dtype, device)
    torch.testing.assert_close(
        geometric_median(updates), expect([2, -2], updates), atol=1e-4, rtol=0.0
    )


def test_geometric_median_weighs_rows(dtype: torch.dtype, device: torch.device) -> None:
    # Weighted median on a line: weights 1 1 1 1 5 on 0 1 2 10 20; total 9, and the
    # cumulative weight first passes 9/2 at x = 20 (1, 2, 3, 4, then 9) → 20.
    updates = matrix([[v] for v in (0, 1, 2, 10, 20)], dtype, device)
    weights = torch.tensor([1.0, 1.0, 1.0, 1.0, 5.0], device=device)
    result = geometric_median(updates, weights, tolerance=1e-12, max_iterations=1000)
    torch.testing.assert_close(result, expect([20], updates), atol=1e-3, rtol=0.0)


def test_centered_clipping_pulls_by_at_most_the_radius_per_row(
    dtype: torch.dtype, device: torch.device
) -> None:
    # τ = 1 from v = 0, rows 0.5, 3, −10 (weight 1/3 each):
    # iteration 1: v = 0 + (0.5 + min(1, 1/3)·3 + min(1, 1/10)·(−10)) / 3 = (0.5 + 1 − 1) / 3 = 1/6
    # iteration 2: differences 1/3, 17/6, −61/6 → clipped 1/3, 1, −1 → v = 1/6 + (1/3)/3 = 5/18
    updates = matrix([[0.5], [3], [-10]], dtype, device)
    one = centered_clipping(updates, radius=1.0, iterations=1)
    two = centered_clipping(updates, radius=1.0, iterations=2)
    torch.testing.assert_close(one, expect([1 / 6], updates))
    torch.testing.assert_close(two, expect([5 / 18], updates))


def test_centered_clipping_starts_from_the_given_center(
    dtype: torch.dtype, device: torch.device
) -> None:
    # From v = 3, τ = 1: differences −2.5, 0, −13 → clipped −1, 0, −1 → v = 3 − 2/3 = 7/3
    updates = matrix([[0.5], [3], [-10]], dtype, device)
    center = torch.tensor([3.0], dtype=dtype, device=device)
    result = centered_clipping(updates, radius=1.0, iterations=1, center=center)
    torch.testing.assert_close(result, expect([7 / 3], updates))


def test_clip_to_norm_scales_only_rows_above_the_norm(
    dtype: torch.dtype, device: torch.device
) -> None:
    # ‖(3, 4)‖ = 5 > 2 → (3, 4)·2/5 = (1.2, 1.6); ‖(0, 1)‖ = 1 ≤ 2 → unchanged
    updates = matrix([[3, 4], [0, 1]], dtype, device)
    expected = matrix([[1.2, 1.6], [0, 1]], dtype, device)
    torch.testing.assert_close(clip_to_norm(updates, 2.0), expected)


def test_adaptive_robust_clip_clips_the_largest_rows_to_the_next_norm(
    dtype: torch.dtype, device: torch.device
) -> None:
    # n = 4, f = 1: k = ⌊2·(1/4)·(4 − 1)⌋ = ⌊1.5⌋ = 1 row clipped, to the 2nd largest norm.
    # norms 5, 1, 10, 1 → threshold 5 → (6, 8)·5/10 = (3, 4); the others are unchanged.
    updates = matrix([[3, 4], [0, 1], [6, 8], [1, 0]], dtype, device)
    expected = matrix([[3, 4], [0, 1], [3, 4], [1, 0]], dtype, device)
    torch.testing.assert_close(adaptive_robust_clip(updates, num_byzantine=1), expected)


def test_adaptive_robust_clip_without_byzantine_rows_changes_nothing(
    dtype: torch.dtype, device: torch.device
) -> None:
    # f = 0: k = ⌊0⌋ = 0 rows clipped
    updates = matrix([[3, 4], [0, 1], [60, 80]], dtype, device)
    torch.testing.assert_close(adaptive_robust_clip(updates, num_byzantine=0), updates)


def test_nearest_neighbour_mixing_averages_each_rows_nearest_rows(
    dtype: torch.dtype, device: torch.device
) -> None:
    # n = 4, f = 1: each row becomes the mean of its n − f = 3 nearest rows, itself included.
    #   0 : 0, 1, 3      → 4/3
    #   1 : 1, 0, 3      → 4/3
    #   3 : 3, 1 (2), 0 (3) → 4/3   (10 is 7 away)
    #   10: 10, 3, 1     → 14/3
    updates = matrix([[0], [1], [3], [10]], dtype, device)
    expected = matrix([[4 / 3], [4 / 3], [4 / 3], [14 / 3]], dtype, device)
    torch.testing.assert_close(nearest_neighbour_mixing(updates, num_byzantine=1), expected)


def test_nearest_neighbour_mixing_without_byzantine_rows_gives_every_row_the_mean(
    dtype: torch.dtype, device: torch.device
) -> None:
    # f = 0: every row's n nearest rows are all rows → mean (0 + 1 + 3 + 10) / 4 = 3.5
    updates = matrix([[0], [1], [3], [10]], dtype, device)
    expected = matrix([[3.5]] * 4, dtype, device)
    torch.testing.assert_close(nearest_neighbour_mixing(updates, num_byzantine=0), expected)


def test_bucketing_with_one_bucket_is_the_mean(dtype: torch.dtype, device: torch.device) -> None:
    # s = n = 4: one bucket of every row → ((0 + 1 + 3 + 10) / 4) = 3.5
    updates = matrix([[0], [1], [3], [10]], dtype, device)
    generator = torch.Generator().manual_seed(0)
    result = bucketing(updates, bucket_size=4, generator=generator)
    torch.testing.assert_close(result, matrix([[3.5]], dtype, device))


def test_bucketing_with_buckets_of_one_permutes_the_rows(
    dtype: torch.dtype, device: torch.device
) -> None:
    # s = 1: n buckets of one row each → the same rows in a shuffled order
    updates = matrix([[0], [1], [3], [10]], dtype, device)
    generator = torch.Generator().manual_seed(0)
    result = bucketing(updates, bucket_size=1, generator=generator)
    assert sorted(result[:, 0].tolist()) == [0, 1, 3, 10]
