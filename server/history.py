"""What happened in each round, as plain records for progress displays, reports and audits."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ztfl.aggregation import RefusalReason


@dataclass(frozen=True)
class RefusedUpdate:
    """One update the coordinator did not aggregate, and why."""

    node_id: int
    reason: RefusalReason
    detail: str


@dataclass(frozen=True)
class RoundRecord:
    """One round: who was asked, who answered, what was refused, what the model scored."""

    server_round: int
    sampled_nodes: tuple[int, ...]
    num_replies: int
    accepted_nodes: tuple[int, ...]
    refused: tuple[RefusedUpdate, ...]
    pipeline: str
    committed: bool
    skip_reason: str | None = None
    selected_nodes: tuple[int, ...] | None = None
    weights: tuple[float, ...] | None = None
    aggregate_norm: float | None = None
    aggregation_s: float = 0.0
    round_s: float = 0.0
    central_metrics: dict[str, float] = field(default_factory=dict)
    federated_metrics: dict[str, float] = field(default_factory=dict)
    train_metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dictionary (reasons as their string identifiers)."""
        data = asdict(self)
        data["refused"] = [
            {"node_id": item.node_id, "reason": item.reason.value, "detail": item.detail}
            for item in self.refused
        ]
        return data


@dataclass
class RunHistory:
    """All rounds of one run, plus the evaluation of the initial model."""

    initial_metrics: dict[str, float] = field(default_factory=dict)
    rounds: list[RoundRecord] = field(default_factory=list)

    def accuracy_series(self) -> list[float]:
        """Central accuracy after each round (initial model first), where measured."""
        series = [self.initial_metrics.get("accuracy", float("nan"))]
        series.extend(
            record.central_metrics.get("accuracy", float("nan")) for record in self.rounds
        )
        return series

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "initial_metrics": self.initial_metrics,
            "rounds": [record.to_json() for record in self.rounds],
        }


class RoundObserver(Protocol):
    """Receives progress from the coordinator: a progress bar, a metrics exporter, an audit log."""

    def on_run_start(self, num_rounds: int, initial_metrics: dict[str, float]) -> None:
        """Called once, after the initial evaluation."""

    def on_round_end(self, record: RoundRecord) -> None:
        """Called after every round, committed or skipped."""
