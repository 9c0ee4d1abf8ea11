"""What a simulation leaves behind: summaries, the markdown matrix and the run folder's files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ztfl.aggregation import RefusalReason
from ztfl.server.history import RefusedUpdate, RoundRecord, RunHistory
from ztfl.simulations.outputs import (
    matrix_markdown,
    new_run_dir,
    summarise,
    write_outputs,
)
from ztfl.simulations.runner import RunResult
from ztfl.simulations.scenario import Defence, RunSpec, Scenario

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MEDIAN = Defence("median", "median", 2)
MEAN = Defence("mean", "mean", 0)


def run_result(
    defence: Defence,
    attack: str,
    seed: int,
    accuracies: list[float],
    *,
    refused_per_round: int = 0,
    attackers: int = 2,
) -> RunResult:
    """A finished run whose central accuracy was ``accuracies`` (initial model first)."""
    refused = tuple(
        RefusedUpdate(100 + i, RefusalReason.NORM_ABOVE_CAP, "too big")
        for i in range(refused_per_round)
    )
    rounds = [
        RoundRecord(
            server_round=number,
            sampled_nodes=(1, 2, 3),
            num_replies=3 + refused_per_round,
            accepted_nodes=(1, 2, 3),
            refused=refused,
            pipeline=defence.pipeline,
            committed=True,
            aggregation_s=0.001,
            round_s=0.5,
            central_metrics={"accuracy": accuracy, "loss": 1.0 - accuracy},
        )
        for number, accuracy in enumerate(accuracies[1:], start=1)
    ]
    history = RunHistory(initial_metrics={"accuracy": accuracies[0], "loss": 2.3}, rounds=rounds)
    spec = RunSpec(defence, attack, 0 if attack == "none" else attackers, seed)
    return RunResult(spec, history, duration_s=1.5, byzantine_partitions=(0, 3))


@pytest.fixture(scope="module")
def results() -> list[RunResult]:
    """Median and mean under ALIE over two seeds, and a clean reference."""
    return [
        run_result(MEAN, "none", 0, [0.1, 0.5, 0.9]),
        run_result(MEDIAN, "alie", 0, [0.1, 0.4, 0.8], refused_per_round=1),
        run_result(MEDIAN, "alie", 1, [0.1, 0.4, 0.6]),
        run_result(MEAN, "alie", 0, [0.1, 0.5, 0.9]),
        run_result(MEAN, "alie", 1, [0.1, 0.5, 0.9]),
    ]


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return Scenario(name="unit", num_clients=8, num_byzantine=2, rounds=2)


@pytest.fixture(scope="module")
def run_dir(
    tmp_path_factory: pytest.TempPathFactory, scenario: Scenario, results: list[RunResult]
) -> Path:
    """One run folder written by ``write_outputs`` (plotting costs a second, so once)."""
    path = tmp_path_factory.mktemp("run")
    write_outputs(path, scenario, results)
    return path


def test_a_runs_final_accuracy_is_its_last_rounds_central_accuracy() -> None:
    assert run_result(MEDIAN, "alie", 0, [0.1, 0.4, 0.8]).final_accuracy == 0.8


def test_summarise_averages_the_final_accuracy_over_seeds(results: list[RunResult]) -> None:
    row = next(r for r in summarise(results) if (r.defence, r.attack) == ("median", "alie"))
    assert row.mean_accuracy == pytest.approx(0.7)
    assert row.std_accuracy == pytest.approx(0.1)
    assert row.seeds == 2
    assert row.pipeline == "median"


def test_summarise_counts_the_refused_updates_of_every_round_and_seed(
    results: list[RunResult],
) -> None:
    rows = {(row.defence, row.attack): row for row in summarise(results)}
    assert rows[("median", "alie")].refused_updates == 2
    assert rows[("mean", "alie")].refused_updates == 0


def test_summarise_gives_one_row_per_defence_and_attack_in_first_seen_order(
    results: list[RunResult],
) -> None:
    assert [(row.defence, row.attack) for row in summarise(results)] == [
        ("mean", "none"),
        ("median", "alie"),
        ("mean", "alie"),
    ]


def test_a_single_seed_has_no_spread(results: list[RunResult]) -> None:
    row = summarise(results)[0]
    assert (row.seeds, row.std_accuracy) == (1, 0.0)


def test_matrix_markdown_has_an_attack_per_row_and_a_defence_per_column(
    results: list[RunResult],
) -> None:
    assert matrix_markdown(summarise(results)) == (
        "| attack | mean | median |\n"
        "|---|---|---|\n"
        "| none | 90.0 |  |\n"
        "| alie | 90.0 ± 0.0 | 70.0 ± 10.0 |\n"
    )


def test_write_outputs_writes_every_file_of_a_run_folder(run_dir: Path) -> None:
    assert sorted(path.name for path in run_dir.iterdir()) == [
        "accuracy.png",
        "metrics.json",
        "rounds.csv",
        "summary.csv",
        "summary.md",
    ]


def test_write_outputs_plots_the_accuracy_as_a_png(run_dir: Path) -> None:
    assert (run_dir / "accuracy.png").read_bytes().startswith(PNG_SIGNATURE)


def test_write_outputs_writes_one_csv_row_per_round_after_the_header(
    run_dir: Path, results: list[RunResult]
) -> None:
    with (run_dir / "rounds.csv").open(newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == [
        "defence", "pipeline", "attack", "seed", "round", "accuracy", "loss",
        "accepted", "refused", "committed", "aggregation_s", "round_s", "epsilon",
    ]  # fmt: skip
    # Per run: the initial model (round 0) and two rounds; no DP, so no ε.
    assert len(table) == 1 + len(results) * 3
    assert table[1][:6] == ["mean", "mean", "none", "0", "0", "0.1"]
    assert table[5][4:10] == ["1", "0.4", "0.6", "3", "1", "True"]
    assert {row[12] for row in table[1:]} == {""}


def test_write_outputs_writes_metrics_json_with_every_run_and_the_summary(
    run_dir: Path, results: list[RunResult]
) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["scenario"]["name"] == "unit"
    assert len(metrics["runs"]) == len(results)
    assert len(metrics["summary"]) == 3
    run = metrics["runs"][1]
    assert run["label"] == "median | alie | seed 0"
    assert run["byzantine_partitions"] == [0, 3]
    assert run["history"]["rounds"][0]["refused"][0]["reason"] == "norm_above_cap"


def test_write_outputs_writes_the_markdown_matrix(run_dir: Path, results: list[RunResult]) -> None:
    assert (run_dir / "summary.md").read_text() == matrix_markdown(summarise(results))


def test_write_outputs_writes_the_summary_csv(run_dir: Path) -> None:
    with (run_dir / "summary.csv").open(newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["defence", "pipeline", "attack", "mean_accuracy", "std_accuracy", "seeds"]
    assert table[2] == ["median", "median", "alie", "0.7000", "0.1000", "2"]


def test_write_outputs_plots_a_clean_run_alone(tmp_path: Path, scenario: Scenario) -> None:
    write_outputs(tmp_path, scenario, [run_result(MEAN, "none", 0, [0.1, 0.5, 0.9])])
    assert (tmp_path / "accuracy.png").read_bytes().startswith(PNG_SIGNATURE)


def test_new_run_dir_makes_a_fresh_folder_named_after_the_scenario_and_kind(
    tmp_path: Path, scenario: Scenario
) -> None:
    path = new_run_dir(tmp_path, scenario, "matrix")
    assert path.is_dir()
    assert path.parent == tmp_path
    assert path.name.endswith("-unit-matrix")
