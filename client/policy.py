"""A data holder's privacy policy floor: the weakest round it agrees to train in.

The coordinator proposes, the client decides. Every training message carries the
round's differential-privacy settings (``protocol.PRIVACY_KEY``); before training, the
client compares them with its own policy, read from its node configuration (never from a
message), and refuses a weaker round with ``ClientErrorCode.POLICY_FLOOR`` and a reason
naming the setting. Node-config keys (all optional; none set = no floor)::

    require-dp = true            refuse rounds without differential privacy
    max-clip-norm = 1.0          refuse a clip norm C above this
    max-epsilon = 8.0            refuse a run whose ε budget, or ε already spent, is above
                                 this (a DP run without a budget is refused too)
    min-noise-multiplier = 0.8   refuse a noise multiplier z below this
    max-delta = 1e-5             refuse a δ above this

Any limit on a DP setting implies ``require-dp``: a limit on the clip norm means nothing
in a round without DP. The checks are against what the coordinator declares; a coordinator
that lies about its noise is outside what a client can verify (docs/privacy.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from flwr.app import ConfigRecord

from . import protocol

REQUIRE_DP = "require-dp"
MAX_CLIP_NORM = "max-clip-norm"
MAX_EPSILON = "max-epsilon"
MIN_NOISE_MULTIPLIER = "min-noise-multiplier"
MAX_DELTA = "max-delta"
POLICY_KEYS = (REQUIRE_DP, MAX_CLIP_NORM, MAX_EPSILON, MIN_NOISE_MULTIPLIER, MAX_DELTA)


class PolicyError(ValueError):
    """The node's own policy settings are malformed (a node-config key of the wrong type)."""


class PolicyViolation(ValueError):  # noqa: N818 - a refusal is an outcome, not an error
    """The round is weaker than the node's policy; the message says which setting and why."""


@dataclass(frozen=True)
class RoundPrivacy:
    """The differential-privacy settings a coordinator declares for one round."""

    dp: bool
    clip_norm: float | None = None
    noise_multiplier: float | None = None
    delta: float | None = None
    epsilon_spent: float | None = None
    epsilon_budget: float | None = None
    """None: the run has no budget (it may spend ε without bound)."""
    sampling_rate: float | None = None
    accountant: str | None = None

    @classmethod
    def from_record(cls, record: ConfigRecord | None) -> RoundPrivacy:
        """Parse the message's privacy record; a missing record declares no DP.

        Raises PolicyViolation for a DP record with a missing or malformed setting: a round
        whose guarantees cannot be read is weaker than any floor.
        """
        if record is None:
            return cls(dp=False)
        dp = record.get(protocol.DP)
        if not isinstance(dp, bool):
            raise PolicyViolation(f"the round's {protocol.DP} setting is {dp!r}, not a boolean")
        if not dp:
            return cls(dp=False)
        numbers = {
            key: _declared_number(record, key)
            for key in (
                protocol.CLIP_NORM,
                protocol.NOISE_MULTIPLIER,
                protocol.DELTA,
                protocol.EPSILON_SPENT,
                protocol.EPSILON_BUDGET,
                protocol.SAMPLING_RATE,
            )
        }
        if numbers[protocol.CLIP_NORM] <= 0 or numbers[protocol.NOISE_MULTIPLIER] <= 0:
            raise PolicyViolation("a DP round needs a clip norm and a noise multiplier above 0")
        accountant = record.get(protocol.ACCOUNTANT)
        return cls(
            dp=True,
            clip_norm=numbers[protocol.CLIP_NORM],
            noise_multiplier=numbers[protocol.NOISE_MULTIPLIER],
            delta=numbers[protocol.DELTA],
            epsilon_spent=numbers[protocol.EPSILON_SPENT],
            epsilon_budget=numbers[protocol.EPSILON_BUDGET] or None,
            sampling_rate=numbers[protocol.SAMPLING_RATE],
            accountant=accountant if isinstance(accountant, str) else None,
        )

    def to_record(self) -> ConfigRecord:
        """The record a coordinator sends (the inverse of ``from_record``)."""
        if not self.dp:
            return ConfigRecord({protocol.DP: False})
        return ConfigRecord(
            {
                protocol.DP: True,
                protocol.CLIP_NORM: _required(self.clip_norm),
                protocol.NOISE_MULTIPLIER: _required(self.noise_multiplier),
                protocol.DELTA: _required(self.delta),
                protocol.EPSILON_SPENT: _required(self.epsilon_spent),
                protocol.EPSILON_BUDGET: self.epsilon_budget or 0.0,
                protocol.SAMPLING_RATE: _required(self.sampling_rate),
                protocol.ACCOUNTANT: self.accountant or "",
            }
        )


