"""Parsing and validating the coordinator's configuration from Flower's run config."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from ztfl.aggregation.privacy.accounting import PrivacyAccountant
from ztfl.server.config import ConfigError, CoordinatorConfig, Weighting

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_from_run_config_parses_flower_style_kebab_case_keys() -> None:
    config = CoordinatorConfig.from_run_config(
        {
            "num-server-rounds": 3,
            "clients-per-round": 10,
            "min-nodes": 4,
            "pipeline": "median",
            "num-byzantine": 2,
            "max-update-norm": 5.5,
            "local-epochs": 1,
            "learning-rate": 0.2,
            "batch-size": 32,
            "seed": 7,
            "round-timeout-s": 30.0,
            "federated-evaluation": False,
        }
    )
    assert config == CoordinatorConfig(
        num_rounds=3,
        clients_per_round=10,
        min_nodes=4,
        pipeline="median",
        num_byzantine=2,
        max_update_norm=5.5,
        local_epochs=1,
        learning_rate=0.2,
        batch_size=32,
        seed=7,
        round_timeout_s=30.0,
        federated_evaluation=False,
    )


def test_from_run_config_parses_the_apps_own_run_config_in_pyproject() -> None:
    run_config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    config = CoordinatorConfig.from_run_config(run_config)
    assert config.num_rounds == run_config["num-server-rounds"]
    assert config.pipeline == run_config["pipeline"]


def test_from_run_config_keeps_defaults_for_absent_keys() -> None:
    assert CoordinatorConfig.from_run_config({}) == CoordinatorConfig()


def test_from_run_config_widens_an_integer_to_a_float_setting() -> None:
    config = CoordinatorConfig.from_run_config({"max-update-norm": 5})
    assert config.max_update_norm == 5.0
    assert isinstance(config.max_update_norm, float)


def test_from_run_config_reads_an_empty_seed_as_unseeded() -> None:
    assert CoordinatorConfig.from_run_config({"seed": ""}).seed is None


def test_from_run_config_parses_the_weighting_by_its_value() -> None:
    config = CoordinatorConfig.from_run_config(
        {"weighting": "capped-examples", "pipeline": "mean", "max-examples": 50}
    )
    assert config.weighting is Weighting.CAPPED_EXAMPLES
    assert config.max_examples == 50


def test_from_run_config_ignores_the_client_side_partition_alpha_key() -> None:
    assert CoordinatorConfig.from_run_config({"partition-alpha": 0.1}) == CoordinatorConfig()


def test_from_run_config_refuses_an_unknown_key_and_names_it() -> None:
    with pytest.raises(ConfigError, match="num-rounds"):
        CoordinatorConfig.from_run_config({"num-rounds": 3})


def test_from_run_config_refuses_a_snake_case_key() -> None:
    with pytest.raises(ConfigError, match="num_byzantine"):
        CoordinatorConfig.from_run_config({"num_byzantine": 1})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num-server-rounds", "5"),
        ("num-server-rounds", 2.5),
        ("num-server-rounds", True),
        ("seed", 1.0),
        ("max-update-norm", "big"),
        ("max-update-norm", False),
        ("pipeline", 3),
        ("federated-evaluation", 1),
        ("weighting", "by-examples"),
    ],
)
def test_from_run_config_refuses_a_value_of_the_wrong_type_and_names_the_key(
    key: str, value: Any
) -> None:
    with pytest.raises(ConfigError, match=key):
        CoordinatorConfig.from_run_config({key: value})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num-server-rounds", 0),
        ("clients-per-round", -1),
        ("min-nodes", 0),
        ("num-byzantine", -1),
        ("max-update-norm", 0.0),
        ("learning-rate", -0.1),
        ("batch-size", 0),
        ("round-timeout-s", 0.0),
    ],
)
def test_from_run_config_refuses_a_value_out_of_range_and_names_the_key(
    key: str, value: Any
) -> None:
    with pytest.raises(ConfigError, match=f"{key} is out of range"):
        CoordinatorConfig.from_run_config({key: value})


def test_config_refuses_a_pipeline_the_clients_per_round_cannot_satisfy() -> None:
    # Krum needs n > 2f + 2: with f = 2 that is 7 updates, not 6.
    with pytest.raises(ConfigError, match="clients-per-round is 6"):
        CoordinatorConfig(pipeline="krum", num_byzantine=2, clients_per_round=6)


def test_config_accepts_the_smallest_clients_per_round_the_pipeline_tolerates() -> None:
    config = CoordinatorConfig(pipeline="krum", num_byzantine=2, clients_per_round=7)
    assert config.build_pipeline().minimum_clients() == 7


def test_config_refuses_an_unknown_pipeline_step_naming_the_pipeline_key() -> None:
    with pytest.raises(ConfigError, match=r"^pipeline: "):
        CoordinatorConfig(pipeline="arc -> no_such_rule")


def test_config_refuses_non_uniform_weighting_with_a_rule_that_has_no_weights() -> None:
    with pytest.raises(ConfigError, match="median does not"):
        CoordinatorConfig(pipeline="median", weighting=Weighting.CAPPED_EXAMPLES)


def test_config_accepts_capped_weighting_with_a_rule_that_uses_weights() -> None:
    config = CoordinatorConfig(pipeline="mean", weighting=Weighting.CAPPED_EXAMPLES)
    assert config.build_pipeline().supports_weights


def test_key_rotations_name_comma_separated_statement_files_in_order() -> None:
    config = CoordinatorConfig.from_run_config(
        {"key-rotations": "rotation-2.json, /etc/ztfl/rotation-3.json,"}
    )
    assert config.key_rotation_paths() == (
        Path("rotation-2.json"),
        Path("/etc/ztfl/rotation-3.json"),
    )
    assert CoordinatorConfig().key_rotation_paths() == ()


def test_the_audit_summary_records_key_rotations_under_a_name_the_audit_log_accepts() -> None:
    summary = CoordinatorConfig(key_rotations="rotation-2.json").audit_summary()
    assert summary["rotation-statements"] == "rotation-2.json"
    assert "key-rotations" not in summary
    assert "signing-key" not in summary


# ------------------------------------------------------------------ differential privacy


def test_dp_keys_parse_from_the_run_config() -> None:
    config = CoordinatorConfig.from_run_config(
        {
            "pipeline": "mean",
            "dp": True,
            "dp-clip-norm": 0.5,
            "dp-noise-multiplier": 1.2,
            "dp-delta": 1e-6,
            "dp-epsilon-budget": 8,
            "dp-accountant": "pld",
            "dp-sampling-rate": 0.25,
        }
    )
    accountant = config.accountant_config()
    assert (accountant.kind, accountant.sampling) == ("pld", "poisson")
    assert (accountant.noise_multiplier, accountant.sampling_rate) == (1.2, 0.25)
    assert accountant.delta == 1e-6
    assert config.dp_budget() == 8.0


def test_dp_with_a_target_epsilon_calibrates_the_noise_multiplier_and_budgets_it() -> None:
    config = CoordinatorConfig(
        pipeline="mean", dp=True, dp_target_epsilon=4.0, dp_sampling_rate=0.2, num_rounds=10
    )
    accountant = PrivacyAccountant(config.accountant_config())
    assert accountant.epsilon_after(10) <= 4.0
    assert config.dp_budget() == 4.0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"pipeline": "nnm -> mean"}, "differential privacy cannot use nnm"),
        (
            {"pipeline": "mean", "weighting": Weighting.CAPPED_EXAMPLES},
            "differential privacy cannot use client weights",
        ),
        ({"pipeline": "mean", "dp_noise_multiplier": 0.0}, "dp needs dp-noise-multiplier"),
        (
            {"pipeline": "mean", "dp_target_epsilon": 2.0},
            "set dp-noise-multiplier or dp-target-epsilon, not both",
        ),
        ({"pipeline": "mean", "dp_clip_norm": 0.0}, "dp-clip-norm"),
        ({"pipeline": "mean", "dp_delta": 1.5}, "dp-delta is out of range"),
        ({"pipeline": "mean", "dp_sampling_rate": 0.0}, "dp-sampling-rate is out of range"),
        ({"pipeline": "mean", "dp_accountant": "moments"}, "dp-accountant must be one of"),
        ({"pipeline": "mean", "dp_epsilon_budget": -1.0}, "dp-epsilon-budget"),
        ({"pipeline": "mean", "clients_per_round": 3}, "clients-per-round must be 0"),
        (
            {"pipeline": "mean", "dp_noise_multiplier": 0.0, "dp_target_epsilon": 1e-6},
            "dp-target-epsilon: target",
        ),
    ],
)
def test_bad_dp_configurations_are_refused_naming_the_key(
    settings: dict[str, Any], message: str
) -> None:
    values: dict[str, Any] = {"dp": True, "dp_noise_multiplier": 1.0, **settings}
    with pytest.raises(ConfigError, match=message):
        CoordinatorConfig(**values)


def test_dp_settings_are_ignored_while_dp_is_off() -> None:
    assert not CoordinatorConfig(dp_clip_norm=0.0, dp_delta=2.0).dp
