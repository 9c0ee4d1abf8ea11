"""Client weights: honoured by the rules that define them, refused by those that do not."""

from __future__ import annotations

import pytest
import torch

from ztfl.aggregation import (
    InvalidUpdatesError,
    bucketing,
    build_pipeline,
    bulyan,
    centered_clipping,
    coordinate_median,
    geometric_median,
    krum,
    multi_krum,
    trimmed_mean,
    weighted_mean,
)

NUM_ROWS = 11


@pytest.fixture
def updates(dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    return torch.randn(NUM_ROWS, 4, generator=generator, dtype=torch.float64).to(dtype)


@pytest.fixture
def weights() -> torch.Tensor:
    return torch.tensor([5.0, 1.0, 2.0, 8.0, 1.0, 3.0, 1.0, 1.0, 4.0, 2.0, 6.0])


def with_repeats(updates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Each row repeated by its integer weight: what a weighted rule must equal."""
    return torch.repeat_interleave(updates, counts.long(), dim=0)


def test_uniform_weights_are_the_same_as_no_weights(
    updates: torch.Tensor, catalogue_pipeline: str
) -> None:
    pipeline = build_pipeline(catalogue_pipeline, num_byzantine=2)
    generator_seed = 3
    plain = pipeline(updates, generator=torch.Generator().manual_seed(generator_seed))
    uniform = pipeline(
        updates,
        torch.full((NUM_ROWS,), 7.0),
        generator=torch.Generator().manual_seed(generator_seed),
    )
    torch.testing.assert_close(uniform.aggregate, plain.aggregate)


@pytest.mark.parametrize(
    "rule",
    [
        lambda x, w: coordinate_median(x, w),
        lambda x, w: trimmed_mean(x, w, trim=2),
        lambda x, w: bulyan(x, w, num_byzantine=2),
    ],
    ids=["coordinate_median", "trimmed_mean", "bulyan"],
)
def test_rule_without_a_weighted_definition_refuses_non_uniform_weights(
    rule: object, updates: torch.Tensor, weights: torch.Tensor
) -> None:
    assert callable(rule)
    with pytest.raises(InvalidUpdatesError, match="does not use client weights"):
        rule(updates, weights)


@pytest.mark.parametrize("description", ["median", "trimmed_mean", "bulyan", "arc -> median"])
def test_pipeline_ending_in_an_unweighted_rule_refuses_non_uniform_weights(
    description: str, updates: torch.Tensor, weights: torch.Tensor
) -> None:
    pipeline = build_pipeline(description, num_byzantine=2)
    assert not pipeline.supports_weights
    with pytest.raises(InvalidUpdatesError, match="does not use client weights"):
        pipeline(updates, weights)


def test_weighted_mean_equals_the_mean_of_rows_repeated_by_weight(
    updates: torch.Tensor, weights: torch.Tensor
) -> None:
    expected = with_repeats(updates, weights).mean(dim=0)
    torch.testing.assert_close(weighted_mean(updates, weights), expected)
    pipeline = build_pipeline("mean", num_byzantine=0)
    torch.testing.assert_close(pipeline(updates, weights).aggregate, expected)


def test_weighted_geometric_median_equals_that_of_rows_repeated_by_weight(
    updates: torch.Tensor, weights: torch.Tensor
) -> None:
    options = {"tolerance": 1e-12, "max_iterations": 2000}
    expected = geometric_median(with_repeats(updates, weights), **options)  # type: ignore[arg-type]
    ours = geometric_median(updates, weights, **options)  # type: ignore[arg-type]
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    pipeline = build_pipeline(
        "geometric_median(tolerance=1e-12, max_iterations=2000)", num_byzantine=2
    )
    torch.testing.assert_close(pipeline(updates, weights).aggregate, ours)


def test_weighted_centered_clipping_equals_that_of_rows_repeated_by_weight(
    updates: torch.Tensor, weights: torch.Tensor
) -> None:
    expected = centered_clipping(with_repeats(updates, weights), radius=0.4, iterations=4)
    ours = centered_clipping(updates, weights, radius=0.4, iterations=4)
    torch.testing.assert_close(ours, expected)
    pipeline = build_pipeline("centered_clipping(radius=0.4, iterations=4)", num_byzantine=2)
    torch.testing.assert_close(pipeline(updates, weights).aggregate, ours)


def test_weighted_multi_krum_averages_its_selection_by_weight(
    updates: torch.Tensor, weights: torch.Tensor
) -> None:
    pipeline = build_pipeline("multi_krum(num_selected=5)", num_byzantine=2)
    selected = pipeline(updates).selected_rows
    assert selected is not None
    chosen = torch.tensor(selected)
    chosen_weights = weights[chosen].to(updates.dtype)
    expected = (chosen_weights / chosen_weights.sum()) @ updates[chosen]
    torch.testing.assert_close(
        multi_krum(updates, weights, num_byzantine=2, num_selected=5), expected
    )
    torch.testing.assert_close(pipeline(updates, weights).aggregate, expected)


def test_weights_do_not_change_which_rows_multi_krum_selects(
    updates: torch.Tensor, weights: torch.Tensor
) -> None:
    pipeline = build_pipeline("multi_krum(num_selected=5)", num_byzantine=2)
    assert pipeline(updates, weights).selected_rows == pipeline(updates).selected_rows


def test_krum_returns_its_selected_row_whatever_the_weights(
    updates: torch.Tensor, weights: torch.Tensor
) -> None:
    torch.testing.assert_close(
        krum(updates, weights, num_byzantine=2), krum(updates, num_byzantine=2)
    )
    pipeline = build_pipeline("krum", num_byzantine=2)
    torch.testing.assert_close(pipeline(updates, weights).aggregate, pipeline(updates).aggregate)


def test_multi_krum_refuses_a_selection_of_only_zero_weights(updates: torch.Tensor) -> None:
    selected = build_pipeline("krum", num_byzantine=2)(updates).selected_rows
    assert selected is not None
    weights = torch.ones(NUM_ROWS)
    weights[selected[0]] = 0.0
    with pytest.raises(InvalidUpdatesError, match="zero weight"):
        multi_krum(updates, weights, num_byzantine=2, num_selected=1)


def test_bucketing_weighs_each_bucket_by_the_sum_of_its_members_weights(
    updates: torch.Tensor, weights: torch.Tensor
) -> None:
    seed = 11
    # Bucketing the identity with the same seed reveals the buckets the pipeline uses.
    revealed = bucketing(
        torch.eye(NUM_ROWS, dtype=torch.float64),
        bucket_size=3,
        generator=torch.Generator().manual_seed(seed),
    )
    buckets = [torch.nonzero(row).flatten() for row in revealed]
    bucket_means = torch.stack([updates[members].mean(dim=0) for members in buckets])
    bucket_weights = torch.stack([weights[members].sum() for members in buckets])
    expected = (bucket_weights / bucket_weights.sum()).to(updates.dtype) @ bucket_means
    pipeline = build_pipeline("bucketing(bucket_size=3) -> mean", num_byzantine=0)
    result = pipeline(updates, weights, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(result.aggregate, expected)
