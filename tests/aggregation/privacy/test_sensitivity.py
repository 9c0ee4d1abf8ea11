"""Sensitivity of configured pipelines: stated bounds, refusals, and measured changes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ztfl.aggregation import PipelineConfigError, build_pipeline
from ztfl.aggregation.privacy.clipping import clip_updates
from ztfl.aggregation.privacy.sensitivity import (
    DPConfigurationError,
    fixed_denominator_mean,
    pipeline_sensitivity,
)

CLIP = 2.0
EXPECTED = 50


def _l2(description: str, num_byzantine: int = 0, *, client_weights: bool = False) -> float:
    pipeline = build_pipeline(description, num_byzantine=num_byzantine)
    return pipeline_sensitivity(
        pipeline, clip_norm=CLIP, expected_clients=EXPECTED, client_weights=client_weights
    ).l2


@pytest.mark.parametrize(
    ("description", "num_byzantine", "expected"),
    [
        ("mean", 0, CLIP / EXPECTED),
        ("clip(max_norm=0.5) -> mean", 0, 0.5 / EXPECTED),
        ("clip(max_norm=9.0) -> mean", 0, CLIP / EXPECTED),
        ("median", 2, 2 * math.sqrt(2) * CLIP),
        ("trimmed_mean", 2, 2 * math.sqrt(3) * CLIP),
        ("trimmed_mean(beta=0.1)", 2, 2 * math.sqrt(3) * CLIP),
        ("trimmed_mean", 0, 2 * CLIP),
        ("krum", 2, 2 * CLIP),
        ("multi_krum", 2, 2 * CLIP),
        ("bulyan", 2, 2 * math.sqrt(7 / 3) * CLIP),
        ("geometric_median", 2, 2 * CLIP),
        ("centered_clipping", 2, 2 * CLIP),
        ("arc -> nnm -> median", 2, 2 * math.sqrt(2) * CLIP),
        ("bucketing(bucket_size=2) -> trimmed_mean", 1, 2 * math.sqrt(3) * CLIP),
        ("clip(max_norm=1.0) -> krum", 2, 2 * 1.0),
    ],
)
def test_stated_sensitivity_per_rule(description: str, num_byzantine: int, expected: float) -> None:
    assert math.isclose(_l2(description, num_byzantine), expected, rel_tol=1e-12)


def test_mean_derivation_names_the_fixed_denominator_and_the_relation() -> None:
    sensitivity = pipeline_sensitivity(
        build_pipeline("mean", num_byzantine=0), clip_norm=CLIP, expected_clients=EXPECTED
    )
    assert f"m = {EXPECTED}" in sensitivity.derivation
    assert "adds or removes" in sensitivity.derivation
    assert sensitivity.relation == "add_or_remove_one"


def test_replacing_one_client_doubles_the_mean_sensitivity() -> None:
    sensitivity = pipeline_sensitivity(
        build_pipeline("mean", num_byzantine=0),
        clip_norm=CLIP,
        expected_clients=EXPECTED,
        relation="replace_one",
    )
    assert math.isclose(sensitivity.l2, 2 * CLIP / EXPECTED)
    assert sensitivity.relation == "replace_one"


def test_replacing_one_client_keeps_the_robust_rule_bounds() -> None:
    sensitivity = pipeline_sensitivity(
        build_pipeline("median", num_byzantine=1),
        clip_norm=CLIP,
        expected_clients=EXPECTED,
        relation="replace_one",
    )
    assert math.isclose(sensitivity.l2, _l2("median", 1))


def test_robust_rules_state_their_bound_is_crude() -> None:
    sensitivity = pipeline_sensitivity(
        build_pipeline("median", num_byzantine=1), clip_norm=CLIP, expected_clients=EXPECTED
    )
    assert "crude" in sensitivity.derivation
    assert "median" in sensitivity.derivation


def test_weights_change_nothing_for_rules_returning_a_convex_combination() -> None:
    assert _l2("geometric_median", 2, client_weights=True) == _l2("geometric_median", 2)


@pytest.mark.parametrize("step", ["arc", "nnm", "bucketing"])
def test_mixing_or_adaptive_steps_before_the_mean_are_refused(step: str) -> None:
    pipeline = build_pipeline(f"{step} -> mean", num_byzantine=0)
    with pytest.raises(DPConfigurationError, match=f"{step} before the mean") as raised:
        pipeline_sensitivity(pipeline, clip_norm=CLIP, expected_clients=EXPECTED)
    assert raised.value.step == f"{step} before the mean"


def test_client_weights_with_the_mean_are_refused() -> None:
    pipeline = build_pipeline("mean", num_byzantine=0)
    with pytest.raises(DPConfigurationError, match="client weights with the mean"):
        pipeline_sensitivity(
            pipeline, clip_norm=CLIP, expected_clients=EXPECTED, client_weights=True
        )


def test_client_weights_with_a_rule_that_ignores_them_are_refused() -> None:
    pipeline = build_pipeline("median", num_byzantine=1)
    with pytest.raises(DPConfigurationError, match="client weights with median"):
        pipeline_sensitivity(
            pipeline, clip_norm=CLIP, expected_clients=EXPECTED, client_weights=True
        )


def test_the_refusal_is_a_pipeline_configuration_error() -> None:
    assert issubclass(DPConfigurationError, PipelineConfigError)


@pytest.mark.parametrize(("clip_norm", "expected_clients"), [(0.0, 10), (math.nan, 10), (1.0, 0)])
def test_invalid_clip_norm_or_denominator_is_refused(
    clip_norm: float, expected_clients: int
) -> None:
    with pytest.raises(PipelineConfigError):
        pipeline_sensitivity(
            build_pipeline("mean", num_byzantine=0),
            clip_norm=clip_norm,
            expected_clients=expected_clients,
        )


def test_the_median_bound_is_of_order_c_not_c_over_m() -> None:
    # {−C, C} has median 0; adding a client at C moves it to C: the change reaches C.
    before = torch.tensor([[-CLIP], [CLIP]], dtype=torch.float64)
    after = torch.cat([before, torch.tensor([[CLIP]], dtype=torch.float64)])
    pipeline = build_pipeline("median", num_byzantine=0)
    change = float((pipeline(after).aggregate - pipeline(before).aggregate).abs())
    assert change == CLIP
    assert change <= _l2("median")


# ------------------------------------------------------------------ measured changes


def _clipped_rows(rng: np.random.Generator, num_rows: int, dim: int, layout: str) -> torch.Tensor:
    """Rows clipped to CLIP, drawn to stress the bound in different ways."""
    if layout == "gaussian":
        rows = rng.normal(size=(num_rows, dim)) * rng.uniform(0.1, 3.0)
    elif layout == "sparse":
        # Each row spends its whole norm on a few coordinates, as the worst cases do.
        rows = np.zeros((num_rows, dim))
        for row in rows:
            picked = rng.choice(dim, size=min(2, dim), replace=False)
            row[picked] = rng.choice([-1.0, 1.0], size=len(picked)) * 10.0
    else:
        # Long rows of one sign: medians and trimmed means sit far from zero.
        rows = np.abs(rng.normal(size=(num_rows, dim))) * 10.0
    return clip_updates(torch.from_numpy(rows), CLIP).updates


def _largest_change(description: str, num_byzantine: int, seed: int) -> float:
    """Largest measured ‖A(D) − A(D′)‖ over add/remove-one-client neighbours of seeded D."""
    pipeline = build_pipeline(description, num_byzantine=num_byzantine)
    rng = np.random.default_rng(seed)
    minimum = pipeline.minimum_clients()
    largest = 0.0
    for layout in ("gaussian", "sparse", "one_sign"):
        num_rows = int(rng.integers(minimum, minimum + 8))
        rows = _clipped_rows(rng, num_rows + 1, int(rng.integers(1, 12)), layout)
        larger, smaller = rows, rows[torch.arange(num_rows + 1) != int(rng.integers(num_rows + 1))]
        change = pipeline(larger).aggregate - pipeline(smaller).aggregate
        largest = max(largest, float(torch.linalg.vector_norm(change)))
    return largest


@pytest.mark.parametrize(
    ("description", "num_byzantine"),
    [
        ("median", 0),
        ("median", 2),
        ("trimmed_mean", 1),
        ("trimmed_mean", 3),
        ("trimmed_mean(beta=0.2)", 1),
        ("nnm -> median", 1),
        ("krum", 1),
        ("multi_krum", 1),
        ("bulyan", 1),
        ("geometric_median", 1),
        ("centered_clipping(radius=0.5)", 1),
        ("arc -> nnm -> trimmed_mean", 1),
        ("bucketing(bucket_size=2) -> median", 1),
    ],
)
def test_measured_change_of_robust_rules_never_exceeds_the_bound(
    description: str, num_byzantine: int
) -> None:
    bound = _l2(description, num_byzantine)
    for seed in range(60):
        assert _largest_change(description, num_byzantine, seed) <= bound * (1 + 1e-9)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    num_rows=st.integers(1, 60),
    dim=st.integers(1, 20),
    layout=st.sampled_from(["gaussian", "sparse", "one_sign"]),
)
def test_measured_change_of_the_fixed_denominator_mean_never_exceeds_c_over_m(
    seed: int, num_rows: int, dim: int, layout: str
) -> None:
    rng = np.random.default_rng(seed)
    rows = _clipped_rows(rng, num_rows + 1, dim, layout)
    removed = rows[torch.arange(num_rows + 1) != int(rng.integers(num_rows + 1))]
    change = fixed_denominator_mean(rows, expected_clients=EXPECTED) - fixed_denominator_mean(
        removed, expected_clients=EXPECTED
    )
    assert float(torch.linalg.vector_norm(change)) <= _l2("mean") * (1 + 1e-9)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    num_rows=st.integers(3, 30),
    dim=st.integers(1, 12),
    layout=st.sampled_from(["gaussian", "sparse", "one_sign"]),
    description=st.sampled_from(["median", "trimmed_mean(beta=0.25)"]),
)
def test_measured_change_of_median_and_trimmed_mean_never_exceeds_the_bound(
    seed: int, num_rows: int, dim: int, layout: str, description: str
) -> None:
    rng = np.random.default_rng(seed)
    pipeline = build_pipeline(description, num_byzantine=0)
    rows = _clipped_rows(rng, num_rows + 1, dim, layout)
    removed = rows[torch.arange(num_rows + 1) != int(rng.integers(num_rows + 1))]
    change = pipeline(rows).aggregate - pipeline(removed).aggregate
    assert float(torch.linalg.vector_norm(change)) <= _l2(description) * (1 + 1e-9)


def test_fixed_denominator_mean_divides_by_the_expected_clients() -> None:
    rows = torch.ones(3, 2, dtype=torch.float64)
    torch.testing.assert_close(
        fixed_denominator_mean(rows, expected_clients=6), torch.full((2,), 0.5).double()
    )
