"""The coordinator's round loop on Flower's Message API (plaintext mode).

Per round: select nodes, broadcast the global model with the round
configuration, collect and validate the updates, aggregate them with the
configured robust pipeline, apply the aggregate, evaluate. Modelled on
Flower's ``Strategy.start`` loop, but every step that a zero-trust
coordinator must control is ours: sampling, validation with refusal reasons,
uniform (not client-claimed) weights, and a skipped round instead of a
degraded aggregate when too few updates survive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from ztfl.aggregation import ModelSpec, Pipeline, ToleranceError
from ztfl.client import protocol

from .arrays import vector_to_record, vector_to_weights, weights_to_vector
from .config import CoordinatorConfig
from .history import RoundObserver, RoundRecord, RunHistory
from .sampling import NodeSampler
from .unpacking import collect_updates

logger = logging.getLogger(__name__)

CentralEvaluation = Callable[[dict[str, np.ndarray]], dict[str, float]]
"""Scores the global model (named arrays) on data the coordinator holds, e.g. a held-out set."""


class NotEnoughNodesError(RuntimeError):
    """Fewer nodes connected than the configuration requires, within the wait timeout."""


class Coordinator:
    """Runs federated rounds over a Flower ``Grid`` with robust aggregation."""

    def __init__(
        self,
        config: CoordinatorConfig,
        initial_weights: dict[str, np.ndarray],
        *,
        central_evaluation: CentralEvaluation | None = None,
        observers: Sequence[RoundObserver] = (),
    ) -> None:
        self.config = config
        self.pipeline: Pipeline = config.build_pipeline()
        self.spec = ModelSpec.from_arrays(initial_weights)
        self.global_vector = weights_to_vector(initial_weights, self.spec)
        self._central_evaluation = central_evaluation
        self._observers = list(observers)
        self._sampler = NodeSampler(config.seed)
        # Bucketing's shuffle draws from here: seeded from the sampler, which is
        # itself seeded from the OS's secure source unless a seed is configured.
        self._aggregation_generator = torch.Generator().manual_seed(self._sampler.draw_seed())
        self.history = RunHistory()

    @property
    def global_weights(self) -> dict[str, np.ndarray]:
        """The current global model as named arrays."""
        return vector_to_weights(self.global_vector, self.spec)

    def run(self, grid: Grid) -> RunHistory:
        """Wait for enough nodes, then run every configured round."""
        self._wait_for_nodes(grid)
        self.history.initial_metrics = self._evaluate_centrally()
        for observer in self._observers:
            observer.on_run_start(self.config.num_rounds, self.history.initial_metrics)
        for server_round in range(1, self.config.num_rounds + 1):
            record = self.run_round(grid, server_round)
            self.history.rounds.append(record)
            for observer in self._observers:
                observer.on_round_end(record)
        return self.history

    def run_round(self, grid: Grid, server_round: int) -> RoundRecord:
        """One round: select, broadcast, collect, validate, aggregate, apply, evaluate."""
        started = time.perf_counter()
        sampled = self._sampler.sample(list(grid.get_node_ids()), self.config.clients_per_round)
        replies = grid.send_and_receive(
            self._train_messages(sampled, server_round), timeout=self.config.round_timeout_s
        )
        collected = collect_updates(
            replies,
            expected_nodes=sampled,
            spec=self.spec,
            max_update_norm=self.config.max_update_norm,
            weighting=self.config.weighting,
            max_examples=self.config.max_examples,
        )
        for refusal in collected.refused:
            logger.warning(
                "round %d: refused update from node %d: %s (%s)",
                server_round,
                refusal.node_id,
                refusal.reason.value,
                refusal.detail,
            )
        skipped = RoundRecord(
            server_round=server_round,
            sampled_nodes=sampled,
            num_replies=len(collected.node_ids) + len(collected.refused),
            accepted_nodes=collected.node_ids,
            refused=collected.refused,
            pipeline=self.pipeline.description,
            committed=False,
            train_metrics=collected.train_metrics,
        )
        aggregation_started = time.perf_counter()
        try:
            result = self.pipeline(
                collected.matrix,
                collected.weights,
                generator=self._aggregation_generator,
                validated=True,
            )
        except ToleranceError as error:
            logger.warning("round %d skipped: %s", server_round, error)
            return replace(
                skipped,
                skip_reason=f"too few valid updates ({len(collected.node_ids)}): {error}",
                round_s=time.perf_counter() - started,
                central_metrics=self._evaluate_centrally(),
            )
        aggregation_s = time.perf_counter() - aggregation_started
        candidate = self.global_vector + result.aggregate.to(self.global_vector.dtype)
        if not bool(torch.isfinite(candidate).all()):
            # Finite updates can still sum past the float range; never commit that.
            logger.warning("round %d skipped: the new global model is not finite", server_round)
            return replace(
                skipped,
                skip_reason="aggregate would make the global model non-finite",
                round_s=time.perf_counter() - started,
                central_metrics=self._evaluate_centrally(),
            )
        self.global_vector = candidate
        selected = (
            tuple(collected.node_ids[row] for row in result.selected_rows)
            if result.selected_rows is not None and self.pipeline.preserves_rows
            else None
        )
        federated = (
            self._evaluate_federated(grid, sampled, server_round)
            if self.config.federated_evaluation
            else {}
        )
        return replace(
            skipped,
            committed=True,
            selected_nodes=selected,
            weights=None if collected.weights is None else tuple(collected.weights.tolist()),
            aggregate_norm=float(torch.linalg.vector_norm(result.aggregate)),
            aggregation_s=aggregation_s,
            round_s=time.perf_counter() - started,
            central_metrics=self._evaluate_centrally(),
            federated_metrics=federated,
        )

    def _train_messages(self, nodes: Iterable[int], server_round: int) -> list[Message]:
        model = vector_to_record(self.global_vector, self.spec)
        messages = []
        for node_id in nodes:
            config = ConfigRecord(
                {
                    protocol.ROUND: server_round,
                    protocol.MODEL: self.config.model,
                    protocol.LOCAL_EPOCHS: self.config.local_epochs,
                    protocol.LEARNING_RATE: self.config.learning_rate,
                    protocol.BATCH_SIZE: self.config.batch_size,
                    protocol.SEED: self._sampler.draw_seed(),
                }
            )
            content = RecordDict({protocol.GLOBAL_MODEL_KEY: model, protocol.CONFIG_KEY: config})
            messages.append(
                Message(
                    content,
                    dst_node_id=node_id,
                    message_type=MessageType.TRAIN,
                    group_id=str(server_round),
                )
            )
        return messages

    def _evaluate_federated(
        self, grid: Grid, nodes: Sequence[int], server_round: int
    ) -> dict[str, float]:
        """Ask the sampled nodes to score the new model on their own test data.

        Reported figures are not trusted for anything but display; they are
        averaged uniformly over well-formed replies.
        """
        model: ArrayRecord = vector_to_record(self.global_vector, self.spec)
        config = ConfigRecord({protocol.ROUND: server_round, protocol.MODEL: self.config.model})
        messages = [
            Message(
                RecordDict({protocol.GLOBAL_MODEL_KEY: model, protocol.CONFIG_KEY: config}),
                dst_node_id=node_id,
                message_type=MessageType.EVALUATE,
                group_id=str(server_round),
            )
            for node_id in nodes
        ]
        losses, accuracies = [], []
        for reply in grid.send_and_receive(messages, timeout=self.config.round_timeout_s):
            if reply.has_error() or protocol.METRICS_KEY not in reply.content.metric_records:
                continue
            metrics = reply.content.metric_records[protocol.METRICS_KEY]
            loss, accuracy = metrics.get(protocol.EVAL_LOSS), metrics.get(protocol.EVAL_ACCURACY)
            if isinstance(loss, float) and isinstance(accuracy, float) and 0 <= accuracy <= 1:
                losses.append(loss)
                accuracies.append(accuracy)
        if not accuracies:
            return {}
        return {"loss": float(np.mean(losses)), "accuracy": float(np.mean(accuracies))}

    def _evaluate_centrally(self) -> dict[str, float]:
        if self._central_evaluation is None:
            return {}
        return self._central_evaluation(self.global_weights)

    def _wait_for_nodes(self, grid: Grid) -> None:
        needed = max(self.config.min_nodes, self.config.clients_per_round)
        deadline = time.monotonic() + self.config.node_wait_timeout_s
        while len(list(grid.get_node_ids())) < needed:
            if time.monotonic() > deadline:
                connected = len(list(grid.get_node_ids()))
                raise NotEnoughNodesError(
                    f"{connected} node(s) connected after {self.config.node_wait_timeout_s:.0f} s, "
                    f"need {needed}"
                )
            time.sleep(0.1)
