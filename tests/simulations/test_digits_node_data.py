"""``digits_node_data``: the dataset hook that gives a real SuperNode its share of the digits."""

from __future__ import annotations

import pytest
import torch

from ztfl.client.data import DatasetConfigError, load_node_data
from ztfl.simulations.datasets import (
    digits_node_data,
    digits_training_pool,
    load_digits_partition,
)

HOOK = "ztfl.simulations.datasets:digits_node_data"


def test_digits_node_data_is_reachable_through_the_dataset_hook() -> None:
    data = load_node_data({"dataset": HOOK, "partition-id": 0, "num-partitions": 2})
    expected = load_digits_partition(0, 2, alpha=None, seed=0)
    assert torch.equal(data.train_labels, expected.train_labels)
    assert torch.equal(data.train_features, expected.train_features)


def test_nodes_sharing_a_configuration_hold_every_pool_example_once() -> None:
    shares = [digits_node_data({"partition-id": i, "num-partitions": 3}) for i in range(3)]
    held = sum(share.num_train + share.num_test for share in shares)
    assert held == len(digits_training_pool().labels)


def test_partition_alpha_and_data_seed_come_from_the_node_config() -> None:
    data = digits_node_data(
        {"partition-id": 1, "num-partitions": 4, "partition-alpha": 0.3, "data-seed": 9}
    )
    expected = load_digits_partition(1, 4, alpha=0.3, seed=9)
    assert torch.equal(data.train_labels, expected.train_labels)
    assert torch.equal(data.test_labels, expected.test_labels)


@pytest.mark.parametrize(
    "node_config",
    [
        {"num-partitions": 2},
        {"partition-id": 0},
        {"partition-id": "0", "num-partitions": 2},
        {"partition-id": True, "num-partitions": 2},
        {"partition-id": 2, "num-partitions": 2},
        {"partition-id": 0, "num-partitions": 2, "partition-alpha": "iid"},
        {"partition-id": 0, "num-partitions": 2, "partition-alpha": -1.0},
    ],
)
def test_an_unusable_node_config_is_a_dataset_config_error(
    node_config: dict[str, int | float | str],
) -> None:
    with pytest.raises(DatasetConfigError):
        digits_node_data(node_config)
