"""The coordinator's round on Flower's Message API, against real ClientApps in this process.

``LoopbackGrid`` stands in for the SuperLink and its SuperNodes: it hands each
message to a real ``ClientApp`` (``ztfl.client.app.build_client_app``) with the
node's ``Context`` and returns the real replies. Everything else — messages,
models, digits data, training, validation, aggregation, signing and client-side
verification — is the production code. Each test gets its own state folder and
the nodes pin the anchor written for the coordinator's run.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, MessageType
from flwr.clientapp import ClientApp

from tests.support.in_process_grid import InProcessGrid
from ztfl.aggregation import RefusalReason
from ztfl.aggregation.privacy.accounting import PrivacyAccountant
from ztfl.aggregation.privacy.clipping import clip_updates
from ztfl.aggregation.privacy.noise import gaussian_noise, secure_generator
from ztfl.client import protocol
from ztfl.client.app import build_client_app
from ztfl.client.data import ClientData
from ztfl.client.models import build_model
from ztfl.client.policy import RoundPrivacy
from ztfl.client.trainer import evaluate, load_weights, model_weights
from ztfl.client.trust_anchor import write_trust_anchor
from ztfl.server.config import ConfigError, CoordinatorConfig
from ztfl.server.coordinator import (
    Coordinator,
    NotEnoughNodesError,
    PrivacyBudgetExhaustedError,
    open_ledger,
)
from ztfl.server.history import RoundRecord
from ztfl.server.ledger import PUBLIC_KEY_FILE, LedgerError, RunLedger, prepare_state_dir
from ztfl.server.unpacking import WITHHELD_DETAIL
from ztfl.simulations.datasets import digits_holdout, load_digits_partition
from ztfl.trust.audit import AuditEventKind
from ztfl.trust.keys import generate_signing_key
from ztfl.trust.revocation import RevocationList
from ztfl.trust.rotation import KeyRotation, rotate_key
from ztfl.trust.signing import SignedManifest
from ztfl.trust.verification import LineageState, TrustAnchor, verify_model

SIGNING_KEY = generate_signing_key()
_RUN_FOLDERS: list[Path] = []
_STATE_NUMBERS = itertools.count()


def anchor_file() -> Path:
    """The trust anchor the loopback nodes pin: rewritten for each coordinator a test makes."""
    return _RUN_FOLDERS[-1] / "trust-anchor.toml"


def make_ledger(config: CoordinatorConfig, initial: dict[str, np.ndarray]) -> RunLedger:
    """A new run in a fresh state folder; the nodes' anchor now pins its run id."""
    state_dir = _RUN_FOLDERS[-1] / f"state-{next(_STATE_NUMBERS)}"
    ledger = open_ledger(config, initial, state_dir=state_dir, key=SIGNING_KEY, resume=False)
    write_trust_anchor(anchor_file(), ledger.run_id, [state_dir / PUBLIC_KEY_FILE])
    return ledger


NODE_IDS = (101, 102, 103, 104, 105)
EMPTY_NODE_IDS = frozenset({104, 105})
"""Nodes whose dataset is empty in the ``with_two_empty`` grid: they refuse with NO_DATA."""


class LoopbackGrid(InProcessGrid):
    """Every node in this process, pinning the current run's anchor; keeps all traffic."""

    def __init__(
        self,
        client_app: ClientApp,
        node_ids: Iterable[int],
        *,
        lineage_dirs: Mapping[int, Path] | None = None,
        flower_run_id: int = 1,
        node_settings: Mapping[int, Mapping[str, bool | float | int | str]] | None = None,
    ) -> None:
        def node_config(node_id: int) -> dict[str, bool | float | int | str]:
            config: dict[str, bool | float | int | str] = {"trust-anchor": str(anchor_file())}
            if lineage_dirs is not None:
                config["lineage-dir"] = str(lineage_dirs[node_id])
            config.update((node_settings or {}).get(node_id, {}))
            return config

        super().__init__(
            client_app,
            {node_id: node_config(node_id) for node_id in node_ids},
            flower_run_id=flower_run_id,
        )
        self.sent: list[Message] = []
        self.received: list[Message] = []

    def deliver(self, message: Message) -> Message | None:
        self.sent.append(message)
        reply = super().deliver(message)
        assert reply is not None
        self.received.append(reply)
        return reply


@pytest.fixture(autouse=True)
def run_folder(tmp_path: Path) -> Iterator[Path]:
    """This test's folder for state and the nodes' trust anchor."""
    _RUN_FOLDERS.append(tmp_path)
    yield tmp_path
    _RUN_FOLDERS.pop()


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


@pytest.fixture(scope="module")
def node_data() -> dict[int, ClientData]:
    """An IID digits share per node."""
    return {
        node_id: load_digits_partition(index, len(NODE_IDS), alpha=None, seed=0)
        for index, node_id in enumerate(NODE_IDS)
    }


