"""What happened in each round, as plain records for progress displays, reports and audits."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from ztfl.aggregation import RefusalReason
from ztfl.trust.refusal import ModelRefusalReason


class SkipReason(StrEnum):
    """Why a round ended without a new model (the audit log's ROUND_SKIPPED reason)."""

    TOO_FEW_UPDATES = "too_few_updates"
    """Fewer valid updates than the pipeline needs for its Byzantine bound."""
    NON_FINITE_MODEL = "non_finite_model"
    """The aggregate would have made the global model non-finite."""


@dataclass(frozen=True)
class RefusedUpdate:
    """One update the coordinator did not aggregate, and why."""

    node_id: int
    reason: RefusalReason
    detail: str


@dataclass(frozen=True)
class VerificationFailure:
    """A client that refused the broadcast model, and why (from its error reply's code)."""

    node_id: int
    reason: ModelRefusalReason
    detail: str
    phase: str
    """``train`` or ``evaluate``: which broadcast the client refused."""


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
    verification_failures: tuple[VerificationFailure, ...] = ()
    model_digest: str | None = None
    privacy: dict[str, Any] | None = None
    """With DP: z, C, q, δ and ε spent after this round (what the signed manifest states)."""
    anomaly_scores: dict[str, float] | None = None
    """Plaintext rounds that aggregated: each accepted node's anomaly score (node id as text).
    None in DP mode (never computed: docs/monitoring.md), in secure mode (no update is seen)
    and in skipped rounds."""
    group_scores: dict[str, float] | None = None
    """Secure rounds that aggregated (not DP): each accepted group mean's anomaly score, by
    group id (``"<round>-<index>"``, as the audit log names groups)."""
    groups: dict[str, tuple[int, ...]] | None = None
    """Secure rounds with group scores: the members whose updates each scored group's mean
    holds (accepted groups, and groups whose mean was refused), by group id."""
    flagged_groups: tuple[str, ...] = ()
    """Groups flagged this round: score at or above the flag score, or mean refused."""
    suspected: tuple[int, ...] = ()
    """Secure mode: nodes attribution suspects after this round (docs/monitoring.md)."""
    reputation: dict[str, float] | None = None
    """Every observed node's reputation after this round (node id as text)."""
    quarantined: tuple[int, ...] = ()
    """Nodes quarantined in this round."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dictionary (reasons as their string identifiers)."""
        data = asdict(self)
        data["refused"] = [
            {"node_id": item.node_id, "reason": item.reason.value, "detail": item.detail}
            for item in self.refused
        ]
        data["verification_failures"] = [
            {
                "node_id": item.node_id,
                "reason": item.reason.value,
                "detail": item.detail,
                "phase": item.phase,
            }
            for item in self.verification_failures
        ]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundRecord:
        """Rebuild a record from :meth:`to_json` output (a resumed run's history)."""
        values = dict(data)
        values["refused"] = tuple(
            RefusedUpdate(int(item["node_id"]), RefusalReason(item["reason"]), item["detail"])
            for item in data["refused"]
        )
        values["verification_failures"] = tuple(
            VerificationFailure(
                int(item["node_id"]),
                ModelRefusalReason(item["reason"]),
                item["detail"],
                item["phase"],
            )
            for item in data.get("verification_failures", [])
        )
        for name in (
            "sampled_nodes",
            "accepted_nodes",
            "selected_nodes",
            "weights",
            "quarantined",
            "flagged_groups",
            "suspected",
        ):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        if values.get("groups") is not None:
            values["groups"] = {
                group: tuple(int(node) for node in members)
                for group, members in values["groups"].items()
            }
        return cls(**values)


@dataclass
class RunHistory:
    """All rounds of one run, plus the evaluation of the initial model."""

    initial_metrics: dict[str, float] = field(default_factory=dict)
    rounds: list[RoundRecord] = field(default_factory=list)
    stop_reason: str | None = None
    """Why training stopped before its last round (e.g. the privacy budget), or None."""

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
            "stop_reason": self.stop_reason,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunHistory:
        """Rebuild a history from :meth:`to_json` output."""
        return cls(
            initial_metrics=dict(data.get("initial_metrics", {})),
            rounds=[RoundRecord.from_json(item) for item in data.get("rounds", [])],
            stop_reason=data.get("stop_reason"),
        )


class RoundObserver(Protocol):
    """Receives progress from the coordinator: a progress bar, a metrics exporter, an audit log."""

    def on_run_start(self, num_rounds: int, initial_metrics: dict[str, float]) -> None:
        """Called once, after the initial evaluation."""

    def on_round_end(self, record: RoundRecord) -> None:
        """Called after every round, committed or skipped."""
