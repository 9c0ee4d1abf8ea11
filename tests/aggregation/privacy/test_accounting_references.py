"""The accountant against dp-accounting used directly, and PLD against a closed form.

For q = 1 the T-fold Gaussian mechanism is μ-Gaussian DP with μ = √T / z, whose exact
privacy curve is δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2) (Balle & Wang 2018).
"""

from __future__ import annotations

import math

import dp_accounting  # type: ignore[import-untyped]
import pytest
from dp_accounting import pld, rdp

from ztfl.aggregation.privacy.accounting import AccountantConfig, PrivacyAccountant

DELTA = 1e-5
CASES = [(1.0, 0.01, 100), (1.1, 0.1, 50), (0.8, 0.05, 300), (5.0, 1.0, 1000)]


def direct_epsilon(accountant: object, z: float, q: float, rounds: int) -> float:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds
    )
    accountant.compose(event)  # type: ignore[attr-defined]
    return float(accountant.get_epsilon(DELTA))  # type: ignore[attr-defined]


@pytest.mark.parametrize(("z", "q", "rounds"), CASES)
def test_rdp_poisson_matches_dp_accounting(z: float, q: float, rounds: int) -> None:
    ours = PrivacyAccountant(AccountantConfig("rdp", "poisson", z, DELTA, sampling_rate=q))
    expected = direct_epsilon(rdp.RdpAccountant(), z, q, rounds)
    assert ours.epsilon_after(rounds) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("z", "q", "rounds"), CASES)
def test_pld_poisson_matches_dp_accounting(z: float, q: float, rounds: int) -> None:
    config = AccountantConfig("pld", "poisson", z, DELTA, sampling_rate=q)
    ours = PrivacyAccountant(config)
    direct = pld.PLDAccountant(value_discretization_interval=config.pld_discretization)
    assert ours.epsilon_after(rounds) == pytest.approx(
        direct_epsilon(direct, z, q, rounds), rel=1e-9
    )


def test_rdp_fixed_size_matches_dp_accounting() -> None:
    config = AccountantConfig("rdp", "fixed_size", 1.0, DELTA, sample_size=10, population=1000)
    direct = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        1000, 10, dp_accounting.GaussianDpEvent(1.0)
    )
    direct.compose(dp_accounting.SelfComposedDpEvent(event, 200))
    ours = PrivacyAccountant(config).epsilon_after(200)
    assert ours == pytest.approx(float(direct.get_epsilon(DELTA)), rel=1e-9)


def gaussian_delta(epsilon: float, mu: float) -> float:
    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2.0))

    return phi(-epsilon / mu + mu / 2) - math.exp(epsilon) * phi(-epsilon / mu - mu / 2)


def gaussian_epsilon(delta: float, mu: float) -> float:
    """Invert the decreasing δ(ε) by bisection."""
    low, high = 0.0, 1.0
    while gaussian_delta(high, mu) > delta:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2
        if gaussian_delta(middle, mu) > delta:
            low = middle
        else:
            high = middle
    return high


@pytest.mark.parametrize(("z", "rounds"), [(1.0, 1), (2.0, 10), (5.0, 100), (20.0, 1000)])
def test_pld_without_subsampling_matches_the_exact_gaussian_curve(z: float, rounds: int) -> None:
    exact = gaussian_epsilon(DELTA, math.sqrt(rounds) / z)
    ours = PrivacyAccountant(AccountantConfig("pld", "poisson", z, DELTA, sampling_rate=1.0))
    epsilon = ours.epsilon_after(rounds)
    # PLD discretisation is pessimistic: never below the exact ε, and close to it.
    assert epsilon >= exact * (1 - 1e-6)
    assert epsilon == pytest.approx(exact, rel=5e-3)
