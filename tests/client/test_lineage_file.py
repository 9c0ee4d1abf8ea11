"""A node's lineage kept in ``lineage-dir`` outlives the Flower run, so a restarted coordinator
cannot roll it back; a damaged lineage file is a refusal naming the file, never a fresh start.

The real ClientApp is called as Flower calls it. A coordinator restart is a new Flower run,
modelled by a fresh ``Context`` (new Flower run id, empty ``state``) with the same node config.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from ztfl.client import protocol
from ztfl.client.app import LINEAGE_STATE_KEY, build_client_app
from ztfl.client.data import ClientData
from ztfl.client.lineage_file import LINEAGE_DIR_KEY, lineage_file
from ztfl.trust.signing import SignedManifest
from ztfl.trust.verification import LineageState, TrustAnchor

NODE_ID = 7
RUN_ID = "client-tests-run"
"""The ztfl run the test anchor pins (``conftest.TEST_RUN_ID``)."""
ROUNDS = 4
Lineage = list[tuple[dict[str, np.ndarray], SignedManifest]]


@pytest.fixture
def lineage(
    global_weights: dict[str, np.ndarray], sign_model: Callable[..., SignedManifest]
) -> Lineage:
    """One ztfl run's models of rounds 0–3, each signed with its parent, as the coordinator does."""
    models = []
    parent = None
    for server_round in range(ROUNDS):
        weights = {name: values + 0.01 * server_round for name, values in global_weights.items()}
        signed = sign_model(weights, server_round=server_round, parent_digest=parent)
        models.append((weights, signed))
        parent = signed.digest
    return models


@pytest.fixture
def node_app(client_data: ClientData, trust_anchor: TrustAnchor) -> ClientApp:
    """The ClientApp on ``client_data`` pinning the test anchor; lineage per its node config."""
    return build_client_app(lambda context: client_data, load_anchor=lambda context: trust_anchor)


def flower_run(flower_run_id: int, lineage_dir: Path | None) -> Context:
    """The node's context in one Flower run: a coordinator restart gets a new one."""
    node_config: dict[str, bool | float | int | str] = {}
    if lineage_dir is not None:
        node_config[LINEAGE_DIR_KEY] = str(lineage_dir)
    return Context(
        run_id=flower_run_id,
        node_id=NODE_ID,
        node_config=node_config,
        state=RecordDict(),
        run_config={},
    )


def evaluation(
    weights: Mapping[str, np.ndarray], signed: SignedManifest, chain: Sequence[SignedManifest] = ()
) -> Message:
    """The coordinator's evaluate message for a signed model (and the chain to it)."""
    manifest = ConfigRecord({protocol.SIGNED_MANIFEST: signed.to_bytes()})
    if chain:
        manifest[protocol.CHAIN] = [link.to_bytes() for link in chain]
    content = RecordDict(
        {
            protocol.GLOBAL_MODEL_KEY: ArrayRecord(
                {name: Array(values) for name, values in weights.items()}
            ),
            protocol.CONFIG_KEY: ConfigRecord({protocol.ROUND: 1, protocol.MODEL: "mlp"}),
            protocol.MANIFEST_KEY: manifest,
        }
    )
    return Message(content, dst_node_id=NODE_ID, message_type=MessageType.EVALUATE, group_id="1")


def accept_rounds_0_and_1(
    app: ClientApp,
    context: Context,
    lineage: Lineage,
) -> None:
    for weights, signed in lineage[:2]:
        reply = app(evaluation(weights, signed), context)
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""


def test_after_a_restart_an_older_round_is_refused_because_the_lineage_file_remembers(
    node_app: ClientApp, lineage: Lineage, tmp_path: Path
) -> None:
    accept_rounds_0_and_1(node_app, flower_run(1, tmp_path / "lineage"), lineage)
    restarted = flower_run(2, tmp_path / "lineage")
    reply = node_app(evaluation(*lineage[0]), restarted)
    assert reply.has_error()
    assert reply.error.code == int(protocol.ClientErrorCode.MODEL_STALE_ROUND)


def test_after_a_restart_the_resumed_run_is_accepted_through_the_chain(
    node_app: ClientApp, lineage: Lineage, tmp_path: Path
) -> None:
    accept_rounds_0_and_1(node_app, flower_run(1, tmp_path / "lineage"), lineage)
    restarted = flower_run(2, tmp_path / "lineage")
    weights, signed = lineage[3]
    reply = node_app(evaluation(weights, signed, chain=[lineage[2][1]]), restarted)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert reply.content.config_records[protocol.LINEAGE_KEY][protocol.ACCEPTED_DIGEST] == (
        signed.digest
    )


def test_without_a_lineage_folder_a_new_flower_run_starts_over(
    node_app: ClientApp, lineage: Lineage
) -> None:
    """The documented limit: Context.state alone protects lineage within one Flower run only."""
    accept_rounds_0_and_1(node_app, flower_run(1, None), lineage)
    reply = node_app(evaluation(*lineage[0]), flower_run(2, None))
    assert not reply.has_error()


def test_the_lineage_file_is_private_and_matches_the_context_state(
    node_app: ClientApp, lineage: Lineage, tmp_path: Path
) -> None:
    context = flower_run(1, tmp_path / "lineage")
    accept_rounds_0_and_1(node_app, context, lineage)
    path = lineage_file(tmp_path / "lineage", RUN_ID)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == context.state.config_records[LINEAGE_STATE_KEY][RUN_ID]
    kept = LineageState.from_json(path.read_bytes())
    assert [item.digest for item in kept.accepted] == [signed.digest for _, signed in lineage[:2]]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_a_corrupt_lineage_file_is_a_refusal_naming_the_file(
    node_app: ClientApp, lineage: Lineage, tmp_path: Path
) -> None:
    accept_rounds_0_and_1(node_app, flower_run(1, tmp_path / "lineage"), lineage)
    path = lineage_file(tmp_path / "lineage", RUN_ID)
    path.write_bytes(path.read_bytes()[:-7])
    reply = node_app(evaluation(*lineage[0]), flower_run(2, tmp_path / "lineage"))
    assert reply.has_error()
    assert reply.error.code == int(protocol.ClientErrorCode.MODEL_MALFORMED_LINEAGE_STATE)
    assert str(path) in str(reply.error.reason)


def test_an_unwritable_lineage_folder_is_a_refusal_naming_the_file(
    node_app: ClientApp, lineage: Lineage, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    reply = node_app(evaluation(*lineage[0]), flower_run(1, blocker))
    assert reply.has_error()
    assert reply.error.code == int(protocol.ClientErrorCode.MODEL_MALFORMED_LINEAGE_STATE)
    assert str(lineage_file(blocker, RUN_ID)) in str(reply.error.reason)


def test_a_run_id_that_is_not_a_file_name_stays_inside_the_folder(tmp_path: Path) -> None:
    path = lineage_file(tmp_path, "../../etc/run")
    assert path.parent == tmp_path
    assert path.name.endswith(".json")
