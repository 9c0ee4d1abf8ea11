"""Quarantine in the coordinator's round, against real ClientApps in this process.

Six nodes train on IID digits shares with the production ClientApp; a wrapper
in the transport replaces node 106's update with a scaled sign flip (what a
Byzantine client would send). Everything else — verification, training,
validation, aggregation, scoring, signing, audit and state — is production code.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MessageType
from flwr.clientapp import ClientApp
from typer.testing import CliRunner

from tests.support.in_process_grid import InProcessGrid
from ztfl.cli.nodes import nodes_app
from ztfl.client import protocol
from ztfl.client.app import build_client_app
from ztfl.client.data import ClientData
from ztfl.client.models import build_model
from ztfl.client.trainer import model_weights
from ztfl.client.trust_anchor import write_trust_anchor
from ztfl.server.config import CoordinatorConfig
from ztfl.server.coordinator import Coordinator, open_ledger
from ztfl.server.ledger import PUBLIC_KEY_FILE, RunLedger
from ztfl.simulations.datasets import load_digits_partition
from ztfl.trust.audit import AuditEventKind, AuditRecord
from ztfl.trust.keys import generate_signing_key

SIGNING_KEY = generate_signing_key()
NODE_IDS = (101, 102, 103, 104, 105, 106)
ATTACKER = 106
runner = CliRunner()


class FlippingLoopbackGrid(InProcessGrid):
    """Every node in this process; the attacker's training replies are flipped and scaled."""

    def __init__(self, client_app: ClientApp, anchor: Path, node_ids: Iterable[int]) -> None:
        super().__init__(client_app, {node: {"trust-anchor": str(anchor)} for node in node_ids})
        self.sampled: list[set[int]] = []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        outgoing = list(messages)
        if any(m.metadata.message_type == MessageType.TRAIN for m in outgoing):
            self.sampled.append({m.metadata.dst_node_id for m in outgoing})
        return super().send_and_receive(outgoing, timeout=timeout)

    def deliver(self, message: Message) -> Message | None:
        reply = super().deliver(message)
        if reply is not None and message.metadata.dst_node_id == ATTACKER and not reply.has_error():
            update = reply.content.array_records.get(protocol.UPDATE_KEY)
            if update is not None:
                reply.content[protocol.UPDATE_KEY] = ArrayRecord(
                    {name: Array(-20 * array.numpy()) for name, array in update.items()}
                )
        return reply


@pytest.fixture(scope="module")
def node_data() -> dict[int, ClientData]:
    return {
        node: load_digits_partition(index, len(NODE_IDS), alpha=None, seed=0)
        for index, node in enumerate(NODE_IDS)
    }


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_config(**settings: object) -> CoordinatorConfig:
    values: dict[str, object] = {
        "num_rounds": 6,
        "min_nodes": len(NODE_IDS),
        "pipeline": "median",
        "num_byzantine": 1,
        "local_epochs": 1,
        "seed": 0,
        "federated_evaluation": False,
        "node_wait_timeout_s": 0.05,
        "reputation_decay": 0.5,
        "quarantine_threshold": 0.3,
        "quarantine_min_rounds": 3,
    }
    values.update(settings)
    return CoordinatorConfig(**values)  # type: ignore[arg-type]


def initial_weights() -> dict[str, np.ndarray]:
    return model_weights(build_model("mlp", seed=0))


def start(
    tmp_path: Path, node_data: Mapping[int, ClientData], config: CoordinatorConfig
) -> tuple[Coordinator, FlippingLoopbackGrid]:
    state_dir = tmp_path / "state"
    ledger = open_ledger(
        config, initial_weights(), state_dir=state_dir, key=SIGNING_KEY, resume=False
    )
    anchor = tmp_path / "trust-anchor.toml"
    write_trust_anchor(anchor, ledger.run_id, [state_dir / PUBLIC_KEY_FILE])
    grid = FlippingLoopbackGrid(
        build_client_app(lambda context: node_data[context.node_id]), anchor, NODE_IDS
    )
    return Coordinator(config, initial_weights(), ledger=ledger), grid


def quarantine_events(ledger: RunLedger) -> list[AuditRecord]:
    return [r for r in ledger.audit.records() if r.kind is AuditEventKind.QUARANTINE]


def test_a_node_sending_flipped_updates_is_quarantined_and_no_longer_sampled(
    tmp_path: Path, node_data: Mapping[int, ClientData]
) -> None:
    coordinator, grid = start(tmp_path, node_data, make_config())
    records = [coordinator.run_round(grid, server_round) for server_round in (1, 2, 3, 4)]
    assert [record.quarantined for record in records] == [(), (), (ATTACKER,), ()]
    assert records[0].anomaly_scores is not None
    assert max(records[0].anomaly_scores, key=records[0].anomaly_scores.__getitem__) == str(
        ATTACKER
    )
    assert records[2].reputation is not None
    assert records[2].reputation[str(ATTACKER)] < 0.3
    assert all(records[2].reputation[str(node)] > 0.9 for node in NODE_IDS if node != ATTACKER)
    assert ATTACKER in grid.sampled[2]
    assert grid.sampled[3] == set(NODE_IDS) - {ATTACKER}


