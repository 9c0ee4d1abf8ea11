"""The simulated adversary: a Grid wrapper that marks Byzantine clients and forges their updates.

``InProcessGrid`` stands in for Flower's simulation engine: it hands each
message to the real simulation ClientApp with the node's ``Context`` (its
``partition-id``) and returns the real replies, so no Ray is needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    RecordDict,
)
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from tests.support.in_process_grid import InProcessGrid
from ztfl.client import protocol
from ztfl.client.models import build_model
from ztfl.client.trainer import model_weights
from ztfl.client.trust_anchor import write_trust_anchor
from ztfl.simulations.adversary import SIMULATION_KEY, AdversarialGrid, DataShare
from ztfl.simulations.attacks import alie_z_max, resolve_attack
from ztfl.simulations.client_app import build_simulation_client_app
from ztfl.simulations.datasets import digits_training_pool
from ztfl.trust.keys import generate_signing_key, write_verifying_key
from ztfl.trust.signing import build_manifest, sign_manifest

NUM_CLIENTS = 6
NUM_BYZANTINE = 2
NODE_OF_PARTITION = {partition: 300 - 7 * partition for partition in range(NUM_CLIENTS)}
"""Node ids unrelated to partition order, as Flower's simulated ids are."""


@pytest.fixture(scope="module", autouse=True)
def coordinator_task_identity() -> Iterator[None]:
    """Build messages as the coordinator's ServerApp process would (module-wide, for fixtures)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TaskIdentity, "_run_id", 1)
        patch.setattr(TaskIdentity, "_task_id", 1)
        patch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)
        yield


@pytest.fixture(scope="module", autouse=True)
def digits_loaded() -> None:
    """Pay once, in setup, for importing scikit-learn and reading digits."""
    digits_training_pool()


@pytest.fixture(scope="module", autouse=True)
def torch_optimizers_loaded() -> None:
    """Pay once, in setup, for the first ``torch.optim`` use (it imports torch._dynamo: seconds)."""
    torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Train tiny models on one thread (fast on a busy machine), then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SIGNING_KEY = generate_signing_key()
RUN_ID = "adversarial-grid-tests"
_ANCHOR_FILES: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def trust_anchor_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The anchor the simulated clients pin: ``RUN_ID`` and ``SIGNING_KEY``'s public key."""
    folder = tmp_path_factory.mktemp("anchor")
    write_verifying_key(SIGNING_KEY.public_key(), folder / "coordinator.pub.pem")
    write_trust_anchor(folder / "trust-anchor.toml", RUN_ID, [Path("coordinator.pub.pem")])
    _ANCHOR_FILES[:] = [folder / "trust-anchor.toml"]
    return _ANCHOR_FILES[0]


def adversary(attack: str, *, seed: int = 0) -> AdversarialGrid:
    inner = InProcessGrid(
        build_simulation_client_app(_ANCHOR_FILES[0]),
        {node: {"partition-id": part} for part, node in NODE_OF_PARTITION.items()},
    )
    return AdversarialGrid(
        inner,
        attack=resolve_attack(attack),
        num_byzantine=NUM_BYZANTINE,
        share=DataShare(NUM_CLIENTS, None, seed),
        seed=seed,
    )


def train_messages(message_type: str = MessageType.TRAIN) -> list[Message]:
    """The coordinator's round-1 messages to every node, in an order unrelated to partitions."""
    weights = model_weights(build_model("mlp", seed=0))
    manifest = build_manifest(
        list(weights.items()), run_id=RUN_ID, round=0, parent_digest=None, pipeline="mean",
        participants=(), refused=(), privacy=None, audit_head="0:" + "0" * 64,
        valid_for=timedelta(hours=1),
    )  # fmt: skip
    signed = sign_manifest(manifest, SIGNING_KEY).to_bytes()
    config: dict[str, int | float | str] = {
        protocol.ROUND: 1, protocol.MODEL: "mlp", protocol.LOCAL_EPOCHS: 1,
        protocol.LEARNING_RATE: 0.05, protocol.BATCH_SIZE: 16, protocol.SEED: 0,
    }  # fmt: skip
    return [
        Message(
            RecordDict(
                {
                    protocol.GLOBAL_MODEL_KEY: ArrayRecord(
                        {n: Array(v) for n, v in weights.items()}
                    ),
                    protocol.CONFIG_KEY: ConfigRecord(dict(config)),
                    protocol.MANIFEST_KEY: ConfigRecord({protocol.SIGNED_MANIFEST: signed}),
                }
            ),
            dst_node_id=node,
            message_type=message_type,
            group_id="1",
        )
        for node in sorted(NODE_OF_PARTITION.values())
    ]