@pytest.fixture
def grid(node_data: Mapping[int, ClientData]) -> LoopbackGrid:
    """Five nodes that all train."""
    return LoopbackGrid(build_client_app(lambda context: node_data[context.node_id]), NODE_IDS)


@pytest.fixture
def with_two_empty(node_data: Mapping[int, ClientData]) -> LoopbackGrid:
    """Five nodes, two of which hold no training data and refuse every training round."""

    def load(context: Context) -> ClientData:
        data = node_data[context.node_id]
        if context.node_id not in EMPTY_NODE_IDS:
            return data
        return ClientData(
            data.train_features[:0], data.train_labels[:0], data.test_features, data.test_labels
        )

    return LoopbackGrid(build_client_app(load), NODE_IDS)


def make_coordinator(
    *, noise_generator: np.random.Generator | None = None, **settings: object
) -> Coordinator:
    config: dict[str, object] = {
        "num_rounds": 1,
        "min_nodes": 1,
        "pipeline": "mean",
        "local_epochs": 1,
        "seed": 0,
        "federated_evaluation": False,
        "node_wait_timeout_s": 0.05,
    }
    config.update(settings)
    initial = model_weights(build_model("mlp", seed=0))
    coordinator_config = CoordinatorConfig(**config)  # type: ignore[arg-type]
    return Coordinator(
        coordinator_config,
        initial,
        ledger=make_ledger(coordinator_config, initial),
        noise_generator=noise_generator,
    )


