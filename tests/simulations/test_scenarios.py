"""Scenarios in TOML: the embedded default, the run plans, overrides and clear errors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from ztfl.aggregation import ToleranceError
from ztfl.simulations.attacks import AttackConfigError
from ztfl.simulations.scenario import (
    Defence,
    RunSpec,
    Scenario,
    ScenarioError,
    load_scenario,
    scenario_from_document,
)

SMALL = """
[scenario]
name = "small"
num-clients = 8
num-byzantine = 2
rounds = 3
partition-alpha = "iid"
seeds = [4, 5]
attack = "ipm(epsilon=10)"

[[defence]]
pipeline = "median"

[[defence]]
label = "undefended"
pipeline = "mean"
num-byzantine = 0

[matrix]
seeds = [0, 1]
attacks = ["none", "alie", "label_flip"]
"""


def document(text: str = SMALL) -> dict[str, Any]:
    return tomllib.loads(text)


def scenario_error(text: str) -> str:
    """The message of the ScenarioError that ``text`` gives (the test fails if none)."""
    with pytest.raises(ScenarioError) as caught:
        scenario_from_document(document(text), "test.toml")
    return str(caught.value)


# ------------------------------------------------------------------ the embedded default


def test_the_embedded_default_scenario_loads_and_validates() -> None:
    scenario = load_scenario()
    assert scenario.name == "default"
    assert (scenario.num_clients, scenario.num_byzantine) == (20, 4)
    assert scenario.partition_alpha == 0.5
    assert scenario.source == "<built-in default>"


def test_the_default_scenario_runs_three_defences_beside_the_clean_reference() -> None:
    runs = load_scenario().runs()
    assert len(runs) == 4
    assert runs[0].attack == "none"
    assert runs[0].num_attackers == 0
    assert [run.defence.pipeline for run in runs[1:]] == [
        "mean",
        "median",
        "nnm -> trimmed_mean",
    ]
    assert all(run.num_attackers == 4 for run in runs[1:])


def test_the_default_matrix_runs_every_attack_against_every_defence_for_every_seed() -> None:
    scenario = load_scenario()
    runs = scenario.matrix_runs()
    expected = (
        len(scenario.matrix_seeds) * len(scenario.matrix_attacks) * len(scenario.matrix_defences)
    )
    assert len(runs) == expected == 3 * 8 * 7
    assert len({(run.seed, run.attack, run.defence) for run in runs}) == expected


# ------------------------------------------------------------------ parsing


def test_a_scenario_document_is_read_into_the_scenario_it_describes() -> None:
    scenario = scenario_from_document(document(), "small.toml")
    assert scenario.name == "small"
    assert scenario.partition_alpha is None
    assert scenario.seeds == (4, 5)
    assert scenario.defences == (
        Defence("median", "median", 2),
        Defence("undefended", "mean", 0),
    )
    assert scenario.source == "small.toml"


def test_load_scenario_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "small.toml"
    path.write_text(SMALL)
    scenario = load_scenario(path)
    assert scenario.name == "small"
    assert scenario.source == str(path)


def test_runs_put_the_clean_reference_first_for_every_seed() -> None:
    runs = scenario_from_document(document(), "small.toml").runs()
    assert [(run.seed, run.attack) for run in runs] == [
        (4, "none"),
        (4, "ipm(epsilon=10)"),
        (4, "ipm(epsilon=10)"),
        (5, "none"),
        (5, "ipm(epsilon=10)"),
        (5, "ipm(epsilon=10)"),
    ]


def test_runs_leave_out_the_clean_reference_when_asked() -> None:
    text = SMALL.replace('name = "small"', 'name = "small"\nclean-reference = false')
    runs = scenario_from_document(document(text), "small.toml").runs()
    assert all(run.attack != "none" for run in runs)


def test_matrix_runs_fall_back_to_the_side_by_side_defences() -> None:
    scenario = scenario_from_document(document(), "small.toml")
    assert len(scenario.matrix_runs()) == 2 * 3 * 2


def test_a_run_label_names_defence_attack_and_seed() -> None:
    spec = RunSpec(Defence("median", "median", 2), "alie", 2, 1)
    assert spec.label == "median | alie | seed 1"


# ------------------------------------------------------------------ errors


def test_an_unknown_scenario_key_is_refused_by_name() -> None:
    message = scenario_error(SMALL.replace("rounds = 3", "round = 3"))
    assert "unknown [scenario] key(s): round" in message


def test_a_defence_without_a_pipeline_is_refused() -> None:
    assert "needs a pipeline" in scenario_error(SMALL.replace('pipeline = "median"', 'rule = "x"'))


def test_defences_that_are_not_an_array_of_tables_are_refused() -> None:
    text = 'defence = "median"\n' + SMALL.split("[[defence]]")[0]
    assert "[[defence]]" in scenario_error(text)


def test_a_pipeline_the_client_count_cannot_satisfy_is_refused() -> None:
    # Krum tolerating f = 2 needs n > 2f + 2 = 6 updates; 6 clients are too few.
    text = SMALL.replace("num-clients = 8", "num-clients = 6").replace(
        'pipeline = "median"', 'pipeline = "krum"'
    )
    assert "krum" in scenario_error(text).lower()


def test_a_pipeline_the_clients_per_round_cannot_satisfy_is_refused() -> None:
    text = SMALL.replace("rounds = 3", "rounds = 3\nclients-per-round = 3")
    scenario_error(text)


def test_an_unknown_attack_is_refused() -> None:
    assert "flip_everything" in scenario_error(SMALL.replace("ipm(epsilon=10)", "flip_everything"))


def test_an_unknown_matrix_attack_is_refused() -> None:
    assert "bogus" in scenario_error(SMALL.replace('"label_flip"', '"bogus"'))


def test_an_unknown_pipeline_step_is_refused() -> None:
    assert "no_such_rule" in scenario_error(SMALL.replace('"median"', '"no_such_rule"'))


def test_as_many_attackers_as_clients_are_refused() -> None:
    scenario_error(SMALL.replace("num-byzantine = 2", "num-byzantine = 8"))


def test_an_empty_seed_list_is_refused() -> None:
    assert "seed" in scenario_error(SMALL.replace("seeds = [4, 5]", "seeds = []"))


def test_a_non_numeric_value_is_refused_naming_the_source() -> None:
    assert "test.toml" in scenario_error(SMALL.replace("rounds = 3", 'rounds = "three"'))


def test_invalid_toml_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[scenario\nname = 1\n")
    with pytest.raises(ScenarioError, match=r"broken\.toml: invalid TOML"):
        load_scenario(path)


def test_a_missing_scenario_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"no scenario file .*absent\.toml"):
        load_scenario(tmp_path / "absent.toml")


# ------------------------------------------------------------------ overrides


def test_overrides_replace_the_given_fields_and_ignore_none() -> None:
    scenario = load_scenario().with_overrides(rounds=2, attack=None, seeds=(7, 8))
    assert scenario.rounds == 2
    assert scenario.attack == load_scenario().attack
    assert scenario.seeds == (7, 8)


def test_overrides_are_validated_like_a_new_scenario() -> None:
    with pytest.raises(ScenarioError):
        load_scenario().with_overrides(num_byzantine=20)


def test_an_overridden_attack_is_validated() -> None:
    with pytest.raises(AttackConfigError):
        load_scenario().with_overrides(attack="ipm(epsilon=ten)")


def test_an_overridden_client_count_is_checked_against_every_defence() -> None:
    # The default's median and ARC → NNM → trimmed mean tolerate f = 4, which
    # needs at least 9 updates.
    with pytest.raises(ToleranceError):
        load_scenario().with_overrides(clients_per_round=5)


def test_a_scenario_built_directly_is_validated() -> None:
    with pytest.raises(ScenarioError):
        Scenario(num_clients=0)


def test_a_defence_opts_in_to_quarantine_with_the_coordinators_own_keys() -> None:
    document = {
        "scenario": {"num-clients": 5, "num-byzantine": 1},
        "defence": [
            {"pipeline": "median", "quarantine": True, "quarantine-threshold": 0.4},
            {"pipeline": "median"},
        ],
    }
    scenario = scenario_from_document(document, "test")
    watched, plain = (scenario.coordinator_settings(d) for d in scenario.defences)
    assert (watched.quarantine, watched.quarantine_threshold) == (True, 0.4)
    assert plain.quarantine is False
