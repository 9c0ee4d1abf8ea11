"""Each rule's bound on (n, f) is checked before it runs, and the error states the bound."""

from __future__ import annotations

import pytest
import torch

from ztfl.aggregation import (
    PipelineConfigError,
    ToleranceError,
    adaptive_robust_clip,
    build_pipeline,
    bulyan,
    krum,
    multi_krum,
    nearest_neighbour_mixing,
    trimmed_mean,
)


def updates(num_rows: int) -> torch.Tensor:
    return torch.randn(num_rows, 3, generator=torch.Generator().manual_seed(num_rows))


@pytest.mark.parametrize(
    ("description", "num_byzantine", "num_rows", "message"),
    [
        ("krum", 1, 4, r"krum needs n > 2f \+ 2, got n=4, f=1"),
        ("multi_krum", 2, 6, r"krum needs n > 2f \+ 2, got n=6, f=2"),
        ("bulyan", 1, 6, r"bulyan needs n ≥ 4f \+ 3, got n=6, f=1"),
        ("bulyan", 2, 10, r"bulyan needs n ≥ 4f \+ 3, got n=10, f=2"),
        ("median", 2, 4, r"median needs n > 2f, got n=4, f=2"),
        ("trimmed_mean", 3, 6, r"trimmed_mean needs n > 2f, got n=6, f=3"),
        ("geometric_median", 1, 2, r"geometric_median needs n > 2f"),
        ("centered_clipping", 1, 2, r"centered_clipping needs n > 2f"),
        ("arc -> median", 2, 4, r"arc needs n > 2f, got n=4, f=2"),
        ("nnm -> median", 2, 4, r"nnm needs n > 2f, got n=4, f=2"),
        ("mean", 1, 10, r"mean tolerates no Byzantine clients, got f=1"),
        ("trimmed_mean(beta=0.1)", 2, 10, r"trims 1 per side of n=10, fewer than f=2"),
        ("multi_krum(num_selected=9)", 2, 10, r"1 ≤ m ≤ n − f, got m=9, n=10, f=2"),
        (
            "bucketing(bucket_size=2) -> krum",
            1,
            8,
            r"krum needs n > 2f \+ 2, got n=4, f=1",
        ),
        (
            "bucketing(bucket_size=3) -> bulyan",
            1,
            18,
            r"bulyan needs n ≥ 4f \+ 3, got n=6, f=1",
        ),
    ],
)
def test_pipeline_refuses_too_few_clients_and_states_the_bound(
    description: str, num_byzantine: int, num_rows: int, message: str
) -> None:
    pipeline = build_pipeline(description, num_byzantine=num_byzantine)
    with pytest.raises(ToleranceError, match=message):
        pipeline.check(num_rows)
    with pytest.raises(ToleranceError, match=message):
        pipeline(updates(num_rows))


@pytest.mark.parametrize(
    ("description", "num_byzantine", "num_rows"),
    [
        ("krum", 1, 5),
        ("bulyan", 1, 7),
        ("median", 2, 5),
        ("trimmed_mean(beta=0.2)", 2, 10),
        ("mean", 0, 1),
        ("bucketing(bucket_size=2) -> krum", 1, 9),
    ],
)
def test_pipeline_accepts_exactly_the_bound(
    description: str, num_byzantine: int, num_rows: int
) -> None:
    pipeline = build_pipeline(description, num_byzantine=num_byzantine)
    pipeline.check(num_rows)
    assert pipeline(updates(num_rows)).aggregate.shape == (3,)


@pytest.mark.parametrize(
    ("description", "num_byzantine", "minimum"),
    [
        ("krum", 1, 5),  # n > 2·1 + 2
        ("multi_krum", 2, 7),  # n > 2·2 + 2
        ("bulyan", 1, 7),  # n ≥ 4·1 + 3
        ("bulyan", 2, 11),  # n ≥ 4·2 + 3
        ("median", 2, 5),  # n > 2·2
        ("arc -> nnm -> trimmed_mean", 3, 7),  # n > 2·3 at every step
        ("trimmed_mean(beta=0.25)", 1, 4),  # int(0.25·4) = 1 ≥ f and 4 > 2·1
        ("trimmed_mean(beta=0.1)", 1, 10),  # int(0.1·10) = 1 ≥ f
        ("bucketing(bucket_size=2) -> krum", 1, 9),  # ⌈9/2⌉ = 5 > 4
        ("mean", 0, 1),
    ],
)
def test_minimum_clients_is_the_smallest_n_every_step_accepts(
    description: str, num_byzantine: int, minimum: int
) -> None:
    assert build_pipeline(description, num_byzantine=num_byzantine).minimum_clients() == minimum


def test_minimum_clients_of_an_impossible_pipeline_is_a_configuration_error() -> None:
    with pytest.raises(PipelineConfigError, match="no number of clients up to 50"):
        build_pipeline("mean", num_byzantine=1).minimum_clients(limit=50)


def test_direct_krum_refuses_too_few_rows() -> None:
    with pytest.raises(ToleranceError, match=r"n > 2f \+ 2"):
        krum(updates(4), num_byzantine=1)


def test_direct_multi_krum_refuses_m_above_n_minus_f() -> None:
    with pytest.raises(ToleranceError, match="m ≤ n − f"):
        multi_krum(updates(7), num_byzantine=2, num_selected=6)


def test_direct_bulyan_refuses_too_few_rows() -> None:
    with pytest.raises(ToleranceError, match=r"n ≥ 4f \+ 3"):
        bulyan(updates(10), num_byzantine=2)


@pytest.mark.parametrize("trim", [-1, 3, 4])
def test_direct_trimmed_mean_refuses_a_trim_of_half_or_more(trim: int) -> None:
    with pytest.raises(ToleranceError, match="trim < n/2"):
        trimmed_mean(updates(6), trim=trim)


def test_direct_pre_aggregation_steps_refuse_f_of_half_or_more() -> None:
    with pytest.raises(ToleranceError, match="f < n/2"):
        adaptive_robust_clip(updates(6), num_byzantine=3)
    with pytest.raises(ToleranceError, match="f < n/2"):
        nearest_neighbour_mixing(updates(6), num_byzantine=3)
