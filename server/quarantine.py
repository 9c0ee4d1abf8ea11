"""Quarantine: the coordinator's policy decision point for misbehaving nodes.

Every round turns what each sampled node did into one trust observation
(``ztfl.aggregation.reputation``): its anomaly score, or a protocol signal — it
refused the broadcast model, sent a malformed update, answered with an error, or
did not answer at all. A node's reputation is an exponentially weighted average
of its observations; once it has been observed ``min_rounds`` times and its
reputation falls below ``threshold`` it is quarantined: excluded from sampling,
an incident with its evidence goes to the audit log, and optional hooks revoke
its certificate or unregister its Flower node. Only an operator releases it
(``ztfl nodes release``, itself an audit event the coordinator picks up).

Quarantine never takes the eligible population below what the pipeline needs:
such a decision is deferred and audited instead.

Secure mode scores group means, not updates, so a group's score is never a
member's observation: the policy keeps which clients formed which group and which
groups were flagged (``GroupRound``), and each round a member of a scored group
is observed through attribution across the random regroupings
(``ztfl.aggregation.group_attribution``): trust 0 while it is suspected — in
flagged groups far more often than chance, Bonferroni-corrected — and 1
otherwise. Sharing a flagged group with an attacker once, or a few times, costs
an honest client nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from ztfl.aggregation import RefusalReason
from ztfl.aggregation.group_attribution import GroupRound, attribute_flags, suspects_among
from ztfl.aggregation.reputation import INITIAL_REPUTATION, TrustRamp, updated_reputation

from .history import RefusedUpdate, VerificationFailure

logger = logging.getLogger(__name__)


class Signal(StrEnum):
    """What one round said about one sampled node."""

    SCORED = "scored"
    """The update was aggregated and scored; the trust comes from the anomaly score."""
    MALFORMED_UPDATE = "malformed_update"
    """The update failed validation (layout, dtype, finiteness, norm cap, metrics, duplicate)."""
    REFUSED_MODEL = "refused_model"
    """The node refused the signed broadcast model (failed verification on its side)."""
    CLIENT_ERROR = "client_error"
    """The node answered with an error instead of an update."""
    DROPOUT = "dropout"
    """The node was sampled and did not answer before the round's timeout."""
    ATTRIBUTED = "attributed"
    """Secure mode: the node's group was scored and attribution does not suspect it (trust 1)."""
    SUSPECTED = "suspected"
    """Secure mode: the node was in flagged groups far more often than chance (trust 0)."""


SIGNAL_TRUST: Mapping[Signal, float] = {
    Signal.MALFORMED_UPDATE: 0.0,
    Signal.REFUSED_MODEL: 0.25,
    Signal.CLIENT_ERROR: 0.25,
    Signal.DROPOUT: 0.25,
    Signal.ATTRIBUTED: 1.0,
    Signal.SUSPECTED: 0.0,
}
"""Trust observed for each protocol and attribution signal. A malformed update is full
evidence; refusals, errors and dropouts happen to honest nodes too (a stale lineage, a crash,
a network partition), so only repeated ones — 5 in a row with the defaults — quarantine a node.
A suspect is full evidence: the attribution test already demands many flagged rounds."""


class Decision(StrEnum):
    """What the policy did with a node whose reputation fell below the threshold."""

    QUARANTINED = "quarantined"
    DEFERRED = "deferred"
    """Not quarantined: the eligible population would fall below what the pipeline needs."""
    RELEASED = "released"


