"""Turning a round's Flower replies into one validated update matrix, with refusal reasons."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from ztfl.aggregation import ModelSpec, RefusalReason
from ztfl.client import protocol
from ztfl.server.arrays import NUMPY_STYPE
from ztfl.server.config import Weighting
from ztfl.server.unpacking import CollectedUpdates, collect_updates

NORM_CAP = 100.0


def train_request(node_id: int) -> Message:
    """The coordinator's training instruction to ``node_id``, as it sends it."""
    config = ConfigRecord({protocol.ROUND: 1, protocol.MODEL: "mlp"})
    return Message(
        RecordDict({protocol.CONFIG_KEY: config}),
        dst_node_id=node_id,
        message_type=MessageType.TRAIN,
        group_id="1",
    )


def update_record(row: np.ndarray) -> ArrayRecord:
    """A 9-value update row as the client sends it: a (3, 2) weight and a (3,) bias."""
    return ArrayRecord({"fc.weight": Array(row[:6].reshape(3, 2)), "fc.bias": Array(row[6:])})


def row_of(value: float) -> np.ndarray:
    return np.full(9, value, dtype=np.float32)


def update_content(
    update: ArrayRecord,
    *,
    num_examples: int | float | None = 10,
    loss: float = 0.5,
    accuracy: float = 0.75,
) -> RecordDict:
    metrics: dict[str, int | float | list[int] | list[float]] = {
        protocol.TRAIN_LOSS: loss,
        protocol.TRAIN_ACCURACY: accuracy,
    }
    if num_examples is not None:
        metrics[protocol.NUM_EXAMPLES] = num_examples
    return RecordDict({protocol.UPDATE_KEY: update, protocol.METRICS_KEY: MetricRecord(metrics)})


def reply(node_id: int, content: RecordDict | Error) -> Message:
    """A client's reply to its training instruction (Flower sets src_node_id = node_id)."""
    return Message(content, reply_to=train_request(node_id))


def honest_reply(
    node_id: int,
    value: float = 0.1,
    *,
    num_examples: int = 10,
    loss: float = 0.5,
    accuracy: float = 0.75,
) -> Message:
    """A well-formed reply whose update is ``value`` in every coordinate."""
    content = update_content(
        update_record(row_of(value)), num_examples=num_examples, loss=loss, accuracy=accuracy
    )
    return reply(node_id, content)


def collect(
    replies: list[Message],
    spec: ModelSpec,
    *,
    expected: tuple[int, ...] = (1, 2, 3),
    weighting: Weighting = Weighting.UNIFORM,
    max_examples: int = 1000,
) -> CollectedUpdates:
    return collect_updates(
        replies,
        expected_nodes=expected,
        spec=spec,
        max_update_norm=NORM_CAP,
        weighting=weighting,
        max_examples=max_examples,
    )


def only_refusal(collected: CollectedUpdates) -> tuple[int, RefusalReason, str]:
    (refused,) = collected.refused
    return refused.node_id, refused.reason, refused.detail


# ------------------------------------------------------------------ accepted updates


def test_a_reply_to_a_request_comes_from_the_node_the_request_went_to() -> None:
    assert reply(7, RecordDict()).metadata.src_node_id == 7


def test_accepted_updates_are_stacked_in_reply_order_with_their_node_ids(spec: ModelSpec) -> None:
    collected = collect([honest_reply(3, 0.3), honest_reply(1, 0.1), honest_reply(2, 0.2)], spec)
    assert collected.node_ids == (3, 1, 2)
    np.testing.assert_array_equal(
        collected.matrix.numpy(), np.stack([row_of(0.3), row_of(0.1), row_of(0.2)])
    )
    assert collected.refused == ()


def test_the_update_matrix_has_the_model_dtype_and_one_row_per_accepted_update(
    spec: ModelSpec,
) -> None:
    collected = collect([honest_reply(1), honest_reply(2)], spec)
    assert tuple(collected.matrix.shape) == (2, spec.num_parameters)
    assert collected.matrix.numpy().dtype == spec.dtype


