"""Rules Flower lacks, against direct numpy implementations written here.

Each reference follows the definition literally (explicit differences,
explicit neighbour sets, explicit sorting, a generic minimiser), with none of
the Gram-matrix or linear-map shortcuts the engine takes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ztfl.aggregation import (
    adaptive_robust_clip,
    bucketing,
    centered_clipping,
    clip_to_norm,
    geometric_median,
    nearest_neighbour_mixing,
)


def seeded_updates(
    num_rows: int, dim: int, dtype: torch.dtype, *, seed: int, num_outliers: int = 0
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    updates = torch.randn(num_rows, dim, generator=generator, dtype=torch.float64)
    updates[:num_outliers] *= 20.0
    return updates.to(dtype)


def tolerance(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 1e-10


def objective(point: np.ndarray, rows: np.ndarray, weights: np.ndarray) -> float:
    return float(sum(w * np.linalg.norm(point - row) for w, row in zip(weights, rows, strict=True)))


@pytest.mark.parametrize("weighted", [False, True])
def test_geometric_median_matches_a_generic_minimiser_of_the_summed_distances(
    dtype: torch.dtype, weighted: bool
) -> None:
    minimize = pytest.importorskip("scipy.optimize").minimize
    updates = seeded_updates(9, 4, dtype, seed=11, num_outliers=3)
    rows = updates.double().numpy()
    weights = np.arange(1.0, 10.0) if weighted else np.ones(9)
    weights = weights / weights.sum()
    reference = minimize(
        objective,
        rows.mean(axis=0),
        args=(rows, weights),
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20_000, "maxfev": 20_000},
    )
    ours = geometric_median(
        updates,
        torch.from_numpy(weights) if weighted else None,
        tolerance=1e-12,
        max_iterations=1000,
    )
    ours_value = objective(ours.double().numpy(), rows, weights)
    assert ours_value <= reference.fun * (1 + 1e-6)
    np.testing.assert_allclose(ours.double().numpy(), reference.x, atol=1e-3)


def test_geometric_median_cannot_be_improved_by_small_perturbations(dtype: torch.dtype) -> None:
    updates = seeded_updates(8, 3, dtype, seed=5, num_outliers=2)
    rows = updates.double().numpy()
    weights = np.full(8, 1 / 8)
    point = geometric_median(updates, tolerance=1e-12, max_iterations=1000).double().numpy()
    best = objective(point, rows, weights)
    rng = np.random.default_rng(0)
    for direction in rng.normal(size=(50, 3)):
        step = 1e-3 * direction / np.linalg.norm(direction)
        assert objective(point + step, rows, weights) >= best - 1e-7


def direct_centered_clipping(
    rows: np.ndarray, weights: np.ndarray, radius: float, iterations: int, center: np.ndarray
) -> np.ndarray:
    point = center.copy()
    for _ in range(iterations):
        step = np.zeros_like(point)
        for weight, row in zip(weights, rows, strict=True):
            difference = row - point
            distance = np.linalg.norm(difference)
            step += weight * min(1.0, radius / distance) * difference
        point = point + step
    return point


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize(("radius", "iterations"), [(0.1, 1), (1.0, 3), (5.0, 10)])
def test_centered_clipping_matches_the_iteration_written_out(
    dtype: torch.dtype, weighted: bool, radius: float, iterations: int
) -> None:
    updates = seeded_updates(7, 5, dtype, seed=3, num_outliers=2)
    rows = updates.double().numpy()
    weights = np.arange(1.0, 8.0) if weighted else np.ones(7)
    center = np.full(5, 0.25)
    ours = centered_clipping(
        updates,
        torch.from_numpy(weights) if weighted else None,
        radius=radius,
        iterations=iterations,
        center=torch.from_numpy(center),
    )
    expected = direct_centered_clipping(rows, weights / weights.sum(), radius, iterations, center)
    np.testing.assert_allclose(ours.double().numpy(), expected, rtol=tolerance(dtype), atol=1e-5)


def direct_nnm(rows: np.ndarray, num_byzantine: int) -> np.ndarray:
    count = len(rows) - num_byzantine
    mixed = []
    for row in rows:
        distances = [float(np.linalg.norm(row - other)) for other in rows]
        neighbours = sorted(range(len(rows)), key=lambda j: distances[j])[:count]
        mixed.append(rows[neighbours].mean(axis=0))
    return np.stack(mixed)


@pytest.mark.parametrize("num_byzantine", [0, 1, 3, 4])
def test_nearest_neighbour_mixing_matches_explicit_neighbour_sets(
    dtype: torch.dtype, num_byzantine: int
) -> None:
    updates = seeded_updates(9, 4, dtype, seed=8, num_outliers=num_byzantine)
    ours = nearest_neighbour_mixing(updates, num_byzantine=num_byzantine)
    expected = direct_nnm(updates.double().numpy(), num_byzantine)
    np.testing.assert_allclose(ours.double().numpy(), expected, rtol=tolerance(dtype), atol=1e-6)


def direct_arc(rows: np.ndarray, num_byzantine: int) -> np.ndarray:
    n, f = len(rows), num_byzantine
    num_clipped = (2 * f * (n - f)) // n
    norms = [float(np.linalg.norm(row)) for row in rows]
    by_norm = sorted(range(n), key=lambda i: norms[i], reverse=True)
    clipped = rows.copy()
    if num_clipped == 0:
        return clipped
    threshold = norms[by_norm[num_clipped]]
    for i in by_norm[:num_clipped]:
        clipped[i] = rows[i] * threshold / norms[i]
    return clipped


@pytest.mark.parametrize(("num_rows", "num_byzantine"), [(4, 1), (9, 2), (10, 4), (7, 0)])
def test_adaptive_robust_clip_matches_explicit_sorting(
    dtype: torch.dtype, num_rows: int, num_byzantine: int
) -> None:
    updates = seeded_updates(num_rows, 5, dtype, seed=num_rows, num_outliers=num_byzantine)
    ours = adaptive_robust_clip(updates, num_byzantine=num_byzantine)
    expected = direct_arc(updates.double().numpy(), num_byzantine)
    np.testing.assert_allclose(ours.double().numpy(), expected, rtol=tolerance(dtype), atol=1e-6)


def test_clip_to_norm_matches_the_definition(dtype: torch.dtype) -> None:
    updates = seeded_updates(8, 5, dtype, seed=2, num_outliers=3)
    rows = updates.double().numpy()
    expected = np.stack([row * min(1.0, 2.0 / np.linalg.norm(row)) for row in rows])
    ours = clip_to_norm(updates, 2.0)
    np.testing.assert_allclose(ours.double().numpy(), expected, rtol=tolerance(dtype), atol=1e-6)


@pytest.mark.parametrize(("num_rows", "bucket_size"), [(8, 2), (9, 2), (10, 3), (5, 5), (7, 1)])
def test_bucketing_averages_a_partition_into_buckets_of_the_given_size(
    num_rows: int, bucket_size: int
) -> None:
    # Bucketing the identity matrix reveals the buckets: output row b is 1/|B| on B's members.
    seed = 100 + num_rows
    revealed = bucketing(
        torch.eye(num_rows, dtype=torch.float64),
        bucket_size=bucket_size,
        generator=torch.Generator().manual_seed(seed),
    )
    members = [torch.nonzero(row).flatten().tolist() for row in revealed]
    assert sorted(i for bucket in members for i in bucket) == list(range(num_rows))
    sizes = [len(bucket) for bucket in members]
    assert sizes[:-1] == [bucket_size] * (len(sizes) - 1)
    assert 1 <= sizes[-1] <= bucket_size
    for row, bucket in zip(revealed, members, strict=True):
        assert torch.all(row[bucket] == 1.0 / len(bucket))
    # The same buckets average any matrix.
    updates = seeded_updates(num_rows, 3, torch.float64, seed=1)
    ours = bucketing(
        updates, bucket_size=bucket_size, generator=torch.Generator().manual_seed(seed)
    )
    expected = torch.stack([updates[bucket].mean(dim=0) for bucket in members])
    torch.testing.assert_close(ours, expected)
