"""The coordinator's round loop on Flower's Message API (plaintext mode).

Per round: select nodes, broadcast the signed global model with the round
configuration, collect and validate the updates, aggregate them with the
configured robust pipeline, sign and commit the new model, evaluate, and
persist the state (the round's commit point). Every step leaves evidence in
the run's audit log through the :class:`~ztfl.server.ledger.RunLedger`. Modelled on
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
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from ztfl.aggregation import ModelSpec, Pipeline, ToleranceError
from ztfl.aggregation.anomaly import anomaly_scores
from ztfl.aggregation.group_attribution import GroupRound
from ztfl.aggregation.privacy.accounting import PrivacyAccountant
from ztfl.aggregation.privacy.adaptive_clipping import (
    AdaptiveClipNorm,
    AdaptiveClippingConfig,
    update_noise_multiplier,
)
from ztfl.aggregation.privacy.clipping import UnclippedCount, clip_updates
from ztfl.aggregation.privacy.noise import gaussian_noise, secure_generator
from ztfl.aggregation.privacy.sensitivity import (
    DPConfigurationError,
    Sensitivity,
    fixed_denominator_mean,
    pipeline_sensitivity,
)
from ztfl.aggregation.secagg import RosterSigner
from ztfl.aggregation.steps import Clip, Mean
from ztfl.client import protocol
from ztfl.client.policy import RoundPrivacy
from ztfl.trust.audit import AuditEventKind, AuditHead
from ztfl.trust.keys import SigningKey

from .arrays import vector_to_record, vector_to_weights, weights_to_vector
from .config import ConfigError, CoordinatorConfig
from .crash import CrashPoint, crash_point
from .history import (
    RoundObserver,
    RoundRecord,
    RunHistory,
    SkipReason,
    VerificationFailure,
)
from .ledger import RunLedger
from .quarantine import Decision, QuarantineHook, QuarantinePolicy, Signal, round_observations
from .run_state import CoordinatorState
from .sampling import NodeSampler
from .secure_round import (
    GroupStatus,
    SecureRoundResult,
    fixed_denominator_sum,
    secure_aggregator,
)
from .unpacking import collect_updates

logger = logging.getLogger(__name__)

CentralEvaluation = Callable[[dict[str, np.ndarray]], dict[str, float]]
"""Scores the global model (named arrays) on data the coordinator holds, e.g. a held-out set."""


class NotEnoughNodesError(RuntimeError):
    """Fewer nodes connected than the configuration requires, within the wait timeout."""


class PrivacyBudgetExhaustedError(RuntimeError):
    """The next round would take ε above the run's budget, so it was not run."""


def open_ledger(
    config: CoordinatorConfig,
    initial_weights: dict[str, np.ndarray],
    *,
    state_dir: Path,
    key: SigningKey,
    resume: bool,
) -> RunLedger:
    """Start the run in ``state_dir`` (committing the initial model as round 0), or resume it."""
    validity = timedelta(hours=config.model_validity_hours)
    pipeline = config.build_pipeline().stated  # what the signed manifests record
    revocation_list = Path(config.revocation_list) if config.revocation_list else None
    if resume:
        return RunLedger.resume(
            state_dir,
            key,
            config=config.to_run_config(),
            model_validity=validity,
            pipeline=pipeline,
            revocation_list=revocation_list,
            key_rotations=config.key_rotation_paths(),
        )
    return RunLedger.start(
        state_dir,
        key,
        config=config.audit_summary(),
        initial=list(initial_weights.items()),
        model_validity=validity,
        pipeline=pipeline,
        revocation_list=revocation_list,
        key_rotations=config.key_rotation_paths(),
    )


