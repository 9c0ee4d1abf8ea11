"""Secure mode end to end on Flower's simulation engine (starts Ray: marked slow).

20 clients, 2 of them Byzantine with a scaled sign flip strong enough to break any mean.
In secure mode the attack runs inside the attackers' own clients, before masking (the
coordinator and the simulated adversary see only masked words); the coordinator learns one
sum per group of 3, refuses group means longer than C and runs the pipeline over the group
means. One simulation session runs the module's three runs, so Ray starts once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ztfl.simulations.runner import RunResult, run_plan
from ztfl.simulations.scenario import Defence, RunSpec, Scenario
from ztfl.trust.audit import AuditEventKind, AuditLog

pytestmark = pytest.mark.slow

ATTACK = "sign_flip(scale=20)"
ATTACKERS = 2
SECURE_K3 = (("secure-aggregation", True), ("group-size", 3))
SCENARIO = Scenario(
    name="secure-tests",
    num_clients=20,
    num_byzantine=ATTACKERS,
    rounds=12,
    local_epochs=3,
    attack=ATTACK,
    clean_reference=False,
)
DEFENCES = {
    "plaintext robust": Defence("plaintext robust", "nnm -> trimmed_mean", ATTACKERS),
    "secure robust": Defence("secure robust", "nnm -> trimmed_mean", ATTACKERS, SECURE_K3),
    "secure mean": Defence("secure mean", "mean", 0, SECURE_K3),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[RunResult, Path]]:
    """The three runs, by label, with each run's state folder."""
    state_root = tmp_path_factory.mktemp("secure") / "state"
    plan = [RunSpec(defence, ATTACK, ATTACKERS, 0) for defence in DEFENCES.values()]
    results = run_plan(SCENARIO, plan, state_root=state_root)
    return {
        result.spec.defence.label: (result, state_root / "runs" / f"{index:03d}")
        for index, result in enumerate(results)
    }


def test_secure_mode_with_groups_of_three_stays_within_five_points_of_plaintext_robust(
    runs: dict[str, tuple[RunResult, Path]],
) -> None:
    plaintext = runs["plaintext robust"][0].final_accuracy
    assert plaintext > 0.8
    assert runs["secure robust"][0].final_accuracy >= plaintext - 0.05


def test_secure_mode_with_the_plain_mean_collapses(
    runs: dict[str, tuple[RunResult, Path]],
) -> None:
    assert runs["secure mean"][0].final_accuracy < runs["plaintext robust"][0].final_accuracy - 0.5


def test_every_secure_round_sums_every_client_in_groups(
    runs: dict[str, tuple[RunResult, Path]],
) -> None:
    history = runs["secure robust"][0].history
    assert len(history.rounds) == SCENARIO.rounds
    assert all(record.committed for record in history.rounds)
    assert all(len(record.accepted_nodes) == SCENARIO.num_clients for record in history.rounds)


def test_a_secure_run_receives_no_update_in_the_clear(
    runs: dict[str, tuple[RunResult, Path]],
) -> None:
    """No training reply of a secure run reaches the plaintext validation: nothing refused
    as an update, no per-client training figures, no per-client anomaly scores."""
    result, state_dir = runs["secure robust"]
    assert all(not record.train_metrics for record in result.history.rounds)
    assert all(record.anomaly_scores is None for record in result.history.rounds)
    with AuditLog.open(state_dir / "audit.db", create=False) as audit:
        kinds = {record.kind for record in audit.records(1)}
    assert AuditEventKind.UPDATE_REFUSED not in kinds
    assert AuditEventKind.SECAGG_GROUP_ABORTED not in kinds
