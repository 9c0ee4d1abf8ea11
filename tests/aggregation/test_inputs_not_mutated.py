"""No rule, step or pipeline modifies the caller's updates, weights or centre.

(ByzFL's clipping works in place and corrupts the caller's copy; the
coordinator reuses the matrix for monitoring after aggregating.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ztfl.aggregation import build_pipeline, centered_clipping

Aggregator = Callable[..., torch.Tensor]  # a rule or step with its parameters bound (conftest)


def with_outliers(updates: torch.Tensor) -> torch.Tensor:
    """Large rows make every clipping step actually clip."""
    copy = updates.clone()
    copy[:2] *= 50.0
    return copy


def test_rule_leaves_the_updates_unchanged(
    rule: Aggregator, catalogue_updates: torch.Tensor
) -> None:
    updates = with_outliers(catalogue_updates)
    before = updates.clone()
    rule(updates)
    assert torch.equal(updates, before)


def test_rule_leaves_the_weights_unchanged(
    rule: Aggregator, catalogue_updates: torch.Tensor
) -> None:
    updates = with_outliers(catalogue_updates)
    weights = torch.full((updates.shape[0],), 2.0)  # uniform: every rule accepts them
    before = weights.clone()
    rule(updates, weights=weights)
    assert torch.equal(weights, before)


def test_pre_aggregation_step_leaves_the_updates_unchanged(
    pre_step: Aggregator, catalogue_updates: torch.Tensor
) -> None:
    updates = with_outliers(catalogue_updates)
    before = updates.clone()
    output = pre_step(updates)
    assert torch.equal(updates, before)
    assert output.data_ptr() != updates.data_ptr()


def test_pipeline_leaves_the_updates_and_weights_unchanged(
    catalogue_pipeline: str, catalogue_updates: torch.Tensor
) -> None:
    updates = with_outliers(catalogue_updates)
    before = updates.clone()
    pipeline = build_pipeline(catalogue_pipeline, num_byzantine=2)
    weights = None
    if pipeline.supports_weights:
        weights = torch.arange(1.0, updates.shape[0] + 1.0)
    weights_before = None if weights is None else weights.clone()
    result = pipeline(updates, weights, generator=torch.Generator().manual_seed(0))
    assert torch.equal(updates, before)
    if weights is not None and weights_before is not None:
        assert torch.equal(weights, weights_before)
    # The aggregate is a fresh tensor: writing to it cannot reach the updates.
    result.aggregate.add_(1.0)
    assert torch.equal(updates, before)


def test_krum_returns_a_copy_not_a_view_of_the_selected_row(
    catalogue_updates: torch.Tensor,
) -> None:
    updates = with_outliers(catalogue_updates)
    before = updates.clone()
    result = build_pipeline("krum", num_byzantine=2)(updates)
    result.aggregate.mul_(0.0)
    assert torch.equal(updates, before)


def test_median_pipeline_output_is_not_a_view_of_the_updates() -> None:
    # With one row, the median is that row: it must still come back as a new tensor.
    updates = torch.tensor([[1.0, 2.0, 3.0]])
    result = build_pipeline("median", num_byzantine=0)(updates)
    result.aggregate.zero_()
    assert torch.equal(updates, torch.tensor([[1.0, 2.0, 3.0]]))


def test_centered_clipping_leaves_the_center_unchanged(catalogue_updates: torch.Tensor) -> None:
    center = torch.full((catalogue_updates.shape[1],), 0.5, dtype=catalogue_updates.dtype)
    before = center.clone()
    result = centered_clipping(catalogue_updates, radius=0.1, iterations=3, center=center)
    assert torch.equal(center, before)
    assert result.data_ptr() != center.data_ptr()