@dataclass(frozen=True)
class Observation:
    """One round's evidence about one node."""

    server_round: int
    signal: Signal
    trust: float
    score: float | None = None
    """Plaintext: the node's anomaly score. Secure mode: its group's score (None when the
    group's mean was refused)."""
    p_value: float | None = None
    """Secure mode: the attribution's p-value, P(K ≥ flagged rounds) under chance."""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (the audit log's evidence and the state file)."""
        data: dict[str, Any] = {
            "round": self.server_round,
            "signal": self.signal.value,
            "trust": self.trust,
            "score": self.score,
        }
        if self.p_value is not None:
            data["p_value"] = self.p_value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Observation:
        """Rebuild from :meth:`to_json`."""
        score, p_value = data.get("score"), data.get("p_value")
        return cls(
            int(data["round"]),
            Signal(data["signal"]),
            float(data["trust"]),
            None if score is None else float(score),
            None if p_value is None else float(p_value),
        )


@dataclass(frozen=True)
class AttributionConfig:
    """Secure mode's group flags and their attribution to clients (docs/monitoring.md)."""

    flag_score: float = 3.0
    """A group whose mean scores at or above this is flagged (the plaintext ramp's midpoint:
    where a client's own update would count more as evidence than as trust)."""
    significance: float = 0.01
    """Family-wise level: a client is suspected when P(K ≥ k) < significance / clients."""
    min_rounds: int = 3
    """Scored rounds a client needs before it can be suspected."""
    window_rounds: int = 100
    """Secure rounds kept for attribution (bounds the state and the exact tail's cost)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.flag_score) and self.flag_score > 0):
            raise ValueError(f"flag_score must be a finite number > 0, got {self.flag_score!r}")
        if not 0.0 < self.significance < 1.0:
            raise ValueError(f"significance must be in (0, 1), got {self.significance!r}")
        if self.min_rounds < 1:
            raise ValueError(f"min_rounds must be ≥ 1, got {self.min_rounds!r}")
        if self.window_rounds < self.min_rounds:
            raise ValueError(
                f"window_rounds must be ≥ min_rounds ({self.min_rounds}), "
                f"got {self.window_rounds!r}"
            )


@dataclass(frozen=True)
class QuarantineConfig:
    """The policy's knobs (run config ``quarantine``, ``reputation-decay``,
    ``quarantine-threshold``, ``quarantine-min-rounds``)."""

    enabled: bool = True
    """False: scores and reputation are still kept and recorded, but nobody is excluded."""
    decay: float = 0.8
    """λ of the reputation's exponential average."""
    threshold: float = 0.5
    """Reputation below which a node is quarantined."""
    min_rounds: int = 3
    """Observations a node needs before it can be quarantined."""
    ramp: TrustRamp = field(default_factory=TrustRamp)
    """Anomaly score → trust observation."""
    evidence_rounds: int = 10
    """How many of a node's latest observations an incident quotes."""
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    """Secure mode: when a group is flagged and when a client is suspected."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"reputation-decay must be in [0, 1), got {self.decay!r}")
        if not (math.isfinite(self.threshold) and 0.0 < self.threshold < 1.0):
            raise ValueError(f"quarantine-threshold must be in (0, 1), got {self.threshold!r}")
        if self.min_rounds < 1:
            raise ValueError(f"quarantine-min-rounds must be ≥ 1, got {self.min_rounds!r}")
        if self.evidence_rounds < 1:
            raise ValueError(f"evidence_rounds must be ≥ 1, got {self.evidence_rounds!r}")


@dataclass
class NodeRecord:
    """What the policy remembers about one node."""

    reputation: float = INITIAL_REPUTATION
    observations: int = 0
    quarantined_round: int | None = None
    evidence: list[Observation] = field(default_factory=list)

    @property
    def quarantined(self) -> bool:
        """Whether the node is excluded from sampling."""
        return self.quarantined_round is not None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "reputation": self.reputation,
            "observations": self.observations,
            "quarantined_round": self.quarantined_round,
            "evidence": [item.to_json() for item in self.evidence],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NodeRecord:
        """Rebuild from :meth:`to_json`."""
        quarantined = data.get("quarantined_round")
        return cls(
            reputation=float(data["reputation"]),
            observations=int(data["observations"]),
            quarantined_round=None if quarantined is None else int(quarantined),
            evidence=[Observation.from_json(item) for item in data.get("evidence", [])],
        )


@dataclass(frozen=True)
class HookOutcome:
    """What one response hook did for one incident."""

    hook: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Incident:
    """One decision about one node, with the evidence it rests on (the audit record's details)."""

    node_id: int
    server_round: int
    decision: Decision
    reputation: float
    evidence: tuple[Observation, ...]
    hooks: tuple[HookOutcome, ...] = ()

    def details(self) -> dict[str, Any]:
        """The QUARANTINE audit event's details: node, rounds, scores, signals, decision."""
        return {
            "node": str(self.node_id),
            "decision": self.decision.value,
            "reputation": self.reputation,
            "rounds": [item.server_round for item in self.evidence],
            "scores": [item.score for item in self.evidence],
            "signals": [item.signal.value for item in self.evidence],
            "p_values": [item.p_value for item in self.evidence],
            "trust": [item.trust for item in self.evidence],
            "hooks": [
                {"hook": item.hook, "ok": item.ok, "detail": item.detail[:300]}
                for item in self.hooks
            ],
        }


class QuarantineHook(Protocol):
    """A response to a quarantine decision (revoke a certificate, unregister a node…).

    ``respond`` returns a short description of what it did; an exception means it failed,
    which is audited with the incident and never stops the round.
    """

    @property
    def name(self) -> str:
        """Stable identifier in the incident record."""

    def respond(self, incident: Incident) -> str:
        """Act on a quarantined node."""


@dataclass(frozen=True)
class CertificateRevocationHook:
    """Revokes a quarantined node's certificate in the federation CA and reissues the CRL.

    ``identity_of`` maps a Flower node id to the SPIFFE ID or name the CA registry knows
    (the gateway binds the two at admission); None means the node has no known
    certificate. The gateway refuses the node from its next request (it reloads the CRL).
    """

    ca_dir: Path
    identity_of: Callable[[int], str | None]
    passphrase: bytes | None = field(default=None, repr=False)
    name: str = "revoke_certificate"

    def respond(self, incident: Incident) -> str:
        from ztfl.trust.pki import RevocationReason, open_authority, revoke_certificate

        identity = self.identity_of(incident.node_id)
        if identity is None:
            raise LookupError(f"no certificate identity known for node {incident.node_id}")
        with open_authority(self.ca_dir, passphrase=self.passphrase) as authority:
            _, revoked = revoke_certificate(authority, identity, RevocationReason.UNSPECIFIED)
        serials = ", ".join(item.serial_hex for item in revoked)
        return f"revoked {identity} (serial {serials})"


@dataclass(frozen=True)
class NodeUnregistrationHook:
    """Unregisters a quarantined node from the SuperLink through ``unregister(node_id)``."""

    unregister: Callable[[int], None]
    name: str = "unregister_node"

    def respond(self, incident: Incident) -> str:
        self.unregister(incident.node_id)
        return f"unregistered node {incident.node_id}"


def round_observations(
    server_round: int,
    *,
    sampled: Sequence[int],
    answered: Iterable[int],
    refused: Sequence[RefusedUpdate],
    verification_failures: Sequence[VerificationFailure],
    scores: Mapping[int, float] | None,
    ramp: TrustRamp,
    attributed: Mapping[int, Observation] | None = None,
) -> dict[int, Observation]:
    """One observation per sampled node that gave evidence this round (the worst it gave).

    ``attributed``: secure mode's observations of the members of scored groups
    (:meth:`QuarantinePolicy.attribute`). Accepted but unscored updates (DP mode, a skipped
    round) give none: silence is neither trust nor distrust.
    """
    candidates: dict[int, list[Observation]] = {}

    def add(node: int, signal: Signal, trust: float, score: float | None = None) -> None:
        candidates.setdefault(node, []).append(Observation(server_round, signal, trust, score))

    expected = set(sampled)
    refused_model = {item.node_id for item in verification_failures if item.node_id in expected}
    for node in refused_model:
        add(node, Signal.REFUSED_MODEL, SIGNAL_TRUST[Signal.REFUSED_MODEL])
    for item in refused:
        if item.node_id not in expected or item.reason is RefusalReason.UNEXPECTED_SENDER:
            continue
        if item.reason is RefusalReason.REPLY_ERROR:
            if item.node_id not in refused_model:
                add(item.node_id, Signal.CLIENT_ERROR, SIGNAL_TRUST[Signal.CLIENT_ERROR])
            continue
        add(item.node_id, Signal.MALFORMED_UPDATE, SIGNAL_TRUST[Signal.MALFORMED_UPDATE])
    for node in expected - set(answered):
        add(node, Signal.DROPOUT, SIGNAL_TRUST[Signal.DROPOUT])
    for node, score in (scores or {}).items():
        if node in expected:
            add(node, Signal.SCORED, ramp.trust(score), score)
    for node, observation in (attributed or {}).items():
        if node in expected:
            candidates.setdefault(node, []).append(observation)
    return {node: min(items, key=lambda item: item.trust) for node, items in candidates.items()}


class QuarantinePolicy:
    """Reputations, quarantine decisions and releases; persisted with the coordinator state."""

    def __init__(
        self,
        config: QuarantineConfig,
        *,
        minimum_population: int = 1,
        hooks: Sequence[QuarantineHook] = (),
    ) -> None:
        self.config = config
        self.minimum_population = minimum_population
        self._hooks = tuple(hooks)
        self.nodes: dict[int, NodeRecord] = {}
        self.audit_seen = 0
        """The audit log's seq up to which operator releases were applied."""
        self.group_rounds: list[GroupRound] = []
        """Secure mode: the latest scored rounds' groups and flags (``window_rounds``)."""
        self.attribution_since: dict[int, int] = {}
        """Per released node: the first round its attribution counts again."""

    # ------------------------------------------------------------ queries
    @property
    def quarantined(self) -> frozenset[int]:
        """Nodes excluded from sampling."""
        return frozenset(node for node, record in self.nodes.items() if record.quarantined)

    def eligible(self, node_ids: Iterable[int]) -> list[int]:
        """``node_ids`` without the quarantined nodes (all of them when quarantine is off)."""
        excluded = self.quarantined if self.config.enabled else frozenset()
        return [node for node in node_ids if node not in excluded]

    def reputations(self) -> dict[int, float]:
        """Every node's reputation (1.0 until observed)."""
        return {node: record.reputation for node, record in sorted(self.nodes.items())}

    def suspects(self) -> tuple[int, ...]:
        """Clients attribution suspects over the kept secure rounds, sorted."""
        settings = self.config.attribution
        return suspects_among(
            attribute_flags(self.group_rounds, since=self.attribution_since),
            significance=settings.significance,
            min_rounds=settings.min_rounds,
        )

    # ------------------------------------------------------------ decisions
    def attribute(
        self, group_round: GroupRound, scores: Sequence[float | None] = ()
    ) -> dict[int, Observation]:
        """Add a secure round's groups and flags to the history; observe its members.

        ``scores``: each group's anomaly score, in the order of ``group_round.groups`` (None
        for a group whose mean was refused), quoted as evidence. A member is observed as
        SUSPECTED (trust 0) when its p-value over the kept rounds is below the
        Bonferroni cut-off, else ATTRIBUTED (trust 1) — never from its group's flag alone.
        """
        settings = self.config.attribution
        self.group_rounds = [*self.group_rounds, group_round][-settings.window_rounds :]
        attributions = attribute_flags(self.group_rounds, since=self.attribution_since)
        suspected = set(
            suspects_among(
                attributions, significance=settings.significance, min_rounds=settings.min_rounds
            )
        )
        observations = {}
        for index, group in enumerate(group_round.groups):
            score = scores[index] if index < len(scores) else None
            for node in group:
                signal = Signal.SUSPECTED if node in suspected else Signal.ATTRIBUTED
                observations[node] = Observation(
                    group_round.server_round,
                    signal,
                    SIGNAL_TRUST[signal],
                    score,
                    attributions[node].p_value,
                )
        return observations

    def observe(
        self, observations: Mapping[int, Observation], *, connected: Iterable[int]
    ) -> list[Incident]:
        """Fold one round's observations into the reputations; decide; run hooks on quarantine.

        ``connected``: the nodes the coordinator can sample from, for the population floor.
        Returns the round's incidents (quarantined or deferred), in node order.
        """
        incidents = []
        eligible = set(self.eligible(connected))
        for node, observation in sorted(observations.items()):
            record = self.nodes.setdefault(node, NodeRecord())
            if record.quarantined:
                continue
            record.reputation = updated_reputation(
                record.reputation, observation.trust, self.config.decay
            )
            record.observations += 1
            record.evidence = [*record.evidence, observation][-self.config.evidence_rounds :]
            if not self._falls(record):
                continue
            if not self.config.enabled:
                continue
            if len(eligible - {node}) < self.minimum_population:
                incidents.append(self._incident(node, observation, Decision.DEFERRED))
                continue
            eligible.discard(node)
            record.quarantined_round = observation.server_round
            incident = self._incident(node, observation, Decision.QUARANTINED)
            incidents.append(
                Incident(
                    incident.node_id,
                    incident.server_round,
                    incident.decision,
                    incident.reputation,
                    incident.evidence,
                    self._respond(incident),
                )
            )
        return incidents

    def release(self, node_id: int, server_round: int) -> Incident | None:
        """Reinstate a quarantined node with a fresh reputation; None if it was not quarantined."""
        record = self.nodes.get(node_id)
        if record is None or not record.quarantined:
            return None
        incident = Incident(
            node_id, server_round, Decision.RELEASED, record.reputation, tuple(record.evidence)
        )
        self.nodes[node_id] = NodeRecord()
        # Its earlier secure rounds no longer count against it.
        self.attribution_since[node_id] = server_round
        return incident

    def _falls(self, record: NodeRecord) -> bool:
        return (
            record.observations >= self.config.min_rounds
            and record.reputation < self.config.threshold
        )

    def _incident(self, node: int, observation: Observation, decision: Decision) -> Incident:
        record = self.nodes[node]
        return Incident(
            node, observation.server_round, decision, record.reputation, tuple(record.evidence)
        )

    def _respond(self, incident: Incident) -> tuple[HookOutcome, ...]:
        outcomes = []
        for hook in self._hooks:
            try:
                outcomes.append(HookOutcome(hook.name, True, hook.respond(incident)))
            except Exception as error:  # a failed response is evidence, never a crash
                logger.warning(
                    "quarantine hook %s failed for node %d: %s", hook.name, incident.node_id, error
                )
                outcomes.append(HookOutcome(hook.name, False, f"{type(error).__name__}: {error}"))
        return tuple(outcomes)

    # ------------------------------------------------------------ persistence
    def to_state(self) -> dict[str, Any]:
        """JSON-ready state for the coordinator's state file."""
        return {
            "nodes": {str(node): record.to_json() for node, record in sorted(self.nodes.items())},
            "audit_seen": self.audit_seen,
            "group_rounds": [item.to_json() for item in self.group_rounds],
            "attribution_since": {
                str(node): start for node, start in sorted(self.attribution_since.items())
            },
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`to_state` output (a resumed run keeps every reputation)."""
        self.nodes = {
            int(node): NodeRecord.from_json(record)
            for node, record in dict(state.get("nodes", {})).items()
        }
        self.audit_seen = int(state.get("audit_seen", 0))
        self.group_rounds = [GroupRound.from_json(item) for item in state.get("group_rounds", [])]
        since = dict(state.get("attribution_since", {}))
        self.attribution_since = {int(node): int(start) for node, start in since.items()}


def read_policy_state(state: Mapping[str, Any] | None) -> dict[int, NodeRecord]:
    """The node records of a persisted policy state (for ``ztfl nodes list``)."""
    if not state:
        return {}
    return {
        int(node): NodeRecord.from_json(record)
        for node, record in dict(state.get("nodes", {})).items()
    }
