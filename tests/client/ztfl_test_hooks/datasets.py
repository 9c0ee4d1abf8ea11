"""Loaders a node configuration can name, good and bad."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ztfl.client.data import ClientData

NOT_CALLABLE = "a string, not a loader"


def load_tiny(node_config: Mapping[str, bool | bytes | float | int | str]) -> ClientData:
    """``rows`` zero-feature examples (default 4) labelled 0, 1, 2, …, for training and test."""
    rows = node_config.get("rows", 4)
    assert isinstance(rows, int)
    features = torch.zeros(rows, 64, dtype=torch.float32)
    labels = torch.arange(rows, dtype=torch.int64) % 10
    return ClientData(features, labels, features.clone(), labels.clone())


def load_wrong_type(node_config: Mapping[str, bool | bytes | float | int | str]) -> object:
    """Returns plain tensors instead of a ClientData."""
    return {"features": torch.zeros(4, 64)}
