"""Privacy accounting for the noisy aggregate, on Google's ``dp-accounting``.

One round is one DP event: the coordinator samples clients, sums their clipped updates
and adds Gaussian noise of std ``noise_multiplier × sensitivity``. The privacy unit is
one client's whole contribution to a round. Rounds compose (self-composition,
``SelfComposedDpEvent``) and the accountant reports ε for the configured δ:

- ``sampling="poisson"``: ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` under
  add-or-remove-one, sensitivity = the clip norm (Abadi et al. 2016; Mironov et al. 2019).
- ``sampling="fixed_size"``: ``SampledWithoutReplacementDpEvent(population, sample_size,
  GaussianDpEvent(z))`` under replace-one (Wang, Balle & Kasiviswanathan 2019). Replacing
  one client moves the sum by up to twice the clip norm, so the noise std must be
  ``z × 2 × clip_norm``. Only RDP supports this event in dp-accounting; PLD is refused.

``kind="rdp"`` is cheap and slightly loose; ``kind="pld"`` (privacy loss distributions,
Koskela et al. 2020; Doroshenko et al. 2022) is tight up to a pessimistic
discretisation (``pld_discretization``). Both assume sampling is exactly what the
config says: the coordinator must draw each client independently with probability
``q`` (Poisson), or a uniform subset of exactly ``sample_size`` (fixed size).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

import dp_accounting  # type: ignore[import-untyped]
from dp_accounting import pld, rdp

from ..errors import AggregationError

AccountantKind = Literal["rdp", "pld"]
SamplingKind = Literal["poisson", "fixed_size"]

ACCOUNTANT_KINDS: tuple[str, ...] = ("rdp", "pld")
SAMPLING_KINDS: tuple[str, ...] = ("poisson", "fixed_size")
STATE_VERSION = 1

DEFAULT_PLD_DISCRETIZATION = 1e-3
"""PLD grid step. dp-accounting's 1e-4 costs ~10× the time for ε differing in the 4th
significant digit; the discretisation is pessimistic, so a coarser grid only overstates ε."""


_NON_CONVERGENCE_PREFIX = "_compute_log_a_frac failed to converge"


class _DropOrderExclusionNotices(logging.Filter):
    """Drops dp-accounting's "failed to converge … excluding this order" warnings.

    RDP evaluates ε over a grid of Rényi orders; for a few fractional orders at extreme
    (q, z) its series does not converge, and it leaves that order out. ε is then the
    minimum over the remaining orders: still a valid (conservative) bound, so the notice
    carries no action for an operator, and calibration's search would print hundreds of
    them. Every other dp-accounting warning (e.g. a negative Rényi divergence) passes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NON_CONVERGENCE_PREFIX)


logging.getLogger("absl").addFilter(_DropOrderExclusionNotices())


class AccountingError(AggregationError, ValueError):
    """An accountant configuration or persisted state that cannot be used."""


