"""Each rule against Flower 1.42's own implementation, where the definition is the same.

Flower's legacy functions (``flwr.server.strategy.aggregate``) work per layer on
lists of numpy arrays, so the (n, d) matrix is split into two layers for them
and their output flattened back. The data are Gaussian clusters with planted
outliers, so Krum scores are far apart and selections are unambiguous.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, RecordDict
from flwr.server.strategy.aggregate import (
    aggregate,
    aggregate_bulyan,
    aggregate_krum,
    aggregate_median,
    aggregate_trimmed_avg,
)
from flwr.serverapp.strategy.multikrum import compute_distances, select_multikrum

from ztfl.aggregation import (
    build_pipeline,
    bulyan,
    coordinate_median,
    krum,
    multi_krum,
    trimmed_mean,
    weighted_mean,
)
from ztfl.aggregation.distances import pairwise_squared_distances

NUM_ROWS = 11
LAYER_SHAPES = ((2, 3), (4,))  # d = 10, as two layers


def clustered_updates(dtype: torch.dtype, *, seed: int = 7, num_outliers: int = 2) -> torch.Tensor:
    """Honest rows around a common point, the first ``num_outliers`` rows far away."""
    generator = torch.Generator().manual_seed(seed)
    updates = torch.randn(NUM_ROWS, 10, generator=generator, dtype=torch.float64)
    updates[:num_outliers] += 25.0 * torch.randn(num_outliers, 10, generator=generator)
    return updates.to(dtype)


def as_layers(row: np.ndarray) -> list[np.ndarray]:
    layers, start = [], 0
    for shape in LAYER_SHAPES:
        size = int(np.prod(shape))
        layers.append(row[start : start + size].reshape(shape))
        start += size
    return layers


def flower_results(updates: torch.Tensor, weights: list[int]) -> list[tuple[list[np.ndarray], int]]:
    rows = updates.numpy()
    return [(as_layers(row), weight) for row, weight in zip(rows, weights, strict=True)]


def flattened(layers: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([np.asarray(layer).ravel() for layer in layers]))


def assert_same(ours: torch.Tensor, flower: list[np.ndarray]) -> None:
    theirs = flattened(flower).to(ours.dtype)
    tolerance = 1e-5 if ours.dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ours, theirs, rtol=tolerance, atol=tolerance)


def test_weighted_mean_matches_flower_aggregate(dtype: torch.dtype) -> None:
    updates = clustered_updates(dtype)
    num_examples = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    ours = weighted_mean(updates, torch.tensor(num_examples, dtype=torch.float64))
    assert_same(ours, aggregate(flower_results(updates, num_examples)))


@pytest.mark.parametrize("num_rows", [10, 11])
def test_coordinate_median_matches_flower_aggregate_median(
    dtype: torch.dtype, num_rows: int
) -> None:
    updates = clustered_updates(dtype)[:num_rows]
    ours = coordinate_median(updates)
    assert_same(ours, aggregate_median(flower_results(updates, [1] * num_rows)))


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.2, 0.3, 0.45])
def test_trimmed_mean_with_int_beta_n_trim_matches_flower_aggregate_trimmed_avg(
    dtype: torch.dtype, beta: float
) -> None:
    updates = clustered_updates(dtype)
    ours = trimmed_mean(updates, trim=int(beta * NUM_ROWS))
    theirs = aggregate_trimmed_avg(flower_results(updates, [1] * NUM_ROWS), beta)
    assert_same(ours, theirs)


@pytest.mark.parametrize("beta", [0.1, 0.25, 0.4])
def test_pipeline_trimmed_mean_beta_matches_flower_aggregate_trimmed_avg(
    dtype: torch.dtype, beta: float
) -> None:
    updates = clustered_updates(dtype)
    result = build_pipeline(f"trimmed_mean(beta={beta})", num_byzantine=1)(updates)
    theirs = aggregate_trimmed_avg(flower_results(updates, [1] * NUM_ROWS), beta)
    assert_same(result.aggregate, theirs)


@pytest.mark.parametrize("num_byzantine", [1, 2, 3])
def test_krum_matches_flower_aggregate_krum(dtype: torch.dtype, num_byzantine: int) -> None:
    updates = clustered_updates(dtype, num_outliers=num_byzantine)
    ours = krum(updates, num_byzantine=num_byzantine)
    theirs = aggregate_krum(
        flower_results(updates, [1] * NUM_ROWS), num_malicious=num_byzantine, to_keep=0
    )
    assert_same(ours, theirs)


@pytest.mark.parametrize("num_selected", [1, 3, 8])
def test_multi_krum_matches_flower_aggregate_krum_with_to_keep(
    dtype: torch.dtype, num_selected: int
) -> None:
    updates = clustered_updates(dtype)
    ours = multi_krum(updates, num_byzantine=2, num_selected=num_selected)
    theirs = aggregate_krum(
        flower_results(updates, [1] * NUM_ROWS), num_malicious=2, to_keep=num_selected
    )
    assert_same(ours, theirs)


def test_weighted_multi_krum_matches_flower_aggregate_krum_weighted_by_num_examples(
    dtype: torch.dtype,
) -> None:
    # Flower's Multi-Krum averages the kept rows weighted by num_examples; so does ours.
    updates = clustered_updates(dtype)
    num_examples = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    ours = multi_krum(
        updates, torch.tensor(num_examples, dtype=torch.float64), num_byzantine=2, num_selected=5
    )
    theirs = aggregate_krum(flower_results(updates, num_examples), num_malicious=2, to_keep=5)
    assert_same(ours, theirs)


@pytest.mark.parametrize(("num_rows", "num_byzantine"), [(7, 1), (11, 2), (15, 3)])
def test_bulyan_matches_flower_aggregate_bulyan_over_krum(
    dtype: torch.dtype, num_rows: int, num_byzantine: int
) -> None:
    generator = torch.Generator().manual_seed(num_rows)
    updates = torch.randn(num_rows, 10, generator=generator, dtype=torch.float64)
    updates[:num_byzantine] *= 30.0
    updates = updates.to(dtype)
    ours = bulyan(updates, num_byzantine=num_byzantine)
    theirs = aggregate_bulyan(
        flower_results(updates, [1] * num_rows),
        num_malicious=num_byzantine,
        aggregation_rule=aggregate_krum,
        to_keep=0,
    )
    assert_same(ours, theirs)


def message_api_contents(updates: torch.Tensor) -> list[RecordDict]:
    return [RecordDict({"arrays": ArrayRecord(as_layers(row))}) for row in updates.numpy()]


def selected_indices(contents: list[RecordDict], selected: list[RecordDict]) -> list[int]:
    return [next(i for i, item in enumerate(contents) if item is chosen) for chosen in selected]


@pytest.mark.parametrize("num_selected", [1, 4, 9])
def test_multi_krum_selects_what_flower_message_api_select_multikrum_selects(
    dtype: torch.dtype, num_selected: int
) -> None:
    updates = clustered_updates(dtype)
    contents = message_api_contents(updates)
    flower = selected_indices(contents, select_multikrum(contents, 2, num_selected))
    pipeline = build_pipeline(f"multi_krum(num_selected={num_selected})", num_byzantine=2)
    result = pipeline(updates)
    assert result.selected_rows == tuple(flower)


def test_krum_selects_what_flower_message_api_krum_selects(dtype: torch.dtype) -> None:
    updates = clustered_updates(dtype)
    contents = message_api_contents(updates)
    flower = selected_indices(contents, select_multikrum(contents, 2, 1))
    result = build_pipeline("krum", num_byzantine=2)(updates)
    assert result.selected_rows == tuple(flower)
    torch.testing.assert_close(result.aggregate, updates[flower[0]])


def test_flower_message_api_self_distance_is_not_zero_in_float32_but_ours_is() -> None:
    """Documents why ztfl does not reuse Flower's Message-API distances.

    Flower's ``compute_distances`` uses the Gram trick ‖x‖² + ‖y‖² − 2⟨x, y⟩ with
    ‖x‖² summed by numpy and ⟨x, x⟩ from BLAS; in float32 the two round
    differently, so a row's distance to itself is a rounding residue of order
    eps·‖x‖², positive or negative. Its Krum then drops ``argsort(row)[0]``
    assuming that entry is the row itself: whenever the residue exceeds a true
    neighbour distance (near-duplicate updates, or full model weights whose
    norms dwarf their differences), the real nearest neighbour is dropped and
    the residue is scored instead, and scores can even include negative
    "distances". ztfl sets the diagonal to exactly 0 and clamps negatives.
    """
    generator = torch.Generator().manual_seed(3)
    updates = (100.0 * torch.randn(8, 1000, generator=generator)).to(torch.float32)
    records = [ArrayRecord([row]) for row in updates.numpy()]
    flower_diagonal = np.diag(compute_distances(records))
    assert np.any(flower_diagonal != 0.0)
    ours = pairwise_squared_distances(updates)
    assert torch.all(torch.diagonal(ours) == 0.0)
    assert bool((ours >= 0).all())
