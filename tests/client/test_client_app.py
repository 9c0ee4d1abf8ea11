"""The ClientApp as Flower calls it: verification against the node's own trust anchor, data from
the node's context, refusals as error replies."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from ztfl.client import protocol
from ztfl.client.app import LINEAGE_STATE_KEY, app, build_client_app, load_context_data
from ztfl.client.data import ClientData, DatasetConfigError
from ztfl.simulations.datasets import load_digits_partition
from ztfl.trust.keys import SigningKey, generate_signing_key
from ztfl.trust.rotation import rotate_key
from ztfl.trust.signing import SignedManifest, sign_manifest
from ztfl.trust.verification import LineageState, TrustAnchor

RoundMessage = Callable[..., Message]


def node_context(
    node_config: dict[str, bool | float | int | str],
    run_config: dict[str, bool | float | int | str] | None = None,
) -> Context:
    return Context(
        run_id=42,
        node_id=7,
        node_config=node_config,
        state=RecordDict(),
        run_config=run_config or {},
    )


@pytest.fixture
def pinned_app(client_data: ClientData, trust_anchor: TrustAnchor) -> ClientApp:
    """The ClientApp on ``client_data``, pinning the test anchor."""
    return build_client_app(lambda context: client_data, load_anchor=lambda context: trust_anchor)


def test_the_client_app_trains_on_the_data_its_loader_returns(
    round_message: RoundMessage, client_data: ClientData, pinned_app: ClientApp
) -> None:
    reply = pinned_app(round_message(), node_context({}))
    assert not reply.has_error()
    metrics = reply.content.metric_records[protocol.METRICS_KEY]
    assert metrics[protocol.NUM_EXAMPLES] == client_data.num_train


def test_the_client_app_answers_a_refused_round_with_its_error_code(
    round_message: RoundMessage, pinned_app: ClientApp
) -> None:
    reply = pinned_app(round_message(with_model=False), node_context({}))
    assert reply.has_error()
    assert reply.error.code == int(protocol.ClientErrorCode.INVALID_MESSAGE)


def test_the_client_app_answers_a_node_without_a_dataset_with_no_data(
    round_message: RoundMessage, anchor_file: Path
) -> None:
    reply = app(round_message(), node_context({"trust-anchor": str(anchor_file)}))
    assert reply.has_error()
    assert reply.error.code == int(protocol.ClientErrorCode.NO_DATA)
    assert "--node-config" in str(reply.error.reason)


def test_the_client_app_answers_an_evaluation_without_a_dataset_with_no_data(
    round_message: RoundMessage, anchor_file: Path
) -> None:
    context = node_context({"trust-anchor": str(anchor_file)})
    reply = app(round_message(message_type=MessageType.EVALUATE), context)
    assert reply.has_error()
    assert reply.error.code == int(protocol.ClientErrorCode.NO_DATA)


def test_the_client_app_loads_the_dataset_its_node_configuration_names(
    round_message: RoundMessage, anchor_file: Path
) -> None:
    context = node_context(
        {
            "dataset": "ztfl_test_hooks.datasets:load_tiny",
            "rows": 6,
            "trust-anchor": str(anchor_file),
        }
    )
    reply = app(round_message(message_type=MessageType.EVALUATE), context)
    assert not reply.has_error()
    assert reply.content.metric_records[protocol.METRICS_KEY][protocol.NUM_EXAMPLES] == 6


def test_load_context_data_gives_a_simulated_node_its_digits_partition() -> None:
    context = node_context(
        {"partition-id": 2, "num-partitions": 10},
        {"partition-alpha": 0.5, "seed": 1},
    )
    data = load_context_data(context)
    expected = load_digits_partition(2, 10, alpha=0.5, seed=1)
    np.testing.assert_array_equal(data.train_labels.numpy(), expected.train_labels.numpy())
    np.testing.assert_array_equal(data.test_features.numpy(), expected.test_features.numpy())


def test_load_context_data_prefers_the_dataset_hook_over_a_simulation_partition() -> None:
    context = node_context(
        {"dataset": "ztfl_test_hooks.datasets:load_tiny", "partition-id": 0, "num-partitions": 10}
    )
    assert load_context_data(context).num_train == 4


def test_load_context_data_without_hook_or_partition_is_a_dataset_error() -> None:
    with pytest.raises(DatasetConfigError, match="no dataset"):
        load_context_data(node_context({"partition-id": 0}))


def test_a_node_without_a_trust_anchor_refuses_every_round(
    round_message: RoundMessage,
) -> None:
    reply = app(round_message(), node_context({"dataset": "ztfl_test_hooks.datasets:load_tiny"}))
    assert reply.has_error()
    assert reply.error.code == int(protocol.ClientErrorCode.NO_TRUST_ANCHOR)
    assert "trust-anchor" in str(reply.error.reason)


def test_an_unsigned_global_model_is_refused_as_a_malformed_manifest(
    round_message: RoundMessage, pinned_app: ClientApp
) -> None:
    reply = pinned_app(round_message(signed=False), node_context({}))
    assert reply.has_error()
    assert reply.error.code == int(protocol.ClientErrorCode.MODEL_MALFORMED_MANIFEST)


def test_an_accepted_model_is_remembered_in_the_node_state_and_reported(
    round_message: RoundMessage,
    pinned_app: ClientApp,
    trust_anchor: TrustAnchor,
) -> None:
    context = node_context({})
    message = round_message()
    reply = pinned_app(message, context)
    record = message.content.config_records[protocol.MANIFEST_KEY]
    digest = SignedManifest.from_bytes(record[protocol.SIGNED_MANIFEST]).digest  # type: ignore[arg-type]
    assert reply.content.config_records[protocol.LINEAGE_KEY][protocol.ACCEPTED_DIGEST] == digest
    stored = context.state.config_records[LINEAGE_STATE_KEY][trust_anchor.run_id]
    lineage = LineageState.from_json(stored)  # type: ignore[arg-type]
    assert lineage.last is not None
    assert lineage.last.digest == digest


# ------------------------------------------------------------------ key rotation


NEW_KEY = generate_signing_key()
"""The coordinator's successor key; the test nodes still pin ``coordinator_key``."""


