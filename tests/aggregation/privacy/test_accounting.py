"""The accountant's configuration, composition, budget check and persistence."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ztfl.aggregation.privacy.accounting import (
    AccountantConfig,
    AccountingError,
    PrivacyAccountant,
)

POISSON: dict[str, Any] = {
    "kind": "rdp",
    "sampling": "poisson",
    "noise_multiplier": 1.0,
    "delta": 1e-5,
    "sampling_rate": 0.01,
}


def poisson_config(**changes: Any) -> AccountantConfig:
    return AccountantConfig(**{**POISSON, **changes})


@pytest.mark.parametrize(
    "changes",
    [
        {"kind": "moments"},
        {"sampling": "shuffle"},
        {"noise_multiplier": 0.0},
        {"noise_multiplier": float("nan")},
        {"delta": 0.0},
        {"delta": 1.0},
        {"sampling_rate": 0.0},
        {"sampling_rate": 1.5},
        {"sampling_rate": None},
        {"sample_size": 10},
        {"pld_discretization": -1e-3},
    ],
)
def test_invalid_poisson_config_is_refused_when_built(changes: dict[str, Any]) -> None:
    with pytest.raises(AccountingError):
        poisson_config(**changes)


@pytest.mark.parametrize(
    ("sample_size", "population"), [(0, 10), (11, 10), (None, 10), (5, None), (True, 10)]
)
def test_invalid_fixed_size_config_is_refused_when_built(
    sample_size: int | None, population: int | None
) -> None:
    with pytest.raises(AccountingError, match="sample_size"):
        AccountantConfig(
            "rdp", "fixed_size", 1.0, 1e-5, sample_size=sample_size, population=population
        )


def test_pld_with_fixed_size_sampling_is_refused() -> None:
    with pytest.raises(AccountingError, match="not supported by the PLD"):
        AccountantConfig("pld", "fixed_size", 1.0, 1e-5, sample_size=10, population=100)


def test_epsilon_grows_with_each_composed_round() -> None:
    accountant = PrivacyAccountant(poisson_config())
    assert accountant.epsilon() == 0.0
    previous = 0.0
    for _ in range(3):
        accountant.compose_round()
        assert accountant.epsilon() > previous
        previous = accountant.epsilon()
    assert accountant.rounds == 3
    assert accountant.epsilon() == accountant.epsilon_after(3)


def test_would_exceed_checks_the_next_round_before_it_runs() -> None:
    accountant = PrivacyAccountant(poisson_config(), rounds=10)
    budget = (accountant.epsilon_after(10) + accountant.epsilon_after(11)) / 2
    assert accountant.epsilon() <= budget
    assert accountant.would_exceed(budget)
    assert not accountant.would_exceed(accountant.epsilon_after(11))


def test_state_round_trips_through_json_without_resetting_epsilon() -> None:
    accountant = PrivacyAccountant(poisson_config(kind="pld"), rounds=25)
    text = json.dumps(accountant.to_state())
    restored = PrivacyAccountant.from_state(json.loads(text), expected_config=accountant.config)
    assert restored.rounds == 25
    assert restored.config == accountant.config
    assert restored.epsilon() == accountant.epsilon()


def test_state_with_a_different_config_is_refused() -> None:
    state = PrivacyAccountant(poisson_config(), rounds=5).to_state()
    with pytest.raises(AccountingError, match="differs"):
        PrivacyAccountant.from_state(state, expected_config=poisson_config(noise_multiplier=2.0))


@pytest.mark.parametrize(
    "state",
    [
        "{not json",
        [],
        {"version": 1, "config": POISSON},
        {"version": 2, "config": {**POISSON}, "rounds": 1},
        {"version": 1, "config": {"kind": "rdp"}, "rounds": 1},
        {
            "version": 1,
            "config": {
                **POISSON,
                "sampling_rate": 2.0,
                "sample_size": None,
                "population": None,
                "pld_discretization": 1e-3,
            },
            "rounds": 1,
        },
        {"version": 1, "config": poisson_config().to_dict(), "rounds": -1},
        {"version": 1, "config": poisson_config().to_dict(), "rounds": "3"},
    ],
)
def test_state_that_does_not_parse_is_refused(state: object) -> None:
    with pytest.raises(AccountingError):
        PrivacyAccountant.from_state(state)


def test_thousand_rounds_of_rdp_accounting_stay_fast() -> None:
    accountant = PrivacyAccountant(poisson_config())
    for _ in range(1000):
        if accountant.would_exceed(1e9):
            break
        accountant.compose_round()
    assert accountant.rounds == 1000