@dataclass(frozen=True)
class PrivacyPolicy:
    """The floor one node holds every round to; the defaults impose nothing."""

    require_dp: bool = False
    max_clip_norm: float | None = None
    max_epsilon: float | None = None
    min_noise_multiplier: float | None = None
    max_delta: float | None = None

    def __post_init__(self) -> None:
        limits = {
            MAX_CLIP_NORM: self.max_clip_norm,
            MAX_EPSILON: self.max_epsilon,
            MIN_NOISE_MULTIPLIER: self.min_noise_multiplier,
            MAX_DELTA: self.max_delta,
        }
        for key, value in limits.items():
            if value is not None and not (math.isfinite(value) and value > 0):
                raise PolicyError(f"{key} must be a finite number above 0, got {value!r}")
        if self.max_delta is not None and self.max_delta >= 1:
            raise PolicyError(f"{MAX_DELTA} must be below 1, got {self.max_delta!r}")

    @property
    def demands_dp(self) -> bool:
        """Whether this policy refuses rounds without DP (explicitly, or through a DP limit)."""
        return self.require_dp or any(
            limit is not None
            for limit in (
                self.max_clip_norm,
                self.max_epsilon,
                self.min_noise_multiplier,
                self.max_delta,
            )
        )

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object]) -> PrivacyPolicy:
        """The policy in a node's configuration; PolicyError names a malformed key."""
        require = node_config.get(REQUIRE_DP, False)
        if not isinstance(require, bool):
            raise PolicyError(f"{REQUIRE_DP} must be true or false, got {require!r}")
        return cls(
            require_dp=require,
            max_clip_norm=_configured_number(node_config, MAX_CLIP_NORM),
            max_epsilon=_configured_number(node_config, MAX_EPSILON),
            min_noise_multiplier=_configured_number(node_config, MIN_NOISE_MULTIPLIER),
            max_delta=_configured_number(node_config, MAX_DELTA),
        )

    def check(self, round_privacy: RoundPrivacy) -> None:
        """Raise PolicyViolation naming the first setting of the round that is below the floor."""
        if not round_privacy.dp:
            if self.demands_dp:
                raise PolicyViolation(
                    "the round has no differential privacy; this node's policy requires it"
                )
            return
        clip_norm = _required(round_privacy.clip_norm)
        if self.max_clip_norm is not None and clip_norm > self.max_clip_norm:
            raise PolicyViolation(
                f"clip norm {clip_norm:g} is above this node's maximum {self.max_clip_norm:g}"
            )
        noise = _required(round_privacy.noise_multiplier)
        if self.min_noise_multiplier is not None and noise < self.min_noise_multiplier:
            raise PolicyViolation(
                f"noise multiplier {noise:g} is below this node's minimum "
                f"{self.min_noise_multiplier:g}"
            )
        delta = _required(round_privacy.delta)
        if self.max_delta is not None and delta > self.max_delta:
            raise PolicyViolation(f"δ {delta:g} is above this node's maximum {self.max_delta:g}")
        if self.max_epsilon is not None:
            budget = round_privacy.epsilon_budget
            if budget is None:
                raise PolicyViolation(
                    f"the run has no ε budget; this node's limit is ε ≤ {self.max_epsilon:g}"
                )
            if budget > self.max_epsilon:
                raise PolicyViolation(
                    f"the run's ε budget {budget:g} is above this node's limit {self.max_epsilon:g}"
                )
            spent = _required(round_privacy.epsilon_spent)
            if spent > self.max_epsilon:
                raise PolicyViolation(
                    f"the run has already spent ε = {spent:g}, above this node's limit "
                    f"{self.max_epsilon:g}"
                )


