"""Turn a round's replies into one validated (n, d) update matrix, refusing what does not check out.

Every reply is checked in order of cost — sender, error, structure, metrics,
declared layout, decoded bytes, finiteness and norm — and decoded straight into
the next free row of a matrix preallocated for all sampled clients. A refused
update leaves its row to be overwritten, so nothing is copied twice and the
accepted rows are a prefix of the matrix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeGuard

import numpy as np
import torch
from flwr.app import Message

from ztfl.aggregation import ModelSpec, Refusal, RefusalReason, check_row
from ztfl.client import protocol

from .arrays import decode_record_into
from .config import Weighting
from .history import RefusedUpdate


@dataclass(frozen=True)
class CollectedUpdates:
    """The accepted updates of one round, row i belonging to ``node_ids[i]``."""

    matrix: torch.Tensor
    node_ids: tuple[int, ...]
    weights: torch.Tensor | None
    reported_examples: tuple[int, ...]
    refused: tuple[RefusedUpdate, ...]
    train_metrics: dict[str, float]
    unclipped_bits: tuple[int, ...] = ()
    """DP rounds: each accepted client's "update was within the clip norm" bit, row order."""


# Refusals whose detail quotes the update's values (its norm, where it is non-finite): in DP
# mode the detail is withheld, since it is an un-noised statistic of one client's data.
VALUE_DEPENDENT_REFUSALS = frozenset({RefusalReason.NON_FINITE, RefusalReason.NORM_ABOVE_CAP})
WITHHELD_DETAIL = "detail withheld in DP mode (it would describe one client's update)"


def collect_updates(
    replies: Iterable[Message],
    *,
    expected_nodes: Sequence[int],
    spec: ModelSpec,
    max_update_norm: float,
    weighting: Weighting,
    max_examples: int,
    private: bool = False,
) -> CollectedUpdates:
    """Validate and stack the replies of one training round.

    ``private`` (DP rounds): every update must carry its "unclipped" bit (0 or 1), client
    training figures are ignored, and refusal details that describe an update's values are
    withheld.
    """
    expected = set(expected_nodes)
    matrix = np.empty((len(expected_nodes), spec.num_parameters), dtype=spec.dtype)
    accepted: list[int] = []
    examples: list[int] = []
    refused: list[RefusedUpdate] = []
    answered: set[int] = set()
    bits: list[int] = []
    loss_sum, accuracy_sum, metric_count = 0.0, 0.0, 0
    for reply in replies:
        node_id = int(reply.metadata.src_node_id)
        if node_id not in expected:
            refused.append(
                _refusal(node_id, RefusalReason.UNEXPECTED_SENDER, "node was not sampled")
            )
            continue
        if node_id in answered:
            refused.append(_refusal(node_id, RefusalReason.DUPLICATE_SENDER, "second reply"))
            continue
        answered.add(node_id)
        row = matrix[len(accepted)]
        refusal, num_examples = _check_reply(reply, spec, row, max_update_norm)
        bit = None
        if refusal is None and private:
            bit, refusal = _unclipped_bit(reply)
        if refusal is not None:
            detail = refusal.detail
            if private and refusal.reason in VALUE_DEPENDENT_REFUSALS:
                detail = WITHHELD_DETAIL
            refused.append(RefusedUpdate(node_id, refusal.reason, detail))
            continue
        accepted.append(node_id)
        examples.append(num_examples)
        if bit is not None:
            bits.append(bit)
            continue
        metrics = reply.content[protocol.METRICS_KEY]
        loss, accuracy = metrics.get(protocol.TRAIN_LOSS), metrics.get(protocol.TRAIN_ACCURACY)
        # Client-reported figures are for display only; keep the display (and
        # the JSON it is written to) free of NaN and nonsense.
        if _plausible(loss, upper=1e6) and _plausible(accuracy, upper=1.0):
            loss_sum, accuracy_sum, metric_count = (
                loss_sum + loss,
                accuracy_sum + accuracy,
                metric_count + 1,
            )
    stacked = torch.from_numpy(matrix[: len(accepted)])
    weights = None
    if weighting is Weighting.CAPPED_EXAMPLES and accepted:
        weights = torch.tensor(
            [min(count, max_examples) for count in examples], dtype=torch.float64
        )
        if float(weights.sum()) <= 0:
            weights = None
    train_metrics = (
        {"train_loss": loss_sum / metric_count, "train_accuracy": accuracy_sum / metric_count}
        if metric_count
        else {}
    )
    return CollectedUpdates(
        stacked,
        tuple(accepted),
        weights,
        tuple(examples),
        tuple(refused),
        train_metrics,
        tuple(bits),
    )


def _unclipped_bit(reply: Message) -> tuple[int | None, Refusal | None]:
    """The DP reply's "unclipped" bit, or the refusal of a reply without a valid one."""
    bit = reply.content[protocol.METRICS_KEY].get(protocol.UNCLIPPED)
    if isinstance(bit, bool) or bit not in (0, 1) or not isinstance(bit, int):
        return None, Refusal(
            RefusalReason.INVALID_METRICS, f"{protocol.UNCLIPPED} is {bit!r}, expected 0 or 1"
        )
    return bit, None


def _check_reply(
    reply: Message, spec: ModelSpec, row: np.ndarray, max_update_norm: float
) -> tuple[Refusal | None, int]:
    if reply.has_error():
        error = reply.error
        name = _client_error_name(error.code)
        return Refusal(
            RefusalReason.REPLY_ERROR, f"client error {error.code}{name}: {error.reason}"
        ), 0
    content = reply.content
    updates = content.array_records
    if list(updates) != [protocol.UPDATE_KEY]:
        return Refusal(RefusalReason.MISSING_UPDATE, f"array records {sorted(updates)}"), 0
    metrics = content.metric_records.get(protocol.METRICS_KEY)
    num_examples = None if metrics is None else metrics.get(protocol.NUM_EXAMPLES)
    if not isinstance(num_examples, int) or isinstance(num_examples, bool) or num_examples < 0:
        return Refusal(RefusalReason.INVALID_METRICS, f"num-examples is {num_examples!r}"), 0
    refusal = decode_record_into(updates[protocol.UPDATE_KEY], spec, row)
    if refusal is not None:
        return refusal, 0
    refusal, _ = check_row(torch.from_numpy(row), max_update_norm)
    return refusal, num_examples


def _client_error_name(code: int) -> str:
    try:
        return f" ({protocol.ClientErrorCode(code).name})"
    except ValueError:
        return ""


def _plausible(value: object, *, upper: float) -> TypeGuard[float]:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0.0 <= value <= upper
    )


def _refusal(node_id: int, reason: RefusalReason, detail: str) -> RefusedUpdate:
    return RefusedUpdate(node_id, reason, detail)