def test_no_replies_give_an_empty_matrix_and_no_metrics(spec: ModelSpec) -> None:
    collected = collect([], spec)
    assert tuple(collected.matrix.shape) == (0, spec.num_parameters)
    assert collected.node_ids == ()
    assert collected.train_metrics == {}


# ------------------------------------------------------------------ refusal reasons


def test_an_error_reply_is_refused_with_the_clients_error_code(spec: ModelSpec) -> None:
    error = Error(code=int(protocol.ClientErrorCode.NO_DATA), reason="no training examples")
    node, reason, detail = only_refusal(collect([reply(2, error)], spec))
    assert (node, reason) == (2, RefusalReason.REPLY_ERROR)
    assert "4005" in detail
    assert "no training examples" in detail


def test_a_reply_without_an_update_record_is_refused_as_missing_update(spec: ModelSpec) -> None:
    content = RecordDict({protocol.METRICS_KEY: MetricRecord({protocol.NUM_EXAMPLES: 10})})
    _, reason, _ = only_refusal(collect([reply(1, content)], spec))
    assert reason is RefusalReason.MISSING_UPDATE


def test_a_reply_with_a_second_array_record_is_refused_as_missing_update(spec: ModelSpec) -> None:
    content = update_content(update_record(row_of(0.1)))
    content["extra"] = update_record(row_of(0.2))
    _, reason, _ = only_refusal(collect([reply(1, content)], spec))
    assert reason is RefusalReason.MISSING_UPDATE


def test_a_reply_whose_update_is_under_another_key_is_refused_as_missing_update(
    spec: ModelSpec,
) -> None:
    content = RecordDict(
        {"arrays": update_record(row_of(0.1)), protocol.METRICS_KEY: MetricRecord({"x": 1})}
    )
    _, reason, _ = only_refusal(collect([reply(1, content)], spec))
    assert reason is RefusalReason.MISSING_UPDATE


def test_a_reply_without_a_metrics_record_is_refused_as_invalid_metrics(spec: ModelSpec) -> None:
    content = RecordDict({protocol.UPDATE_KEY: update_record(row_of(0.1))})
    _, reason, _ = only_refusal(collect([reply(1, content)], spec))
    assert reason is RefusalReason.INVALID_METRICS


@pytest.mark.parametrize("num_examples", [None, -1, 10.0], ids=["missing", "negative", "float"])
def test_a_malformed_example_count_is_refused_as_invalid_metrics(
    spec: ModelSpec, num_examples: int | float | None
) -> None:
    content = update_content(update_record(row_of(0.1)), num_examples=num_examples)
    _, reason, detail = only_refusal(collect([reply(1, content)], spec))
    assert reason is RefusalReason.INVALID_METRICS
    assert repr(num_examples) in detail


def test_a_bool_example_count_cannot_be_sent_because_flower_refuses_it() -> None:
    # collect_updates also refuses a bool count (bool is an int subclass), but
    # Flower's MetricRecord and wire format cannot carry one in the first place.
    with pytest.raises(TypeError):
        MetricRecord({protocol.NUM_EXAMPLES: True})


def test_an_update_with_other_tensor_names_is_refused_as_layout_mismatch(spec: ModelSpec) -> None:
    update = ArrayRecord(
        {
            "fc.weight": Array(np.zeros((3, 2), np.float32)),
            "fc.extra": Array(np.zeros(3, np.float32)),
        }
    )
    _, reason, detail = only_refusal(collect([reply(1, update_content(update))], spec))
    assert reason is RefusalReason.LAYOUT_MISMATCH
    assert "fc.bias" in detail


def test_an_update_with_tensors_in_another_order_is_refused_as_layout_mismatch(
    spec: ModelSpec,
) -> None:
    update = ArrayRecord(
        {
            "fc.bias": Array(np.zeros(3, np.float32)),
            "fc.weight": Array(np.zeros((3, 2), np.float32)),
        }
    )
    _, reason, _ = only_refusal(collect([reply(1, update_content(update))], spec))
    assert reason is RefusalReason.LAYOUT_MISMATCH


