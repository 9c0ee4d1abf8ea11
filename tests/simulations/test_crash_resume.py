"""SIGKILL the coordinator at each crash point, resume, and end where an unbroken run ends.

Real ``ztfl simulate`` processes (Flower's Ray engine), each in its own process
group. ``ZTFL_CRASH_AT`` makes the coordinator kill itself at a chosen point;
the test then kills whatever is left of the group (Ray's workers) and resumes
with ``--resume``. One run crashes three times — before aggregation in round 2,
between the model write and the state rename in round 3, right after the state
rename of round 3 — and must finish with the same model as a run that never
crashed, each round committed once, and an audit chain that verifies against
every signed manifest.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ztfl.server.ledger import STATE_FILE
from ztfl.server.run_state import read_state
from ztfl.simulations.runner import SessionFiles
from ztfl.trust.audit import AuditEventKind, AuditHead, AuditLog, verify_audit_log
from ztfl.trust.model_store import ModelStore
from ztfl.trust.verification import LineageState

pytestmark = pytest.mark.slow

ROUNDS = 4
SCENARIO = (
    '[scenario]\nname = "crash"\nnum-clients = 3\nnum-byzantine = 0\nrounds = 4\n'
    'attack = "none"\nlocal-epochs = 1\nclean-reference = false\nseeds = [0]\n'
    '[[defence]]\nlabel = "mean"\npipeline = "mean"\nnum-byzantine = 0\n'
)
CRASHES = ("before-aggregation:2", "after-model-write:3", "after-state-commit:3")
PROCESS_TIMEOUT_S = 240


def _group_members(group: int) -> list[str]:
    """Live processes (not zombies) in process group ``group``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == group and fields[0] != "Z":
                members.append(f"{entry.name} {stat[: stat.rindex(')') + 1]}")
    return members


