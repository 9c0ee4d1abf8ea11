"""Damaged, foreign and half-written files: a clear error naming the file, never a fresh start."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ztfl.trust.audit import (
    AuditEvent,
    AuditEventKind,
    AuditLog,
    AuditLogError,
    export_jsonl,
    verify_audit_log,
)

RUN = "run-1"


def write_log(path: Path, records: int) -> None:
    with AuditLog.open(path, create=True) as log:
        log.append_many(
            AuditEvent(AuditEventKind.NODE_ADMITTED, RUN, node_id=n, details={"pad": "x" * 200})
            for n in range(records)
        )


def assert_refused_naming(path: Path) -> None:
    """Opening, verifying and exporting all fail with the file's path in the message."""
    with pytest.raises(AuditLogError) as opened:
        AuditLog.open(path, create=False)
    with pytest.raises(AuditLogError) as verified:
        verify_audit_log(path)
    with pytest.raises(AuditLogError) as exported, open(os.devnull, "w") as sink:
        export_jsonl(path, sink)
    for error in (opened.value, verified.value, exported.value):
        assert str(error).startswith(str(path))
        assert error.path == path


def test_random_bytes_are_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    path.write_bytes(random.Random(0).randbytes(8192))
    assert_refused_naming(path)


def test_empty_file_is_refused_not_initialised(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    path.touch()
    assert_refused_naming(path)
    assert path.stat().st_size == 0


def test_truncated_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_log(path, 300)
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    assert_refused_naming(path)


def test_file_cut_inside_its_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_log(path, 3)
    with path.open("r+b") as handle:
        handle.truncate(60)
    assert_refused_naming(path)


def test_overwritten_pages_are_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_log(path, 300)
    page_size = 4096
    with path.open("r+b") as handle:  # scribble over every page but the header page
        for page in range(1, path.stat().st_size // page_size):
            handle.seek(page * page_size)
            handle.write(b"\xff" * 64)
    with pytest.raises(AuditLogError) as error:
        verify_audit_log(path)
    assert str(error.value).startswith(str(path))


def test_foreign_sqlite_database_is_not_a_ztfl_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE audit_records (seq INTEGER PRIMARY KEY)")
    assert_refused_naming(path)


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    AuditLog.open(path, create=True).close()
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("DROP TRIGGER audit_format_no_update")
    connection.execute("UPDATE audit_format SET version = 99")
    connection.close()
    with pytest.raises(AuditLogError, match="format version 99"):
        AuditLog.open(path, create=False)


def test_dropped_triggers_refuse_to_open(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_log(path, 2)
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("DROP TRIGGER audit_records_no_delete")
    connection.close()
    with pytest.raises(AuditLogError, match="audit_records_no_delete"):
        AuditLog.open(path, create=False)


def test_edited_last_record_refuses_to_open(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    write_log(path, 5)
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("DROP TRIGGER audit_records_no_update")
    connection.execute("UPDATE audit_records SET run_id = 'other' WHERE seq = 5")
    connection.execute(
        "CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records "
        "BEGIN SELECT RAISE(ABORT, 'x'); END"
    )
    connection.close()
    with pytest.raises(AuditLogError, match=r"last record \(5\) is inconsistent"):
        AuditLog.open(path, create=False)


@pytest.mark.parametrize(
    "statement", ["UPDATE audit_records SET run_id = 'x'", "DELETE FROM audit_records"]
)
def test_triggers_refuse_updates_and_deletes(tmp_path: Path, statement: str) -> None:
    path = tmp_path / "audit.db"
    write_log(path, 2)
    connection = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        connection.execute(statement)
    connection.close()


CHILD = textwrap.dedent(
    """
    import sys
    from ztfl.trust.audit import AuditEventKind, AuditLog

    log = AuditLog.open(sys.argv[1], create=True)
    while True:
        record = log.append(AuditEventKind.ROUND_STARTED, run_id="run-1", round=0)
        print(record.seq, record.hash, flush=True)
    """
)


def test_records_appended_before_sigkill_survive(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, killed as a whole
    )
    assert child.stdout is not None
    reported: dict[int, str] = {}
    try:
        while len(reported) < 40:
            line = child.stdout.readline()
            assert line, "the appending child exited early"
            seq, digest = line.split()
            reported[int(seq)] = digest
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    with AuditLog.open(path, create=False) as log:
        stored = {record.seq: record.hash for record in log.records()}
    assert reported.items() <= stored.items()
    assert verify_audit_log(path).ok