def test_an_update_with_a_wrong_tensor_shape_is_refused_as_shape_mismatch(spec: ModelSpec) -> None:
    update = ArrayRecord(
        {
            "fc.weight": Array(np.zeros((2, 3), np.float32)),
            "fc.bias": Array(np.zeros(3, np.float32)),
        }
    )
    _, reason, detail = only_refusal(collect([reply(1, update_content(update))], spec))
    assert reason is RefusalReason.SHAPE_MISMATCH
    assert "fc.weight" in detail


def test_an_update_with_a_wrong_dtype_is_refused_as_dtype_mismatch(spec: ModelSpec) -> None:
    update = ArrayRecord(
        {
            "fc.weight": Array(np.zeros((3, 2), np.float64)),
            "fc.bias": Array(np.zeros(3, np.float64)),
        }
    )
    _, reason, _ = only_refusal(collect([reply(1, update_content(update))], spec))
    assert reason is RefusalReason.DTYPE_MISMATCH


def test_an_update_whose_bytes_do_not_decode_is_refused_as_undecodable(spec: ModelSpec) -> None:
    good = update_record(row_of(0.1))
    truncated = Array(
        dtype="float32", shape=(3,), stype=NUMPY_STYPE, data=good["fc.bias"].data[:-4]
    )
    update = ArrayRecord({"fc.weight": good["fc.weight"], "fc.bias": truncated})
    _, reason, detail = only_refusal(collect([reply(1, update_content(update))], spec))
    assert reason is RefusalReason.UNDECODABLE
    assert "fc.bias" in detail


def test_an_update_with_a_crafted_npy_header_is_refused_not_raised(spec: ModelSpec) -> None:
    # Regression: an unterminated header literal made numpy raise
    # tokenize.TokenError, which ended the whole round.
    header = b"{'descr': '<f4'"
    data = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
    crafted = Array(dtype="float32", shape=(3,), stype=NUMPY_STYPE, data=data)
    update = ArrayRecord({"fc.weight": Array(np.zeros((3, 2), np.float32)), "fc.bias": crafted})
    collected = collect([reply(1, update_content(update)), honest_reply(2)], spec)
    assert collected.node_ids == (2,)
    assert collected.refused[0].reason is RefusalReason.UNDECODABLE


@pytest.mark.parametrize("declared", [",", "(99999999999,)f4"])
def test_an_update_declaring_an_unparseable_dtype_is_refused_not_raised(
    spec: ModelSpec, declared: str
) -> None:
    good = update_record(row_of(0.1))
    lying = Array(dtype=declared, shape=(3,), stype=NUMPY_STYPE, data=good["fc.bias"].data)
    update = ArrayRecord({"fc.weight": good["fc.weight"], "fc.bias": lying})
    _, reason, _ = only_refusal(collect([reply(1, update_content(update))], spec))
    assert reason is RefusalReason.DTYPE_MISMATCH


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_an_update_with_nan_or_inf_is_refused_as_non_finite(spec: ModelSpec, value: float) -> None:
    row = row_of(0.1)
    row[4] = value
    _, reason, _ = only_refusal(collect([reply(1, update_content(update_record(row)))], spec))
    assert reason is RefusalReason.NON_FINITE


def test_an_update_above_the_norm_cap_is_refused_as_norm_above_cap(spec: ModelSpec) -> None:
    # ‖(40, …, 40)‖ over 9 values is 120 > 100.
    _, reason, _ = only_refusal(collect([honest_reply(1, 40.0)], spec))
    assert reason is RefusalReason.NORM_ABOVE_CAP


def test_an_update_just_below_the_norm_cap_is_accepted(spec: ModelSpec) -> None:
    # ‖(33, …, 33)‖ over 9 values is 99 < 100.
    assert collect([honest_reply(1, 33.0)], spec).node_ids == (1,)


def test_a_reply_from_a_node_that_was_not_sampled_is_refused_as_unexpected_sender(
    spec: ModelSpec,
) -> None:
    collected = collect([honest_reply(99), honest_reply(1)], spec)
    assert collected.node_ids == (1,)
    assert only_refusal(collected)[:2] == (99, RefusalReason.UNEXPECTED_SENDER)