def _signed_by_new_key(message: Message) -> Message:
    """``message`` with its model signed by ``NEW_KEY`` instead of the pinned key."""
    record = message.content.config_records[protocol.MANIFEST_KEY]
    manifest = SignedManifest.from_bytes(record[protocol.SIGNED_MANIFEST]).manifest  # type: ignore[arg-type]
    record[protocol.SIGNED_MANIFEST] = sign_manifest(manifest, NEW_KEY).to_bytes()
    return message


def _with_rotations(message: Message, rotations: list[bytes]) -> Message:
    message.content.config_records[protocol.MANIFEST_KEY][protocol.ROTATIONS] = rotations
    return message


def test_a_node_pinning_the_old_key_accepts_a_model_of_the_new_key_through_the_rotation(
    round_message: RoundMessage, pinned_app: ClientApp, coordinator_key: SigningKey
) -> None:
    rotation = rotate_key(coordinator_key, NEW_KEY.public_key())
    message = _with_rotations(_signed_by_new_key(round_message()), [rotation.to_bytes()])
    reply = pinned_app(message, node_context({}))
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""


def test_a_model_of_the_new_key_without_the_rotation_is_refused_as_an_unknown_key(
    round_message: RoundMessage, pinned_app: ClientApp
) -> None:
    reply = pinned_app(_signed_by_new_key(round_message()), node_context({}))
    assert reply.error.code == int(protocol.ClientErrorCode.MODEL_UNKNOWN_KEY)


def test_a_rotation_not_signed_by_a_pinned_key_is_refused_as_a_bad_rotation(
    round_message: RoundMessage, pinned_app: ClientApp
) -> None:
    forged = rotate_key(generate_signing_key(), NEW_KEY.public_key())
    message = _with_rotations(_signed_by_new_key(round_message()), [forged.to_bytes()])
    reply = pinned_app(message, node_context({}))
    assert reply.error.code == int(protocol.ClientErrorCode.MODEL_BAD_ROTATION)


@pytest.mark.parametrize("rotations", [[b"not a statement"], "text", [1]])
def test_malformed_rotations_are_refused_as_a_bad_rotation(
    round_message: RoundMessage, pinned_app: ClientApp, rotations: object
) -> None:
    message = round_message()
    message.content.config_records[protocol.MANIFEST_KEY][protocol.ROTATIONS] = rotations  # type: ignore[assignment]
    reply = pinned_app(message, node_context({}))
    assert reply.error.code == int(protocol.ClientErrorCode.MODEL_BAD_ROTATION)
