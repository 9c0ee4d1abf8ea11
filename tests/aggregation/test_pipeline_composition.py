"""A pipeline composes its steps as n×n linear maps; the result must equal running
the direct functions one after another.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from ztfl.aggregation import (
    adaptive_robust_clip,
    bucketing,
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
    weighted_mean,
)

F = 2  # Byzantine rows declared to every pipeline below
NUM_ROWS = 12


def arc(x: torch.Tensor) -> torch.Tensor:
    return adaptive_robust_clip(x, num_byzantine=F)


def nnm(x: torch.Tensor) -> torch.Tensor:
    return nearest_neighbour_mixing(x, num_byzantine=F)


def bucketed(x: torch.Tensor) -> torch.Tensor:
    return bucketing(x, bucket_size=2, generator=torch.Generator().manual_seed(9))


EQUIVALENT_PATHS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "arc -> nnm -> trimmed_mean": lambda x: trimmed_mean(nnm(arc(x)), trim=F),
    "arc -> nnm -> trimmed_mean(beta=0.25)": lambda x: trimmed_mean(nnm(arc(x)), trim=3),
    "clip(max_norm=1.5) -> median": lambda x: coordinate_median(clip_to_norm(x, 1.5)),
    "clip(max_norm=1.5) -> arc -> nnm -> median": lambda x: coordinate_median(
        nnm(arc(clip_to_norm(x, 1.5)))
    ),
    "nnm -> nnm -> trimmed_mean": lambda x: trimmed_mean(nnm(nnm(x)), trim=F),
    "nnm -> krum": lambda x: krum(nnm(x), num_byzantine=F),
    "arc -> multi_krum(num_selected=4)": lambda x: multi_krum(
        arc(x), num_byzantine=F, num_selected=4
    ),
    "arc -> nnm -> multi_krum": lambda x: multi_krum(nnm(arc(x)), num_byzantine=F),
    "nnm -> bulyan": lambda x: bulyan(nnm(x), num_byzantine=F),
    "arc -> geometric_median": lambda x: geometric_median(arc(x)),
    "clip(max_norm=1) -> centered_clipping(radius=0.3, iterations=5)": lambda x: centered_clipping(
        clip_to_norm(x, 1.0), radius=0.3, iterations=5
    ),
    "bucketing(bucket_size=2) -> median": lambda x: coordinate_median(bucketed(x)),
    "arc -> bucketing(bucket_size=2) -> trimmed_mean": lambda x: trimmed_mean(
        bucketing(arc(x), bucket_size=2, generator=torch.Generator().manual_seed(9)), trim=F
    ),
}


@pytest.fixture
def updates(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(17)
    rows = torch.randn(NUM_ROWS, 7, generator=generator, dtype=torch.float64)
    rows[:F] *= 12.0
    return rows.to(dtype=dtype, device=device)


@pytest.mark.parametrize("description", sorted(EQUIVALENT_PATHS))
def test_pipeline_equals_the_direct_functions_in_sequence(
    description: str, updates: torch.Tensor
) -> None:
    pipeline = build_pipeline(description, num_byzantine=F)
    result = pipeline(updates, generator=torch.Generator().manual_seed(9))
    expected = EQUIVALENT_PATHS[description](updates)
    tolerance = 1e-5 if updates.dtype == torch.float32 else 1e-10
    torch.testing.assert_close(result.aggregate, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize(
    ("description", "direct"),
    [
        ("mean", lambda x: weighted_mean(x)),
        ("median", lambda x: coordinate_median(x)),
        ("trimmed_mean", lambda x: trimmed_mean(x, trim=F)),
        ("krum", lambda x: krum(x, num_byzantine=F)),
        ("multi_krum", lambda x: multi_krum(x, num_byzantine=F)),
        ("bulyan", lambda x: bulyan(x, num_byzantine=F)),
        ("geometric_median", lambda x: geometric_median(x)),
        ("centered_clipping", lambda x: centered_clipping(x, radius=1.0, iterations=3)),
    ],
)
def test_single_rule_pipeline_equals_the_direct_rule(
    description: str, direct: Callable[[torch.Tensor], torch.Tensor], updates: torch.Tensor
) -> None:
    num_byzantine = 0 if description == "mean" else F
    result = build_pipeline(description, num_byzantine=num_byzantine)(updates)
    torch.testing.assert_close(result.aggregate, direct(updates))


def test_pipeline_result_reports_inputs_and_selected_rows(updates: torch.Tensor) -> None:
    result = build_pipeline("arc -> multi_krum(num_selected=4)", num_byzantine=F)(updates)
    assert result.num_inputs == NUM_ROWS
    assert result.selected_rows is not None
    assert len(result.selected_rows) == 4
    assert build_pipeline("median", num_byzantine=F)(updates).selected_rows is None


def test_bulyan_pipeline_reports_its_theta_selected_rows(updates: torch.Tensor) -> None:
    result = build_pipeline("bulyan", num_byzantine=F)(updates)
    # θ = n − 2f = 8 rows, reported in ascending order; the planted rows 0 and 1 are out.
    assert result.selected_rows is not None
    assert len(result.selected_rows) == NUM_ROWS - 2 * F
    assert list(result.selected_rows) == sorted(result.selected_rows)
    assert {0, 1}.isdisjoint(result.selected_rows)


def test_after_bucketing_num_inputs_still_counts_the_client_updates(
    updates: torch.Tensor,
) -> None:
    # 12 updates become 6 buckets; the result reports the 12 updates aggregated.
    pipeline = build_pipeline("bucketing(bucket_size=2) -> median", num_byzantine=F)
    result = pipeline(updates, generator=torch.Generator().manual_seed(0))
    assert result.num_inputs == NUM_ROWS


def test_bucketing_with_a_seeded_generator_is_reproducible(updates: torch.Tensor) -> None:
    pipeline = build_pipeline("bucketing(bucket_size=3) -> trimmed_mean", num_byzantine=1)
    first = pipeline(updates, generator=torch.Generator().manual_seed(42))
    second = pipeline(updates, generator=torch.Generator().manual_seed(42))
    assert torch.equal(first.aggregate, second.aggregate)
    direct = bucketing(updates, bucket_size=3, generator=torch.Generator().manual_seed(42))
    assert torch.equal(
        direct, bucketing(updates, bucket_size=3, generator=torch.Generator().manual_seed(42))
    )


def test_bucketing_with_different_seeds_forms_different_buckets(updates: torch.Tensor) -> None:
    outputs = {
        tuple(
            bucketing(updates, bucket_size=3, generator=torch.Generator().manual_seed(seed))[
                :, 0
            ].tolist()
        )
        for seed in range(5)
    }
    assert len(outputs) > 1


def test_bucketing_pipeline_without_a_generator_draws_fresh_buckets(
    updates: torch.Tensor,
) -> None:
    # Unpredictable to clients: a secret-seeded generator per call.
    pipeline = build_pipeline("bucketing(bucket_size=3) -> trimmed_mean", num_byzantine=1)
    results = {tuple(pipeline(updates).aggregate.tolist()) for _ in range(6)}
    assert len(results) > 1
