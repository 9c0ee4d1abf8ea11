"""The dataset hook: a node configuration names the function that loads its data."""

from __future__ import annotations

import pytest
import torch

from ztfl.client.data import ClientData, DatasetConfigError, load_dataset_hook, load_node_data

TINY = "ztfl_test_hooks.datasets:load_tiny"


def test_a_package_module_function_spec_resolves_to_that_function() -> None:
    loader = load_dataset_hook(TINY)
    assert loader.__name__ == "load_tiny"
    assert loader.__module__ == "ztfl_test_hooks.datasets"


def test_load_node_data_passes_the_node_configuration_to_the_loader() -> None:
    data = load_node_data({"dataset": TINY, "rows": 9})
    assert isinstance(data, ClientData)
    assert data.num_train == 9
    assert data.num_test == 9


@pytest.mark.parametrize(
    "spec",
    [
        "ztfl_test_hooks.datasets",
        "ztfl_test_hooks.datasets:",
        ":load_tiny",
        "ztfl_test_hooks.datasets:load-tiny",
        "ztfl_test_hooks.datasets.load_tiny",
    ],
)
def test_a_malformed_spec_is_refused_with_the_expected_form(spec: str) -> None:
    with pytest.raises(DatasetConfigError, match=r"package\.module:function"):
        load_dataset_hook(spec)


def test_a_spec_naming_a_missing_module_is_refused() -> None:
    with pytest.raises(DatasetConfigError, match="cannot import dataset module"):
        load_dataset_hook("ztfl_test_hooks.no_such_module:load")


def test_a_spec_naming_a_missing_function_is_refused() -> None:
    with pytest.raises(DatasetConfigError, match="does not name a callable"):
        load_dataset_hook("ztfl_test_hooks.datasets:no_such_loader")


def test_a_spec_naming_something_not_callable_is_refused() -> None:
    with pytest.raises(DatasetConfigError, match="does not name a callable"):
        load_dataset_hook("ztfl_test_hooks.datasets:NOT_CALLABLE")


def test_a_loader_returning_something_other_than_client_data_is_refused() -> None:
    with pytest.raises(DatasetConfigError, match="returned dict, expected ClientData"):
        load_node_data({"dataset": "ztfl_test_hooks.datasets:load_wrong_type"})


@pytest.mark.parametrize("node_config", [{}, {"dataset": ""}, {"dataset": 3}])
def test_a_node_without_a_dataset_is_told_how_to_configure_one(
    node_config: dict[str, int | str],
) -> None:
    with pytest.raises(DatasetConfigError, match=r"--node-config \"dataset="):
        load_node_data(node_config)


def test_client_data_refuses_more_labels_than_examples() -> None:
    features = torch.zeros(3, 64)
    with pytest.raises(ValueError, match="train split has 3 examples but 4 labels"):
        ClientData(features, torch.zeros(4, dtype=torch.int64), features, torch.zeros(3))