def updates_by_partition(
    grid: AdversarialGrid, replies: Iterable[Message]
) -> dict[int, np.ndarray]:
    """Each reply's flattened update, keyed by the partition of the node that sent it."""
    partition_of = {node: part for part, node in NODE_OF_PARTITION.items()}
    return {
        partition_of[reply.metadata.src_node_id]: np.concatenate(
            [
                array.numpy().reshape(-1)
                for array in reply.content.array_records[protocol.UPDATE_KEY].values()
            ]
        )
        for reply in replies
    }


@pytest.fixture(scope="module")
def honest_updates() -> dict[int, np.ndarray]:
    """What every partition sends in round 1 when nobody attacks."""
    grid = adversary("none")
    return updates_by_partition(grid, grid.send_and_receive(train_messages()))


# ------------------------------------------------------------------ roles and plumbing


def test_the_adversary_controls_a_seeded_set_of_partitions() -> None:
    first, second = adversary("none", seed=3), adversary("none", seed=3)
    assert first.byzantine_partitions == second.byzantine_partitions
    assert len(first.byzantine_partitions) == NUM_BYZANTINE
    assert set(first.byzantine_partitions) <= set(range(NUM_CLIENTS))


def test_different_seeds_give_the_adversary_different_partitions() -> None:
    chosen = {adversary("none", seed=seed).byzantine_partitions for seed in range(5)}
    assert len(chosen) > 1


def test_more_attackers_than_clients_are_refused() -> None:
    inner = InProcessGrid(build_simulation_client_app(), {})
    with pytest.raises(ValueError, match="only 2 clients"):
        AdversarialGrid(
            inner, attack=resolve_attack("none"), num_byzantine=3, share=DataShare(2, None, 0),
            seed=0,
        )  # fmt: skip


def test_replies_reach_the_coordinator_ordered_by_partition() -> None:
    grid = adversary("none")
    replies = list(grid.send_and_receive(train_messages()))
    nodes = [reply.metadata.src_node_id for reply in replies]
    assert nodes == [NODE_OF_PARTITION[part] for part in range(NUM_CLIENTS)]


def test_replies_reach_the_coordinator_without_the_simulation_record() -> None:
    grid = adversary("sign_flip")
    for reply in grid.send_and_receive(train_messages()):
        assert not reply.has_error()
        assert SIMULATION_KEY not in reply.content.config_records


def test_the_adversary_learns_which_nodes_are_its_own() -> None:
    grid = adversary("none")
    grid.send_and_receive(train_messages())
    assert grid.byzantine_nodes == {NODE_OF_PARTITION[p] for p in grid.byzantine_partitions}


# ------------------------------------------------------------------ forged updates


def test_sign_flip_replaces_the_byzantine_updates_with_their_scaled_opposites(
    honest_updates: dict[int, np.ndarray],
) -> None:
    grid = adversary("sign_flip(scale=5)")
    forged = updates_by_partition(grid, grid.send_and_receive(train_messages()))
    for part, update in forged.items():
        if part in grid.byzantine_partitions:
            np.testing.assert_allclose(update, -5.0 * honest_updates[part], rtol=1e-5, atol=1e-7)
        else:
            np.testing.assert_array_equal(update, honest_updates[part])


def test_alie_sends_mean_minus_z_max_sigma_of_the_rounds_honest_updates(
    honest_updates: dict[int, np.ndarray],
) -> None:
    grid = adversary("alie")
    forged = updates_by_partition(grid, grid.send_and_receive(train_messages()))
    honest = np.stack(
        [u for part, u in sorted(honest_updates.items()) if part not in grid.byzantine_partitions]
    ).astype(np.float64)
    z = alie_z_max(NUM_CLIENTS, NUM_BYZANTINE)
    expected = honest.mean(axis=0) - z * honest.std(axis=0, ddof=1)
    for part in grid.byzantine_partitions:
        np.testing.assert_allclose(forged[part], expected, rtol=1e-4, atol=1e-6)


def test_label_flipping_clients_train_on_other_labels_and_honest_ones_do_not(
    honest_updates: dict[int, np.ndarray],
) -> None:
    grid = adversary("label_flip")
    sent = updates_by_partition(grid, grid.send_and_receive(train_messages()))
    for part, update in sent.items():
        same = np.array_equal(update, honest_updates[part])
        assert same is (part not in grid.byzantine_partitions)


def test_evaluation_replies_are_left_alone(honest_updates: dict[int, np.ndarray]) -> None:
    grid = adversary("sign_flip(scale=5)")
    replies = list(grid.send_and_receive(train_messages(MessageType.EVALUATE)))
    assert all(protocol.METRICS_KEY in reply.content.metric_records for reply in replies)
    assert all(protocol.UPDATE_KEY not in reply.content.array_records for reply in replies)