class Coordinator:
    """Runs federated rounds over a Flower ``Grid`` with robust aggregation and signed models.

    ``ledger`` holds the run's model store, audit log and state; a ledger that
    was resumed brings back the global model, the random generators, the nodes'
    accepted models and the history, and :meth:`run` continues after its last
    committed round.
    """

    def __init__(
        self,
        config: CoordinatorConfig,
        initial_weights: dict[str, np.ndarray],
        *,
        ledger: RunLedger,
        central_evaluation: CentralEvaluation | None = None,
        observers: Sequence[RoundObserver] = (),
        noise_generator: np.random.Generator | None = None,
        quarantine_hooks: Sequence[QuarantineHook] = (),
        roster_signer: RosterSigner | None = None,
    ) -> None:
        """``noise_generator``: tests only (a seeded ``secure_generator``); by default DP noise
        comes from a fresh ``secure_generator()``. ``quarantine_hooks`` respond to each
        quarantine (revoke the node's certificate, unregister it). ``roster_signer``: secure
        mode's roster signer, by default the model-signing key of ``signing-key``."""
        self.config = config
        self.ledger = ledger
        self._secure = (
            secure_aggregator(config, ledger, roster_signer) if config.secure_aggregation else None
        )
        self.pipeline: Pipeline = config.build_pipeline()
        self.spec = ModelSpec.from_arrays(initial_weights)
        self._central_evaluation = central_evaluation
        self._observers = list(observers)
        self._sampler = NodeSampler(config.seed)
        # Bucketing's shuffle draws from here: seeded from the sampler, which is
        # itself seeded from the OS's secure source unless a seed is configured.
        self._aggregation_generator = torch.Generator().manual_seed(self._sampler.draw_seed())
        self.history = RunHistory()
        self._node_digests: dict[int, str] = {}
        self.completed_rounds = 0
        self.accountant: PrivacyAccountant | None = None
        self._population: int | None = None
        self._sensitivity: Sensitivity | None = None
        self._adaptive_clip: AdaptiveClipNorm | None = None
        self._update_noise_multiplier: float | None = None
        self._noise_generator = noise_generator or secure_generator()
        # Quarantine never leaves fewer eligible nodes than a round needs (in secure mode the
        # pipeline's rows are groups of at least k members).
        members_per_row = config.group_size if config.secure_aggregation else 1
        self.quarantine = QuarantinePolicy(
            config.quarantine_config(),
            minimum_population=max(
                self.pipeline.minimum_clients() * members_per_row, config.clients_per_round, 1
            ),
            hooks=quarantine_hooks,
        )
        self._answered: frozenset[int] = frozenset()
        # Poisson sampling draws from the secure generator unless a seed asks for a replay.
        self._dp_sampling_generator = None if config.seed is not None else secure_generator()
        if config.dp:
            self.accountant = PrivacyAccountant(config.accountant_config())
        state = ledger.state
        if state is None:
            self.global_vector = weights_to_vector(initial_weights, self.spec)
        else:
            self.global_vector = weights_to_vector(dict(ledger.load_current()), self.spec)
            self._sampler.restore(state.sampler)
            self._aggregation_generator.set_state(
                torch.frombuffer(bytearray.fromhex(state.aggregation_generator), dtype=torch.uint8)
            )
            self._node_digests = {int(node): digest for node, digest in state.node_digests.items()}
            self.history = RunHistory.from_json(dict(state.history))
            self.completed_rounds = state.round
            if state.quarantine is not None:
                self.quarantine.restore(state.quarantine)
            if self.accountant is not None and state.privacy is not None:
                self.accountant = PrivacyAccountant.from_state(
                    state.privacy["accountant"], expected_config=self.accountant.config
                )
                self._population = int(state.privacy["population"])
                self._set_up_privacy()
                self._restore_adaptive_clip(state.privacy.get("clip"))
            if self.accountant is not None:
                # Rounds that sampled after the last state commit (a crash mid-round) were
                # released in part (the sampling, maybe a broadcast): they count too.
                for _ in range(self._rounds_started_after(state.audit_head)):
                    self.accountant.compose_round()

    @property
    def global_weights(self) -> dict[str, np.ndarray]:
        """The current global model as named arrays."""
        return vector_to_weights(self.global_vector, self.spec)

    def run(self, grid: Grid) -> RunHistory:
        """Wait for enough nodes, then run every configured round not yet committed."""
        self._wait_for_nodes(grid)
        if self.ledger.state is None:
            self.history.initial_metrics = self._evaluate_centrally()
            self._commit_state()
        for observer in self._observers:
            observer.on_run_start(self.config.num_rounds, self.history.initial_metrics)
            for record in self.history.rounds:
                observer.on_round_end(record)
        for server_round in range(self.completed_rounds + 1, self.config.num_rounds + 1):
            try:
                record = self.run_round(grid, server_round)
            except PrivacyBudgetExhaustedError as error:
                logger.warning("training stopped: %s", error)
                self.history.stop_reason = f"privacy budget: {error}"
                self._commit_state()
                break
            for observer in self._observers:
                observer.on_round_end(record)
        return self.history

    def run_round(self, grid: Grid, server_round: int) -> RoundRecord:
        """One round: select, broadcast, collect, validate, aggregate, commit, evaluate, persist.

        With DP, a round that would take ε above the budget is not run: it is audited
        (DP_BUDGET) and PrivacyBudgetExhaustedError is raised before any node is sampled.
        """
        self._check_budget(server_round)
        record = self._monitor(self._round(grid, server_round), grid)
        self.history.rounds.append(record)
        self.completed_rounds = server_round
        self._commit_state()
        crash_point(CrashPoint.AFTER_STATE_COMMIT, server_round)
        return record

    def _commit_state(self) -> None:
        generator_state = self._aggregation_generator.get_state().numpy().tobytes().hex()
        self.ledger.commit_state(
            CoordinatorState(
                run_id=self.ledger.run_id,
                round=self.completed_rounds,
                model_digest=self.ledger.model_digest,
                audit_head="0:" + "0" * 64,
                config=self.config.to_run_config(),
                sampler=self._sampler.state(),
                aggregation_generator=generator_state,
                node_digests={str(node): digest for node, digest in self._node_digests.items()},
                history=self.history.to_json(),
                privacy=self._privacy_state(),
                quarantine=self.quarantine.to_state(),
            )
        )

    def _privacy_state(self) -> dict[str, object] | None:
        if self.accountant is None or self._population is None:
            return None
        state: dict[str, object] = {
            "accountant": self.accountant.to_state(),
            "population": self._population,
        }
        if self._adaptive_clip is not None:
            state["clip"] = self._adaptive_clip.state()
        return state

    def _rounds_started_after(self, audit_head: str) -> int:
        start = AuditHead.parse(audit_head).seq + 1
        return sum(
            1
            for record in self.ledger.audit.records(start)
            if record.kind is AuditEventKind.ROUND_STARTED
        )

    def _check_budget(self, server_round: int) -> None:
        budget = self.config.dp_budget()
        if self.accountant is None or budget is None or not self.accountant.would_exceed(budget):
            return
        spent = self.accountant.epsilon()
        after = self.accountant.epsilon_after(self.accountant.rounds + 1)
        message = (
            f"round {server_round} would take ε from {spent:.4g} to {after:.4g}, above the "
            f"budget {budget:g} (δ = {self.config.dp_delta:g}); it was not run"
        )
        self.ledger.dp_budget_refused(
            server_round,
            {
                "epsilon_spent": spent,
                "epsilon_after_round": after,
                "epsilon_budget": budget,
                "delta": self.config.dp_delta,
                "rounds_accounted": self.accountant.rounds,
            },
        )
        raise PrivacyBudgetExhaustedError(message)

    def _privacy_record(self) -> dict[str, float | int | str] | None:
        """The DP parameters and ε spent so far, as the manifest and the history state them."""
        if self.accountant is None or self._sensitivity is None:
            return None
        accountant = self.accountant.config
        record: dict[str, float | int | str] = {
            "mechanism": "gaussian",
            "noise_multiplier": accountant.noise_multiplier,
            "clip_norm": self.clip_norm,
            "sampling_rate": self.config.dp_sampling_rate,
            "delta": accountant.delta,
            "epsilon": self.accountant.epsilon(),
            "accountant": accountant.kind,
            "rounds": self.accountant.rounds,
            "expected_clients": self._expected_clients(),
            "sensitivity": self._sensitivity.l2,
        }
        if self._adaptive_clip is not None:
            assert self._update_noise_multiplier is not None
            record["adaptive_clipping"] = "andrew2021"
            record["update_noise_multiplier"] = self._update_noise_multiplier
            record["count_noise_stddev"] = self._adaptive_clip.config.count_noise_stddev
            record["target_unclipped_quantile"] = self.config.dp_target_unclipped_quantile
        return record

    @property
    def clip_norm(self) -> float:
        """This round's DP clip norm C: the adaptive one, or ``dp-clip-norm``."""
        if self._adaptive_clip is not None:
            return self._adaptive_clip.clip_norm
        return self.config.dp_clip_norm

    def _set_up_privacy(self) -> None:
        """Once the population N is known: adaptive clipping's parameters (σ_b defaults to
        m/20) and the update's share of the noise, z_Δ (z itself without adaptive clipping).

        Raises ConfigError when σ_b is too small for z (the count would need the whole budget).
        """
        assert self.accountant is not None
        noise_multiplier = self.accountant.config.noise_multiplier
        if not self.config.dp_adaptive_clipping:
            self._update_noise_multiplier = noise_multiplier
            return
        expected = self._expected_clients()
        stddev = self.config.dp_clipped_count_stddev or expected / 20
        try:
            self._update_noise_multiplier = update_noise_multiplier(noise_multiplier, stddev)
            self._adaptive_clip = AdaptiveClipNorm(
                AdaptiveClippingConfig(
                    initial_clip_norm=self.config.dp_clip_norm,
                    count_noise_stddev=stddev,
                    expected_clients=expected,
                    learning_rate=self.config.dp_clip_learning_rate,
                    target_unclipped_quantile=self.config.dp_target_unclipped_quantile,
                )
            )
        except DPConfigurationError as error:
            raise ConfigError(f"dp-clipped-count-stddev: {error}") from error

    def _restore_adaptive_clip(self, clip_state: object) -> None:
        """Bring back the persisted adaptive clip norm (the next round's C)."""
        clip = self._adaptive_clip
        if clip is not None and isinstance(clip_state, dict):
            self._adaptive_clip = AdaptiveClipNorm.from_state(clip.config, clip_state)

    def _round_privacy(self) -> RoundPrivacy:
        """What the training messages declare, for the clients' policy floors."""
        if self.accountant is None:
            return RoundPrivacy(dp=False)
        accountant = self.accountant.config
        return RoundPrivacy(
            dp=True,
            clip_norm=self.clip_norm,
            noise_multiplier=accountant.noise_multiplier,
            delta=accountant.delta,
            epsilon_spent=self.accountant.epsilon(),
            epsilon_budget=self.config.dp_budget(),
            sampling_rate=self.config.dp_sampling_rate,
            accountant=accountant.kind,
        )

    def _expected_clients(self) -> int:
        """m = q·N rounded, at least 1: the fixed denominator of the DP mean."""
        assert self._population is not None
        return max(1, round(self.config.dp_sampling_rate * self._population))

    def _monitor(self, record: RoundRecord, grid: Grid) -> RoundRecord:
        """Fold the round's evidence into reputations; quarantine and audit (docs/monitoring.md)."""
        scores = (
            None
            if record.anomaly_scores is None
            else {int(node): score for node, score in record.anomaly_scores.items()}
        )
        attributed = None
        if record.groups:
            # Secure mode: members are observed through attribution, never their group's flag.
            ids = list(record.groups)
            group_scores = record.group_scores or {}
            attributed = self.quarantine.attribute(
                GroupRound(
                    tuple(record.groups[group] for group in ids),
                    frozenset(i for i, group in enumerate(ids) if group in record.flagged_groups),
                    record.server_round,
                ),
                [group_scores.get(group) for group in ids],
            )
        observations = round_observations(
            record.server_round,
            sampled=record.sampled_nodes,
            answered=self._answered,
            refused=record.refused,
            verification_failures=record.verification_failures,
            scores=scores,
            ramp=self.quarantine.config.ramp,
            attributed=attributed,
        )
        incidents = self.quarantine.observe(observations, connected=grid.get_node_ids())
        for incident in incidents:
            logger.warning(
                "round %d: node %d %s (reputation %.3f)",
                record.server_round,
                incident.node_id,
                incident.decision.value,
                incident.reputation,
            )
            self.ledger.quarantine_decided(
                record.server_round, incident.node_id, incident.decision.value, incident.details()
            )
        return replace(
            record,
            reputation={str(node): value for node, value in self.quarantine.reputations().items()},
            quarantined=tuple(
                incident.node_id
                for incident in incidents
                if incident.decision is Decision.QUARANTINED
            ),
            suspected=tuple(
                sorted(
                    node
                    for node, observation in (attributed or {}).items()
                    if observation.signal is Signal.SUSPECTED
                )
            ),
        )

    def _apply_releases(self, server_round: int) -> None:
        """Reinstate nodes an operator released (``ztfl nodes release``: QUARANTINE events
        with reason ``released`` in the audit log) since the last round."""
        for entry in self.ledger.audit.records(self.quarantine.audit_seen + 1):
            self.quarantine.audit_seen = entry.seq
            if (
                entry.kind is AuditEventKind.QUARANTINE
                and entry.reason == Decision.RELEASED.value
                and entry.node_id is not None
                and self.quarantine.release(entry.node_id, server_round) is not None
            ):
                logger.warning("node %d released by an operator", entry.node_id)

    def _sample(self, grid: Grid, server_round: int) -> tuple[int, ...]:
        self._apply_releases(server_round)
        node_ids = self.quarantine.eligible(grid.get_node_ids())
        if self.accountant is None:
            return self._sampler.sample(node_ids, self.config.clients_per_round)
        if self._population is None:
            self._population = len(node_ids)
            self._set_up_privacy()
        # The round's own clip norm sets the round's sensitivity (it changes with adaptive C).
        self._sensitivity = pipeline_sensitivity(
            self.pipeline,
            clip_norm=self.clip_norm,
            expected_clients=self._expected_clients(),
        )
        sampled = self._sampler.sample_poisson(
            node_ids, self.config.dp_sampling_rate, self._dp_sampling_generator
        )
        # The sampling happened: the round is accounted whatever it goes on to do.
        self.accountant.compose_round()
        return sampled

    def _private_aggregate(self, matrix: torch.Tensor) -> torch.Tensor:
        """Clip every update to C, aggregate (fixed-denominator mean or the robust rule) and
        add N(0, (z_Δ·Δ)²) noise from the secure generator; raises ToleranceError as the rule.

        z_Δ is z without adaptive clipping, and the update's share of z with it (the rest
        noises the unclipped count)."""
        assert self._update_noise_multiplier is not None
        assert self._sensitivity is not None
        clipped = clip_updates(matrix, self.clip_norm, validated=True).updates
        if isinstance(self.pipeline.rule, Mean):
            for step in self.pipeline.pre_steps:
                if isinstance(step, Clip):
                    clipped = clip_updates(clipped, step.max_norm, validated=True).updates
            aggregate = fixed_denominator_mean(clipped, expected_clients=self._expected_clients())
        else:
            aggregate = self.pipeline(
                clipped, None, generator=self._aggregation_generator, validated=True
            ).aggregate
        return self._add_noise(aggregate)

    def _add_noise(self, aggregate: torch.Tensor) -> torch.Tensor:
        """aggregate + N(0, (z_Δ·Δ)²) from the secure generator."""
        assert self._update_noise_multiplier is not None
        assert self._sensitivity is not None
        std = self._update_noise_multiplier * self._sensitivity.l2
        noise = gaussian_noise(
            aggregate.shape,
            std,
            generator=self._noise_generator,
            dtype=aggregate.dtype,
            device=aggregate.device,
        )
        return aggregate + noise

    def _round(self, grid: Grid, server_round: int) -> RoundRecord:
        started = time.perf_counter()
        ledger = self.ledger
        sampled = self._sample(grid, server_round)
        ledger.round_started(server_round, sampled)
        secure = None
        if self._secure is not None:
            secure = self._secure.run(
                grid,
                server_round=server_round,
                broadcasts={
                    int(message.metadata.dst_node_id): message
                    for message in self._train_messages(sampled, server_round)
                },
                clip_norm=self.clip_norm if self.accountant else self.config.max_update_norm,
                vector_length=self.spec.num_parameters,
                extra_channel=self._adaptive_clip is not None,
                timeout=self.config.round_timeout_s,
            )
            replies = list(secure.setup_replies)
        else:
            replies = list(
                grid.send_and_receive(
                    self._train_messages(sampled, server_round),
                    timeout=self.config.round_timeout_s,
                )
            )
        self._answered = frozenset(int(reply.metadata.src_node_id) for reply in replies)
        failures = self._read_client_verdicts(replies, sampled, server_round, "train")
        collected = (
            secure.collected()
            if secure
            else collect_updates(
                replies,
                expected_nodes=sampled,
                spec=self.spec,
                max_update_norm=self.config.max_update_norm,
                weighting=self.config.weighting,
                max_examples=self.config.max_examples,
                private=self.accountant is not None,
            )
        )
        for refusal in collected.refused:
            logger.warning(
                "round %d: refused update from node %d: %s (%s)",
                server_round,
                refusal.node_id,
                refusal.reason.value,
                refusal.detail,
            )
        ledger.updates_refused(server_round, collected.refused)
        skipped = RoundRecord(
            server_round=server_round,
            sampled_nodes=sampled,
            num_replies=len(collected.node_ids) + len(collected.refused),
            accepted_nodes=collected.node_ids,
            refused=collected.refused,
            pipeline=self.pipeline.description,
            committed=False,
            train_metrics=collected.train_metrics,
            verification_failures=failures,
            model_digest=ledger.model_digest,
            privacy=self._privacy_record(),
        )
        crash_point(CrashPoint.BEFORE_AGGREGATION, server_round)
        aggregation_started = time.perf_counter()
        try:
            if collected.matrix.shape[0] == 0:
                raise ToleranceError("no valid update (every sampled node refused or failed)")
            if secure is not None and self.accountant is not None:
                mean = fixed_denominator_sum(secure, expected_clients=self._expected_clients())
                aggregate, selected_rows = self._add_noise(mean), None
            elif self.accountant is not None:
                aggregate, selected_rows = self._private_aggregate(collected.matrix), None
            else:
                result = self.pipeline(
                    collected.matrix,
                    collected.weights,
                    generator=self._aggregation_generator,
                    validated=True,
                )
                aggregate, selected_rows = result.aggregate, result.selected_rows
        except ToleranceError as error:
            logger.warning("round %d skipped: %s", server_round, error)
            detail = f"too few valid updates ({len(collected.node_ids)}): {error}"
            ledger.round_skipped(server_round, SkipReason.TOO_FEW_UPDATES, detail)
            return replace(
                skipped,
                skip_reason=detail,
                round_s=time.perf_counter() - started,
                central_metrics=self._evaluate_centrally(),
            )
        aggregation_s = time.perf_counter() - aggregation_started
        candidate = self.global_vector + aggregate.to(self.global_vector.dtype)
        if not bool(torch.isfinite(candidate).all()):
            # Finite updates can still sum past the float range; never commit that.
            logger.warning("round %d skipped: the new global model is not finite", server_round)
            detail = "aggregate would make the global model non-finite"
            ledger.round_skipped(server_round, SkipReason.NON_FINITE_MODEL, detail)
            return replace(
                skipped,
                skip_reason=detail,
                round_s=time.perf_counter() - started,
                central_metrics=self._evaluate_centrally(),
            )
        self.global_vector = candidate
        ledger.commit_model(
            server_round,
            list(self.global_weights.items()),
            participants=collected.node_ids,
            refused=[(item.node_id, item.reason.value) for item in collected.refused],
            privacy=self._privacy_record(),
        )
        crash_point(CrashPoint.AFTER_MODEL_WRITE, server_round)
        if self._adaptive_clip is not None:
            # The next round's C, from this round's noisy unclipped count (the noise drawn
            # from the same secure generator as the update's).
            self._adaptive_clip.advance(
                secure.unclipped_count()
                if secure
                else UnclippedCount(sum(collected.unclipped_bits), len(collected.unclipped_bits)),
                self._noise_generator,
            )
        selected = (
            tuple(collected.node_ids[row] for row in selected_rows)
            if selected_rows is not None and self.pipeline.preserves_rows and not secure
            else None
        )
        # In DP mode no per-client score is computed (docs/monitoring.md).
        scores = (
            None
            if self.accountant is not None or secure is not None  # secure: rows are groups
            else anomaly_scores(
                collected.matrix,
                aggregate,
                selected_rows if self.pipeline.preserves_rows else None,
            ).score.tolist()
        )
        # Secure mode scores group means by the same rule (not in DP mode either).
        group_scores, groups, flagged_groups = (
            self._score_groups(secure, collected.matrix, aggregate, selected_rows)
            if secure is not None and self.accountant is None
            else (None, None, ())
        )
        federated: dict[str, float] = {}
        # In DP mode clients' evaluation figures would be released without noise: not asked.
        if self.config.federated_evaluation and self.accountant is None:
            federated, evaluation_failures = self._evaluate_federated(grid, sampled, server_round)
            failures = failures + evaluation_failures
        ledger.round_completed(server_round)
        return replace(
            skipped,
            committed=True,
            selected_nodes=selected,
            weights=None if collected.weights is None else tuple(collected.weights.tolist()),
            aggregate_norm=float(torch.linalg.vector_norm(aggregate)),
            aggregation_s=aggregation_s,
            round_s=time.perf_counter() - started,
            central_metrics=self._evaluate_centrally(),
            federated_metrics=federated,
            verification_failures=failures,
            model_digest=ledger.model_digest,
            anomaly_scores=None
            if scores is None
            else {str(node): score for node, score in zip(collected.node_ids, scores, strict=True)},
            group_scores=group_scores,
            groups=groups,
            flagged_groups=flagged_groups,
        )

    def _score_groups(
        self,
        secure: SecureRoundResult,
        means: torch.Tensor,
        centre: torch.Tensor,
        selected_rows: Sequence[int] | None,
    ) -> tuple[dict[str, float], dict[str, tuple[int, ...]], tuple[str, ...]]:
        """Secure mode: each accepted group mean scored as plaintext mode scores an update,
        against the robust centre over the group means; a group is flagged when its score
        reaches the policy's flag score, or when its mean was refused (longer than C)."""
        rows = anomaly_scores(
            means, centre, selected_rows if self.pipeline.preserves_rows else None
        ).score.tolist()
        scores = {group.group_id: score for group, score in zip(secure.accepted, rows, strict=True)}
        groups = {
            group.group_id: group.survivors
            for group in secure.groups
            if group.status is not GroupStatus.ABORTED and group.survivors
        }
        flag_score = self.quarantine.config.attribution.flag_score
        flagged = tuple(
            group for group in groups if group not in scores or scores[group] >= flag_score
        )
        return scores, groups, flagged

    def _read_client_verdicts(
        self, replies: Sequence[Message], sampled: Sequence[int], server_round: int, phase: str
    ) -> tuple[VerificationFailure, ...]:
        """Record which model each node accepted, and audit each node that refused it."""
        expected = set(sampled)
        failures = []
        for reply in replies:
            node_id = int(reply.metadata.src_node_id)
            if node_id not in expected:
                continue
            if reply.has_error():
                reason = protocol.refusal_reason(reply.error.code)
                if reason is None:
                    continue
                detail = str(reply.error.reason)
                logger.warning(
                    "round %d: node %d refused the %s model: %s",
                    server_round,
                    node_id,
                    phase,
                    detail,
                )
                self.ledger.client_verification_failed(server_round, node_id, reason, detail)
                failures.append(VerificationFailure(node_id, reason, detail, phase))
                continue
            lineage = reply.content.config_records.get(protocol.LINEAGE_KEY)
            digest = None if lineage is None else lineage.get(protocol.ACCEPTED_DIGEST)
            if isinstance(digest, str) and digest == self.ledger.model_digest:
                self._node_digests[node_id] = digest
        return tuple(failures)

    def _manifest_record(self, node_id: int, revocations: bytes | None) -> ConfigRecord:
        """The signed manifest, the chain from the node's last accepted model, revocations and
        the key rotations that lead from the pinned key to the signing key."""
        signed = self.ledger.signed_manifest(self.ledger.model_digest)
        record = ConfigRecord({protocol.SIGNED_MANIFEST: signed.to_bytes()})
        chain = self.ledger.chain_for(self._node_digests.get(node_id))
        if chain:
            record[protocol.CHAIN] = [link.to_bytes() for link in chain]
        if revocations is not None:
            record[protocol.REVOCATIONS] = revocations
        rotations = self.ledger.rotations()
        if rotations:
            record[protocol.ROTATIONS] = rotations
        return record

    def _train_messages(self, nodes: Iterable[int], server_round: int) -> list[Message]:
        model = vector_to_record(self.global_vector, self.spec)
        revocations = self.ledger.revocations()
        privacy = self._round_privacy().to_record()
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
            content = RecordDict(
                {
                    protocol.GLOBAL_MODEL_KEY: model,
                    protocol.CONFIG_KEY: config,
                    protocol.MANIFEST_KEY: self._manifest_record(node_id, revocations),
                    protocol.PRIVACY_KEY: privacy,
                }
            )
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
    ) -> tuple[dict[str, float], tuple[VerificationFailure, ...]]:
        """Ask the sampled nodes to score the new (signed) model on their own test data.

        Reported figures are not trusted for anything but display; they are
        averaged uniformly over well-formed replies.
        """
        model: ArrayRecord = vector_to_record(self.global_vector, self.spec)
        config = ConfigRecord({protocol.ROUND: server_round, protocol.MODEL: self.config.model})
        revocations = self.ledger.revocations()
        messages = [
            Message(
                RecordDict(
                    {
                        protocol.GLOBAL_MODEL_KEY: model,
                        protocol.CONFIG_KEY: config,
                        protocol.MANIFEST_KEY: self._manifest_record(node_id, revocations),
                    }
                ),
                dst_node_id=node_id,
                message_type=MessageType.EVALUATE,
                group_id=str(server_round),
            )
            for node_id in nodes
        ]
        losses, accuracies = [], []
        replies = list(grid.send_and_receive(messages, timeout=self.config.round_timeout_s))
        failures = self._read_client_verdicts(replies, nodes, server_round, "evaluate")
        for reply in replies:
            if reply.has_error() or protocol.METRICS_KEY not in reply.content.metric_records:
                continue
            metrics = reply.content.metric_records[protocol.METRICS_KEY]
            loss, accuracy = metrics.get(protocol.EVAL_LOSS), metrics.get(protocol.EVAL_ACCURACY)
            if isinstance(loss, float) and isinstance(accuracy, float) and 0 <= accuracy <= 1:
                losses.append(loss)
                accuracies.append(accuracy)
        if not accuracies:
            return {}, failures
        return {
            "loss": float(np.mean(losses)),
            "accuracy": float(np.mean(accuracies)),
        }, failures

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
