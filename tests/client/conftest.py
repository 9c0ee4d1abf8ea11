"""Fixtures shared by the client tests: real Flower messages, a real model, real digits data.

Flower stamps an instruction ``Message`` with the identity of the process that
sends it (``TaskIdentity``), which its runtime sets before an app starts; the
tests build the coordinator's messages outside any runtime, so they set that
identity as the SuperLink-side runtime does and restore it afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from ztfl.client import protocol
from ztfl.client.data import ClientData
from ztfl.client.models import build_model
from ztfl.client.trainer import model_weights
from ztfl.client.trust_anchor import write_trust_anchor
from ztfl.simulations.datasets import load_digits_partition
from ztfl.trust.keys import SigningKey, generate_signing_key, write_verifying_key
from ztfl.trust.signing import SignedManifest, build_manifest, sign_manifest
from ztfl.trust.verification import TrustAnchor

CLIENT_NODE_ID = 7
"""The node id the test messages are addressed to."""

COORDINATOR_KEY = generate_signing_key()
"""The test coordinator's model-signing key: every ``round_message`` is signed with it."""
TEST_RUN_ID = "client-tests-run"
TEST_ANCHOR = TrustAnchor(TEST_RUN_ID, (COORDINATOR_KEY.public_key(),))
"""The anchor the test nodes pin."""


def sign_weights(
    arrays: Mapping[str, np.ndarray], *, server_round: int = 0, parent_digest: str | None = None
) -> SignedManifest:
    """The coordinator's signed manifest for ``arrays`` of ``TEST_RUN_ID`` (a root by default)."""
    manifest = build_manifest(
        list(arrays.items()),
        run_id=TEST_RUN_ID,
        round=server_round,
        parent_digest=parent_digest,
        pipeline="mean",
        participants=(),
        refused=(),
        privacy=None,
        audit_head="0:" + "0" * 64,
        valid_for=timedelta(hours=1),
    )
    return sign_manifest(manifest, COORDINATOR_KEY)


@pytest.fixture
def sign_model() -> Callable[..., SignedManifest]:
    """``sign_weights``: sign a model of ``TEST_RUN_ID`` as the test coordinator does."""
    return sign_weights


@pytest.fixture
def coordinator_key() -> SigningKey:
    """The test coordinator's (pinned) model-signing key."""
    return COORDINATOR_KEY


@pytest.fixture
def trust_anchor() -> TrustAnchor:
    """The anchor the test nodes pin: ``TEST_RUN_ID`` and the test coordinator's key."""
    return TEST_ANCHOR


@pytest.fixture
def anchor_file(tmp_path: Path) -> Path:
    """A trust-anchor file pinning ``TEST_ANCHOR`` (for ``trust-anchor`` in a node config)."""
    write_verifying_key(COORDINATOR_KEY.public_key(), tmp_path / "coordinator.pub.pem")
    path = tmp_path / "trust-anchor.toml"
    write_trust_anchor(path, TEST_RUN_ID, [Path("coordinator.pub.pem")])
    return path


RoundMessage = Callable[..., Message]
"""Builds the coordinator's message; see the ``round_message`` fixture."""

ROUND_CONFIG: Mapping[str, int | float | str] = {
    protocol.ROUND: 1,
    protocol.MODEL: "mlp",
    protocol.LOCAL_EPOCHS: 1,
    protocol.LEARNING_RATE: 0.05,
    protocol.BATCH_SIZE: 16,
    protocol.SEED: 3,
}
"""A valid round configuration, as the coordinator sends it."""


@pytest.fixture(autouse=True)
def coordinator_task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build messages as the coordinator's ServerApp process would."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 42)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Train on one thread and give later tests their threads back.

    One thread keeps the tiny models fast on a busy machine, where torch's
    worker threads would wait for cores.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def torch_optimizers_loaded() -> None:
    """Pay once, in setup, for the first ``torch.optim`` use (it imports torch._dynamo: seconds)."""
    torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)


@pytest.fixture(autouse=True)
def hook_modules_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``ztfl_test_hooks`` (the test dataset hooks) importable in any import mode."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


@pytest.fixture
def global_weights() -> dict[str, np.ndarray]:
    """A seeded initial MLP, as named float32 arrays."""
    return model_weights(build_model("mlp", seed=0))


@pytest.fixture(scope="session")
def client_data() -> ClientData:
    """One client's IID share of the digits training pool (about 115 training examples)."""
    return load_digits_partition(0, 10, alpha=None, seed=0)


@pytest.fixture
def round_config() -> dict[str, int | float | str]:
    """A fresh copy of a valid round configuration, for tests to spoil."""
    return dict(ROUND_CONFIG)


@pytest.fixture
def round_message(global_weights: dict[str, np.ndarray]) -> RoundMessage:
    """A factory for the coordinator's train/evaluate message, valid unless told otherwise.

    ``weights`` replaces the global model, ``with_model=False`` leaves it out;
    ``config=None`` leaves the round configuration out.
    """

    def build(
        *,
        weights: Mapping[str, np.ndarray] | None = None,
        with_model: bool = True,
        config: Mapping[str, int | float | str] | None = ROUND_CONFIG,
        message_type: str = MessageType.TRAIN,
        signed: bool = True,
    ) -> Message:
        content = RecordDict()
        if with_model:
            arrays = global_weights if weights is None else weights
            content[protocol.GLOBAL_MODEL_KEY] = ArrayRecord(
                {name: Array(values) for name, values in arrays.items()}
            )
            if signed:
                content[protocol.MANIFEST_KEY] = ConfigRecord(
                    {protocol.SIGNED_MANIFEST: sign_weights(arrays).to_bytes()}
                )
        if config is not None:
            content[protocol.CONFIG_KEY] = ConfigRecord(dict(config))
        return Message(content, dst_node_id=CLIENT_NODE_ID, message_type=message_type, group_id="1")

    return build
