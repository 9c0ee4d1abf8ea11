"""The evidence bundle: every artefact indexed by control with its SHA-256, and a run that does
not verify exported but marked FAILED.

The run folder is a real coordinator state folder: a RunLedger with signed models, a
hash-chained audit log and a checksummed state file, tampered with as an attacker with
file access would.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from ztfl.aggregation import RefusalReason
from ztfl.cli.evidence import evidence
from ztfl.server.evidence import (
    CheckStatus,
    RunFolderError,
    export_evidence_bundle,
    inspect_run_folder,
)
from ztfl.server.history import RefusedUpdate, RoundRecord, RunHistory
from ztfl.server.ledger import MODELS_DIR, RunLedger
from ztfl.server.run_state import CoordinatorState
from ztfl.trust.keys import generate_signing_key
from ztfl.trust.signing import MANIFEST_FILE

KEY = generate_signing_key()
CONFIG = {"pipeline": "mean", "num-server-rounds": 2, "dp": True}
ROUNDS = 2


def model(value: float) -> list[tuple[str, np.ndarray]]:
    return [("fc.weight", np.full((2, 3), value, dtype=np.float32))]


def privacy(server_round: int) -> dict[str, object]:
    return {
        "epsilon": 0.5 * server_round,
        "delta": 1e-5,
        "noise_multiplier": 1.1,
        "clip_norm": 1.0,
        "sampling_rate": 0.5,
        "accountant": "rdp",
    }


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A two-round DP run: node 9 refused each round, node 9 quarantined in round 2."""
    state_dir = tmp_path / "state"
    ledger = RunLedger.start(
        state_dir,
        KEY,
        config=CONFIG,
        initial=model(0.0),
        model_validity=timedelta(hours=1),
        pipeline="mean",
    )
    history = RunHistory(initial_metrics={"accuracy": 0.1, "loss": 2.3})
    for server_round in range(1, ROUNDS + 1):
        ledger.round_started(server_round, (1, 2, 9))
        refused = (RefusedUpdate(9, RefusalReason.NORM_ABOVE_CAP, "norm 1e9"),)
        ledger.updates_refused(server_round, refused)
        ledger.commit_model(
            server_round,
            model(float(server_round)),
            participants=(1, 2),
            refused=[(9, "norm_above_cap")],
            privacy=privacy(server_round),
        )
        ledger.round_completed(server_round)
        record = RoundRecord(
            server_round=server_round,
            sampled_nodes=(1, 2, 9),
            num_replies=3,
            accepted_nodes=(1, 2),
            refused=refused,
            pipeline="mean",
            committed=True,
            central_metrics={"accuracy": 0.5, "loss": 1.0},
            model_digest=ledger.model_digest,
            privacy=privacy(server_round),
            quarantined=(9,) if server_round == ROUNDS else (),
        )
        history.rounds.append(record)
        if server_round == ROUNDS:
            ledger.quarantine_decided(
                server_round,
                9,
                "quarantined",
                {"node": "9", "decision": "quarantined", "rounds": [1, 2], "scores": [3.1, 3.4]},
            )
        ledger.commit_state(
            CoordinatorState(
                run_id=ledger.run_id,
                round=server_round,
                model_digest=ledger.model_digest,
                audit_head="0:" + "0" * 64,
                config=CONFIG,
                sampler={},
                aggregation_generator="00",
                history=history.to_json(),
            )
        )
    ledger.close()
    return state_dir


def edit_first_audit_record(state_dir: Path) -> None:
    """Change a record's details in place, as someone with write access to the file would."""
    connection = sqlite3.connect(state_dir / "audit.db", isolation_level=None)
    for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
        connection.execute(f"DROP TRIGGER {name}")
    connection.execute("UPDATE audit_records SET details = '{}' WHERE seq = 1")
    connection.close()


