"""Reputation: the trust ramp and the exponentially weighted memory of each node."""

from __future__ import annotations

import math

import pytest

from ztfl.aggregation.reputation import (
    INITIAL_REPUTATION,
    TrustRamp,
    rounds_to_fall,
    updated_reputation,
)


def test_the_ramp_gives_full_trust_below_and_none_above_its_scores() -> None:
    ramp = TrustRamp(trusted_score=2.0, untrusted_score=4.0)
    assert ramp.trust(0.0) == 1.0
    assert ramp.trust(2.0) == 1.0
    assert ramp.trust(3.0) == pytest.approx(0.5)
    assert ramp.trust(4.0) == 0.0
    assert ramp.trust(100.0) == 0.0


def test_a_nan_score_counts_as_full_evidence() -> None:
    assert TrustRamp().trust(math.nan) == 0.0


def test_a_ramp_whose_scores_are_out_of_order_is_refused() -> None:
    with pytest.raises(ValueError, match="untrusted_score"):
        TrustRamp(trusted_score=3.0, untrusted_score=3.0)


def test_reputation_moves_one_minus_decay_of_the_way_to_the_observation() -> None:
    assert updated_reputation(1.0, 0.0, 0.8) == pytest.approx(0.8)
    assert updated_reputation(0.5, 1.0, 0.8) == pytest.approx(0.6)


def test_one_bad_round_costs_at_most_one_minus_decay() -> None:
    assert updated_reputation(INITIAL_REPUTATION, 0.0, 0.8) >= INITIAL_REPUTATION - 0.2 - 1e-12


@pytest.mark.parametrize(
    ("previous", "trust", "decay"), [(1.2, 1.0, 0.5), (1.0, -0.1, 0.5), (1.0, 1.0, 1.0)]
)
def test_values_outside_their_range_are_refused(
    previous: float, trust: float, decay: float
) -> None:
    with pytest.raises(ValueError, match="must be in"):
        updated_reputation(previous, trust, decay)


@pytest.mark.parametrize(
    ("threshold", "decay", "trust"), [(0.5, 0.8, 0.0), (0.5, 0.8, 0.25), (0.3, 0.9, 0.1)]
)
def test_rounds_to_fall_matches_repeated_updates(
    threshold: float, decay: float, trust: float
) -> None:
    reputation, rounds = INITIAL_REPUTATION, 0
    while reputation >= threshold:
        reputation = updated_reputation(reputation, trust, decay)
        rounds += 1
    assert rounds_to_fall(threshold, decay, trust) == rounds


def test_observations_at_the_threshold_never_take_a_node_below_it() -> None:
    with pytest.raises(ValueError, match="never"):
        rounds_to_fall(0.5, 0.8, trust=0.5)
