"""DP clipping of whole updates, the "not clipped" bits, and the secure-mode checks."""

from __future__ import annotations

import math

import pytest
import torch

from ztfl.aggregation import InvalidUpdatesError, RefusalReason
from ztfl.aggregation.privacy.clipping import (
    UnclippedCount,
    check_group_mean,
    check_unclipped_count,
    clip_updates,
)


def _rows_with_norms(norms: list[float], dim: int = 5, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(len(norms), dim, generator=generator, dtype=torch.float64)
    directions /= torch.linalg.vector_norm(directions, dim=1, keepdim=True)
    return directions * torch.tensor(norms, dtype=torch.float64)[:, None]


def test_long_rows_are_scaled_to_exactly_the_clip_norm() -> None:
    updates = _rows_with_norms([3.0, 10.0])
    clipped = clip_updates(updates, 1.5)
    norms = torch.linalg.vector_norm(clipped.updates, dim=1)
    torch.testing.assert_close(norms, torch.full((2,), 1.5, dtype=torch.float64))
    cosine = torch.nn.functional.cosine_similarity(clipped.updates, updates, dim=1)
    torch.testing.assert_close(cosine, torch.ones(2, dtype=torch.float64))


def test_short_rows_are_kept_unchanged() -> None:
    updates = _rows_with_norms([0.2, 1.0])
    clipped = clip_updates(updates, 1.5)
    torch.testing.assert_close(clipped.updates, updates, rtol=0, atol=0)


def test_the_whole_update_is_clipped_not_each_tensor() -> None:
    # Two "tensors" of norm 1.2 each: each is under C = 1.5, the whole update (1.2·√2) is not.
    update = torch.tensor([[1.2, 0.0, 0.0, 1.2]], dtype=torch.float64)
    clipped = clip_updates(update, 1.5)
    assert math.isclose(float(torch.linalg.vector_norm(clipped.updates)), 1.5)
    assert clipped.unclipped.tolist() == [0]


def test_bits_are_integer_ones_exactly_for_rows_not_clipped() -> None:
    clipped = clip_updates(_rows_with_norms([0.5, 2.0, 1.0, 7.0]), 1.0)
    assert clipped.unclipped.dtype == torch.int64
    assert clipped.unclipped.tolist() == [1, 0, 1, 0]


def test_a_row_exactly_at_the_clip_norm_counts_as_not_clipped() -> None:
    update = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    assert clip_updates(update, 5.0).unclipped.tolist() == [1]


def test_a_client_clipping_its_own_row_computes_the_servers_bit() -> None:
    updates = _rows_with_norms([0.3, 1.7, 0.99, 1.01], seed=3)
    together = clip_updates(updates, 1.0)
    alone = [int(clip_updates(row[None, :], 1.0).unclipped[0]) for row in updates]
    assert alone == together.unclipped.tolist()


def test_unclipped_count_sums_the_bits() -> None:
    count = clip_updates(_rows_with_norms([0.5, 2.0, 0.9]), 1.0).unclipped_count()
    assert count == UnclippedCount(count=2, num_clients=3)


def test_clipping_leaves_the_input_untouched() -> None:
    updates = _rows_with_norms([4.0, 0.1])
    before = updates.clone()
    clip_updates(updates, 1.0)
    torch.testing.assert_close(updates, before, rtol=0, atol=0)


def test_float32_rows_stay_float32() -> None:
    updates = _rows_with_norms([4.0, 0.1]).to(torch.float32)
    assert clip_updates(updates, 1.0).updates.dtype == torch.float32


@pytest.mark.parametrize("clip_norm", [0.0, -1.0, math.inf, math.nan])
def test_an_invalid_clip_norm_is_refused(clip_norm: float) -> None:
    with pytest.raises(ValueError, match="clip_norm"):
        clip_updates(_rows_with_norms([1.0]), clip_norm)


def test_non_finite_rows_are_refused() -> None:
    with pytest.raises(InvalidUpdatesError):
        clip_updates(torch.tensor([[math.nan, 1.0]]), 1.0)


def test_unclipped_count_outside_the_group_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="unclipped count"):
        UnclippedCount(count=4, num_clients=3)


def test_group_mean_of_clipped_updates_is_accepted() -> None:
    clipped = clip_updates(_rows_with_norms([5.0, 5.0, 5.0, 0.1], seed=1), 1.0)
    # Aligned rows make the mean as long as possible: exactly C.
    aligned = clip_updates(_rows_with_norms([5.0], seed=2).repeat(4, 1), 1.0)
    for group in (clipped, aligned):
        assert check_group_mean(group.updates.sum(dim=0), num_clients=4, clip_norm=1.0) is None


def test_group_mean_longer_than_the_clip_norm_is_refused() -> None:
    honest = clip_updates(_rows_with_norms([5.0, 5.0, 5.0], seed=2), 1.0).updates
    unclipped_member = honest[0] * 10
    group_sum = honest[1:].sum(dim=0) + unclipped_member
    refusal = check_group_mean(group_sum, num_clients=3, clip_norm=1.0)
    assert refusal is not None
    assert refusal.reason is RefusalReason.GROUP_MEAN_ABOVE_CLIP


def test_group_mean_within_float32_rounding_is_accepted() -> None:
    aligned = clip_updates(_rows_with_norms([5.0], seed=2).repeat(3, 1).float(), 1.0)
    group_sum = aligned.updates.sum(dim=0) * (1 + 1e-6)
    assert check_group_mean(group_sum, num_clients=3, clip_norm=1.0) is None


@pytest.mark.parametrize("count", [-1, 4, 2**40])
def test_summed_bits_outside_zero_to_group_size_are_refused(count: int) -> None:
    refusal = check_unclipped_count(count, num_clients=3)
    assert refusal is not None
    assert refusal.reason is RefusalReason.UNCLIPPED_COUNT_OUT_OF_RANGE


@pytest.mark.parametrize("count", [0, 2, 3])
def test_summed_bits_within_zero_to_group_size_are_accepted(count: int) -> None:
    assert check_unclipped_count(count, num_clients=3) is None