def edit_a_manifest(state_dir: Path) -> None:
    folder = next(path for path in (state_dir / MODELS_DIR).iterdir() if len(path.name) == 64)
    manifest = folder / MANIFEST_FILE
    manifest.write_bytes(manifest.read_bytes().replace(b'"pipeline":"', b'"pipeline":"x'))


def read_index(bundle: Path) -> dict[str, object]:
    index = json.loads((bundle / "index.json").read_text())
    assert isinstance(index, dict)
    return index


def artefacts(index: dict[str, object]) -> list[dict[str, object]]:
    items = index["artefacts"]
    assert isinstance(items, list)
    return items


def test_every_artefact_is_indexed_with_its_sha256(state_dir: Path, tmp_path: Path) -> None:
    bundle = export_evidence_bundle(state_dir, tmp_path / "bundle").path
    listed = {str(item["path"]): item["sha256"] for item in artefacts(read_index(bundle))}
    on_disk = {
        path.relative_to(bundle).as_posix()
        for path in bundle.rglob("*")
        if path.is_file() and path.name not in {"index.json", "index.md", "SHA256SUMS"}
    }
    assert set(listed) == on_disk
    for relative, digest in listed.items():
        assert hashlib.sha256((bundle / relative).read_bytes()).hexdigest() == digest


def test_each_control_is_evidenced_by_the_artefacts_that_prove_it(
    state_dir: Path, tmp_path: Path
) -> None:
    items = artefacts(read_index(export_evidence_bundle(state_dir, tmp_path / "b").path))
    controls: dict[str, set[str]] = {}
    for item in items:
        for control in item["controls"]:  # type: ignore[attr-defined]
            controls.setdefault(control, set()).add(Path(str(item["path"])).name)
    assert {"manifest.json", "model.sig", "signatures.json"} <= controls["model_integrity"]
    assert {"participants.csv", "audit-log.jsonl"} <= controls["access_control"]
    assert {"privacy-ledger.csv", "configuration.json"} <= controls["privacy"]
    assert {"incidents.json", "audit-chain.json"} <= controls["incident_response"]


def test_an_untouched_run_is_marked_passed(state_dir: Path, tmp_path: Path) -> None:
    bundle = export_evidence_bundle(state_dir, tmp_path / "bundle")
    assert bundle.verified
    assert read_index(bundle.path)["verification"] == "PASSED"
    assert "VERIFICATION FAILED" not in (bundle.path / "index.md").read_text()


def test_a_run_with_an_edited_audit_record_is_exported_and_marked_failed(
    state_dir: Path, tmp_path: Path
) -> None:
    edit_first_audit_record(state_dir)
    bundle = export_evidence_bundle(state_dir, tmp_path / "bundle")
    assert not bundle.verified
    index = read_index(bundle.path)
    assert index["verification"] == "FAILED"
    assert (bundle.path / "index.md").read_text().startswith("# VERIFICATION FAILED")
    chain = json.loads((bundle.path / "runs/000/verification/audit-chain.json").read_text())
    assert (chain["status"], chain["failure"], chain["first_bad_seq"]) == (
        "failed",
        "hash_mismatch",
        1,
    )


def test_a_run_with_an_edited_manifest_is_marked_failed(state_dir: Path, tmp_path: Path) -> None:
    edit_a_manifest(state_dir)
    bundle = export_evidence_bundle(state_dir, tmp_path / "bundle")
    report = json.loads((bundle.path / "runs/000/verification/signatures.json").read_text())
    assert (report["status"], report["failed"]) == ("failed", 1)
    assert read_index(bundle.path)["verification"] == "FAILED"


def test_manifests_verify_against_a_pinned_key_and_fail_against_another(
    state_dir: Path,
) -> None:
    pinned = inspect_run_folder(state_dir, public_keys=[KEY.public_key()])
    other = inspect_run_folder(state_dir, public_keys=[generate_signing_key().public_key()])
    assert pinned.runs[0].signatures.status is CheckStatus.PASSED
    assert other.runs[0].signatures.status is CheckStatus.FAILED
    assert other.runs[0].signatures.passed == 0


