"""Fixtures shared by the coordinator tests.

Flower stamps an instruction ``Message`` with the identity of the process that
sends it (``TaskIdentity``: run, task and node), which its runtime sets before
a ServerApp starts. The tests build real messages outside any runtime, so they
set that identity as the SuperLink-side runtime does and restore it afterwards.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from ztfl.aggregation import ModelSpec

TEST_RUN_ID = 42


@pytest.fixture(autouse=True)
def server_task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Act as a ServerApp process of run ``TEST_RUN_ID``."""
    monkeypatch.setattr(TaskIdentity, "_run_id", TEST_RUN_ID)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)


@pytest.fixture
def spec() -> ModelSpec:
    """A two-tensor float32 model: a (3, 2) weight and a (3,) bias, d = 9."""
    return ModelSpec.from_arrays(
        {
            "fc.weight": np.zeros((3, 2), dtype=np.float32),
            "fc.bias": np.zeros(3, dtype=np.float32),
        }
    )
