"""NaN and Inf are refused by every rule, step and pipeline, never propagated.

Also documents the ``validated=True`` contract: it skips only the finiteness
scan, for callers that have already checked every row.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from ztfl.aggregation import (
    InvalidUpdatesError,
    build_pipeline,
    centered_clipping,
    coordinate_median,
    geometric_median,
    multi_krum,
    weighted_mean,
)

Aggregator = Callable[..., torch.Tensor]  # a rule or step with its parameters bound (conftest)

NON_FINITE = [float("nan"), float("inf"), float("-inf")]


def poisoned(updates: torch.Tensor, value: float, *, row: int = 3, column: int = 2) -> torch.Tensor:
    copy = updates.clone()
    copy[row, column] = value
    return copy


@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
def test_every_rule_refuses_a_non_finite_entry(
    rule: Aggregator, catalogue_updates: torch.Tensor, value: float
) -> None:
    with pytest.raises(InvalidUpdatesError, match="NaN or Inf"):
        rule(poisoned(catalogue_updates, value))


@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
def test_every_pre_aggregation_step_refuses_a_non_finite_entry(
    pre_step: Aggregator, catalogue_updates: torch.Tensor, value: float
) -> None:
    with pytest.raises(InvalidUpdatesError, match="NaN or Inf"):
        pre_step(poisoned(catalogue_updates, value))


@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
def test_every_pipeline_refuses_a_non_finite_entry(
    catalogue_pipeline: str, catalogue_updates: torch.Tensor, value: float
) -> None:
    pipeline = build_pipeline(catalogue_pipeline, num_byzantine=2)
    with pytest.raises(InvalidUpdatesError, match="NaN or Inf"):
        pipeline(poisoned(catalogue_updates, value))


def test_a_single_nan_in_the_last_coordinate_of_the_last_row_is_found(
    catalogue_updates: torch.Tensor,
) -> None:
    last = catalogue_updates.shape[0] - 1, catalogue_updates.shape[1] - 1
    updates = poisoned(catalogue_updates, float("nan"), row=last[0], column=last[1])
    with pytest.raises(InvalidUpdatesError):
        coordinate_median(updates)


@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
def test_non_finite_weights_are_refused(catalogue_updates: torch.Tensor, value: float) -> None:
    weights = torch.ones(catalogue_updates.shape[0])
    weights[0] = value
    with pytest.raises(InvalidUpdatesError, match="finite and non-negative"):
        weighted_mean(catalogue_updates, weights)
    with pytest.raises(InvalidUpdatesError, match="finite and non-negative"):
        build_pipeline("mean", num_byzantine=0)(catalogue_updates, weights)


def test_negative_weights_are_refused(catalogue_updates: torch.Tensor) -> None:
    weights = torch.ones(catalogue_updates.shape[0])
    weights[1] = -0.5
    with pytest.raises(InvalidUpdatesError, match="finite and non-negative"):
        geometric_median(catalogue_updates, weights)


def test_all_zero_weights_are_refused(catalogue_updates: torch.Tensor) -> None:
    with pytest.raises(InvalidUpdatesError, match="all be zero"):
        weighted_mean(catalogue_updates, torch.zeros(catalogue_updates.shape[0]))


def test_weights_of_the_wrong_length_are_refused(catalogue_updates: torch.Tensor) -> None:
    with pytest.raises(InvalidUpdatesError, match="weights must have shape"):
        multi_krum(catalogue_updates, torch.ones(3), num_byzantine=2)


@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
def test_a_non_finite_center_for_centered_clipping_is_refused(
    catalogue_updates: torch.Tensor, value: float
) -> None:
    # Regression: the centre was used unchecked, so a NaN centre became the aggregate.
    center = torch.zeros(catalogue_updates.shape[1], dtype=catalogue_updates.dtype)
    center[0] = value
    with pytest.raises(InvalidUpdatesError, match="center"):
        centered_clipping(catalogue_updates, radius=1.0, center=center)


def test_a_center_of_the_wrong_shape_for_centered_clipping_is_refused(
    catalogue_updates: torch.Tensor,
) -> None:
    center = torch.zeros(catalogue_updates.shape[1] + 1, dtype=catalogue_updates.dtype)
    with pytest.raises(InvalidUpdatesError, match="center"):
        centered_clipping(catalogue_updates, radius=1.0, center=center)


@pytest.mark.parametrize(
    "updates",
    [torch.zeros(0, 3), torch.zeros(3, 0), torch.zeros(3), torch.zeros(2, 2, 2)],
    ids=["no-rows", "no-columns", "vector", "three-dimensional"],
)
def test_every_rule_refuses_a_matrix_of_the_wrong_shape(
    rule: Aggregator, updates: torch.Tensor
) -> None:
    with pytest.raises(InvalidUpdatesError):
        rule(updates)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64, torch.bool])
def test_every_rule_refuses_an_unsupported_dtype(rule: Aggregator, dtype: torch.dtype) -> None:
    with pytest.raises(InvalidUpdatesError, match="float32 or float64"):
        rule(torch.ones(11, 3).to(dtype))


def test_every_rule_refuses_something_that_is_not_a_tensor(rule: Aggregator) -> None:
    with pytest.raises(InvalidUpdatesError, match=r"torch\.Tensor"):
        rule([[1.0, 2.0]] * 11)


def test_validated_true_skips_only_the_finiteness_scan(catalogue_updates: torch.Tensor) -> None:
    # The caller promises every row is finite (the coordinator checks each row while
    # validating); a broken promise is not caught, and the NaN reaches the result.
    updates = poisoned(catalogue_updates, float("nan"))
    result = weighted_mean(updates, validated=True)
    assert bool(torch.isnan(result[2]))
    pipeline_result = build_pipeline("mean", num_byzantine=0)(updates, validated=True)
    assert bool(torch.isnan(pipeline_result.aggregate[2]))


def test_validated_true_still_checks_the_shape_and_dtype() -> None:
    with pytest.raises(InvalidUpdatesError, match=r"\(n, d\)"):
        weighted_mean(torch.zeros(3), validated=True)
    with pytest.raises(InvalidUpdatesError, match="float32 or float64"):
        weighted_mean(torch.zeros(3, 2, dtype=torch.float16), validated=True)


def test_validated_true_still_checks_the_weights(catalogue_updates: torch.Tensor) -> None:
    weights = torch.ones(catalogue_updates.shape[0])
    weights[0] = float("nan")
    with pytest.raises(InvalidUpdatesError, match="finite and non-negative"):
        weighted_mean(catalogue_updates, weights, validated=True)


def test_validated_true_gives_the_same_result_on_finite_input(
    rule: Aggregator, catalogue_updates: torch.Tensor
) -> None:
    torch.testing.assert_close(rule(catalogue_updates, validated=True), rule(catalogue_updates))
