"""The coordinator's configuration: a frozen dataclass validated when built.

Flower hands the ServerApp a flat ``run_config`` (from ``[tool.flwr.app.config]``
or ``--run-config``); ``CoordinatorConfig.from_run_config`` is the one place
that parses it, so a bad value fails before the first round with a message
naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from ztfl.aggregation import Pipeline, build_pipeline
from ztfl.aggregation.errors import PipelineConfigError
from ztfl.aggregation.privacy.accounting import (
    ACCOUNTANT_KINDS,
    AccountantConfig,
    AccountingError,
)
from ztfl.aggregation.privacy.calibration import CalibrationError, calibrate_noise_multiplier
from ztfl.aggregation.privacy.sensitivity import DPConfigurationError, pipeline_sensitivity

from .quarantine import QuarantineConfig


class Weighting(StrEnum):
    """How client updates are weighted. Reported example counts are never taken on trust."""

    UNIFORM = "uniform"
    """Every accepted update counts the same (the default)."""
    CAPPED_EXAMPLES = "capped-examples"
    """Weight by the reported example count, capped at ``max-examples``; both are recorded."""


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class CoordinatorConfig:
    """Everything one federated run needs to know, with secure, working defaults."""

    num_rounds: int = 5
    clients_per_round: int = 0
    min_nodes: int = 2
    pipeline: str = "nnm -> trimmed_mean"
    num_byzantine: int = 0
    max_update_norm: float = 100.0
    weighting: Weighting = Weighting.UNIFORM
    max_examples: int = 10_000
    model: str = "mlp"
    local_epochs: int = 2
    learning_rate: float = 0.05
    batch_size: int = 16
    seed: int | None = None
    round_timeout_s: float = 600.0
    node_wait_timeout_s: float = 120.0
    federated_evaluation: bool = True
    state_dir: str = ""
    """Folder of the run's state, audit log and signed models (required by the ServerApp)."""
    signing_key: str = ""
    """PEM file of the model-signing key (``ztfl model keygen``; never a TLS key)."""
    resume: bool = False
    """Continue the run in ``state_dir`` instead of starting one."""
    model_validity_hours: float = 24.0
    """How long a signed global model stays valid for clients."""
    revocation_list: str = ""
    """Optional signed revocation list (``sign_revocation_list``), sent with every broadcast."""
    key_rotations: str = ""
    """Comma-separated rotation statement files (``ztfl model rotate``), sent with every broadcast:
    the chain from the key clients pin to ``signing_key``."""
    dp: bool = False
    """Differentially private aggregation (docs/privacy.md, "In the coordinator")."""
    dp_clip_norm: float = 1.0
    """C: the server re-clips every accepted update to this L2 norm."""
    dp_noise_multiplier: float = 0.0
    """z: noise std / sensitivity; 0 = calibrate it from ``dp_target_epsilon``."""
    dp_target_epsilon: float = 0.0
    """ε the whole run (``num_rounds``) may reach; used to calibrate z when it is 0."""
    dp_delta: float = 1e-5
    """δ at which ε is accounted and reported."""
    dp_epsilon_budget: float = 0.0
    """ε above which no round is run; 0 = ``dp_target_epsilon`` (no budget if that is 0 too)."""
    dp_accountant: str = "rdp"
    """``rdp`` or ``pld``."""
    dp_sampling_rate: float = 1.0
    """q: each connected node takes part in a round independently with this probability."""
    dp_adaptive_clipping: bool = False
    """Move C each round towards the ``dp_target_unclipped_quantile`` of the update norms
    (Andrew et al., 2021), starting from ``dp_clip_norm``."""
    dp_clip_learning_rate: float = 0.2
    """η of the adaptive clip norm's geometric update."""
    dp_target_unclipped_quantile: float = 0.5
    """γ: the fraction of updates adaptive clipping aims to leave unclipped."""
    dp_clipped_count_stddev: float = 0.0
    """σ_b, the noise on the count of unclipped updates, in clients; 0 = expected clients / 20."""
    quarantine: bool = True
    """Exclude nodes whose reputation falls below ``quarantine_threshold`` (docs/monitoring.md);
    false: scores and reputations are still recorded, nobody is excluded."""
    reputation_decay: float = 0.8
    """λ: each round's evidence moves a node's reputation by (1 − λ) of the way."""
    quarantine_threshold: float = 0.5
    """Reputation (1 = fully trusted) below which a node is quarantined."""
    quarantine_min_rounds: int = 3
    """Rounds a node must have been observed in before it can be quarantined."""
    secure_aggregation: bool = False
    """Secure mode (docs/secure-aggregation.md): sampled nodes are split at random into groups
    of ``group_size``, each group runs SecAgg+, and the pipeline runs over the group means.
    Clients clip to C (``dp_clip_norm`` with DP, else ``max_update_norm``)."""
    group_size: int = 5
    """k, the smallest secure-aggregation group (never below 3)."""
    secagg_threshold: int = 0
    """t, shares needed to unmask in a group of k; 0 = ⌊k/2⌋ + 1."""
    federation_ca: str = ""
    """Secure mode: the federation CA certificate, to check members' certificates here too
    (peers always check them; without it one bad certificate aborts its group)."""
    federation_crl: str = ""
    """Secure mode: the federation CRL that goes with ``federation_ca``."""

    def __post_init__(self) -> None:
        checks = {
            "num-server-rounds": self.num_rounds >= 1,
            "clients-per-round": self.clients_per_round >= 0,
            "min-nodes": self.min_nodes >= 1,
            "num-byzantine": self.num_byzantine >= 0,
            "max-update-norm": self.max_update_norm > 0,
            "max-examples": self.max_examples >= 1,
            "local-epochs": self.local_epochs >= 1,
            "learning-rate": self.learning_rate > 0,
            "batch-size": self.batch_size >= 1,
            "round-timeout-s": self.round_timeout_s > 0,
            "node-wait-timeout-s": self.node_wait_timeout_s > 0,
            "model-validity-hours": 0 < self.model_validity_hours <= 24 * 366,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"{key} is out of range")
        try:
            self.quarantine_config()
        except ValueError as error:
            raise ConfigError(str(error)) from None
        pipeline = self.build_pipeline()
        if self.dp:
            self._check_dp(pipeline)
        if self.weighting is not Weighting.UNIFORM and not pipeline.supports_weights:
            raise ConfigError(
                f"weighting={self.weighting} needs a rule that uses weights; "
                f"{pipeline.rule.name} does not"
            )
        # With clients-per-round = 0 every connected node takes part, and the
        # coordinator starts once min-nodes are connected.
        key, per_round = (
            ("clients-per-round", self.clients_per_round)
            if self.clients_per_round
            else ("min-nodes", self.min_nodes)
        )
        if per_round < pipeline.minimum_clients():
            raise ConfigError(
                f"pipeline '{pipeline.description}' with num-byzantine={self.num_byzantine} needs "
                f"at least {pipeline.minimum_clients()} updates per round; {key} is {per_round}"
            )
        if self.secure_aggregation:
            self._check_secure(pipeline, key, per_round)

    def _check_secure(self, pipeline: Pipeline, key: str, per_round: int) -> None:
        """Secure mode: a valid k and t, enough groups for the rule, no per-client weights,
        and with DP only the mean (its noise is calibrated independently of the grouping)."""
        if self.group_size < 3:
            raise ConfigError(f"group-size must be at least 3, got {self.group_size}")
        threshold = self.secagg_threshold
        if threshold and not (2 * threshold > self.group_size and threshold <= self.group_size):
            raise ConfigError(
                f"secagg-threshold must satisfy k/2 < t ≤ k (group-size {self.group_size}), "
                f"got {threshold}"
            )
        if self.weighting is not Weighting.UNIFORM:
            raise ConfigError("secure-aggregation hides per-client weights: weighting=uniform")
        if bool(self.federation_ca) != bool(self.federation_crl):
            raise ConfigError("federation-ca and federation-crl go together")
        if self.dp and pipeline.rule.name != "mean":
            raise ConfigError(
                "dp with secure-aggregation needs pipeline 'mean' (a fixed-denominator sum of "
                "the group sums); a robust rule over group means has no grouping-independent "
                "sensitivity"
            )
        groups = per_round // self.group_size
        if not self.dp and groups < pipeline.minimum_clients():
            raise ConfigError(
                f"pipeline '{pipeline.description}' needs {pipeline.minimum_clients()} group "
                f"means per round; {key} = {per_round} makes {groups} groups of "
                f"group-size {self.group_size}"
            )

    def _check_dp(self, pipeline: Pipeline) -> None:
        """Refuse a DP configuration that has no privacy guarantee, naming the key."""
        if self.clients_per_round:
            raise ConfigError(
                "dp samples each node with probability dp-sampling-rate; "
                "clients-per-round must be 0"
            )
        try:
            pipeline_sensitivity(
                pipeline,
                clip_norm=self.dp_clip_norm,
                expected_clients=1,
                client_weights=self.weighting is not Weighting.UNIFORM,
            )
        except DPConfigurationError as error:
            raise ConfigError(f"dp with pipeline '{pipeline.description}': {error}") from error
        except PipelineConfigError as error:
            raise ConfigError(f"dp-clip-norm: {error}") from error
        if not math.isfinite(self.dp_epsilon_budget) or self.dp_epsilon_budget < 0:
            raise ConfigError("dp-epsilon-budget must be >= 0 (0: dp-target-epsilon)")
        if self.dp_noise_multiplier and self.dp_target_epsilon:
            raise ConfigError("set dp-noise-multiplier or dp-target-epsilon, not both")
        if not self.dp_noise_multiplier and not self.dp_target_epsilon:
            raise ConfigError("dp needs dp-noise-multiplier > 0 or dp-target-epsilon > 0")
        adaptive_ranges = {
            "dp-clip-learning-rate": math.isfinite(self.dp_clip_learning_rate)
            and self.dp_clip_learning_rate > 0,
            "dp-target-unclipped-quantile": 0 < self.dp_target_unclipped_quantile < 1,
            "dp-clipped-count-stddev": math.isfinite(self.dp_clipped_count_stddev)
            and self.dp_clipped_count_stddev >= 0,
        }
        for key, ok in adaptive_ranges.items():
            if not ok:
                raise ConfigError(f"{key} is out of range")
        self.accountant_config()

    def dp_budget(self) -> float | None:
        """The ε no round may take the run above, or None without a budget."""
        return self.dp_epsilon_budget or self.dp_target_epsilon or None

    def accountant_config(self) -> AccountantConfig:
        """What the run's accountant composes: z (calibrated when a target ε is given), q, δ.

        Raises ConfigError naming the key for an out-of-range value or an unreachable target.
        """
        if self.dp_accountant not in ACCOUNTANT_KINDS:
            raise ConfigError(
                f"dp-accountant must be one of {', '.join(ACCOUNTANT_KINDS)}, "
                f"got {self.dp_accountant!r}"
            )
        settings: dict[str, Any] = {
            "kind": self.dp_accountant,
            "sampling": "poisson",
            "noise_multiplier": self.dp_noise_multiplier or 1.0,
            "delta": self.dp_delta,
            "sampling_rate": self.dp_sampling_rate,
        }
        ranges = {
            "dp-noise-multiplier": math.isfinite(self.dp_noise_multiplier)
            and self.dp_noise_multiplier >= 0,
            "dp-target-epsilon": math.isfinite(self.dp_target_epsilon)
            and self.dp_target_epsilon >= 0,
            "dp-delta": 0 < self.dp_delta < 1,
            "dp-sampling-rate": 0 < self.dp_sampling_rate <= 1,
        }
        for key, ok in ranges.items():
            if not ok:
                raise ConfigError(f"{key} is out of range")
        try:
            config = AccountantConfig(**settings)
            if self.dp_noise_multiplier:
                return config
            settings["noise_multiplier"] = calibrate_noise_multiplier(
                self.dp_target_epsilon, self.num_rounds, config
            )
        except CalibrationError as error:
            raise ConfigError(f"dp-target-epsilon: {error}") from error
        except AccountingError as error:
            raise ConfigError(f"dp: {error}") from error
        return AccountantConfig(**settings)

    def quarantine_config(self) -> QuarantineConfig:
        """The quarantine policy's settings; ValueError naming the key when out of range."""
        return QuarantineConfig(
            enabled=self.quarantine,
            decay=self.reputation_decay,
            threshold=self.quarantine_threshold,
            min_rounds=self.quarantine_min_rounds,
        )

    def build_pipeline(self) -> Pipeline:
        """The aggregation pipeline this configuration names."""
        try:
            return build_pipeline(self.pipeline, num_byzantine=self.num_byzantine)
        except ValueError as error:
            raise ConfigError(f"pipeline: {error}") from error

    def key_rotation_paths(self) -> tuple[Path, ...]:
        """The rotation statement files ``key-rotations`` names, in the order given."""
        return tuple(Path(part.strip()) for part in self.key_rotations.split(",") if part.strip())

    def to_run_config(self) -> dict[str, bool | int | float | str | None]:
        """The configuration as Flower-style kebab-case keys (what the state file records)."""
        return {
            _key(item.name): getattr(self, item.name)
            if not isinstance(getattr(self, item.name), StrEnum)
            else str(getattr(self, item.name))
            for item in fields(self)
        }

    def audit_summary(self) -> dict[str, bool | int | float | str | None]:
        """What RUN_STARTED records: every setting but file paths of secrets.

        ``key-rotations`` (public statements) is recorded as ``rotation-statements``:
        the audit log refuses detail names that look like secrets.
        """
        summary = self.to_run_config()
        summary.pop("signing-key")
        summary["rotation-statements"] = summary.pop("key-rotations")
        return summary

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> CoordinatorConfig:
        """Parse Flower's flat run config (kebab-case keys); unknown keys are refused."""
        known = {_key(field.name): field for field in fields(cls)}
        unknown = sorted(set(run_config) - set(known) - IGNORED_RUN_CONFIG_KEYS)
        if unknown:
            raise ConfigError(f"unknown configuration key(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for key, field in known.items():
            if key not in run_config:
                continue
            values[field.name] = _convert(key, run_config[key], str(field.type))
        return cls(**values)


# Keys the Flower app declares for someone other than the coordinator: the client side
# (data partitioning in simulation), and the ServerApp itself (its metrics endpoint).
IGNORED_RUN_CONFIG_KEYS = frozenset({"partition-alpha", "metrics-port"})

_RENAMES = {"num_rounds": "num-server-rounds"}


def _key(field_name: str) -> str:
    return _RENAMES.get(field_name, field_name.replace("_", "-"))


def _convert(key: str, value: Any, annotation: str) -> Any:
    """Coerce a run-config value to the field's type, refusing lossy conversions."""
    if annotation == "Weighting":
        try:
            return Weighting(value)
        except ValueError:
            choices = ", ".join(item.value for item in Weighting)
            raise ConfigError(f"{key} must be one of {choices}, got {value!r}") from None
    if annotation == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if annotation in ("int", "int | None"):
        if annotation == "int | None" and (value is None or value == ""):
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if annotation == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if annotation == "str":
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {annotation}")
