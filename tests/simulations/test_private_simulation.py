"""DP scenarios: defences with ``dp-*`` settings, ε printed per round, accuracy against ε."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ztfl.aggregation.privacy.accounting import AccountantConfig, PrivacyAccountant
from ztfl.simulations.scenario import (
    Scenario,
    ScenarioError,
    builtin_scenarios,
    load_scenario,
    scenario_from_document,
)


def test_the_dp_scenario_ships_with_the_package_and_loads_by_name() -> None:
    assert "dp" in builtin_scenarios()
    scenario = load_scenario(Path("dp"))
    private = [defence for defence in scenario.defences if defence.private]
    assert len(private) == 3
    for defence in private:
        config = scenario.coordinator_settings(defence)
        assert config.dp
        assert config.accountant_config().noise_multiplier > 0


def test_an_unknown_scenario_name_is_refused_listing_the_built_in_ones(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"no built-in scenario of that name.*dp"):
        load_scenario(tmp_path / "no-such")


def test_a_dp_setting_the_coordinator_refuses_names_the_defence() -> None:
    document = {
        "scenario": {"num-clients": 5, "num-byzantine": 0},
        "defence": [
            {
                "label": "noisy",
                "pipeline": "mean",
                "dp": True,
                "dp-delta": 2.0,
                "dp-noise-multiplier": 1.0,
            }
        ],
    }
    with pytest.raises(ScenarioError, match="defence 'noisy': dp-delta is out of range"):
        scenario_from_document(document, "test")


def test_a_defence_key_that_is_no_dp_setting_is_refused() -> None:
    document = {
        "scenario": {"num-clients": 5, "num-byzantine": 0},
        "defence": [{"pipeline": "mean", "signing-key": "/tmp/key.pem"}],
    }
    with pytest.raises(ScenarioError, match="unknown defence key"):
        scenario_from_document(document, "test")


def test_dp_settings_survive_the_saved_plan_round_trip() -> None:
    scenario = load_scenario(Path("dp"))
    assert Scenario.from_json(scenario.to_json()) == scenario


@pytest.mark.slow
def test_a_dp_simulation_prints_epsilon_each_round_plots_it_and_exits_3_on_its_budget(
    tmp_path: Path,
) -> None:
    reference = PrivacyAccountant(
        AccountantConfig(
            kind="rdp", sampling="poisson", noise_multiplier=1.0, delta=1e-5, sampling_rate=1.0
        )
    )
    budget = (reference.epsilon_after(2) + reference.epsilon_after(3)) / 2
    scenario = tmp_path / "tiny-dp.toml"
    scenario.write_text(
        '[scenario]\nname = "tiny-dp"\nnum-clients = 4\nnum-byzantine = 0\nrounds = 4\n'
        'attack = "none"\nlocal-epochs = 1\nclean-reference = false\n'
        '[[defence]]\nlabel = "dp"\npipeline = "mean"\ndp = true\n'
        f"dp-noise-multiplier = 1.0\ndp-epsilon-budget = {budget}\n"
    )
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    completed = subprocess.run(
        [sys.executable, "-m", "ztfl.cli.main", "simulate", str(scenario), "--out", str(tmp_path)],
        capture_output=True,
        env=env,
        timeout=300,
        check=False,
    )
    output = completed.stdout.decode(errors="replace") + completed.stderr.decode(errors="replace")
    assert completed.returncode == 3, output
    for server_round in (1, 2):
        epsilon = reference.epsilon_after(server_round)
        assert f"round {server_round}: acc" in output
        assert f"ε {epsilon:.3g}" in output
    assert "round 3: acc" not in output
    assert "stopped early" in output
    assert "above the budget" in " ".join(output.split())
    (run_dir,) = (path for path in tmp_path.iterdir() if path.is_dir())
    assert (run_dir / "privacy.png").stat().st_size > 0
    with (run_dir / "rounds.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [float(row["epsilon"]) for row in rows] == pytest.approx(
        [0.0, reference.epsilon_after(1), reference.epsilon_after(2)]
    )
