"""End to end on Flower's simulation engine: the default scenario's promises, and clean shutdown.

These tests start Ray (marked slow). One simulation session runs every run
the module needs, so Ray starts once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ztfl.simulations.runner import RunResult, run_plan
from ztfl.simulations.scenario import Defence, RunSpec, load_scenario

pytestmark = pytest.mark.slow

DEFAULT = load_scenario()
DEFAULT_PIPELINE = "nnm -> trimmed_mean"
# ALIE needs many attackers to matter: Baruch's z_max is 0.39 at f = 4 of 20 but
# 1.04 at f = 8 (simulations/scenarios/alie-stress.toml). Two seeds, averaged.
ALIE_ATTACKERS = 8
ALIE_SEEDS = (0, 1)
ALIE_DEFENCES = {
    "mean": Defence("mean", "mean", 0),
    "median": Defence("median", "median", ALIE_ATTACKERS),
    "krum": Defence("krum", "krum", ALIE_ATTACKERS),
    "default": Defence("default", DEFAULT_PIPELINE, ALIE_ATTACKERS),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[RunResult]]:
    """The default scenario's runs plus strong ALIE against four defences, in one Ray session."""
    default_runs = DEFAULT.runs()
    alie_runs = [
        RunSpec(defence, "alie", ALIE_ATTACKERS, seed)
        for seed in ALIE_SEEDS
        for defence in ALIE_DEFENCES.values()
    ]
    state_root = tmp_path_factory.mktemp("end-to-end") / "state"
    finished = run_plan(DEFAULT, [*default_runs, *alie_runs], state_root=state_root)
    by_label: dict[str, list[RunResult]] = {}
    for result in finished[: len(default_runs)]:
        by_label.setdefault(result.spec.defence.label, []).append(result)
    names = {defence: name for name, defence in ALIE_DEFENCES.items()}
    for result in finished[len(default_runs) :]:
        by_label.setdefault(f"alie/{names[result.spec.defence]}", []).append(result)
    return by_label


def _accuracy(results: dict[str, list[RunResult]], label: str) -> float:
    """Final held-out accuracy, averaged over the label's seeds."""
    runs = results[label]
    return sum(run.final_accuracy for run in runs) / len(runs)


def test_default_scenario_breaks_the_undefended_mean(results: dict[str, list[RunResult]]) -> None:
    clean = _accuracy(results, "clean (mean, no attack)")
    assert _accuracy(results, "mean (undefended)") < clean - 0.30


def test_default_pipeline_stays_within_three_points_of_clean(
    results: dict[str, list[RunResult]],
) -> None:
    clean = _accuracy(results, "clean (mean, no attack)")
    assert clean > 0.90
    assert _accuracy(results, "ztfl default") >= clean - 0.03


def test_default_pipeline_beats_the_median_under_the_default_attack(
    results: dict[str, list[RunResult]],
) -> None:
    assert _accuracy(results, "ztfl default") > _accuracy(results, "median")


def test_strong_alie_barely_moves_the_mean(results: dict[str, list[RunResult]]) -> None:
    assert _accuracy(results, "alie/mean") >= _accuracy(results, "clean (mean, no attack)") - 0.03


def test_strong_alie_hurts_median_and_krum_more_than_the_default_pipeline(
    results: dict[str, list[RunResult]],
) -> None:
    default = _accuracy(results, "alie/default")
    assert default > _accuracy(results, "alie/median") + 0.02
    assert default > _accuracy(results, "alie/krum") + 0.05


def test_every_round_of_the_default_scenario_committed(results: dict[str, list[RunResult]]) -> None:
    for label in ("clean (mean, no attack)", "median", "ztfl default"):
        (run,) = results[label]
        assert all(record.committed for record in run.history.rounds)


def test_same_seed_replays_the_same_byzantine_partitions(
    results: dict[str, list[RunResult]],
) -> None:
    (median,), (default,) = results["median"], results["ztfl default"]
    assert median.byzantine_partitions == default.byzantine_partitions
    assert len(median.byzantine_partitions) == DEFAULT.num_byzantine


def _ray_processes_of(driver_pid: int) -> list[str]:
    """Command lines of live processes belonging to the Ray session started by ``driver_pid``."""
    marker = f"_{driver_pid}/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "ray" in cmdline and marker in cmdline:
            found.append(cmdline[:200])
    return found


def test_cli_simulation_writes_outputs_and_leaves_no_ray_process(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(
        '[scenario]\nname = "tiny"\nnum-clients = 5\nnum-byzantine = 1\nrounds = 2\n'
        'attack = "sign_flip(scale=5)"\nlocal-epochs = 1\nclean-reference = false\n'
        '[[defence]]\nlabel = "median"\npipeline = "median"\n'
    )
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ztfl.cli.main",
            "simulate",
            str(scenario),
            "--out",
            str(tmp_path / "runs"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output.decode(errors="replace")
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert {path.name for path in run_dir.iterdir()} >= {
        "metrics.json", "rounds.csv", "summary.md", "accuracy.png",
    }  # fmt: skip
    assert _ray_processes_of(process.pid) == []
