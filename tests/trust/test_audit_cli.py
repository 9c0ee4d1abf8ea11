"""``ztfl audit verify`` exit codes and ``ztfl audit export``'s JSON lines."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from typer.testing import CliRunner

from ztfl.cli.main import app
from ztfl.trust.audit import (
    AuditEvent,
    AuditEventKind,
    AuditLog,
    canonical_json,
    export_jsonl,
)
from ztfl.trust.keys import SigningKey, generate_signing_key, write_verifying_key
from ztfl.trust.model_store import ModelStore
from ztfl.trust.signing import build_manifest, sign_manifest

RUN = "run-1"
runner = CliRunner()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "audit.db"
    with AuditLog.open(path, create=True) as log:
        log.append(AuditEventKind.RUN_STARTED, run_id=RUN, details={"pipeline": "nnm -> mean"})
        log.append_many(
            AuditEvent(
                AuditEventKind.UPDATE_REFUSED,
                RUN,
                round=1,
                node_id=2**63 + n,
                reason="non_finite",
                details={"norm": 1.5e-7 * n, "note": "é ✓"},
            )
            for n in range(5)
        )
    return path


def anchors_file(path: Path, lines: list[str]) -> Path:
    file = path.parent / "anchors.txt"
    file.write_text("\n".join(["# heads from signed manifests", *lines, ""]))
    return file


def head_text(path: Path, seq: int) -> str:
    with AuditLog.open(path, create=False) as log:
        return next(str(r.head) for r in log.records(start=seq))


def test_verify_exits_0_on_an_intact_log_with_anchors(log_path: Path) -> None:
    anchors = anchors_file(log_path, [head_text(log_path, 2), head_text(log_path, 6)])
    result = runner.invoke(app, ["audit", "verify", str(log_path), "--anchors", str(anchors)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output
    assert f"head {head_text(log_path, 6)}" in result.output


def test_verify_exits_1_and_names_the_first_bad_record(log_path: Path) -> None:
    connection = sqlite3.connect(log_path, isolation_level=None)
    connection.execute("DROP TRIGGER audit_records_no_update")
    connection.execute("UPDATE audit_records SET reason = 'accepted' WHERE seq = 4")
    connection.close()
    result = runner.invoke(app, ["audit", "verify", str(log_path)])
    assert result.exit_code == 1
    assert "hash_mismatch" in result.output
    assert "first bad record  4" in result.output


def test_verify_exits_1_when_truncated_below_an_anchor(log_path: Path) -> None:
    anchors = anchors_file(log_path, [head_text(log_path, 5)])
    connection = sqlite3.connect(log_path, isolation_level=None)
    connection.execute("DROP TRIGGER audit_records_no_delete")
    connection.execute("DELETE FROM audit_records WHERE seq >= 4")
    connection.close()
    result = runner.invoke(app, ["audit", "verify", str(log_path), "--anchors", str(anchors)])
    assert result.exit_code == 1
    assert "anchor_missing" in result.output


def test_verify_exits_2_on_an_unreadable_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    path.write_bytes(b"not a database at all" * 100)
    result = runner.invoke(app, ["audit", "verify", str(path)])
    assert result.exit_code == 2
    assert str(path) in result.output


def test_verify_exits_2_on_a_missing_log(tmp_path: Path) -> None:
    result = runner.invoke(app, ["audit", "verify", str(tmp_path / "absent.db")])
    assert result.exit_code == 2
    assert not (tmp_path / "absent.db").exists()


def test_verify_exits_2_on_a_malformed_anchors_file(log_path: Path) -> None:
    anchors = anchors_file(log_path, ["3:not-a-hash"])
    result = runner.invoke(app, ["audit", "verify", str(log_path), "--anchors", str(anchors)])
    assert result.exit_code == 2
    assert "line 2" in result.output


def test_export_to_stdout_writes_one_json_object_per_record(log_path: Path) -> None:
    result = runner.invoke(app, ["audit", "export", str(log_path)])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3, 4, 5, 6]


def test_export_to_a_file_matches_the_library_export(log_path: Path) -> None:
    out = log_path.parent / "audit.jsonl"
    result = runner.invoke(app, ["audit", "export", str(log_path), "--out", str(out)])
    assert result.exit_code == 0
    expected = io.StringIO()
    export_jsonl(log_path, expected)
    assert out.read_text(encoding="utf-8") == expected.getvalue()


def test_export_exits_2_and_leaves_no_file_for_an_unreadable_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    path.write_bytes(b"\x00" * 4096)
    out = tmp_path / "audit.jsonl"
    result = runner.invoke(app, ["audit", "export", str(path), "--out", str(out)])
    assert result.exit_code == 2
    assert not out.exists()


def test_exported_lines_round_trip_to_the_records(log_path: Path) -> None:
    out = io.StringIO()
    assert export_jsonl(log_path, out) == 6
    with AuditLog.open(log_path, create=False) as log:
        records = list(log.records())
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [
        r.to_json() for r in records
    ]


def test_exported_lines_let_a_siem_recompute_every_hash(log_path: Path) -> None:
    out = io.StringIO()
    export_jsonl(log_path, out)
    previous = "0" * 64
    for line in out.getvalue().splitlines():
        fields = json.loads(line)
        stored = fields.pop("hash")
        assert fields["prev_hash"] == previous
        assert hashlib.sha256(canonical_json(fields).encode()).hexdigest() == stored
        previous = stored


# ------------------------------------------------------------------ anchors from a model store

STORE_KEY = generate_signing_key()
"""The coordinator's model-signing key: the store's manifests are signed with it."""


def model(value: float) -> list[tuple[str, np.ndarray]]:
    return [("fc.weight", np.full((2, 3), value, dtype=np.float32))]


def commit(
    store: ModelStore,
    server_round: int,
    audit_head: str,
    parent: str | None,
    key: SigningKey = STORE_KEY,
) -> str:
    """Sign and store a model of ``RUN`` whose manifest anchors ``audit_head``; its digest."""
    manifest = build_manifest(
        model(float(server_round)),
        run_id=RUN,
        round=server_round,
        parent_digest=parent,
        pipeline="mean",
        participants=(),
        refused=(),
        privacy=None,
        audit_head=audit_head,
        valid_for=timedelta(hours=1),
    )
    signed = sign_manifest(manifest, key)
    store.commit(model(float(server_round)), signed)
    return signed.digest


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A run's state folder as the coordinator leaves it: log, signed models, public key."""
    state = tmp_path / "state"
    state.mkdir()
    write_verifying_key(STORE_KEY.public_key(), state / "coordinator.pub.pem")
    store = ModelStore(state / "models")
    parent = None
    with AuditLog.open(state / "audit.db", create=True) as log:
        log.append(AuditEventKind.RUN_STARTED, run_id=RUN)
        for server_round in range(3):
            parent = commit(store, server_round, str(log.head), parent)
            log.append(AuditEventKind.MODEL_COMMITTED, run_id=RUN, round=server_round)
    return state