@dataclass(frozen=True)
class AccountantConfig:
    """What is accounted for: the mechanism, its sampling, its noise and the target δ.

    Args:
        kind: ``"rdp"`` or ``"pld"``.
        sampling: ``"poisson"`` (needs ``sampling_rate``) or ``"fixed_size"`` (needs
            ``sample_size`` and ``population``; RDP only).
        noise_multiplier: z = noise std / L2 sensitivity of the round's sum; > 0.
        delta: the δ at which ε is reported; in (0, 1), typically < 1 / population.
        sampling_rate: q in (0, 1], the Poisson inclusion probability of each client.
        sample_size: clients per round for fixed-size sampling, 1 ≤ m ≤ population.
        population: the number of clients sampled from (public under replace-one).
        pld_discretization: the PLD grid step (ignored by RDP); > 0.
    """

    kind: AccountantKind
    sampling: SamplingKind
    noise_multiplier: float
    delta: float
    sampling_rate: float | None = None
    sample_size: int | None = None
    population: int | None = None
    pld_discretization: float = DEFAULT_PLD_DISCRETIZATION

    def __post_init__(self) -> None:
        if self.kind not in ACCOUNTANT_KINDS:
            raise AccountingError(f"kind must be one of {ACCOUNTANT_KINDS}, got {self.kind!r}")
        if self.sampling not in SAMPLING_KINDS:
            raise AccountingError(
                f"sampling must be one of {SAMPLING_KINDS}, got {self.sampling!r}"
            )
        _require_positive_finite("noise_multiplier", self.noise_multiplier)
        _require_positive_finite("pld_discretization", self.pld_discretization)
        if not _is_real(self.delta) or not 0.0 < self.delta < 1.0:
            raise AccountingError(f"delta must be in (0, 1), got {self.delta!r}")
        if self.sampling == "poisson":
            self._check_poisson()
        else:
            self._check_fixed_size()

    def _check_poisson(self) -> None:
        q = self.sampling_rate
        if q is None or not _is_real(q) or not 0.0 < q <= 1.0:
            raise AccountingError(f"poisson sampling needs sampling_rate in (0, 1], got {q!r}")
        if self.sample_size is not None or self.population is not None:
            raise AccountingError(
                "poisson sampling takes sampling_rate, not sample_size/population"
            )

    def _check_fixed_size(self) -> None:
        if self.kind == "pld":
            raise AccountingError(
                "fixed_size sampling is not supported by the PLD accountant "
                "(dp-accounting has no PLD for sampling without replacement); use kind='rdp'"
            )
        if self.sampling_rate is not None:
            raise AccountingError(
                "fixed_size sampling takes sample_size and population, not sampling_rate"
            )
        m, n = self.sample_size, self.population
        if not _is_int(m) or not _is_int(n) or not 1 <= cast(int, m) <= cast(int, n):
            raise AccountingError(
                "fixed_size sampling needs integers 1 <= sample_size <= population, "
                f"got {m!r}, {n!r}"
            )

    def round_event(self) -> Any:
        """The dp-accounting ``DpEvent`` of one round."""
        gaussian = dp_accounting.GaussianDpEvent(self.noise_multiplier)
        if self.sampling == "poisson":
            return dp_accounting.PoissonSampledDpEvent(self.sampling_rate, gaussian)
        return dp_accounting.SampledWithoutReplacementDpEvent(
            self.population, self.sample_size, gaussian
        )

    def neighboring_relation(self) -> Any:
        """Add-or-remove-one for Poisson sampling, replace-one for fixed-size sampling."""
        if self.sampling == "poisson":
            return dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
        return dp_accounting.NeighboringRelation.REPLACE_ONE

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> AccountantConfig:
        """Rebuild (and re-validate) a config from :meth:`to_dict`'s output."""
        if not isinstance(data, dict) or set(data) != set(cls.__dataclass_fields__):
            raise AccountingError(f"not an accountant config: {data!r}")
        return cls(**data)


