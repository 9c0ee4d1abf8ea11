"""Time the audit log's append, verify and export against raw SQLite inserts in the same run.

Run as ``python benchmarks/audit.py`` (``--quick`` for smaller counts). Every
measurement uses a fresh file in a temporary folder (``--dir`` to pick the disk),
WAL journaling and ``synchronous=FULL`` for ztfl and the raw baseline alike, so
the difference is what ztfl adds: validation, canonical JSON, SHA-256 and the
tail lookup. Single appends pay one fsync each; batches share one transaction.
Verification and export run in a subprocess each, whose peak resident memory is
reported, at two log sizes, to show that memory does not grow with the log.

Results go to ``benchmarks/results/audit-<machine>.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ztfl.trust.audit import AuditEvent, AuditEventKind, AuditLog

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BATCH = 1000
SINGLE_REPEATS = 3
RUN = "benchmark-run"
DETAILS = {"norm": 12.5, "cap": 10.0, "detail": "update norm above the hard cap"}
RAW_SCHEMA = (
    "CREATE TABLE records (seq INTEGER PRIMARY KEY, time TEXT, kind TEXT, run_id TEXT, "
    "round INTEGER, node_id TEXT, reason TEXT, details TEXT, prev_hash TEXT, hash TEXT)"
)
RAW_ROW = (
    "2025-01-01T00:00:00.000000Z",
    "update_refused",
    RUN,
    1,
    "12345",
    "norm_above_cap",
    json.dumps(DETAILS),
    "0" * 64,
    "0" * 64,
)


def event(index: int) -> AuditEvent:
    return AuditEvent(
        AuditEventKind.UPDATE_REFUSED,
        RUN,
        round=index // 100,
        node_id=index,
        reason="norm_above_cap",
        details=DETAILS,
    )


def raw_connection(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute(RAW_SCHEMA)
    return connection


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def measure_appends(folder: Path, single: int, batched: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def record(name: str, count: int, seconds: float) -> None:
        rows.append(
            {"method": name, "events": count, "seconds": seconds, "events_per_s": count / seconds}
        )
        print(f"  {name:<34} {count / seconds:>12,.0f} events/s", file=sys.stderr, flush=True)

    # Single appends are bound by fsync, which other disk users make noisy: alternate
    # ztfl and raw in a few repeats on fresh files and keep each one's best.
    insert = "INSERT INTO records VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    best = {"ztfl": float("inf"), "raw": float("inf")}

    def ztfl_singles(log: AuditLog) -> None:
        for i in range(single):
            log.append(AuditEventKind.UPDATE_REFUSED, run_id=RUN, round=1, node_id=i,
                       reason="norm_above_cap", details=DETAILS)  # fmt: skip

    def raw_singles(raw: sqlite3.Connection) -> None:
        for _ in range(single):
            raw.execute(insert, RAW_ROW)

    for repeat in range(SINGLE_REPEATS):
        log = AuditLog.open(folder / f"single-{repeat}.db", create=True)
        best["ztfl"] = min(best["ztfl"], timed(functools.partial(ztfl_singles, log)))
        log.close()
        raw = raw_connection(folder / f"raw-single-{repeat}.db")
        best["raw"] = min(best["raw"], timed(functools.partial(raw_singles, raw)))
        raw.close()
    record(f"ztfl append (1 per transaction, best of {SINGLE_REPEATS})", single, best["ztfl"])
    record(f"raw sqlite insert (1 per tx, best of {SINGLE_REPEATS})", single, best["raw"])

    log = AuditLog.open(folder / "batched.db", create=True)
    events = [event(i) for i in range(BATCH)]

    def ztfl_batches() -> None:
        for _ in range(batched // BATCH):
            log.append_many(events)

    record(f"ztfl append_many ({BATCH} per transaction)", batched, timed(ztfl_batches))
    log.close()
    raw = raw_connection(folder / "raw-batched.db")

    def raw_batches() -> None:
        for _ in range(batched // BATCH):
            raw.execute("BEGIN")
            raw.executemany(insert, [RAW_ROW] * BATCH)
            raw.execute("COMMIT")

    record(f"raw sqlite executemany ({BATCH} per transaction)", batched, timed(raw_batches))
    raw.close()
    # The same work without building AuditEvent objects up front (what append pays for).
    log = AuditLog.open(folder / "batched-built.db", create=True)
    record(
        f"ztfl build + append_many ({BATCH} per tx)",
        batched,
        timed(lambda: [log.append_many(event(i) for i in range(BATCH))
                       for _ in range(batched // BATCH)]),
    )  # fmt: skip
    log.close()
    return rows


def child(action: str, path: Path) -> None:
    """Run one verification or export and print its time and peak memory as JSON."""
    from ztfl.trust.audit import export_jsonl, verify_audit_log

    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if action == "verify":
        result = verify_audit_log(path)
        assert result.ok, result
        count = result.records
    else:
        with open(os.devnull, "w", encoding="utf-8") as sink:
            count = export_jsonl(path, sink)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"records": count, "seconds": seconds, "peak_rss_mib": peak_kib / 1024,
                      "rss_growth_mib": (peak_kib - baseline_kib) / 1024}))  # fmt: skip


def measure_reading(folder: Path, sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        path = folder / f"read-{size}.db"
        with AuditLog.open(path, create=True) as log:
            events = [event(i) for i in range(BATCH)]
            for _ in range(size // BATCH):
                log.append_many(events)
        for action in ("verify", "export"):
            output = subprocess.run(
                [sys.executable, __file__, "--child", action, str(path)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            row = {"method": f"ztfl {action}", **json.loads(output)}
            row["records_per_s"] = row["records"] / row["seconds"]
            rows.append(row)
            print(
                f"  {action:<7} {size:>9,} records {row['records_per_s']:>12,.0f} records/s, "
                f"RSS growth {row['rss_growth_mib']:.1f} MiB",
                file=sys.stderr,
                flush=True,
            )
    return rows


def machine_description() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            cpu = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in cpuinfo
                    if line.startswith("model name")
                ),
                cpu,
            )
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
    }


def machine_slug(machine: dict[str, Any]) -> str:
    words = "".join(c.lower() if c.isalnum() else "-" for c in machine["cpu"]).split("-")
    return "-".join(word for word in words if word) + f"-{machine['cores']}cpu"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (about 20 s)")
    parser.add_argument("--dir", type=Path, help="folder for the temporary logs (default: TMPDIR)")
    parser.add_argument(
        "--output", type=Path, help="JSON path (default: results/audit-<machine>.json)"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return 0
    single, batched = (500, 20_000) if args.quick else (2_000, 100_000)
    sizes = [20_000, 100_000] if args.quick else [100_000, 1_000_000]
    machine = machine_description()
    started = time.time()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="ztfl-audit-bench-") as name:
        folder = Path(name)
        filesystem = subprocess.run(
            ["df", "--output=fstype", str(folder)], capture_output=True, text=True, check=False
        ).stdout.split()[-1:]
        appends = measure_appends(folder, single, batched)
        reading = measure_reading(folder, sizes)
    report = {
        "machine": machine,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "load_average_after": os.getloadavg(),
        "settings": {
            "journal": "WAL, synchronous=FULL (ztfl and raw baseline)",
            "filesystem": filesystem[0] if filesystem else None,
            "batch": BATCH,
            "details": DETAILS,
            "memory": "peak RSS of a fresh subprocess minus its RSS before the call",
        },
        "appends": appends,
        "reading": reading,
    }
    output = args.output or RESULTS_DIR / (
        f"audit-{machine_slug(machine)}{'-quick' if args.quick else ''}.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
