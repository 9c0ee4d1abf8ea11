"""The ClientApp's train and evaluate handlers: real messages in, an update or a refusal out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Message, MessageType

from ztfl.client import protocol
from ztfl.client.app import ClientRefusal, handle_evaluate, handle_train, refusal_reply
from ztfl.client.data import ClientData
from ztfl.client.models import build_model
from ztfl.client.trainer import TrainingConfig, evaluate, load_weights, train_update

RoundMessage = Callable[..., Message]
ErrorCode = protocol.ClientErrorCode


def refusal_code(message: Message, data: ClientData) -> ErrorCode:
    """The code ``handle_train`` refuses ``message`` with (the test fails if it does not)."""
    with pytest.raises(ClientRefusal) as caught:
        handle_train(message, data)
    return caught.value.code


def empty_data(data: ClientData) -> ClientData:
    return ClientData(
        data.train_features[:0], data.train_labels[:0], data.test_features, data.test_labels
    )


# ------------------------------------------------------------------ training


def test_handle_train_replies_with_an_update_named_and_shaped_like_the_model(
    round_message: RoundMessage, client_data: ClientData
) -> None:
    reply = handle_train(round_message(), client_data)
    assert not reply.has_error()
    update = reply.content.array_records[protocol.UPDATE_KEY]
    state = build_model("mlp").state_dict()
    assert list(update) == list(state)
    for name, tensor in state.items():
        assert update[name].shape == tuple(tensor.shape)
        assert update[name].dtype == "float32"


def test_handle_train_replies_with_the_update_local_training_computes(
    round_message: RoundMessage,
    client_data: ClientData,
    global_weights: dict[str, np.ndarray],
    round_config: dict[str, Any],
) -> None:
    reply = handle_train(round_message(), client_data)
    model = build_model("mlp")
    load_weights(model, global_weights)
    expected = train_update(
        model,
        client_data,
        TrainingConfig(
            local_epochs=round_config[protocol.LOCAL_EPOCHS],
            learning_rate=round_config[protocol.LEARNING_RATE],
            batch_size=round_config[protocol.BATCH_SIZE],
            seed=round_config[protocol.SEED],
        ),
        torch.device("cpu"),
    )
    update = reply.content.array_records[protocol.UPDATE_KEY]
    for name, values in expected.update.items():
        np.testing.assert_allclose(update[name].numpy(), values, rtol=0, atol=1e-6)


def test_handle_train_reports_the_example_count_loss_and_accuracy(
    round_message: RoundMessage, client_data: ClientData
) -> None:
    metrics = handle_train(round_message(), client_data).content.metric_records[
        protocol.METRICS_KEY
    ]
    loss, accuracy = metrics[protocol.TRAIN_LOSS], metrics[protocol.TRAIN_ACCURACY]
    assert metrics[protocol.NUM_EXAMPLES] == client_data.num_train
    assert isinstance(loss, float)
    assert loss > 0
    assert isinstance(accuracy, float)
    assert 0.0 <= accuracy <= 1.0


def test_handle_train_addresses_its_reply_to_the_sender_of_the_request(
    round_message: RoundMessage, client_data: ClientData
) -> None:
    request = round_message()
    reply = handle_train(request, client_data)
    assert reply.metadata.src_node_id == request.metadata.dst_node_id
    assert reply.metadata.dst_node_id == request.metadata.src_node_id
    assert reply.metadata.message_type == MessageType.TRAIN


# ------------------------------------------------------------------ refusals


def test_handle_train_refuses_a_message_without_a_global_model(
    round_message: RoundMessage, client_data: ClientData
) -> None:
    assert refusal_code(round_message(with_model=False), client_data) is ErrorCode.INVALID_MESSAGE


def test_handle_train_refuses_a_message_without_a_round_configuration(
    round_message: RoundMessage, client_data: ClientData
) -> None:
    assert refusal_code(round_message(config=None), client_data) is ErrorCode.INVALID_MESSAGE


def test_handle_train_refuses_a_configuration_that_names_no_model(
    round_message: RoundMessage, client_data: ClientData, round_config: dict[str, Any]
) -> None:
    del round_config[protocol.MODEL]
    assert refusal_code(round_message(config=round_config), client_data) is ErrorCode.INVALID_CONFIG


def test_handle_train_refuses_an_unregistered_model(
    round_message: RoundMessage, client_data: ClientData, round_config: dict[str, Any]
) -> None:
    round_config[protocol.MODEL] = "resnet9000"
    assert refusal_code(round_message(config=round_config), client_data) is ErrorCode.UNKNOWN_MODEL


def test_handle_train_refuses_weights_of_the_wrong_shape(
    round_message: RoundMessage, client_data: ClientData, global_weights: dict[str, np.ndarray]
) -> None:
    weights = dict(global_weights)
    weights["layers.0.bias"] = np.zeros(65, dtype=np.float32)
    assert refusal_code(round_message(weights=weights), client_data) is ErrorCode.MODEL_MISMATCH


def test_handle_train_refuses_weights_of_another_architecture(
    round_message: RoundMessage, client_data: ClientData
) -> None:
    cnn = {name: t.numpy() for name, t in build_model("cnn", seed=0).state_dict().items()}
    assert refusal_code(round_message(weights=cnn), client_data) is ErrorCode.MODEL_MISMATCH


def test_handle_train_refuses_weights_of_another_dtype(
    round_message: RoundMessage, client_data: ClientData, global_weights: dict[str, np.ndarray]
) -> None:
    weights = {name: values.astype(np.float64) for name, values in global_weights.items()}
    assert refusal_code(round_message(weights=weights), client_data) is ErrorCode.MODEL_MISMATCH


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (protocol.LEARNING_RATE, 0.0),
        (protocol.LEARNING_RATE, 50.0),
        (protocol.LEARNING_RATE, "fast"),
        (protocol.BATCH_SIZE, "x"),
        (protocol.BATCH_SIZE, 0),
        (protocol.BATCH_SIZE, 2.0),
        (protocol.LOCAL_EPOCHS, 0),
        (protocol.LOCAL_EPOCHS, True),
        (protocol.SEED, "seven"),
    ],
)
def test_handle_train_refuses_an_invalid_training_setting(
    round_message: RoundMessage,
    client_data: ClientData,
    round_config: dict[str, Any],
    key: str,
    value: Any,
) -> None:
    round_config[key] = value
    with pytest.raises(ClientRefusal) as caught:
        handle_train(round_message(config=round_config), client_data)
    assert caught.value.code is ErrorCode.INVALID_CONFIG
    assert key in caught.value.reason


def test_handle_train_refuses_a_configuration_without_a_seed(
    round_message: RoundMessage, client_data: ClientData, round_config: dict[str, Any]
) -> None:
    del round_config[protocol.SEED]
    assert refusal_code(round_message(config=round_config), client_data) is ErrorCode.INVALID_CONFIG


def test_handle_train_refuses_to_train_without_training_examples(
    round_message: RoundMessage, client_data: ClientData
) -> None:
    assert refusal_code(round_message(), empty_data(client_data)) is ErrorCode.NO_DATA


def test_refusal_reply_is_an_error_reply_carrying_the_code_and_reason(
    round_message: RoundMessage,
) -> None:
    request = round_message()
    reply = refusal_reply(request, ClientRefusal(ErrorCode.UNKNOWN_MODEL, "no such model"))
    assert reply.has_error()
    assert reply.error.code == int(ErrorCode.UNKNOWN_MODEL)
    assert reply.error.reason == "no such model"
    assert reply.metadata.src_node_id == request.metadata.dst_node_id


# ------------------------------------------------------------------ evaluation


def test_handle_evaluate_reports_the_global_models_test_loss_and_accuracy(
    round_message: RoundMessage, client_data: ClientData, global_weights: dict[str, np.ndarray]
) -> None:
    reply = handle_evaluate(round_message(message_type=MessageType.EVALUATE), client_data)
    metrics = reply.content.metric_records[protocol.METRICS_KEY]
    model = build_model("mlp")
    load_weights(model, global_weights)
    loss, accuracy = evaluate(model, client_data.test_features, client_data.test_labels)
    assert metrics[protocol.NUM_EXAMPLES] == client_data.num_test
    assert metrics[protocol.EVAL_LOSS] == pytest.approx(loss)
    assert metrics[protocol.EVAL_ACCURACY] == pytest.approx(accuracy)


def test_handle_evaluate_does_not_send_the_model_back(
    round_message: RoundMessage, client_data: ClientData
) -> None:
    reply = handle_evaluate(round_message(message_type=MessageType.EVALUATE), client_data)
    assert list(reply.content.array_records) == []


def test_handle_evaluate_refuses_a_message_without_a_global_model(
    round_message: RoundMessage, client_data: ClientData
) -> None:
    message = round_message(with_model=False, message_type=MessageType.EVALUATE)
    with pytest.raises(ClientRefusal) as caught:
        handle_evaluate(message, client_data)
    assert caught.value.code is ErrorCode.INVALID_MESSAGE
