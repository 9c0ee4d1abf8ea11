"""Where a client's data comes from: the dataset hook.

A data holder points its node configuration at a function of its own,
``dataset = "my_package.my_module:load"``; the function receives the node
configuration and returns a ``ClientData``. The coordinator never chooses
what a client loads. Simulations supply their partitions through the same
type.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

NodeConfig = Mapping[str, bool | bytes | float | int | str]


@dataclass(frozen=True)
class ClientData:
    """One client's local examples: float32 features, int64 labels."""

    train_features: torch.Tensor
    train_labels: torch.Tensor
    test_features: torch.Tensor
    test_labels: torch.Tensor

    def __post_init__(self) -> None:
        for split, (features, labels) in {
            "train": (self.train_features, self.train_labels),
            "test": (self.test_features, self.test_labels),
        }.items():
            if features.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"{split} split has {features.shape[0]} examples but {labels.shape[0]} labels"
                )
            if features.dtype != torch.float32 or labels.dtype != torch.int64:
                raise ValueError(
                    f"{split} split must be float32 features and int64 labels, "
                    f"got {features.dtype} and {labels.dtype}"
                )

    @property
    def num_train(self) -> int:
        """Training examples held."""
        return int(self.train_features.shape[0])

    @property
    def num_test(self) -> int:
        """Evaluation examples held."""
        return int(self.test_features.shape[0])


DatasetLoader = Callable[[NodeConfig], ClientData]


class DatasetConfigError(ValueError):
    """The node configuration does not name a usable dataset loader."""


def load_dataset_hook(spec: str) -> DatasetLoader:
    """Resolve ``"package.module:function"`` to the loader it names."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute.isidentifier():
        raise DatasetConfigError(f"dataset must be 'package.module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise DatasetConfigError(
            f"cannot import dataset module {module_name!r}: {error}"
        ) from error
    loader = getattr(module, attribute, None)
    if not callable(loader):
        raise DatasetConfigError(f"{spec!r} does not name a callable")
    return loader  # type: ignore[no-any-return]


def load_node_data(node_config: NodeConfig) -> ClientData:
    """Load this node's data through the hook its node configuration names."""
    spec = node_config.get("dataset")
    if not isinstance(spec, str) or not spec:
        raise DatasetConfigError(
            "this node has no dataset: start the SuperNode with "
            "--node-config \"dataset='package.module:function'\""
        )
    data = load_dataset_hook(spec)(node_config)
    if not isinstance(data, ClientData):
        raise DatasetConfigError(f"{spec!r} returned {type(data).__name__}, expected ClientData")
    return data
