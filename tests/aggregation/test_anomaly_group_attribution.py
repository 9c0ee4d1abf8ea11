"""Secure mode: clients attributed from flagged groups across random regroupings."""

from __future__ import annotations

import math
import random

import pytest

from ztfl.aggregation.group_attribution import (
    GroupRound,
    attribute_flags,
    poisson_binomial_tail,
    suspected_clients,
    suspects_among,
)

NUM_CLIENTS = 30
ATTACKERS = frozenset({4, 11, 27})
GROUP_SIZE = 3


def regrouped_rounds(num_rounds: int, seed: int) -> list[GroupRound]:
    """Fresh random groups of 3 each round; a group is flagged when it holds an attacker."""
    generator = random.Random(seed)
    rounds: list[GroupRound] = []
    for _ in range(num_rounds):
        clients = list(range(NUM_CLIENTS))
        generator.shuffle(clients)
        groups = tuple(
            tuple(clients[i : i + GROUP_SIZE]) for i in range(0, NUM_CLIENTS, GROUP_SIZE)
        )
        flagged = frozenset(i for i, group in enumerate(groups) if ATTACKERS & set(group))
        rounds.append(GroupRound(groups, flagged, len(rounds) + 1))
    return rounds


def test_the_tail_equals_the_binomial_tail_when_every_probability_is_the_same() -> None:
    n, p = 20, 0.3
    for count in (0, 3, 6, 12, 20):
        expected = sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(count, n + 1))
        assert poisson_binomial_tail([p] * n, count) == pytest.approx(expected, rel=1e-9)


def test_the_tail_of_an_impossible_count_is_zero() -> None:
    assert poisson_binomial_tail([0.5, 0.5], 3) == 0.0


def test_clients_in_a_flagged_group_every_round_are_suspected_and_no_one_else() -> None:
    for seed in range(3):
        assert set(suspected_clients(regrouped_rounds(20, seed), significance=0.01)) == ATTACKERS


def test_an_honest_clients_flag_count_stays_near_chance() -> None:
    attributions = attribute_flags(regrouped_rounds(20, 0))
    for client, item in attributions.items():
        if client in ATTACKERS:
            assert item.flagged == item.rounds
        else:
            assert item.p_value > 0.01 / NUM_CLIENTS
            assert abs(item.flagged - item.expected) < 4 * math.sqrt(item.rounds)


def test_too_few_rounds_suspect_no_one() -> None:
    assert suspected_clients(regrouped_rounds(2, 0), min_rounds=3) == ()


def test_a_client_in_two_groups_of_one_round_is_refused() -> None:
    with pytest.raises(ValueError, match="two groups"):
        GroupRound(((1, 2), (2, 3)), frozenset())


def test_a_flagged_index_outside_the_groups_is_refused() -> None:
    with pytest.raises(ValueError, match="flagged"):
        GroupRound(((1, 2),), frozenset({1}))


def test_a_round_survives_its_json_form() -> None:
    for item in regrouped_rounds(3, 1):
        assert GroupRound.from_json(item.to_json()) == item


def test_an_inconsistent_round_in_json_is_refused() -> None:
    with pytest.raises(ValueError, match="two groups"):
        GroupRound.from_json({"round": 4, "groups": [[1, 2], [2, 3]], "flagged": []})


def test_rounds_before_a_clients_start_do_not_count_for_it_alone() -> None:
    rounds = regrouped_rounds(20, 0)
    attacker, honest = min(ATTACKERS), 0
    everything = attribute_flags(rounds)
    fresh = attribute_flags(rounds, since={attacker: 16})
    assert fresh[attacker].rounds == 5
    assert fresh[attacker].p_value > everything[attacker].p_value
    assert fresh[honest] == everything[honest]


def test_suspects_among_attributions_match_the_suspected_clients() -> None:
    rounds = regrouped_rounds(20, 2)
    assert suspects_among(attribute_flags(rounds)) == suspected_clients(rounds)