def flat(weights: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([values.reshape(-1) for values in weights.values()])


def train_replies(grid: LoopbackGrid) -> list[Message]:
    return [m for m in grid.received if m.metadata.message_type == MessageType.TRAIN]


# ------------------------------------------------------------------ one round


def test_a_round_adds_the_mean_of_the_client_updates_to_the_global_model(
    grid: LoopbackGrid,
) -> None:
    coordinator = make_coordinator()
    before = flat(coordinator.global_weights)
    record = coordinator.run_round(grid, 1)
    updates = np.stack(
        [
            flat({n: a.numpy() for n, a in r.content.array_records[protocol.UPDATE_KEY].items()})
            for r in train_replies(grid)
        ]
    )
    assert record.committed
    np.testing.assert_allclose(
        flat(coordinator.global_weights), before + updates.mean(axis=0), rtol=0, atol=1e-6
    )


def test_a_round_records_who_was_asked_and_who_was_accepted(grid: LoopbackGrid) -> None:
    record = make_coordinator().run_round(grid, 1)
    assert record.sampled_nodes == NODE_IDS
    assert record.accepted_nodes == NODE_IDS
    assert record.refused == ()
    assert record.num_replies == len(NODE_IDS)
    assert record.pipeline == "mean"
    assert set(record.train_metrics) == {"train_loss", "train_accuracy"}


def test_the_broadcast_carries_the_global_model_and_the_round_configuration(
    grid: LoopbackGrid,
) -> None:
    coordinator = make_coordinator(learning_rate=0.2, batch_size=8)
    initial = coordinator.global_weights
    coordinator.run_round(grid, 3)
    message = grid.sent[0]
    assert message.metadata.message_type == MessageType.TRAIN
    assert message.metadata.group_id == "3"
    config = message.content.config_records[protocol.CONFIG_KEY]
    assert config[protocol.ROUND] == 3
    assert config[protocol.MODEL] == "mlp"
    assert config[protocol.LOCAL_EPOCHS] == 1
    assert config[protocol.LEARNING_RATE] == 0.2
    assert config[protocol.BATCH_SIZE] == 8
    model = message.content.array_records[protocol.GLOBAL_MODEL_KEY]
    for name, values in initial.items():
        np.testing.assert_array_equal(model[name].numpy(), values)


def test_each_sampled_node_gets_its_own_training_seed(grid: LoopbackGrid) -> None:
    make_coordinator().run_round(grid, 1)
    seeds = [m.content.config_records[protocol.CONFIG_KEY][protocol.SEED] for m in grid.sent]
    assert len(set(seeds)) == len(NODE_IDS)


def test_clients_per_round_asks_only_that_many_nodes(grid: LoopbackGrid) -> None:
    record = make_coordinator(clients_per_round=3).run_round(grid, 1)
    assert len(record.sampled_nodes) == 3
    assert sorted(m.metadata.dst_node_id for m in grid.sent) == list(record.sampled_nodes)


def test_a_client_refusal_is_recorded_and_the_round_commits_without_it(
    with_two_empty: LoopbackGrid,
) -> None:
    record = make_coordinator().run_round(with_two_empty, 1)
    assert record.committed
    assert record.accepted_nodes == (101, 102, 103)
    assert {(r.node_id, r.reason) for r in record.refused} == {
        (104, RefusalReason.REPLY_ERROR),
        (105, RefusalReason.REPLY_ERROR),
    }
    assert all(str(int(protocol.ClientErrorCode.NO_DATA)) in r.detail for r in record.refused)


def test_a_round_with_too_few_valid_updates_is_skipped_and_keeps_the_model(
    with_two_empty: LoopbackGrid,
) -> None:
    # Krum tolerating f = 1 needs n > 2f + 2 = 4 updates; only 3 arrive.
    coordinator = make_coordinator(pipeline="krum", num_byzantine=1, min_nodes=5)
    before = flat(coordinator.global_weights)
    record = coordinator.run_round(with_two_empty, 1)
    assert not record.committed
    assert record.skip_reason is not None
    assert record.skip_reason.startswith("too few valid updates (3)")
    np.testing.assert_array_equal(flat(coordinator.global_weights), before)


def test_two_coordinators_with_one_seed_replay_the_same_round(
    node_data: Mapping[int, ClientData],
) -> None:
    results = []
    for _ in range(2):
        grid = LoopbackGrid(build_client_app(lambda context: node_data[context.node_id]), NODE_IDS)
        coordinator = make_coordinator(clients_per_round=3)
        coordinator.run_round(grid, 1)
        results.append(flat(coordinator.global_weights))
    np.testing.assert_array_equal(results[0], results[1])


def test_federated_evaluation_averages_the_accuracy_the_clients_report(
    grid: LoopbackGrid,
) -> None:
    record = make_coordinator(federated_evaluation=True).run_round(grid, 1)
    reported = [
        m.content.metric_records[protocol.METRICS_KEY][protocol.EVAL_ACCURACY]
        for m in grid.received
        if m.metadata.message_type == MessageType.EVALUATE
    ]
    assert len(reported) == len(NODE_IDS)
    assert record.federated_metrics["accuracy"] == pytest.approx(np.mean(reported))


# ------------------------------------------------------------------ whole runs


class RecordingObserver:
    def __init__(self) -> None:
        self.started: list[tuple[int, dict[str, float]]] = []
        self.rounds: list[RoundRecord] = []

    def on_run_start(self, num_rounds: int, initial_metrics: dict[str, float]) -> None:
        self.started.append((num_rounds, initial_metrics))

    def on_round_end(self, record: RoundRecord) -> None:
        self.rounds.append(record)


def test_a_run_evaluates_centrally_and_reports_every_round_to_its_observers(
    grid: LoopbackGrid,
) -> None:
    holdout = digits_holdout()
    features, labels = torch.from_numpy(holdout.features), torch.from_numpy(holdout.labels)

    def score(weights: dict[str, np.ndarray]) -> dict[str, float]:
        model = build_model("mlp")
        load_weights(model, weights)
        loss, accuracy = evaluate(model, features, labels, torch.device("cpu"))
        return {"loss": loss, "accuracy": accuracy}

    observer = RecordingObserver()
    config = CoordinatorConfig(
        num_rounds=2, min_nodes=5, pipeline="mean", local_epochs=1, seed=0,
        federated_evaluation=False, learning_rate=0.1,
    )  # fmt: skip
    initial = model_weights(build_model("mlp", seed=0))
    coordinator = Coordinator(
        config,
        initial,
        ledger=make_ledger(config, initial),
        central_evaluation=score,
        observers=[observer],
    )
    history = coordinator.run(grid)
    assert [record.server_round for record in history.rounds] == [1, 2]
    assert observer.rounds == history.rounds
    assert observer.started == [(2, history.initial_metrics)]
    assert history.accuracy_series()[-1] > history.accuracy_series()[0]


def test_a_run_refuses_to_start_without_enough_nodes(grid: LoopbackGrid) -> None:
    coordinator = make_coordinator(min_nodes=6)
    with pytest.raises(NotEnoughNodesError, match="5 node\\(s\\) connected"):
        coordinator.run(grid)
    assert grid.sent == []


# ------------------------------------------------------------------ signed broadcasts


def _signed(message: Message) -> SignedManifest:
    record = message.content.config_records[protocol.MANIFEST_KEY]
    return SignedManifest.from_bytes(record[protocol.SIGNED_MANIFEST])  # type: ignore[arg-type]


def test_the_broadcast_model_verifies_under_the_nodes_trust_anchor(grid: LoopbackGrid) -> None:
    coordinator = make_coordinator()
    coordinator.run_round(grid, 1)
    message = grid.sent[0]
    arrays = [
        (name, array.numpy())
        for name, array in message.content.array_records[protocol.GLOBAL_MODEL_KEY].items()
    ]
    anchor = TrustAnchor(coordinator.ledger.run_id, (SIGNING_KEY.public_key(),))
    lineage = verify_model(arrays, _signed(message), anchor=anchor, lineage=LineageState.empty())
    assert lineage.last is not None
    assert lineage.last.round == 0


def test_the_signed_manifest_states_the_pipeline_with_its_parameters(grid: LoopbackGrid) -> None:
    coordinator = make_coordinator(pipeline="nnm -> trimmed_mean", num_byzantine=1, min_nodes=5)
    coordinator.run_round(grid, 1)
    manifest = coordinator.ledger.signed_manifest(coordinator.ledger.model_digest).manifest
    assert manifest.pipeline == "nnm -> trimmed_mean(beta=None); num_byzantine=1"
    assert _signed(grid.sent[0]).manifest.pipeline == manifest.pipeline


def test_a_node_gets_the_chain_from_the_model_it_reported_accepting(grid: LoopbackGrid) -> None:
    coordinator = make_coordinator(num_rounds=3)
    for server_round in (1, 2):
        coordinator.run_round(grid, server_round)
    first = [m for m in grid.sent if m.metadata.group_id == "1"]
    second = [m for m in grid.sent if m.metadata.group_id == "2"]
    assert all(protocol.CHAIN not in m.content.config_records[protocol.MANIFEST_KEY] for m in first)
    # Each node accepted round 0 in round 1; round 2 brings round 1's model, whose parent is
    # round 0: the chain is empty because the parent is the node's accepted model itself.
    assert all(_signed(m).manifest.round == 1 for m in second)
    assert all(not record.verification_failures for record in coordinator.history.rounds)
    assert coordinator.history.rounds[-1].accepted_nodes == NODE_IDS


def test_a_node_that_missed_rounds_gets_the_chain_of_manifests_it_missed(
    grid: LoopbackGrid,
) -> None:
    coordinator = make_coordinator(num_rounds=5, clients_per_round=2)
    for server_round in range(1, 6):
        coordinator.run_round(grid, server_round)
    chains = [
        m.content.config_records[protocol.MANIFEST_KEY].get(protocol.CHAIN, []) for m in grid.sent
    ]
    assert any(len(chain) >= 1 for chain in chains)  # type: ignore[arg-type]
    assert all(not record.verification_failures for record in coordinator.history.rounds)
    assert all(len(record.accepted_nodes) == 2 for record in coordinator.history.rounds)


# ------------------------------------------------------------------ a coordinator restart


def _run_and_resume(
    node_data: Mapping[int, ClientData], run_folder: Path, resumed_node_ids: tuple[int, ...]
) -> tuple[Coordinator, LoopbackGrid, dict[int, str], list[Path]]:
    """Three rounds, a stop, and three more rounds from the resumed state in a new Flower run.

    Two of five nodes per round, so most nodes miss rounds on either side of the restart.
    Each node keeps its lineage in its own folder; ``resumed_node_ids`` are the ids the same
    five nodes come back under. Returns the resumed coordinator, its grid, the node digests
    the state recorded before the stop, and the nodes' lineage folders.
    """
    folders = [run_folder / "lineage" / f"node-{index}" for index in range(len(NODE_IDS))]
    data = list(node_data.values())
    config = CoordinatorConfig(
        num_rounds=6,
        clients_per_round=2,
        min_nodes=1,
        pipeline="mean",
        local_epochs=1,
        seed=0,
        federated_evaluation=False,
        node_wait_timeout_s=0.05,
    )
    initial = model_weights(build_model("mlp", seed=0))
    ledger = make_ledger(config, initial)
    state_dir = ledger.state_dir
    before = LoopbackGrid(
        build_client_app(lambda context: data[NODE_IDS.index(context.node_id)]),
        NODE_IDS,
        lineage_dirs=dict(zip(NODE_IDS, folders, strict=True)),
    )
    coordinator = Coordinator(config, initial, ledger=ledger)
    for server_round in (1, 2, 3):
        coordinator.run_round(before, server_round)
    ledger.close()
    resumed = open_ledger(config, initial, state_dir=state_dir, key=SIGNING_KEY, resume=True)
    assert resumed.state is not None
    recorded = {int(node): digest for node, digest in resumed.state.node_digests.items()}
    after = LoopbackGrid(
        build_client_app(lambda context: data[resumed_node_ids.index(context.node_id)]),
        resumed_node_ids,
        lineage_dirs=dict(zip(resumed_node_ids, folders, strict=True)),
        flower_run_id=2,
    )
    coordinator = Coordinator(config, initial, ledger=resumed)
    for server_round in (4, 5, 6):
        coordinator.run_round(after, server_round)
    resumed.close()
    return coordinator, after, recorded, folders


def _assert_lineage_files_continue_through_the_restart(
    coordinator: Coordinator, folders: list[Path]
) -> None:
    store = coordinator.ledger.store
    committed = {
        signed.digest: signed.manifest.round
        for signed in store.chain(None, coordinator.ledger.model_digest)
    }
    spanning = 0
    for folder in folders:
        if not folder.exists():
            continue  # never sampled
        (path,) = folder.iterdir()
        accepted = LineageState.from_json(path.read_bytes()).accepted
        rounds = [item.round for item in accepted]
        assert all(committed.get(item.digest) == item.round for item in accepted), path
        assert rounds == sorted(rounds), path
        # Train rounds 1–3 broadcast the models of rounds 0–2; after the restart, 3–5.
        spanning += min(rounds) < 3 <= max(rounds)
    assert spanning, "no node accepted models on both sides of the restart"
    assert all(not record.verification_failures for record in coordinator.history.rounds)
    assert all(len(record.accepted_nodes) == 2 for record in coordinator.history.rounds)


def test_after_a_resume_nodes_get_the_chain_from_the_digest_the_state_recorded(
    node_data: Mapping[int, ClientData], run_folder: Path
) -> None:
    coordinator, grid, recorded, folders = _run_and_resume(node_data, run_folder, NODE_IDS)
    assert recorded, "the state recorded no node's accepted model"
    first_after: dict[int, Message] = {}
    for message in grid.sent:
        if message.metadata.message_type == MessageType.TRAIN:
            first_after.setdefault(message.metadata.dst_node_id, message)
    chains_checked = 0
    for node_id, message in first_after.items():
        chain = message.content.config_records[protocol.MANIFEST_KEY].get(protocol.CHAIN, [])
        parent = _signed(message).manifest.parent_digest
        if node_id in recorded and recorded[node_id] not in (parent, _signed(message).digest):
            assert isinstance(chain, list)
            assert chain
            first = SignedManifest.from_bytes(chain[0])  # type: ignore[arg-type]
            assert first.manifest.parent_digest == recorded[node_id]
            chains_checked += 1
    assert chains_checked, "no node needed a chain after the resume"
    _assert_lineage_files_continue_through_the_restart(coordinator, folders)


def test_nodes_back_under_new_ids_after_a_resume_find_their_lineage_in_the_full_chain(
    node_data: Mapping[int, ClientData], run_folder: Path
) -> None:
    """As simulated nodes do: Flower gives them new node ids in every session."""
    new_ids = tuple(node_id + 1000 for node_id in NODE_IDS)
    coordinator, _, _, folders = _run_and_resume(node_data, run_folder, new_ids)
    _assert_lineage_files_continue_through_the_restart(coordinator, folders)


# ------------------------------------------------------------------ key rotation


def _rotated_coordinator(run_folder: Path, rotation: KeyRotation | None) -> Coordinator:
    """A coordinator that signs with ``NEW_KEY`` in a folder whose clients pin ``SIGNING_KEY``."""
    state_dir = run_folder / "rotated-state"
    prepare_state_dir(state_dir, SIGNING_KEY.public_key())
    write_trust_anchor(
        anchor_file(), (state_dir / "run-id").read_text().strip(), [state_dir / PUBLIC_KEY_FILE]
    )
    settings: dict[str, object] = {}
    if rotation is not None:
        statement = run_folder / "rotation.json"
        statement.write_bytes(rotation.to_bytes())
        settings["key_rotations"] = f" {statement} ,"
    config = CoordinatorConfig(
        num_rounds=1,
        min_nodes=1,
        pipeline="mean",
        local_epochs=1,
        seed=0,
        federated_evaluation=False,
        **settings,  # type: ignore[arg-type]
    )
    initial = model_weights(build_model("mlp", seed=0))
    ledger = open_ledger(config, initial, state_dir=state_dir, key=NEW_KEY, resume=False)
    return Coordinator(config, initial, ledger=ledger)


NEW_KEY = generate_signing_key()


def test_nodes_pinning_the_old_key_follow_the_rotation_the_coordinator_sends(
    grid: LoopbackGrid, run_folder: Path
) -> None:
    rotation = rotate_key(SIGNING_KEY, NEW_KEY.public_key())
    coordinator = _rotated_coordinator(run_folder, rotation)
    record = coordinator.run_round(grid, 1)
    assert not record.verification_failures
    assert record.accepted_nodes == NODE_IDS
    for message in grid.sent:
        manifest_record = message.content.config_records[protocol.MANIFEST_KEY]
        assert manifest_record[protocol.ROTATIONS] == [rotation.to_bytes()]


def test_a_coordinator_whose_key_the_pinned_key_does_not_reach_refuses_to_start(
    run_folder: Path,
) -> None:
    with pytest.raises(LedgerError, match="prepared for another signing key"):
        _rotated_coordinator(run_folder, None)


def test_a_coordinator_refuses_a_rotation_that_leads_from_no_pinned_key(
    run_folder: Path,
) -> None:
    stray = rotate_key(generate_signing_key(), NEW_KEY.public_key())
    with pytest.raises(LedgerError, match="no pinned key reaches"):
        _rotated_coordinator(run_folder, stray)


def test_a_coordinator_refuses_a_key_rotations_file_that_is_no_statement(
    run_folder: Path,
) -> None:
    bad = run_folder / "bad.json"
    bad.write_text("{}")
    config = CoordinatorConfig(min_nodes=1, pipeline="mean", key_rotations=str(bad))
    initial = model_weights(build_model("mlp", seed=0))
    with pytest.raises(LedgerError, match=r"bad\.json: unusable key-rotation statement"):
        open_ledger(config, initial, state_dir=run_folder / "s", key=SIGNING_KEY, resume=False)


# ------------------------------------------------------------------ revoking set-aside models


def test_after_a_resume_every_broadcast_carries_the_revocation_of_the_set_aside_model(
    grid: LoopbackGrid,
) -> None:
    coordinator = make_coordinator(num_rounds=2)
    coordinator.run_round(grid, 1)
    ledger = coordinator.ledger
    orphan = ledger.commit_model(
        2, list(coordinator.global_weights.items()), participants=(), refused=()
    )
    ledger.close()  # killed after the model write, before the state commit
    resumed = open_ledger(
        coordinator.config,
        coordinator.global_weights,
        state_dir=ledger.state_dir,
        key=SIGNING_KEY,
        resume=True,
    )
    grid.sent.clear()
    rerun = Coordinator(coordinator.config, coordinator.global_weights, ledger=resumed)
    record = rerun.run_round(grid, 2)
    assert not record.verification_failures
    assert grid.sent
    for message in grid.sent:
        sent = message.content.config_records[protocol.MANIFEST_KEY][protocol.REVOCATIONS]
        assert RevocationList.from_bytes(sent).digests == {orphan.digest}  # type: ignore[arg-type]


# ------------------------------------------------------------------ differential privacy

DP_SETTINGS: dict[str, object] = {
    "dp": True,
    "dp_clip_norm": 1.0,
    "dp_noise_multiplier": 1.0,
    "dp_sampling_rate": 0.6,
}
NOISE_KEY = bytes(range(32))


def make_dp_coordinator(**settings: object) -> Coordinator:
    """A three-round DP coordinator whose noise is replayable (a fixed ChaCha key)."""
    dp_settings = {"num_rounds": 3, **DP_SETTINGS, **settings}
    return make_coordinator(noise_generator=secure_generator(NOISE_KEY), **dp_settings)


def test_dp_epsilon_grows_every_round_as_the_accountant_composes_it(grid: LoopbackGrid) -> None:
    coordinator = make_dp_coordinator()
    reference = PrivacyAccountant(coordinator.config.accountant_config())
    epsilons = []
    for server_round in (1, 2, 3):
        record = coordinator.run_round(grid, server_round)
        assert record.privacy is not None
        assert record.privacy["rounds"] == server_round
        assert record.privacy["epsilon"] == pytest.approx(reference.epsilon_after(server_round))
        epsilons.append(record.privacy["epsilon"])
    assert 0 < epsilons[0] < epsilons[1] < epsilons[2]


def test_dp_noise_is_added_to_the_clipped_fixed_denominator_mean(grid: LoopbackGrid) -> None:
    # q = 1: all five nodes, m = 5; sensitivity C/m = 0.2, noise std z·C/m = 0.1.
    coordinator = make_dp_coordinator(dp_sampling_rate=1.0, dp_noise_multiplier=0.5)
    before = flat(coordinator.global_weights)
    record = coordinator.run_round(grid, 1)
    assert record.committed
    updates = torch.from_numpy(
        np.stack(
            [
                flat(
                    {n: a.numpy() for n, a in r.content.array_records[protocol.UPDATE_KEY].items()}
                )
                for r in train_replies(grid)
            ]
        )
    )
    assert len(updates) == 5
    plain = (clip_updates(updates, 1.0).updates.sum(dim=0) / 5).numpy()
    noise = flat(coordinator.global_weights) - before - plain
    assert float(np.std(noise)) == pytest.approx(0.1, rel=0.15)
    expected = gaussian_noise((len(before),), 0.1, generator=secure_generator(NOISE_KEY)).numpy()
    np.testing.assert_allclose(noise, expected, rtol=0, atol=1e-5)


def test_the_signed_manifest_states_the_dp_parameters_and_epsilon(grid: LoopbackGrid) -> None:
    coordinator = make_dp_coordinator()
    record = coordinator.run_round(grid, 1)
    assert record.committed
    manifest = coordinator.ledger.signed_manifest(coordinator.ledger.model_digest).manifest
    assert manifest.privacy is not None
    privacy = dict(manifest.privacy)
    assert privacy == record.privacy
    assert privacy["mechanism"] == "gaussian"
    assert (privacy["noise_multiplier"], privacy["clip_norm"], privacy["sampling_rate"]) == (
        1.0,
        1.0,
        0.6,
    )
    assert (privacy["delta"], privacy["accountant"], privacy["rounds"]) == (1e-5, "rdp", 1)
    assert privacy["expected_clients"] == 3


def test_a_round_that_would_exceed_the_budget_is_not_run_and_is_audited(
    grid: LoopbackGrid,
) -> None:
    probe = make_dp_coordinator()
    reference = PrivacyAccountant(probe.config.accountant_config())
    budget = (reference.epsilon_after(2) + reference.epsilon_after(3)) / 2
    coordinator = make_dp_coordinator(num_rounds=5, dp_epsilon_budget=budget)
    history = coordinator.run(grid)
    assert [record.server_round for record in history.rounds] == [1, 2]
    assert coordinator.accountant is not None
    assert coordinator.accountant.rounds == 2
    events = [
        record
        for record in coordinator.ledger.audit.records()
        if record.kind is AuditEventKind.DP_BUDGET
    ]
    assert len(events) == 1
    assert (events[0].round, events[0].reason) == (3, "budget_exceeded")
    assert events[0].details["epsilon_budget"] == pytest.approx(budget)
    assert history.stop_reason is not None
    assert "above the budget" in history.stop_reason
    with pytest.raises(PrivacyBudgetExhaustedError, match="above the budget"):
        coordinator.run_round(grid, 3)


def test_a_resumed_dp_run_continues_epsilon_where_it_stopped(grid: LoopbackGrid) -> None:
    coordinator = make_dp_coordinator()
    for server_round in (1, 2):
        coordinator.run_round(grid, server_round)
    assert coordinator.accountant is not None
    spent = coordinator.accountant.epsilon()
    config, ledger = coordinator.config, coordinator.ledger
    ledger.close()
    initial = model_weights(build_model("mlp", seed=0))
    resumed = open_ledger(config, initial, state_dir=ledger.state_dir, key=SIGNING_KEY, resume=True)
    again = Coordinator(config, initial, ledger=resumed)
    assert again.accountant is not None
    assert (again.accountant.rounds, again.accountant.epsilon()) == (2, spent)
    record = again.run_round(grid, 3)
    assert record.privacy is not None
    reference = PrivacyAccountant(config.accountant_config())
    assert record.privacy["epsilon"] == pytest.approx(reference.epsilon_after(3))
    resumed.close()


def test_a_poisson_draw_of_no_node_skips_the_round_but_still_accounts_it(
    grid: LoopbackGrid,
) -> None:
    coordinator = make_dp_coordinator(dp_sampling_rate=0.01)
    before = flat(coordinator.global_weights)
    record = coordinator.run_round(grid, 1)
    assert record.sampled_nodes == ()
    assert not record.committed
    assert record.skip_reason is not None
    assert "no valid update" in record.skip_reason
    assert record.privacy is not None
    assert record.privacy["rounds"] == 1
    np.testing.assert_array_equal(flat(coordinator.global_weights), before)


def test_dp_with_a_robust_rule_commits_a_noisy_model(grid: LoopbackGrid) -> None:
    coordinator = make_dp_coordinator(pipeline="trimmed_mean", num_byzantine=1, min_nodes=3)
    record = coordinator.run_round(grid, 1)
    assert record.privacy is not None
    assert record.privacy["sensitivity"] > 1.0  # 2ρr: of order C, not C/m


def test_a_dp_round_interrupted_before_its_state_commit_still_counts_after_a_resume(
    grid: LoopbackGrid,
) -> None:
    coordinator = make_dp_coordinator()
    coordinator.run_round(grid, 1)
    coordinator._round(grid, 2)  # sampled, aggregated, committed a model: no state commit
    config, ledger = coordinator.config, coordinator.ledger
    ledger.close()
    initial = model_weights(build_model("mlp", seed=0))
    resumed = open_ledger(config, initial, state_dir=ledger.state_dir, key=SIGNING_KEY, resume=True)
    again = Coordinator(config, initial, ledger=resumed)
    assert again.completed_rounds == 1
    assert again.accountant is not None
    assert again.accountant.rounds == 2
    resumed.close()


# ------------------------------------------------------------------ clients' policy floors


def test_a_node_whose_policy_floor_the_round_misses_refuses_it_and_the_refusal_is_audited(
    node_data: Mapping[int, ClientData],
) -> None:
    strict = LoopbackGrid(
        build_client_app(lambda context: node_data[context.node_id]),
        NODE_IDS,
        node_settings={101: {"max-clip-norm": 0.5}},
    )
    coordinator = make_dp_coordinator(dp_sampling_rate=1.0)
    record = coordinator.run_round(strict, 1)
    assert record.committed
    assert 101 not in record.accepted_nodes
    (refused,) = record.refused
    assert (refused.node_id, refused.reason) == (101, RefusalReason.REPLY_ERROR)
    assert "POLICY_FLOOR" in refused.detail
    assert "clip norm 1 is above this node's maximum 0.5" in refused.detail
    audited = [
        event
        for event in coordinator.ledger.audit.records()
        if event.kind is AuditEventKind.UPDATE_REFUSED
    ]
    assert [(event.reason, event.node_id) for event in audited] == [("reply_error", 101)]


def test_every_training_message_declares_the_rounds_dp_settings(grid: LoopbackGrid) -> None:
    coordinator = make_dp_coordinator(dp_epsilon_budget=50.0)
    coordinator.run_round(grid, 1)
    train = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    assert train
    assert coordinator.accountant is not None
    for message in train:
        declared = RoundPrivacy.from_record(message.content.config_records[protocol.PRIVACY_KEY])
        assert declared.dp
        assert (declared.clip_norm, declared.noise_multiplier, declared.delta) == (1.0, 1.0, 1e-5)
        assert declared.epsilon_budget == 50.0
        assert declared.epsilon_spent == pytest.approx(coordinator.accountant.epsilon())


def test_a_round_without_dp_declares_it_so_nodes_that_require_dp_refuse(
    node_data: Mapping[int, ClientData],
) -> None:
    strict = LoopbackGrid(
        build_client_app(lambda context: node_data[context.node_id]),
        NODE_IDS,
        node_settings={node: {"require-dp": True} for node in NODE_IDS},
    )
    record = make_coordinator().run_round(strict, 1)
    assert not record.committed
    assert {item.node_id for item in record.refused} == set(NODE_IDS)
    assert all("no differential privacy" in item.detail for item in record.refused)


# ------------------------------------------------------------------ what DP mode keeps private


def test_a_dp_round_keeps_no_client_figures_and_asks_for_no_federated_evaluation(
    grid: LoopbackGrid,
) -> None:
    coordinator = make_dp_coordinator(dp_sampling_rate=1.0, federated_evaluation=True)
    record = coordinator.run_round(grid, 1)
    assert record.committed
    assert record.train_metrics == {}
    assert record.federated_metrics == {}
    assert all(m.metadata.message_type == MessageType.TRAIN for m in grid.sent)


def test_in_dp_mode_a_refusal_does_not_quote_the_updates_norm(grid: LoopbackGrid) -> None:
    coordinator = make_dp_coordinator(dp_sampling_rate=1.0, max_update_norm=1e-6)
    record = coordinator.run_round(grid, 1)
    assert {item.reason for item in record.refused} == {RefusalReason.NORM_ABOVE_CAP}
    assert all(item.detail == WITHHELD_DETAIL for item in record.refused)
    for event in coordinator.ledger.audit.records():
        if event.kind is AuditEventKind.UPDATE_REFUSED:
            assert event.details["detail"] == WITHHELD_DETAIL


# ------------------------------------------------------------------ adaptive clipping

ADAPTIVE: dict[str, object] = {
    "dp_adaptive_clipping": True,
    "dp_clip_norm": 10.0,
    "dp_noise_multiplier": 0.5,
    "dp_clipped_count_stddev": 0.3,
    "dp_sampling_rate": 1.0,
}
"""m = 5 clients, so b̃'s noise has std σ_b/m = 0.06: small enough for the direction of C's
steps to be certain while every update is far inside the clip norm."""


def test_adaptive_clipping_shrinks_a_clip_norm_no_update_reaches(grid: LoopbackGrid) -> None:
    coordinator = make_dp_coordinator(**ADAPTIVE)
    norms = []
    for server_round in (1, 2, 3):
        record = coordinator.run_round(grid, server_round)
        assert record.privacy is not None
        norms.append(record.privacy["clip_norm"])
    # Every digits update is far below C = 10, so b̃ ≈ 1 and C shrinks by about e^(−0.2·0.5).
    assert norms[0] == 10.0
    assert norms[0] > norms[1] > norms[2]
    assert norms[1] / norms[0] == pytest.approx(np.exp(-0.1), rel=0.2)


def test_each_round_is_clipped_and_noised_with_its_own_clip_norm(grid: LoopbackGrid) -> None:
    coordinator = make_dp_coordinator(**ADAPTIVE)
    coordinator.run_round(grid, 1)
    grid.sent.clear()
    second = coordinator.run_round(grid, 2)
    assert second.privacy is not None
    train = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    declared = {
        RoundPrivacy.from_record(m.content.config_records[protocol.PRIVACY_KEY]).clip_norm
        for m in train
    }
    assert declared == {second.privacy["clip_norm"]}
    # The update's share of the noise: z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) with z = 0.5, σ_b = 0.3.
    assert second.privacy["update_noise_multiplier"] == pytest.approx((4 - 0.6**-2) ** -0.5)
    assert second.privacy["sensitivity"] == pytest.approx(second.privacy["clip_norm"] / 5)


def test_the_adaptive_clip_norm_survives_a_resume(grid: LoopbackGrid) -> None:
    coordinator = make_dp_coordinator(**ADAPTIVE)
    coordinator.run_round(grid, 1)
    carried = coordinator.clip_norm
    assert carried < 10.0
    config, ledger = coordinator.config, coordinator.ledger
    ledger.close()
    initial = model_weights(build_model("mlp", seed=0))
    resumed = open_ledger(config, initial, state_dir=ledger.state_dir, key=SIGNING_KEY, resume=True)
    again = Coordinator(config, initial, ledger=resumed)
    assert again.clip_norm == carried
    record = again.run_round(grid, 2)
    assert record.privacy is not None
    assert record.privacy["clip_norm"] == carried
    resumed.close()


def test_a_count_noise_too_small_for_the_noise_multiplier_is_refused_naming_the_key(
    grid: LoopbackGrid,
) -> None:
    coordinator = make_dp_coordinator(**{**ADAPTIVE, "dp_clipped_count_stddev": 0.2})
    with pytest.raises(ConfigError, match="dp-clipped-count-stddev"):
        coordinator.run_round(grid, 1)