class PrivacyAccountant:
    """ε spent so far by a run, one composed round at a time.

    ε after T rounds is computed from the per-round event and cached by T, so a restart
    (``from_state``) and ``would_exceed`` cost one evaluation each.

    Args:
        config: the accounted mechanism.
        rounds: rounds already composed (from persisted state); ≥ 0.
    """

    def __init__(self, config: AccountantConfig, rounds: int = 0) -> None:
        if not isinstance(config, AccountantConfig):
            raise AccountingError("config must be an AccountantConfig")
        if not _is_int(rounds) or rounds < 0:
            raise AccountingError(f"rounds must be an integer >= 0, got {rounds!r}")
        self._config = config
        self._rounds = rounds
        self._epsilon_cache: dict[int, float] = {0: 0.0}
        self._round_rdp: Any = None
        self._round_pld: Any = None

    @property
    def config(self) -> AccountantConfig:
        """The accounted mechanism."""
        return self._config

    @property
    def rounds(self) -> int:
        """Rounds composed so far."""
        return self._rounds

    def epsilon_after(self, rounds: int) -> float:
        """ε at the config's δ after ``rounds`` rounds (independent of rounds composed)."""
        if not _is_int(rounds) or rounds < 0:
            raise AccountingError(f"rounds must be an integer >= 0, got {rounds!r}")
        cached = self._epsilon_cache.get(rounds)
        if cached is None:
            cached = self._compute_epsilon(rounds)
            self._epsilon_cache[rounds] = cached
        return cached

    def compose_round(self) -> None:
        """Record that one more round (one noisy aggregate) was released."""
        self._rounds += 1

    def epsilon(self) -> float:
        """ε spent by the rounds composed so far."""
        return self.epsilon_after(self._rounds)

    def would_exceed(self, budget_epsilon: float) -> bool:
        """Whether running the NEXT round would take ε above ``budget_epsilon``."""
        if not _is_real(budget_epsilon) or math.isnan(budget_epsilon) or budget_epsilon < 0:
            raise AccountingError(f"budget_epsilon must be >= 0, got {budget_epsilon!r}")
        return self.epsilon_after(self._rounds + 1) > budget_epsilon

    def to_state(self) -> dict[str, Any]:
        """A small JSON-able dict (version, config, rounds) for the coordinator to persist."""
        return {"version": STATE_VERSION, "config": self._config.to_dict(), "rounds": self._rounds}

    @classmethod
    def from_state(
        cls, state: object, *, expected_config: AccountantConfig | None = None
    ) -> PrivacyAccountant:
        """Restore an accountant from :meth:`to_state`; never resets ε.

        Args:
            state: the persisted dict (or its JSON text).
            expected_config: the run's current config; a persisted config that
                differs is refused, since the rounds already spent were accounted
                under the persisted one.

        Raises:
            AccountingError: the state does not parse, or its config differs.
        """
        if isinstance(state, str):
            try:
                state = json.loads(state)
            except json.JSONDecodeError as error:
                raise AccountingError(f"accountant state is not JSON: {error}") from error
        if not isinstance(state, dict) or set(state) != {"version", "config", "rounds"}:
            raise AccountingError(f"not an accountant state: {state!r}")
        if state["version"] != STATE_VERSION:
            raise AccountingError(f"unsupported accountant state version {state['version']!r}")
        config = AccountantConfig.from_dict(state["config"])
        if expected_config is not None and config != expected_config:
            raise AccountingError(
                f"persisted accountant config {config} differs from the run's {expected_config}"
            )
        return cls(config, rounds=state["rounds"])

    def _compute_epsilon(self, rounds: int) -> float:
        config = self._config
        if config.kind == "rdp":
            # RDP composes additively (Mironov 2017): T rounds = T × one round's RDP curve.
            if self._round_rdp is None:
                one_round = rdp.RdpAccountant(neighboring_relation=config.neighboring_relation())
                one_round.compose(config.round_event())
                self._round_rdp = (one_round.orders, one_round.rdp)
            orders, round_rdp = self._round_rdp
            epsilon, _ = rdp.rdp_privacy_accountant.compute_epsilon(
                orders, round_rdp * rounds, config.delta
            )
            return float(epsilon)
        # PLD: build one round's distribution once, then self-compose it T times by
        # FFT; the same computation PLDAccountant does for SelfComposedDpEvent.
        if self._round_pld is None:
            self._round_pld = pld.privacy_loss_distribution.from_gaussian_mechanism(
                standard_deviation=config.noise_multiplier,
                value_discretization_interval=config.pld_discretization,
                sampling_prob=config.sampling_rate,
                neighboring_relation=config.neighboring_relation(),
            )
        composed = self._round_pld.self_compose(rounds)
        return float(composed.get_epsilon_for_delta(config.delta))


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_positive_finite(name: str, value: object) -> None:
    if not _is_real(value) or not math.isfinite(cast(float, value)) or cast(float, value) <= 0:
        raise AccountingError(f"{name} must be finite and > 0, got {value!r}")