def test_the_quarantine_incident_is_audited_with_its_evidence(
    tmp_path: Path, node_data: Mapping[int, ClientData]
) -> None:
    coordinator, grid = start(tmp_path, node_data, make_config())
    for server_round in (1, 2, 3):
        coordinator.run_round(grid, server_round)
    [event] = quarantine_events(coordinator.ledger)
    assert (event.node_id, event.round, event.reason) == (ATTACKER, 3, "quarantined")
    assert event.details["node"] == str(ATTACKER)
    assert event.details["decision"] == "quarantined"
    assert event.details["rounds"] == [1, 2, 3]
    scores = event.details["scores"]
    assert isinstance(scores, list)
    assert all(isinstance(score, float) and score > 4.0 for score in scores)


def test_a_resumed_run_keeps_reputations_and_the_quarantine(
    tmp_path: Path, node_data: Mapping[int, ClientData]
) -> None:
    config = make_config()
    coordinator, grid = start(tmp_path, node_data, config)
    for server_round in (1, 2, 3):
        coordinator.run_round(grid, server_round)
    reputations = coordinator.quarantine.reputations()
    coordinator.ledger.close()
    resumed = open_ledger(
        config, initial_weights(), state_dir=tmp_path / "state", key=SIGNING_KEY, resume=True
    )
    again = Coordinator(config, initial_weights(), ledger=resumed)
    assert again.quarantine.quarantined == {ATTACKER}
    assert again.quarantine.reputations() == reputations
    again.run_round(grid, 4)
    assert ATTACKER not in grid.sampled[-1]


def test_an_operator_release_is_audited_and_reinstates_the_node_before_the_next_round(
    tmp_path: Path, node_data: Mapping[int, ClientData]
) -> None:
    coordinator, grid = start(tmp_path, node_data, make_config())
    for server_round in (1, 2, 3):
        coordinator.run_round(grid, server_round)
    state_dir = str(tmp_path / "state")
    listed = runner.invoke(nodes_app, ["list", "--state-dir", state_dir])
    assert listed.exit_code == 0, listed.output
    assert "quarantined" in listed.output
    released = runner.invoke(
        nodes_app, ["release", str(ATTACKER), "--state-dir", state_dir, "--note", "reimaged"]
    )
    assert released.exit_code == 0, released.output
    pending = runner.invoke(nodes_app, ["list", "--state-dir", state_dir])
    assert "released (pending)" in pending.output
    [_, release] = quarantine_events(coordinator.ledger)
    assert (release.node_id, release.reason) == (ATTACKER, "released")
    assert release.details["note"] == "reimaged"
    record = coordinator.run_round(grid, 4)
    assert ATTACKER in grid.sampled[-1]
    assert record.reputation is not None
    assert 0.4 <= record.reputation[str(ATTACKER)] <= 0.5  # fresh 1.0, one bad round at λ = 0.5


def test_releasing_a_node_that_is_not_quarantined_is_refused(
    tmp_path: Path, node_data: Mapping[int, ClientData]
) -> None:
    coordinator, grid = start(tmp_path, node_data, make_config())
    coordinator.run_round(grid, 1)
    result = runner.invoke(nodes_app, ["release", "101", "--state-dir", str(tmp_path / "state")])
    assert result.exit_code == 1
    assert quarantine_events(coordinator.ledger) == []


def test_listing_a_folder_without_a_run_fails_with_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(nodes_app, ["list", "--state-dir", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "missing" in result.output


def test_with_quarantine_off_scores_are_recorded_but_nobody_is_excluded(
    tmp_path: Path, node_data: Mapping[int, ClientData]
) -> None:
    coordinator, grid = start(tmp_path, node_data, make_config(quarantine=False))
    records = [coordinator.run_round(grid, server_round) for server_round in (1, 2, 3, 4)]
    assert all(record.quarantined == () for record in records)
    assert grid.sampled[3] == set(NODE_IDS)
    assert records[3].reputation is not None
    assert records[3].reputation[str(ATTACKER)] < 0.3
    assert quarantine_events(coordinator.ledger) == []


def test_dp_rounds_compute_no_per_client_scores(
    tmp_path: Path, node_data: Mapping[int, ClientData]
) -> None:
    config = make_config(
        pipeline="mean", num_byzantine=0, dp=True, dp_clip_norm=1.0, dp_noise_multiplier=1.0
    )
    coordinator, grid = start(tmp_path, node_data, config)
    record = coordinator.run_round(grid, 1)
    assert record.committed
    assert record.anomaly_scores is None
    assert record.reputation == {}