def _declared_number(record: ConfigRecord, key: str) -> float:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PolicyViolation(f"the round's {key} setting is {value!r}, not a finite number")
    if value < 0:
        raise PolicyViolation(f"the round's {key} setting is negative ({value!r})")
    return float(value)


def _configured_number(node_config: Mapping[str, object], key: str) -> float | None:
    value = node_config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(f"{key} must be a number, got {value!r}")
    return float(value)


def _required(value: float | None) -> float:
    if value is None:
        raise PolicyViolation("a DP round must declare every DP setting")
    return value


# Secure aggregation floor -------------------------------------------------------------------
SECAGG_MIN_GROUP_SIZE = "secagg-min-group-size"
SECAGG_MIN_THRESHOLD = "secagg-min-threshold"
REQUIRE_SECURE_AGGREGATION = "require-secure-aggregation"
SECAGG_POLICY_KEYS = (SECAGG_MIN_GROUP_SIZE, SECAGG_MIN_THRESHOLD, REQUIRE_SECURE_AGGREGATION)

SECAGG_FLOOR_GROUP_SIZE = 3
"""No node takes part in a group smaller than this, whatever its configuration says."""


@dataclass(frozen=True)
class SecureAggregationPolicy:
    """The weakest secure-aggregation round a node takes part in, from its node config::

        secagg-min-group-size = 5        refuse groups of fewer members (k; at least 3)
        secagg-min-threshold = 3         refuse a threshold t below this (t > k/2 always)
        require-secure-aggregation = true   refuse plaintext training rounds

    A member checks k and t in the group's signed setup before it generates any key
    (``SecAggRefusalReason.WEAK_PARAMETERS``): the coordinator proposes, the client decides.
    """

    min_group_size: int = SECAGG_FLOOR_GROUP_SIZE
    min_threshold: int = 2
    require_secure_aggregation: bool = False

    def __post_init__(self) -> None:
        if self.min_group_size < SECAGG_FLOOR_GROUP_SIZE:
            raise PolicyError(
                f"{SECAGG_MIN_GROUP_SIZE} must be at least {SECAGG_FLOOR_GROUP_SIZE}, "
                f"got {self.min_group_size}"
            )
        if self.min_threshold < 2:
            raise PolicyError(
                f"{SECAGG_MIN_THRESHOLD} must be at least 2, got {self.min_threshold}"
            )

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object]) -> SecureAggregationPolicy:
        """The floor in a node's configuration; PolicyError names a malformed key."""
        require = node_config.get(REQUIRE_SECURE_AGGREGATION, False)
        if not isinstance(require, bool):
            raise PolicyError(
                f"{REQUIRE_SECURE_AGGREGATION} must be true or false, got {require!r}"
            )
        return cls(
            min_group_size=_configured_count(
                node_config, SECAGG_MIN_GROUP_SIZE, SECAGG_FLOOR_GROUP_SIZE
            ),
            min_threshold=_configured_count(node_config, SECAGG_MIN_THRESHOLD, 2),
            require_secure_aggregation=require,
        )

    def check_plaintext_round(self) -> None:
        """Raise PolicyViolation when this node only takes part in secure rounds."""
        if self.require_secure_aggregation:
            raise PolicyViolation(
                "the round sends updates in the clear; this node's policy requires secure "
                "aggregation"
            )


def _configured_count(node_config: Mapping[str, object], key: str, default: int) -> int:
    value = node_config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(f"{key} must be an integer, got {value!r}")
    return value
