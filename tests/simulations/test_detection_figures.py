"""Detection figures on Flower's simulation engine: who gets quarantined, and when.

20 clients on Dirichlet(0.5) shares of the digits, 4 of them attackers, 30 rounds,
3 seeds, the default pipeline (``nnm -> trimmed_mean``, num-byzantine 4) and the
default quarantine policy. All 18 runs share one Ray session (module fixture).
Local training runs 5 epochs (the default scenario's): with fewer, label-flipped
updates are not yet outliers by round 10 (docs/monitoring.md, "Calibration").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from ztfl.simulations.runner import RunResult, run_plan
from ztfl.simulations.scenario import Defence, RunSpec, Scenario

pytestmark = pytest.mark.slow

OUTLIER_ATTACKS = (
    "sign_flip",
    "scaling(factor=10)",
    "gaussian(std=0.5)",
    "ipm(epsilon=10)",
    "label_flip",
)
IN_DISTRIBUTION_ATTACK = "alie"
SEEDS = (0, 1, 2)
DETECTION_ROUNDS = 10
SCENARIO = Scenario(
    name="detection",
    num_clients=20,
    num_byzantine=4,
    rounds=30,
    partition_alpha=0.5,
    seeds=SEEDS,
    local_epochs=5,
    learning_rate=0.1,
    batch_size=16,
    clean_reference=False,
)
# Simulated defences leave quarantine off unless they ask for it (Scenario.coordinator_settings).
DEFAULT = Defence("ztfl default", "nnm -> trimmed_mean", 4, settings=(("quarantine", True),))


@dataclass(frozen=True)
class Detection:
    """One run's quarantine outcome."""

    attack: str
    seed: int
    attacker_rounds: dict[int, int | None]
    """Per attacker node: the round it was quarantined in, or None."""
    honest_quarantined: dict[int, int]
    """Honest nodes quarantined, with the round."""


def detection(result: RunResult) -> Detection:
    quarantined_in = {
        node: record.server_round for record in result.history.rounds for node in record.quarantined
    }
    assert len(result.byzantine_nodes) == SCENARIO.num_byzantine
    return Detection(
        result.spec.attack,
        result.spec.seed,
        {node: quarantined_in.get(node) for node in sorted(result.byzantine_nodes)},
        {n: r for n, r in quarantined_in.items() if n not in result.byzantine_nodes},
    )


@pytest.fixture(scope="module")
def detections(tmp_path_factory: pytest.TempPathFactory) -> list[Detection]:
    """Every attack × seed, in one simulation session."""
    plan = [
        RunSpec(DEFAULT, attack, SCENARIO.num_byzantine, seed)
        for seed in SEEDS
        for attack in (*OUTLIER_ATTACKS, IN_DISTRIBUTION_ATTACK)
    ]
    state_root: Path = tmp_path_factory.mktemp("detection") / "state"
    results = run_plan(SCENARIO, plan, state_root=state_root)
    found = [detection(result) for result in results]
    for item in found:  # the figures of docs/monitoring.md, shown with -s
        print(
            f"{item.attack:20s} seed {item.seed}: attackers {item.attacker_rounds}, "
            f"honest {item.honest_quarantined}"
        )
    return found


def test_outlier_attackers_are_quarantined_within_ten_rounds(
    detections: list[Detection],
) -> None:
    late = {
        (item.attack, item.seed, node): round_
        for item in detections
        if item.attack in OUTLIER_ATTACKS
        for node, round_ in item.attacker_rounds.items()
        if round_ is None or round_ > DETECTION_ROUNDS
    }
    assert late == {}


def test_at_most_one_honest_client_is_quarantined_across_the_outlier_runs(
    detections: list[Detection],
) -> None:
    honest = [
        (item.attack, item.seed, node)
        for item in detections
        if item.attack in OUTLIER_ATTACKS
        for node in item.honest_quarantined
    ]
    assert len(honest) <= 1, honest


def test_no_honest_client_is_quarantined_under_alie(detections: list[Detection]) -> None:
    alie = [item for item in detections if item.attack == IN_DISTRIBUTION_ATTACK]
    assert len(alie) == len(SEEDS)
    assert all(item.honest_quarantined == {} for item in alie)