def test_a_second_reply_from_one_node_is_refused_as_duplicate_sender(spec: ModelSpec) -> None:
    collected = collect([honest_reply(1, 0.1), honest_reply(1, 0.2)], spec)
    assert collected.node_ids == (1,)
    np.testing.assert_array_equal(collected.matrix.numpy(), row_of(0.1)[None, :])
    assert only_refusal(collected)[:2] == (1, RefusalReason.DUPLICATE_SENDER)


def test_a_second_reply_after_a_refused_first_one_is_still_a_duplicate(spec: ModelSpec) -> None:
    collected = collect([honest_reply(1, 40.0), honest_reply(1, 0.1)], spec)
    assert collected.node_ids == ()
    assert [item.reason for item in collected.refused] == [
        RefusalReason.NORM_ABOVE_CAP,
        RefusalReason.DUPLICATE_SENDER,
    ]


# ------------------------------------------------------------------ refused rows


def test_a_partly_decoded_refused_update_leaves_no_trace_in_the_accepted_rows(
    spec: ModelSpec,
) -> None:
    # Node 2's weight decodes into the next free row before its bias is found
    # truncated; node 3's update must overwrite that row.
    partial = update_record(row_of(9.0))
    truncated = Array(
        dtype="float32", shape=(3,), stype=NUMPY_STYPE, data=partial["fc.bias"].data[:-4]
    )
    broken = ArrayRecord({"fc.weight": partial["fc.weight"], "fc.bias": truncated})
    replies = [honest_reply(1, 0.1), reply(2, update_content(broken)), honest_reply(3, 0.3)]
    collected = collect(replies, spec)
    assert collected.node_ids == (1, 3)
    np.testing.assert_array_equal(collected.matrix.numpy(), np.stack([row_of(0.1), row_of(0.3)]))


def test_a_fully_decoded_non_finite_update_leaves_no_trace_in_the_accepted_rows(
    spec: ModelSpec,
) -> None:
    replies = [honest_reply(1, 0.1), honest_reply(2, np.nan), honest_reply(3, 0.3)]
    collected = collect(replies, spec)
    assert collected.node_ids == (1, 3)
    assert bool(np.isfinite(collected.matrix.numpy()).all())


# ------------------------------------------------------------------ weights and metrics


def test_uniform_weighting_gives_no_weights(spec: ModelSpec) -> None:
    collected = collect([honest_reply(1, num_examples=5), honest_reply(2, num_examples=500)], spec)
    assert collected.weights is None


def test_capped_examples_weighting_caps_each_count_and_records_the_reported_ones(
    spec: ModelSpec,
) -> None:
    replies = [
        honest_reply(1, num_examples=5),
        honest_reply(2, num_examples=1_000_000),
        honest_reply(3, num_examples=300),
    ]
    collected = collect(replies, spec, weighting=Weighting.CAPPED_EXAMPLES, max_examples=1000)
    assert collected.weights is not None
    assert collected.weights.tolist() == [5.0, 1000.0, 300.0]
    assert collected.reported_examples == (5, 1_000_000, 300)


def test_capped_examples_weighting_falls_back_to_uniform_when_every_count_is_zero(
    spec: ModelSpec,
) -> None:
    replies = [honest_reply(1, num_examples=0), honest_reply(2, num_examples=0)]
    collected = collect(replies, spec, weighting=Weighting.CAPPED_EXAMPLES)
    assert collected.weights is None


def test_train_metrics_are_the_plain_average_over_accepted_updates(spec: ModelSpec) -> None:
    replies = [
        honest_reply(1, loss=1.0, accuracy=0.5),
        honest_reply(2, loss=3.0, accuracy=0.7),
        honest_reply(3, 40.0, loss=100.0, accuracy=0.0),  # refused: above the norm cap
    ]
    metrics = collect(replies, spec).train_metrics
    assert metrics == pytest.approx({"train_loss": 2.0, "train_accuracy": 0.6})