def test_the_privacy_ledger_lists_epsilon_per_round_as_the_signed_manifests_state(
    state_dir: Path, tmp_path: Path
) -> None:
    bundle = export_evidence_bundle(state_dir, tmp_path / "bundle").path
    with (bundle / "runs/000/privacy-ledger.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["round"], float(row["epsilon"]), row["signed"]) for row in rows] == [
        ("1", 0.5, "yes"),
        ("2", 1.0, "yes"),
    ]


def test_participants_per_round_name_the_refused_node_and_reason(
    state_dir: Path, tmp_path: Path
) -> None:
    bundle = export_evidence_bundle(state_dir, tmp_path / "bundle").path
    with (bundle / "runs/000/participants.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [
        (row["sampled"], row["accepted"], row["refused"], row["quarantined"]) for row in rows
    ] == [
        ("1 2 9", "1 2", "9:norm_above_cap", ""),
        ("1 2 9", "1 2", "9:norm_above_cap", "9"),
    ]


def test_quarantine_events_are_exported_as_incidents(state_dir: Path, tmp_path: Path) -> None:
    bundle = export_evidence_bundle(state_dir, tmp_path / "bundle").path
    incidents = json.loads((bundle / "runs/000/incidents.json").read_text())
    (event,) = incidents["quarantine_events"]
    assert (event["node_id"], event["details"]["rounds"]) == (9, [1, 2])


def test_the_private_signing_key_of_a_simulation_is_never_copied(
    state_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "simulation"
    (run_dir / "state" / "runs").mkdir(parents=True)
    state_dir.rename(run_dir / "state" / "runs" / "000")
    secret = run_dir / "state" / "signing-key.pem"
    secret.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot for the bundle\n")
    bundle = export_evidence_bundle(run_dir, tmp_path / "bundle").path
    for path in bundle.rglob("*"):
        if path.is_file():
            assert b"PRIVATE KEY" not in path.read_bytes(), path


def test_a_link_to_a_file_outside_the_run_folder_is_not_copied(
    state_dir: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("readable by the exporting user, not part of the run")
    (state_dir / "revocation-list.json").symlink_to(secret)
    bundle = export_evidence_bundle(state_dir, tmp_path / "bundle").path
    for path in bundle.rglob("*"):
        if path.is_file():
            assert b"not part of the run" not in path.read_bytes(), path
    skipped = read_index(bundle)["skipped"]
    assert isinstance(skipped, list)
    assert [Path(item["path"]).name for item in skipped] == ["revocation-list.json"]
    assert "symbolic link" in skipped[0]["problem"]


def test_a_zip_bundle_holds_the_index_and_every_artefact(state_dir: Path, tmp_path: Path) -> None:
    bundle = export_evidence_bundle(state_dir, tmp_path / "evidence.zip").path
    with zipfile.ZipFile(bundle) as archive:
        index = json.loads(archive.read("index.json"))
        names = set(archive.namelist())
        for item in index["artefacts"]:
            assert hashlib.sha256(archive.read(item["path"])).hexdigest() == item["sha256"]
    assert {"index.json", "index.md", "SHA256SUMS"} <= names


def test_an_existing_bundle_path_is_refused(state_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "bundle").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        export_evidence_bundle(state_dir, tmp_path / "bundle")


def test_a_folder_that_holds_no_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match="not a ztfl run folder"):
        inspect_run_folder(tmp_path)


def test_cli_exports_a_tampered_run_and_exits_1(state_dir: Path, tmp_path: Path) -> None:
    edit_first_audit_record(state_dir)
    cli = typer.Typer()
    cli.command()(evidence)
    result = CliRunner().invoke(cli, [str(state_dir), "--out", str(tmp_path / "bundle")])
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output
    assert (tmp_path / "bundle" / "index.json").is_file()