def verify_store(state: Path, *keys: Path) -> Result:
    arguments = ["audit", "verify", str(state / "audit.db"), "--store", str(state / "models")]
    for key in keys:
        arguments += ["--public-key", str(key)]
    return runner.invoke(app, arguments)


def forge_manifest(state: Path) -> str:
    """Replace round 2's manifest by one anchoring an earlier head, re-signed with another key.

    The head is a real one of the log, so the chain still verifies against it: only the
    signature gives the forgery away. Returns the forged manifest's digest.
    """
    store = ModelStore(state / "models")
    (original,) = [m for m in store.entries() if m.round == 2]
    shutil.rmtree(store.path(original.digest))
    with AuditLog.open(state / "audit.db", create=False) as log:
        earlier = next(str(r.head) for r in log.records(start=1))
    return commit(store, 2, earlier, original.parent_digest, key=generate_signing_key())


def test_verify_store_exits_0_when_every_manifest_verifies_against_the_pinned_key(
    state_dir: Path,
) -> None:
    result = verify_store(state_dir, state_dir / "coordinator.pub.pem")
    assert result.exit_code == 0, result.output
    assert "anchors checked   3 of 3" in result.output
    assert "unauthenticated" not in result.output


def test_verify_store_exits_1_naming_a_manifest_no_pinned_key_signed(state_dir: Path) -> None:
    forged = forge_manifest(state_dir)
    result = verify_store(state_dir, state_dir / "coordinator.pub.pem")
    assert result.exit_code == 1, result.output
    assert f"rejected manifest {forged}: unknown_key" in result.output
    assert "anchors checked   2 of 2" in result.output


def test_verify_store_exits_1_naming_a_manifest_whose_audit_head_was_edited_in_place(
    state_dir: Path,
) -> None:
    store = ModelStore(state_dir / "models")
    (target,) = [m for m in store.entries() if m.round == 1]
    manifest_file = store.path(target.digest) / "manifest.json"
    text = manifest_file.read_text()
    manifest_file.write_text(text.replace(target.audit_head, "1:" + "0" * 64))
    result = verify_store(state_dir, state_dir / "coordinator.pub.pem")
    assert result.exit_code == 1, result.output
    assert f"rejected manifest {target.digest}" in result.output


def test_verify_store_without_a_key_warns_that_its_anchors_are_unauthenticated(
    state_dir: Path,
) -> None:
    forge_manifest(state_dir)
    result = verify_store(state_dir)
    assert result.exit_code == 0, result.output
    assert "anchors are unauthenticated" in result.output


def test_verify_exits_2_for_a_public_key_without_a_store(log_path: Path) -> None:
    key = log_path.parent / "coordinator.pub.pem"
    write_verifying_key(STORE_KEY.public_key(), key)
    result = runner.invoke(app, ["audit", "verify", str(log_path), "--public-key", str(key)])
    assert result.exit_code == 2
    assert "--store" in result.output
