"""``verify_audit_log`` finds edits, deletions, reorderings, insertions and truncations.

Each test tampers with a real log the way an attacker with file access would:
raw sqlite3, append-only triggers dropped first, hashes recomputed with the
documented recipe where the attacker is careful. The log holds records 1..10.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from ztfl.trust.audit import (
    GENESIS_HASH,
    AuditEvent,
    AuditEventKind,
    AuditFailure,
    AuditHead,
    AuditLog,
    AuditVerification,
    verify_audit_log,
)

RUN = "run-1"
COLUMNS = ("seq", "time", "kind", "run_id", "round", "node_id", "reason", "details", "prev_hash")


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "audit.db"
    with AuditLog.open(path, create=True) as log:
        log.append(AuditEventKind.RUN_STARTED, run_id=RUN, details={"pipeline": "mean"})
        log.append_many(
            AuditEvent(AuditEventKind.ROUND_COMPLETED, RUN, round=r, details={"accepted": r})
            for r in range(1, 10)
        )
    return path


def heads(path: Path) -> dict[int, AuditHead]:
    with AuditLog.open(path, create=False) as log:
        return {record.seq: record.head for record in log.records()}


def attacker(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
        connection.execute(f"DROP TRIGGER {name}")
    return connection


def recomputed_hash(connection: sqlite3.Connection, seq: int) -> str:
    """The documented recipe: SHA-256 of the canonical JSON of every field but the hash."""
    row = connection.execute(
        f"SELECT {', '.join(COLUMNS)} FROM audit_records WHERE seq = ?", (seq,)
    ).fetchone()
    fields = dict(zip(COLUMNS, row, strict=True))
    fields["details"] = json.loads(fields["details"])
    fields["node_id"] = None if fields["node_id"] is None else int(fields["node_id"])
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def rehash(connection: sqlite3.Connection, seq: int, *, relink: bool = False) -> None:
    if relink:
        previous = connection.execute(
            "SELECT hash FROM audit_records WHERE seq = ?", (seq - 1,)
        ).fetchone()
        connection.execute(
            "UPDATE audit_records SET prev_hash = ? WHERE seq = ?",
            (GENESIS_HASH if previous is None else previous[0], seq),
        )
    connection.execute(
        "UPDATE audit_records SET hash = ? WHERE seq = ?", (recomputed_hash(connection, seq), seq)
    )


def failure(result: AuditVerification) -> tuple[AuditFailure | None, int | None]:
    return result.failure, result.first_bad_seq


def test_intact_log_verifies_with_its_anchors(log_path: Path) -> None:
    anchors = [heads(log_path)[seq] for seq in (3, 7, 10)]
    result = verify_audit_log(log_path, anchors)
    assert result.ok
    assert (result.records, result.anchors_checked) == (10, 3)
    assert result.head == heads(log_path)[10]


def test_documented_recipe_reproduces_every_stored_hash(log_path: Path) -> None:
    connection = sqlite3.connect(log_path)
    stored = dict(connection.execute("SELECT seq, hash FROM audit_records"))
    assert all(recomputed_hash(connection, seq) == stored[seq] for seq in stored)


def test_empty_log_verifies_against_the_genesis_anchor(tmp_path: Path) -> None:
    AuditLog.open(tmp_path / "audit.db", create=True).close()
    result = verify_audit_log(tmp_path / "audit.db", [AuditHead(0, GENESIS_HASH)])
    assert result.ok
    assert result.records == 0


def test_edited_record_is_a_hash_mismatch_at_its_seq(log_path: Path) -> None:
    attacker(log_path).execute(
        "UPDATE audit_records SET details = '{\"accepted\":99}' WHERE seq = 5"
    )
    assert failure(verify_audit_log(log_path)) == (AuditFailure.HASH_MISMATCH, 5)


def test_edited_and_rehashed_record_breaks_the_next_link(log_path: Path) -> None:
    connection = attacker(log_path)
    connection.execute("UPDATE audit_records SET reason = 'hidden' WHERE seq = 5")
    rehash(connection, 5)
    assert failure(verify_audit_log(log_path)) == (AuditFailure.BROKEN_LINK, 6)


def test_rewritten_chain_verifies_alone_but_fails_its_anchor(log_path: Path) -> None:
    anchor = heads(log_path)[8]
    connection = attacker(log_path)
    connection.execute("UPDATE audit_records SET details = '{}' WHERE seq = 5")
    for seq in range(5, 11):
        rehash(connection, seq, relink=True)
    assert verify_audit_log(log_path).ok  # a hash chain alone cannot see a full rewrite
    assert failure(verify_audit_log(log_path, [anchor])) == (AuditFailure.ANCHOR_MISMATCH, 8)


def test_deleted_record_is_a_sequence_gap_at_its_seq(log_path: Path) -> None:
    attacker(log_path).execute("DELETE FROM audit_records WHERE seq = 4")
    assert failure(verify_audit_log(log_path)) == (AuditFailure.SEQUENCE_GAP, 4)


def test_deleted_record_with_renumbered_successors_breaks_the_link(log_path: Path) -> None:
    connection = attacker(log_path)
    connection.execute("DELETE FROM audit_records WHERE seq = 4")
    for seq in range(5, 11):
        connection.execute("UPDATE audit_records SET seq = ? WHERE seq = ?", (seq - 1, seq))
        rehash(connection, seq - 1)
    assert failure(verify_audit_log(log_path)) == (AuditFailure.BROKEN_LINK, 4)


def test_swapped_records_are_a_hash_mismatch_at_the_first(log_path: Path) -> None:
    connection = attacker(log_path)
    connection.execute("UPDATE audit_records SET seq = 1000 WHERE seq = 3")
    connection.execute("UPDATE audit_records SET seq = 3 WHERE seq = 4")
    connection.execute("UPDATE audit_records SET seq = 4 WHERE seq = 1000")
    assert failure(verify_audit_log(log_path)) == (AuditFailure.HASH_MISMATCH, 3)


def test_swapped_and_rehashed_records_break_the_link_at_the_first(log_path: Path) -> None:
    connection = attacker(log_path)
    connection.execute("UPDATE audit_records SET seq = 1000 WHERE seq = 3")
    connection.execute("UPDATE audit_records SET seq = 3 WHERE seq = 4")
    connection.execute("UPDATE audit_records SET seq = 4 WHERE seq = 1000")
    rehash(connection, 3)
    rehash(connection, 4)
    assert failure(verify_audit_log(log_path)) == (AuditFailure.BROKEN_LINK, 3)


def test_inserted_record_breaks_the_link_after_it(log_path: Path) -> None:
    original = heads(log_path)
    connection = attacker(log_path)
    for seq in range(10, 4, -1):  # make room at 5, keeping the shifted records self-consistent
        connection.execute("UPDATE audit_records SET seq = ? WHERE seq = ?", (seq + 1, seq))
        rehash(connection, seq + 1)
    connection.execute(
        "INSERT INTO audit_records VALUES (5, '2025-01-01T00:00:00.000000Z', 'node_admitted', "
        "?, NULL, '666', NULL, '{}', ?, '')",
        (RUN, original[4].hash),
    )
    rehash(connection, 5)
    assert failure(verify_audit_log(log_path)) == (AuditFailure.BROKEN_LINK, 6)


def test_record_numbered_before_the_first_is_a_sequence_gap_at_its_seq(log_path: Path) -> None:
    connection = attacker(log_path)
    connection.execute("PRAGMA ignore_check_constraints = ON")  # past the table's seq >= 1
    connection.execute(
        "INSERT INTO audit_records SELECT 0, time, kind, run_id, round, node_id, reason, "
        "details, prev_hash, hash FROM audit_records WHERE seq = 1"
    )
    assert failure(verify_audit_log(log_path)) == (AuditFailure.SEQUENCE_GAP, 0)


def test_truncation_below_an_anchor_is_an_anchor_missing(log_path: Path) -> None:
    anchor = heads(log_path)[9]
    attacker(log_path).execute("DELETE FROM audit_records WHERE seq >= 8")
    result = verify_audit_log(log_path, [anchor])
    assert failure(result) == (AuditFailure.ANCHOR_MISSING, 8)
    assert result.records == 7


def test_truncation_after_the_last_anchor_is_not_detectable(log_path: Path) -> None:
    # Documented limit (docs/audit.md): records after the last anchor can be cut
    # cleanly; only a later anchor or an off-host copy of the records shows it.
    anchor = heads(log_path)[7]
    attacker(log_path).execute("DELETE FROM audit_records WHERE seq >= 8")
    assert verify_audit_log(log_path, [anchor]).ok


def test_forged_anchor_is_an_anchor_mismatch(log_path: Path) -> None:
    forged = AuditHead(6, "f" * 64)
    assert failure(verify_audit_log(log_path, [forged])) == (AuditFailure.ANCHOR_MISMATCH, 6)


def test_unknown_kind_is_a_malformed_record(log_path: Path) -> None:
    attacker(log_path).execute("UPDATE audit_records SET kind = 'coffee_break' WHERE seq = 2")
    assert failure(verify_audit_log(log_path)) == (AuditFailure.MALFORMED_RECORD, 2)


def test_non_json_details_are_a_malformed_record(log_path: Path) -> None:
    attacker(log_path).execute("UPDATE audit_records SET details = '{oops' WHERE seq = 9")
    assert failure(verify_audit_log(log_path)) == (AuditFailure.MALFORMED_RECORD, 9)


def test_first_failure_wins_when_several_records_are_bad(log_path: Path) -> None:
    connection = attacker(log_path)
    connection.execute("UPDATE audit_records SET run_id = 'x' WHERE seq IN (3, 6)")
    connection.execute("DELETE FROM audit_records WHERE seq = 8")
    assert failure(verify_audit_log(log_path)) == (AuditFailure.HASH_MISMATCH, 3)
