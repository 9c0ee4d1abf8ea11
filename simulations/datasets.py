"""The embedded default data — scikit-learn's bundled 8×8 ``digits`` — and its partitions.

``digits`` ships inside scikit-learn (1,797 images, 10 classes), so nothing is
downloaded at run time. A fixed 20 % of it is held out for the coordinator's
central evaluation; the rest is split across clients, IID or by a Dirichlet(α)
label distribution (Hsu et al., 2019), and each client keeps 20 % of its
share as a local test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ztfl.client.data import ClientData, DatasetConfigError, NodeConfig

HOLDOUT_FRACTION = 0.2
LOCAL_TEST_FRACTION = 0.2
SPLIT_SEED = 20_240_601
MIN_PARTITION_SIZE = 10
MAX_DIRICHLET_ATTEMPTS = 50


@dataclass(frozen=True)
class LabelledArrays:
    """Features (float32, scaled to [0, 1]) and int64 labels."""

    features: np.ndarray
    labels: np.ndarray


class PartitionError(ValueError):
    """The requested partitioning cannot be drawn (too many clients for the data)."""


@lru_cache(maxsize=1)
def _digits_split() -> tuple[LabelledArrays, LabelledArrays]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    features = (np.asarray(bunch.data, dtype=np.float32) / 16.0).astype(np.float32)
    labels = np.asarray(bunch.target, dtype=np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    cut = int(len(labels) * HOLDOUT_FRACTION)
    holdout, train = order[:cut], order[cut:]
    return (
        LabelledArrays(features[train], labels[train]),
        LabelledArrays(features[holdout], labels[holdout]),
    )


def digits_training_pool() -> LabelledArrays:
    """The 80 % of digits that clients share out."""
    return _digits_split()[0]


def digits_holdout() -> LabelledArrays:
    """The 20 % of digits held out for the coordinator's central evaluation."""
    return _digits_split()[1]


def check_partitioning(num_partitions: int, alpha: float | None) -> None:
    """Refuse, before anything runs, a split the digits pool cannot give."""
    if num_partitions < 1:
        raise PartitionError(f"need at least one partition, got {num_partitions}")
    if alpha is not None and alpha <= 0:
        raise PartitionError(f"Dirichlet alpha must be > 0, got {alpha}")
    pool = len(digits_training_pool().labels)
    if num_partitions * MIN_PARTITION_SIZE > pool:
        raise PartitionError(
            f"{pool} examples cannot give {num_partitions} clients "
            f"{MIN_PARTITION_SIZE} examples each"
        )


def partition_indices(
    labels: np.ndarray, num_partitions: int, *, alpha: float | None, seed: int
) -> list[np.ndarray]:
    """Indices of each partition: IID when ``alpha`` is None, else Dirichlet(α) per class.

    Smaller α gives more skewed label distributions. Draws are repeated (up to
    a bound) until every partition holds at least ``MIN_PARTITION_SIZE``
    examples, as is common practice, so no client is left without data.
    """
    if num_partitions < 1:
        raise PartitionError(f"need at least one partition, got {num_partitions}")
    if num_partitions * MIN_PARTITION_SIZE > len(labels):
        raise PartitionError(
            f"{len(labels)} examples cannot give {num_partitions} clients "
            f"{MIN_PARTITION_SIZE} examples each"
        )
    rng = np.random.default_rng(seed)
    if alpha is None:
        shuffled = rng.permutation(len(labels))
        return [np.sort(part) for part in np.array_split(shuffled, num_partitions)]
    if alpha <= 0:
        raise PartitionError(f"Dirichlet alpha must be > 0, got {alpha}")
    classes = np.unique(labels)
    for _ in range(MAX_DIRICHLET_ATTEMPTS):
        parts: list[list[int]] = [[] for _ in range(num_partitions)]
        for label in classes:
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for part, chunk in zip(parts, np.split(members, cuts), strict=True):
                part.extend(int(index) for index in chunk)
        if min(len(part) for part in parts) >= MIN_PARTITION_SIZE:
            return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]
    raise PartitionError(
        f"no Dirichlet(alpha={alpha}) draw gave all {num_partitions} clients "
        f"{MIN_PARTITION_SIZE}+ examples in {MAX_DIRICHLET_ATTEMPTS} attempts; raise alpha"
    )


@lru_cache(maxsize=8)
def _partitions(num_partitions: int, alpha: float | None, seed: int) -> tuple[np.ndarray, ...]:
    return tuple(
        partition_indices(digits_training_pool().labels, num_partitions, alpha=alpha, seed=seed)
    )


def load_digits_partition(
    partition_id: int, num_partitions: int, *, alpha: float | None, seed: int
) -> ClientData:
    """One client's share of the digits training pool, with a local test split."""
    if not 0 <= partition_id < num_partitions:
        raise PartitionError(f"partition-id {partition_id} outside [0, {num_partitions})")
    pool = digits_training_pool()
    indices = _partitions(num_partitions, alpha, seed)[partition_id]
    local = np.random.default_rng([seed, partition_id]).permutation(indices)
    cut = int(len(local) * (1 - LOCAL_TEST_FRACTION))
    train, test = local[:cut], local[cut:]
    return ClientData(
        train_features=torch.from_numpy(pool.features[train]),
        train_labels=torch.from_numpy(pool.labels[train]),
        test_features=torch.from_numpy(pool.features[test]),
        test_labels=torch.from_numpy(pool.labels[test]),
    )


def digits_node_data(node_config: NodeConfig) -> ClientData:
    """A SuperNode's share of the bundled digits, for demos of a real deployment.

    The dataset hook (``ztfl.client.data``) for nodes that hold no data of their
    own: start each SuperNode with

        --node-config "dataset='ztfl.simulations.datasets:digits_node_data'
                       partition-id=0 num-partitions=2"

    Keys read from the node configuration: ``partition-id`` and
    ``num-partitions`` (required), ``partition-alpha`` (Dirichlet α; absent
    means IID) and ``data-seed`` (default 0). Every node of a federation must
    use the same ``num-partitions``, ``partition-alpha`` and ``data-seed`` for
    the shares to be disjoint. The coordinator's run config plays no part: a
    data holder, not the coordinator, decides what it trains on. A bad value
    raises ``DatasetConfigError``, which the ClientApp answers with a refusal.
    """
    partition_id = _node_int(node_config, "partition-id")
    num_partitions = _node_int(node_config, "num-partitions")
    seed = _node_int(node_config, "data-seed", default=0)
    alpha_value = node_config.get("partition-alpha")
    alpha: float | None
    if alpha_value is None:
        alpha = None
    elif isinstance(alpha_value, int | float) and not isinstance(alpha_value, bool):
        alpha = float(alpha_value)
    else:
        raise DatasetConfigError(f"partition-alpha must be a number, got {alpha_value!r}")
    try:
        return load_digits_partition(partition_id, num_partitions, alpha=alpha, seed=seed)
    except PartitionError as error:
        raise DatasetConfigError(str(error)) from error


def _node_int(node_config: NodeConfig, key: str, default: int | None = None) -> int:
    value = node_config.get(key, default)
    if value is None:
        raise DatasetConfigError(f"node config has no {key}")
    if not isinstance(value, int) or isinstance(value, bool):
        raise DatasetConfigError(f"{key} must be an integer, got {value!r}")
    return value
