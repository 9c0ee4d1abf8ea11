"""The bundled digits data: a fixed holdout, and IID or Dirichlet(α) client partitions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from ztfl.simulations.datasets import (
    HOLDOUT_FRACTION,
    MIN_PARTITION_SIZE,
    PartitionError,
    digits_holdout,
    digits_training_pool,
    load_digits_partition,
    partition_indices,
)


@pytest.fixture(scope="module")
def pool_labels() -> np.ndarray:
    return digits_training_pool().labels


def label_entropy(labels: np.ndarray) -> float:
    """Shannon entropy (nats) of a partition's label distribution."""
    counts = np.bincount(labels, minlength=10)
    shares = counts[counts > 0] / counts.sum()
    return float(-(shares * np.log(shares)).sum())


def rows(features: np.ndarray, labels: np.ndarray) -> list[bytes]:
    """Each example as bytes (features then label), sorted: a multiset to compare."""
    return sorted(
        feature.tobytes() + int(label).to_bytes(1, "little")
        for feature, label in zip(features, labels, strict=True)
    )


# ------------------------------------------------------------------ holdout


def test_the_holdout_and_the_training_pool_split_digits_without_overlap() -> None:
    # As multisets of examples: together they are exactly the dataset, so no
    # example is in both (digits has a few duplicate images, hence multisets).
    bunch = load_digits()
    everything = rows((bunch.data / 16.0).astype(np.float32), bunch.target)
    pool, holdout = digits_training_pool(), digits_holdout()
    assert (
        rows(
            np.concatenate([pool.features, holdout.features]),
            np.concatenate([pool.labels, holdout.labels]),
        )
        == everything
    )


def test_the_holdout_is_a_fifth_of_digits() -> None:
    assert len(digits_holdout().labels) == int(1797 * HOLDOUT_FRACTION)


def test_features_are_float32_in_the_unit_interval_and_labels_int64() -> None:
    pool = digits_training_pool()
    assert pool.features.dtype == np.float32
    assert pool.labels.dtype == np.int64
    assert pool.features.shape[1] == 64
    assert pool.features.min() >= 0.0
    assert pool.features.max() <= 1.0


# ------------------------------------------------------------------ partitions


@pytest.mark.parametrize("alpha", [None, 0.1, 0.5, 100.0])
def test_partitions_are_disjoint_and_cover_the_pool(
    pool_labels: np.ndarray, alpha: float | None
) -> None:
    parts = partition_indices(pool_labels, 20, alpha=alpha, seed=0)
    assert len(parts) == 20
    joined = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(joined), np.arange(len(pool_labels)))


@pytest.mark.parametrize("alpha", [None, 0.1, 0.5])
def test_every_partition_holds_at_least_the_minimum_size(
    pool_labels: np.ndarray, alpha: float | None
) -> None:
    parts = partition_indices(pool_labels, 20, alpha=alpha, seed=3)
    assert min(len(part) for part in parts) >= MIN_PARTITION_SIZE


@pytest.mark.parametrize("alpha", [None, 0.5])
def test_partitions_are_reproducible_for_a_seed(
    pool_labels: np.ndarray, alpha: float | None
) -> None:
    first = partition_indices(pool_labels, 10, alpha=alpha, seed=7)
    second = partition_indices(pool_labels, 10, alpha=alpha, seed=7)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("alpha", [None, 0.5])
def test_partitions_differ_across_seeds(pool_labels: np.ndarray, alpha: float | None) -> None:
    first = partition_indices(pool_labels, 10, alpha=alpha, seed=7)
    second = partition_indices(pool_labels, 10, alpha=alpha, seed=8)
    assert any(not np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_iid_partitions_have_nearly_equal_sizes(pool_labels: np.ndarray) -> None:
    sizes = [len(part) for part in partition_indices(pool_labels, 20, alpha=None, seed=0)]
    assert max(sizes) - min(sizes) <= 1


def test_a_small_dirichlet_alpha_skews_the_label_distributions(pool_labels: np.ndarray) -> None:
    def mean_entropy(alpha: float | None) -> float:
        parts = partition_indices(pool_labels, 20, alpha=alpha, seed=0)
        return float(np.mean([label_entropy(pool_labels[part]) for part in parts]))

    iid, skewed = mean_entropy(None), mean_entropy(0.1)
    assert iid > 0.9 * np.log(10)  # close to uniform over ten labels
    assert skewed < 0.6 * iid


def test_too_many_clients_for_the_data_is_refused(pool_labels: np.ndarray) -> None:
    too_many = len(pool_labels) // MIN_PARTITION_SIZE + 1
    with pytest.raises(PartitionError, match=f"{too_many} clients"):
        partition_indices(pool_labels, too_many, alpha=None, seed=0)


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_a_non_positive_dirichlet_alpha_is_refused(pool_labels: np.ndarray, alpha: float) -> None:
    with pytest.raises(PartitionError, match="alpha must be > 0"):
        partition_indices(pool_labels, 10, alpha=alpha, seed=0)


def test_zero_partitions_are_refused(pool_labels: np.ndarray) -> None:
    with pytest.raises(PartitionError, match="at least one partition"):
        partition_indices(pool_labels, 0, alpha=None, seed=0)


def test_a_dirichlet_draw_that_cannot_give_every_client_enough_data_is_refused() -> None:
    # 100 examples for 10 clients: every client needs exactly 10, which a
    # Dirichlet(0.01) split essentially never draws.
    labels = np.repeat(np.arange(10), 10)
    with pytest.raises(PartitionError, match="raise alpha"):
        partition_indices(labels, 10, alpha=0.01, seed=0)


# ------------------------------------------------------------------ one client's share


def test_a_clients_share_splits_into_disjoint_train_and_test_parts() -> None:
    data = load_digits_partition(3, 10, alpha=0.5, seed=0)
    pool = digits_training_pool()
    indices = partition_indices(pool.labels, 10, alpha=0.5, seed=0)[3]
    assert data.num_train + data.num_test == len(indices)
    assert data.num_train == int(len(indices) * 0.8)
    assert rows(
        np.concatenate([data.train_features.numpy(), data.test_features.numpy()]),
        np.concatenate([data.train_labels.numpy(), data.test_labels.numpy()]),
    ) == rows(pool.features[indices], pool.labels[indices])


@pytest.mark.parametrize("partition_id", [-1, 10])
def test_a_partition_id_outside_the_partitions_is_refused(partition_id: int) -> None:
    with pytest.raises(PartitionError, match="outside"):
        load_digits_partition(partition_id, 10, alpha=None, seed=0)