def simulate(*args: str, crash_at: str | None = None) -> tuple[int, str]:
    """Run ``ztfl simulate`` in its own process group; kill what is left of the group after."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("ZTFL_CRASH_AT", None)
    if crash_at is not None:
        env["ZTFL_CRASH_AT"] = crash_at
    process = subprocess.Popen(
        [sys.executable, "-m", "ztfl.cli.main", "simulate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=PROCESS_TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    deadline = time.monotonic() + 15
    while _group_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _group_members(process.pid) == [], "processes outlived the coordinator's group"
    return process.returncode, output.decode(errors="replace")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """An unbroken run and a run crashed at every point and resumed, with what each phase saw."""
    root = tmp_path_factory.mktemp("crash")
    scenario = root / "crash.toml"
    scenario.write_text(SCENARIO)
    code, output = simulate(str(scenario), "--out", str(root / "unbroken"))
    assert code == 0, output
    (unbroken,) = (root / "unbroken").iterdir()

    code, output = simulate(str(scenario), "--out", str(root / "crashed"), crash_at=CRASHES[0])
    assert code == -signal.SIGKILL, output
    (crashed,) = (root / "crashed").iterdir()
    state_file = SessionFiles(crashed / "state").run_state(0) / STATE_FILE
    rounds_after = [read_state(state_file).round]
    for crash in (*CRASHES[1:], None):
        code, output = simulate("--resume", str(crashed), crash_at=crash)
        assert code == (0 if crash is None else -signal.SIGKILL), output
        rounds_after.append(read_state(state_file).round)
    return {"unbroken": unbroken, "crashed": crashed, "rounds_after": rounds_after}


def _state_dir(run_dir: object) -> Path:
    assert isinstance(run_dir, Path)
    return SessionFiles(run_dir / "state").run_state(0)


def test_each_crash_leaves_the_last_committed_round_in_the_state(
    runs: dict[str, object],
) -> None:
    # Killed before aggregating round 2; after writing round 3's model (state still at 2);
    # after renaming round 3's state; then the final resume finishes.
    assert runs["rounds_after"] == [1, 2, 3, ROUNDS]


def test_the_resumed_run_ends_with_the_model_of_a_run_that_never_crashed(
    runs: dict[str, object],
) -> None:
    finals = []
    for name in ("unbroken", "crashed"):
        state_dir = _state_dir(runs[name])
        arrays, signed = ModelStore(state_dir / "models").load(
            read_state(state_dir / STATE_FILE).model_digest
        )
        assert signed.manifest.round == ROUNDS
        finals.append(arrays)
    for (name, left), (_, right) in zip(*finals, strict=True):
        np.testing.assert_array_equal(left, right, err_msg=name)


def test_every_round_is_committed_exactly_once_in_one_lineage(runs: dict[str, object]) -> None:
    state_dir = _state_dir(runs["crashed"])
    store = ModelStore(state_dir / "models")
    lineage = store.chain(None, read_state(state_dir / STATE_FILE).model_digest)
    assert [signed.manifest.round for signed in lineage] == list(range(ROUNDS + 1))
    assert sorted(m.round for m in store.entries()) == list(range(ROUNDS + 1))
    with AuditLog.open(state_dir / "audit.db", create=False) as log:
        records = list(log.records())
    completed = [r.round for r in records if r.kind == AuditEventKind.ROUND_COMPLETED]
    assert completed == list(range(1, ROUNDS + 1))
    history = read_state(state_dir / STATE_FILE).history["rounds"]
    assert [item["server_round"] for item in history] == list(range(1, ROUNDS + 1))


def test_the_model_written_after_the_last_state_commit_was_set_aside_and_named(
    runs: dict[str, object],
) -> None:
    state_dir = _state_dir(runs["crashed"])
    (set_aside,) = (state_dir / "set-aside").iterdir()
    with AuditLog.open(state_dir / "audit.db", create=False) as log:
        records = list(log.records())
    assert sum(r.kind == AuditEventKind.RUN_RESUMED for r in records) == len(CRASHES)
    named = [
        digest
        for r in records
        if r.kind == AuditEventKind.RECONCILED
        for digest in r.details["models_set_aside"]  # type: ignore[union-attr]
    ]
    assert named == [set_aside.name]


def test_the_audit_chain_verifies_against_every_signed_manifest(runs: dict[str, object]) -> None:
    state_dir = _state_dir(runs["crashed"])
    anchors = [AuditHead.parse(m.audit_head) for m in ModelStore(state_dir / "models").entries()]
    verification = verify_audit_log(state_dir / "audit.db", anchors)
    assert verification.ok, verification.detail
    assert verification.anchors_checked == ROUNDS + 1


def test_each_clients_lineage_file_continues_through_every_restart(
    runs: dict[str, object],
) -> None:
    """Each resume is a new simulation session (a new Flower run, new node ids): the clients'
    lineage files carried what they accepted, and every model after a restart descended from it.
    """
    run_dir = runs["crashed"]
    assert isinstance(run_dir, Path)
    state_dir = _state_dir(run_dir)
    run_id = (state_dir / "run-id").read_text().strip()
    store = ModelStore(state_dir / "models")
    committed = {
        signed.digest: signed.manifest.round
        for signed in store.chain(None, read_state(state_dir / STATE_FILE).model_digest)
    }
    files = sorted(SessionFiles(run_dir / "state").lineage.glob(f"partition-*/{run_id}.json"))
    assert len(files) == 3
    for path in files:
        accepted = LineageState.from_json(path.read_bytes()).accepted
        # Training rounds 1–4 broadcast the models of rounds 0–3, across four sessions.
        assert [item.round for item in accepted] == list(range(ROUNDS)), path
        assert all(committed.get(item.digest) == item.round for item in accepted), path
    history = read_state(state_dir / STATE_FILE).history["rounds"]
    assert all(not item["verification_failures"] for item in history)


def test_the_resumed_run_writes_its_outputs(runs: dict[str, object]) -> None:
    run_dir = runs["crashed"]
    assert isinstance(run_dir, Path)
    assert {"metrics.json", "rounds.csv", "summary.md"} <= {p.name for p in run_dir.iterdir()}


def test_resuming_a_damaged_state_fails_naming_the_file(
    runs: dict[str, object], tmp_path: Path
) -> None:
    """No Ray needed: the state files are checked before the simulation starts."""
    source = runs["unbroken"]
    assert isinstance(source, Path)
    run_dir = tmp_path / source.name
    shutil.copytree(source, run_dir)
    state_file = SessionFiles(run_dir / "state").run_state(0) / STATE_FILE
    state_file.write_bytes(state_file.read_bytes()[:-40])
    code, output = simulate("--resume", str(run_dir))
    assert code == 2
    assert str(state_file) in output.replace("\n", "")
    assert "truncated or corrupted" in output
