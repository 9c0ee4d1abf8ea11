"""The audit log's writer: creating and opening, appending, the head and reading back."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from ztfl.aggregation.validation import RefusalReason
from ztfl.trust.audit import (
    GENESIS_HASH,
    AuditEvent,
    AuditEventKind,
    AuditHead,
    AuditLog,
    AuditLogError,
    verify_audit_log,
)

RUN = "run-1"


def fixed_clock() -> datetime:
    return datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def test_new_log_is_empty_with_the_genesis_head(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "audit.db", create=True) as log:
        assert log.head == AuditHead(0, GENESIS_HASH)
        assert list(log.records()) == []


def test_create_refuses_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    path.write_bytes(b"precious")
    with pytest.raises(AuditLogError, match="already exists") as error:
        AuditLog.open(path, create=True)
    assert error.value.path == path
    assert path.read_bytes() == b"precious"


def test_open_without_create_refuses_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with pytest.raises(AuditLogError, match="no such audit log"):
        AuditLog.open(path, create=False)
    assert not path.exists()


def test_records_chain_from_genesis_with_contiguous_seqs(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "audit.db", create=True) as log:
        first = log.append(AuditEventKind.RUN_STARTED, run_id=RUN)
        second = log.append(AuditEventKind.ROUND_STARTED, run_id=RUN, round=1)
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    assert first.compute_hash() == first.hash


def test_append_returns_what_records_reads_back(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "audit.db", create=True, clock=fixed_clock) as log:
        written = log.append(
            AuditEventKind.UPDATE_REFUSED,
            run_id=RUN,
            round=3,
            node_id=2**64 - 1,
            reason=RefusalReason.NORM_ABOVE_CAP,
            details={"norm": 12.5, "cap": 10.0, "shape": (3, 2)},
        )
        (read,) = log.records()
    assert read == written
    assert read.time == "2025-01-02T03:04:05.678901Z"
    assert read.reason == "norm_above_cap"
    assert type(read.reason) is str
    assert read.details == {"norm": 12.5, "cap": 10.0, "shape": [3, 2]}


def test_head_is_the_last_record_and_its_text_parses_back(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "audit.db", create=True) as log:
        record = log.append(AuditEventKind.RUN_STARTED, run_id=RUN)
        head = log.head
    assert head == AuditHead(1, record.hash)
    assert str(head) == f"1:{record.hash}"
    assert AuditHead.parse(str(head)) == head


@pytest.mark.parametrize(
    "text", ["", "1", "1:abc", f"-1:{'a' * 64}", f"01:{'a' * 64}", f"1:{'A' * 64}", f"0:{'a' * 64}"]
)
def test_head_parser_refuses_malformed_text(text: str) -> None:
    with pytest.raises(ValueError, match="audit head"):
        AuditHead.parse(text)


def test_reopened_log_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditLog.open(path, create=True) as log:
        log.append(AuditEventKind.RUN_STARTED, run_id=RUN)
        head = log.head
    with AuditLog.open(path, create=False) as log:
        assert log.head == head
        resumed = log.append(AuditEventKind.RUN_RESUMED, run_id=RUN)
    assert resumed.seq == 2
    assert resumed.prev_hash == head.hash
    assert verify_audit_log(path).ok


def test_append_many_writes_a_batch_in_order(tmp_path: Path) -> None:
    events = [
        AuditEvent(AuditEventKind.UPDATE_REFUSED, RUN, round=1, node_id=n, reason="non_finite")
        for n in range(100)
    ]
    with AuditLog.open(tmp_path / "audit.db", create=True) as log:
        records = log.append_many(events)
        assert log.head == records[-1].head
        assert [r.node_id for r in log.records()] == list(range(100))
    assert [r.seq for r in records] == list(range(1, 101))


def test_append_many_is_all_or_nothing(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "audit.db", create=True) as log:
        log.append(AuditEventKind.RUN_STARTED, run_id=RUN)
        head = log.head
        with pytest.raises(TypeError):
            log.append_many([AuditEvent(AuditEventKind.RUN_RESUMED, RUN), "not an event"])  # type: ignore[list-item]
        assert log.head == head
        assert len(list(log.records())) == 1


def test_records_start_at_the_requested_seq(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "audit.db", create=True) as log:
        log.append_many(AuditEvent(AuditEventKind.CONFIG_CHANGED, RUN) for _ in range(5))
        assert [r.seq for r in log.records(start=4)] == [4, 5]


def test_two_handles_on_one_file_extend_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditLog.open(path, create=True) as first, AuditLog.open(path, create=False) as second:
        first.append(AuditEventKind.RUN_STARTED, run_id=RUN)
        second.append(AuditEventKind.NODE_ADMITTED, run_id=RUN, node_id=7)
        last = first.append(AuditEventKind.ROUND_STARTED, run_id=RUN, round=1)
    assert last.seq == 3
    assert verify_audit_log(path).ok


def test_concurrent_appends_from_threads_keep_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditLog.open(path, create=True) as log:

        def append_some(node: int) -> None:
            for _ in range(25):
                log.append(AuditEventKind.NODE_ADMITTED, run_id=RUN, node_id=node)

        threads = [threading.Thread(target=append_some, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert log.head.seq == 100
    assert verify_audit_log(path).ok


def test_closed_log_refuses_appends(tmp_path: Path) -> None:
    log = AuditLog.open(tmp_path / "audit.db", create=True)
    log.close()
    with pytest.raises(AuditLogError, match="closed"):
        log.append(AuditEventKind.RUN_STARTED, run_id=RUN)


def test_closed_log_leaves_a_single_self_contained_file(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "audit.db", create=True) as log:
        log.append(AuditEventKind.RUN_STARTED, run_id=RUN)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.db"]


def test_record_times_are_utc_whatever_the_clock_zone(tmp_path: Path) -> None:
    def clock() -> datetime:
        return datetime(2025, 1, 2, 7, 0, tzinfo=timezone(timedelta(hours=2)))

    with AuditLog.open(tmp_path / "audit.db", create=True, clock=clock) as log:
        record = log.append(AuditEventKind.RUN_STARTED, run_id=RUN)
    assert record.time == "2025-01-02T05:00:00.000000Z"
