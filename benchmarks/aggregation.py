"""Time ztfl's aggregation rules against Flower 1.42, ByzFL and a streaming-read floor.

Run as ``python benchmarks/aggregation.py`` (``make bench``); ``--quick`` times
only n=50, d=1e6. Every measurement runs in a fresh subprocess that builds the
same seeded float32 update matrix, runs the call once on a tiny input (so numba
loads its kernels), resets the kernel's peak-RSS counter, times the call, and
reports the best and median of a few repeats and the peak resident memory
above what the inputs already held. A baseline that has not finished its first
call within the cap is killed and marked "capped" (legacy Flower Krum and
Bulyan are Python loops over client pairs); a configuration whose estimated
memory exceeds the limit is skipped and marked. ztfl rules run with
``validated=True`` as the coordinator calls them; the validation pass it does
once per round while unpacking updates is timed separately.

Results go to ``benchmarks/results/aggregation-<machine>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import importlib.metadata
import importlib.util
import itertools
import json
import os
import platform
import selectors
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SIZES_N = (10, 50, 200)
SIZES_D = (100_000, 1_000_000, 10_000_000)
QUICK_SIZE = (50, 1_000_000)
BYTES_PER_VALUE = 4  # float32, the dtype of model updates on the wire
MIN_TIMED_S = 0.5
MAX_RUNS = 50
MIB = 1024 * 1024
GIB = 1024 * MIB
# Layer split of a flattened update, for the baselines that take per-layer arrays
# (roughly a small CNN: two large weight tensors, two small, their biases).
LAYER_FRACTIONS = (0.55, 0.3, 0.1, 0.04, 0.005, 0.005)

Call = Callable[[], object]


# ---------------------------------------------------------------- measurements


@dataclasses.dataclass(frozen=True)
class Method:
    """One timed function: what it is, what ztfl rule it is compared with, its cost model."""

    name: str
    group: str  # "ztfl", "baseline", "floor" or "validation"
    label: str
    # Estimated peak bytes as a multiple of the update matrix (plus n²d-type terms
    # in ``memory_estimate``); used to skip what would not fit.
    matrix_copies: float = 1.0
    counterpart: str | None = None  # the ztfl method a baseline is compared with
    # Exponents (in n, d) of the running time, for estimating a capped baseline
    # from a smaller measured size; None: no estimate.
    scaling: tuple[float, float] | None = None


METHODS: tuple[Method, ...] = (
    Method("floor", "floor", "streaming read (one pass summing the matrix)"),
    Method("validation_rows", "validation", "validation: check_row on every row", 1.0),
    Method("validation_scan", "validation", "finiteness scan (validated=False adds it)", 1.2),
    Method("mean", "ztfl", "ztfl mean"),
    Method("median", "ztfl", "ztfl median"),
    Method("trimmed_mean", "ztfl", "ztfl trimmed mean (trim f)"),
    Method("krum", "ztfl", "ztfl Krum"),
    Method("multi_krum", "ztfl", "ztfl Multi-Krum (m = n − f)"),
    Method("bulyan", "ztfl", "ztfl Bulyan", 1.7),
    Method("geometric_median", "ztfl", "ztfl geometric median"),
    Method("centered_clipping", "ztfl", "ztfl centered clipping (3 iterations)"),
    Method("nnm", "ztfl", "ztfl NNM (alone)", 2.0),
    Method("pipeline", "ztfl", "ztfl arc -> nnm -> trimmed_mean", 2.0),
    Method("default_pipeline", "ztfl", "ztfl nnm -> trimmed_mean (the default)", 2.0),
    Method("flower_mean", "baseline", "Flower legacy aggregate", 2.2, "mean"),
    Method("flower_median", "baseline", "Flower legacy aggregate_median", 3.2, "median"),
    Method(
        "flower_trimmed_mean",
        "baseline",
        "Flower legacy aggregate_trimmed_avg",
        3.2,
        "trimmed_mean",
    ),
    Method("flower_krum", "baseline", "Flower legacy aggregate_krum", 2.2, "krum", (2.0, 1.0)),
    Method(
        "flower_multi_krum",
        "baseline",
        "Flower legacy aggregate_krum (to_keep = n − f)",
        3.2,
        "multi_krum",
        (2.0, 1.0),
    ),
    Method(
        "flower_bulyan", "baseline", "Flower legacy aggregate_bulyan", 3.2, "bulyan", (3.0, 1.0)
    ),
    Method(
        "flower_message_distances",
        "baseline",
        "Flower Message API compute_distances",
        3.2,
        "krum",
    ),
    Method(
        "flower_message_krum",
        "baseline",
        "Flower Message API select_multikrum (m = 1) + mean",
        3.2,
        "krum",
    ),
    Method(
        "flower_message_multi_krum",
        "baseline",
        "Flower Message API select_multikrum (m = n − f) + mean",
        3.2,
        "multi_krum",
    ),
    Method("byzfl_nnm", "baseline", "ByzFL NNM", 2.0, "nnm"),
    Method("byzfl_pipeline", "baseline", "ByzFL ARC -> NNM -> TrMean", 3.0, "pipeline"),
)
METHODS_BY_NAME = {method.name: method for method in METHODS}


def num_byzantine(n: int) -> int:
    """f for n clients: 20 % of them, fewer where Bulyan's n ≥ 4f + 3 demands it."""
    return max(0, min(int(0.2 * n), (n - 3) // 4))


def memory_estimate(method: Method, n: int, d: int) -> int:
    """Bytes a measurement needs at its peak (inputs included), erring high."""
    matrix = n * d * BYTES_PER_VALUE
    estimate = matrix * method.matrix_copies + 300 * MIB
    if method.name in ("byzfl_nnm", "byzfl_pipeline"):
        # ByzFL gathers the n − f neighbours of every row: an (n, n − f, d) tensor.
        estimate += n * (n - num_byzantine(n)) * d * BYTES_PER_VALUE
    return int(estimate)


# ---------------------------------------------------------------- child: build and time


def build_matrix(n: int, d: int, seed: int) -> np.ndarray:
    """Seeded float32 (n, d) updates; random columns repeat after 2^20 (cheap to build)."""
    rng = np.random.default_rng(seed)
    block = rng.standard_normal((n, min(d, 1 << 20)), dtype=np.float32) * np.float32(0.01)
    matrix = np.empty((n, d), dtype=np.float32)
    for start in range(0, d, block.shape[1]):
        width = min(block.shape[1], d - start)
        matrix[:, start : start + width] = block[:, :width]
    return matrix


def layer_bounds(d: int) -> list[int]:
    bounds = [0]
    for fraction in LAYER_FRACTIONS[:-1]:
        bounds.append(min(d, bounds[-1] + max(1, int(fraction * d))))
    bounds.append(d)
    return bounds


def as_layers(matrix: np.ndarray) -> list[list[np.ndarray]]:
    """Each client's update as a list of per-layer arrays (views, no copy)."""
    bounds = layer_bounds(matrix.shape[1])
    return [[row[a:b] for a, b in itertools.pairwise(bounds)] for row in matrix]


@functools.cache
def import_byzfl() -> types.SimpleNamespace:
    """ByzFL's pre-aggregators without its package __init__, which imports torchvision."""
    spec = importlib.util.find_spec("byzfl")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("byzfl is not installed (pip install --no-deps byzfl)")
    root = Path(next(iter(spec.submodule_search_locations)))
    for name, folder in (
        ("byzfl", root),
        ("byzfl.aggregators", root / "aggregators"),
        ("byzfl.utils", root / "utils"),
    ):
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        sys.modules.setdefault(name, package)
    aggregators = importlib.import_module("byzfl.aggregators.aggregators")
    preaggregators = importlib.import_module("byzfl.aggregators.preaggregators")
    return types.SimpleNamespace(
        NNM=preaggregators.NNM, ARC=preaggregators.ARC, TrMean=aggregators.TrMean
    )


def prepare(name: str, matrix: np.ndarray) -> tuple[Call, dict[str, Any]]:
    """The zero-argument call to time for ``name``, and notes for the report.

    Inputs are built here, before the memory baseline is taken.
    """
    import torch

    n = matrix.shape[0]
    f = num_byzantine(n)
    notes: dict[str, Any] = {"f": f}
    updates = torch.from_numpy(matrix)
    if name == "floor":
        return prepare_floor(matrix, notes)
    if name.startswith("validation"):
        from ztfl.aggregation import check_row
        from ztfl.aggregation.matrix import check_update_matrix

        if name == "validation_rows":
            return (lambda: [check_row(row, 1e9) for row in updates]), notes
        return (lambda: check_update_matrix(updates)), notes
    if name.startswith("flower_message"):
        return prepare_message_api(name, matrix, notes)
    if name.startswith("flower"):
        return prepare_legacy(name, matrix, notes)
    if name.startswith("byzfl"):
        byzfl = import_byzfl()
        notes["byzfl"] = importlib.metadata.version("byzfl")
        nnm = byzfl.NNM(f)
        if name == "byzfl_nnm":
            return (lambda: nnm(updates)), notes
        arc, trmean = byzfl.ARC(f), byzfl.TrMean(f)
        # ByzFL's ARC clips in place; time it on a copy so repeats see the same input.
        return (lambda: trmean(nnm(arc(updates.clone())))), notes
    return prepare_ztfl(name, updates, notes)


def prepare_floor(matrix: np.ndarray, notes: dict[str, Any]) -> tuple[Call, dict[str, Any]]:
    """Time three one-pass reductions here and report the fastest as the floor."""
    import torch

    updates = torch.from_numpy(matrix)
    ones = torch.ones(matrix.shape[0], dtype=updates.dtype)
    candidates: dict[str, Call] = {
        "numpy add.reduce(axis=0)": lambda: np.add.reduce(matrix, axis=0),
        "torch sum(dim=0)": lambda: updates.sum(dim=0),
        "torch ones @ X (BLAS gemv)": lambda: ones @ updates,
    }
    timings = {label: best_of(call, 5) for label, call in candidates.items()}
    fastest = min(timings, key=timings.__getitem__)
    notes["floor_methods_s"] = timings
    notes["floor_method"] = fastest
    return candidates[fastest], notes


def best_of(call: Call, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def prepare_ztfl(name: str, updates: Any, notes: dict[str, Any]) -> tuple[Call, dict[str, Any]]:
    from ztfl.aggregation import (
        build_pipeline,
        bulyan,
        centered_clipping,
        coordinate_median,
        geometric_median,
        kernels,
        krum,
        multi_krum,
        nearest_neighbour_mixing,
        trimmed_mean,
        weighted_mean,
    )

    f = notes["f"]
    notes["kernel_backend"] = kernels.kernel_backend(updates)
    calls: dict[str, Call] = {
        "mean": lambda: weighted_mean(updates, validated=True),
        "median": lambda: coordinate_median(updates, validated=True),
        "trimmed_mean": lambda: trimmed_mean(updates, trim=f, validated=True),
        "krum": lambda: krum(updates, num_byzantine=f, validated=True),
        "multi_krum": lambda: multi_krum(updates, num_byzantine=f, validated=True),
        "bulyan": lambda: bulyan(updates, num_byzantine=f, validated=True),
        "geometric_median": lambda: geometric_median(updates, validated=True),
        "centered_clipping": lambda: centered_clipping(
            updates, radius=1.0, iterations=3, validated=True
        ),
        "nnm": lambda: nearest_neighbour_mixing(updates, num_byzantine=f, validated=True),
    }
    pipeline = build_pipeline("arc -> nnm -> trimmed_mean", num_byzantine=f)
    if name == "pipeline":
        return (lambda: pipeline(updates, validated=True)), notes
    if name == "default_pipeline":
        default = build_pipeline("nnm -> trimmed_mean", num_byzantine=f)
        return (lambda: default(updates, validated=True)), notes
    return calls[name], notes


def prepare_legacy(
    name: str, matrix: np.ndarray, notes: dict[str, Any]
) -> tuple[Call, dict[str, Any]]:
    from flwr.server.strategy import aggregate as legacy

    n = matrix.shape[0]
    f = notes["f"]
    results = [(layers, 1) for layers in as_layers(matrix)]
    notes["layers"] = len(LAYER_FRACTIONS)
    # int(β·n) = f exactly: β = (f + 0.5) / n.
    beta = (f + 0.5) / n
    calls: dict[str, Call] = {
        "flower_mean": lambda: legacy.aggregate(results),
        "flower_median": lambda: legacy.aggregate_median(results),
        "flower_trimmed_mean": lambda: legacy.aggregate_trimmed_avg(results, beta),
        "flower_krum": lambda: legacy.aggregate_krum(results, f, 0),
        "flower_multi_krum": lambda: legacy.aggregate_krum(results, f, n - f),
        # aggregate_bulyan pops from the list it is given.
        "flower_bulyan": lambda: legacy.aggregate_bulyan(
            list(results), f, legacy.aggregate_krum, to_keep=0
        ),
    }
    return calls[name], notes


def prepare_message_api(
    name: str, matrix: np.ndarray, notes: dict[str, Any]
) -> tuple[Call, dict[str, Any]]:
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.multikrum import compute_distances, select_multikrum
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    n = matrix.shape[0]
    f = notes["f"]
    contents = [
        RecordDict(
            {
                "arrays": ArrayRecord([np.array(layer) for layer in layers]),
                "metrics": MetricRecord({"num-examples": 1}),
            }
        )
        for layers in as_layers(matrix)
    ]
    records = [content.array_records["arrays"] for content in contents]
    if name == "flower_message_distances":
        return (lambda: compute_distances(records)), notes
    selected = 1 if name == "flower_message_krum" else n - f

    def multikrum() -> object:
        chosen = select_multikrum(contents, num_malicious_nodes=f, num_nodes_to_select=selected)
        return aggregate_arrayrecords(chosen, "num-examples")

    return multikrum, notes


def resident_bytes(field: str) -> int:
    """VmRSS or VmHWM of this process, in bytes (Linux)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_memory() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def child(
    name: str, n: int, d: int, seed: int, repeats: int, budget_s: float, threads: int | None
) -> None:
    """Build inputs, say READY, time the call, print one JSON line."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)  # also sizes the ztfl kernels' thread pool

    tiny, _ = prepare(name, build_matrix(max(n, 5), 64, seed))
    tiny()  # load numba kernels, import lazily imported modules
    del tiny
    matrix = build_matrix(n, d, seed)
    call, notes = prepare(name, matrix)
    print("READY", flush=True)
    peak_resettable = reset_peak_memory()
    baseline = resident_bytes("VmRSS")
    start = time.perf_counter()
    call()
    times = [time.perf_counter() - start]
    peak = resident_bytes("VmHWM")
    # At least ``repeats`` calls; fast calls repeat for ~0.5 s so the best is not noise.
    while sum(times) < budget_s and (
        len(times) < repeats or (sum(times) < MIN_TIMED_S and len(times) < MAX_RUNS)
    ):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    notes["torch_threads"] = torch.get_num_threads()
    result = {
        "best_s": min(times),
        "median_s": statistics.median(times),
        "runs": len(times),
        "extra_memory_bytes": max(0, peak - baseline) if peak_resettable else None,
        "notes": notes,
    }
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- parent: schedule, cap, report


def run_measurement(method: Method, n: int, d: int, args: argparse.Namespace) -> dict[str, Any]:
    record: dict[str, Any] = {"method": method.name, "label": method.label, "n": n, "d": d}
    estimate = memory_estimate(method, n, d)
    record["memory_estimate_bytes"] = estimate
    if estimate > args.memory_limit_gib * GIB:
        record["status"] = "skipped"
        record["reason"] = (
            f"estimated {estimate / GIB:.1f} GiB > limit {args.memory_limit_gib:g} GiB"
        )
        return record
    if method.name.startswith("byzfl") and importlib.util.find_spec("byzfl") is None:
        record["status"] = "unavailable"
        record["reason"] = "byzfl not installed (pip install --no-deps byzfl)"
        return record
    command = [
        sys.executable, __file__, "--child", method.name, "--n", str(n), "--d", str(d),
        "--seed", str(args.seed), "--repeats", str(args.repeats),
        "--budget-s", str(args.cap_s / 2),
    ]  # fmt: skip
    environment = dict(os.environ)
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
        # numpy's BLAS (Flower's baselines) gets the same number of threads.
        for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            environment[variable] = str(args.threads)
    cap = args.cap_s if method.group == "baseline" else args.ztfl_cap_s
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + args.setup_timeout_s
    ready_at: float | None = None
    result: dict[str, Any] | None = None
    while result is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not selector.select(timeout=remaining):
            break
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("READY"):
            ready_at = time.monotonic()
            deadline = ready_at + cap
        elif line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
    if result is None:
        process.kill()
        _, stderr = process.communicate()
        if ready_at is not None:
            record["status"] = "capped"
            record["reason"] = f"first call still running after {cap:g} s"
            record["best_s"] = None
            record["lower_bound_s"] = cap
        elif process.returncode not in (0, None, -9):
            record["status"] = "failed"
            record["reason"] = (stderr.strip().splitlines() or ["no output"])[-1]
        else:
            record["status"] = "failed"
            record["reason"] = "inputs not built before the setup timeout"
        return record
    process.wait()
    record["status"] = "measured"
    record.update(result)
    return record


def estimate_capped(records: list[dict[str, Any]]) -> None:
    """For a capped baseline, scale its largest measured smaller size by its cost model."""
    for record in records:
        if record["status"] != "capped":
            continue
        method = METHODS_BY_NAME[record["method"]]
        if method.scaling is None:
            continue
        measured = [
            other
            for other in records
            if other["method"] == record["method"]
            and other["status"] == "measured"
            and other["n"] <= record["n"]
            and other["d"] <= record["d"]
        ]
        if not measured:
            continue
        source = max(measured, key=lambda other: other["n"] * other["d"])
        n_exponent, d_exponent = method.scaling
        factor = (record["n"] / source["n"]) ** n_exponent * (
            record["d"] / source["d"]
        ) ** d_exponent
        record["estimate_s"] = source["best_s"] * factor
        record["estimate_from"] = (
            f"{source['n']}x{source['d']:.0e} scaled by n^{n_exponent:g}·d^{d_exponent:g}"
        )


def add_ratios(records: list[dict[str, Any]]) -> None:
    by_size: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
    for record in records:
        by_size.setdefault((record["n"], record["d"]), {})[record["method"]] = record
    for (_, _), methods in by_size.items():
        floor = methods.get("floor", {}).get("best_s")
        for record in methods.values():
            best = record.get("best_s")
            if floor and best:
                record["ratio_to_floor"] = best / floor
            counterpart_name = METHODS_BY_NAME[record["method"]].counterpart
            counterpart = methods.get(counterpart_name or "", {}).get("best_s")
            baseline_time = best or record.get("lower_bound_s")
            if counterpart and baseline_time:
                record["baseline_over_ztfl"] = baseline_time / counterpart
                record["ratio_is_lower_bound"] = best is None


TARGETS = (
    # (description, check(methods) -> (value, passed) or None)
    ("mean ≤ 2× floor", "mean", "ratio_to_floor", 2.0, "max"),
    ("median ≤ 8× floor", "median", "ratio_to_floor", 8.0, "max"),
    ("trimmed mean ≤ 10× floor", "trimmed_mean", "ratio_to_floor", 10.0, "max"),
    ("Krum ≥ 30× faster than legacy Flower", "flower_krum", "baseline_over_ztfl", 30.0, "min"),
    (
        "Multi-Krum ≥ 30× faster than legacy Flower",
        "flower_multi_krum", "baseline_over_ztfl", 30.0, "min",
    ),
    (
        "Multi-Krum ≥ 5× faster than Message-API MultiKrum",
        "flower_message_multi_krum", "baseline_over_ztfl", 5.0, "min",
    ),
    (
        "Krum ≥ 5× faster than Message-API Krum",
        "flower_message_krum", "baseline_over_ztfl", 5.0, "min",
    ),
    ("arc -> nnm -> trimmed_mean ≤ 0.3 s", "pipeline", "best_s", 0.3, "max"),
    (
        "arc -> nnm -> trimmed_mean ≤ 1 GiB extra memory",
        "pipeline", "extra_memory_bytes", float(GIB), "max",
    ),
    ("nnm -> trimmed_mean ≤ 0.3 s", "default_pipeline", "best_s", 0.3, "max"),
    (
        "nnm -> trimmed_mean ≤ 1 GiB extra memory",
        "default_pipeline", "extra_memory_bytes", float(GIB), "max",
    ),
)  # fmt: skip


def check_targets(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Targets at n=50, d=1e6, from ratios measured in the same run."""
    methods = {r["method"]: r for r in records if (r["n"], r["d"]) == QUICK_SIZE}
    outcomes = []
    for description, method, field, limit, kind in TARGETS:
        value = methods.get(method, {}).get(field)
        if value is None:
            outcomes.append({"target": description, "value": None, "met": None})
            continue
        met = value <= limit if kind == "max" else value >= limit
        outcomes.append({"target": description, "value": value, "met": met})
    return outcomes


def machine_description() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in ("torch", "numba", "numpy", "flwr", "byzfl"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def machine_slug(machine: dict[str, Any]) -> str:
    words = "".join(c.lower() if c.isalnum() else "-" for c in machine["cpu"]).split("-")
    return "-".join(word for word in words if word) + f"-{machine['cores']}cpu"


def format_seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def print_table(records: list[dict[str, Any]], targets: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(150, Console().width))
    sizes = sorted({(r["n"], r["d"]) for r in records})
    for n, d in sizes:
        table = Table(title=f"n={n}, d={d:.0e} (f={num_byzantine(n)})", title_justify="left")
        for column in (
            "method",
            "best",
            "median",
            "× floor",
            "baseline / ztfl",
            "extra mem",
            "status",
        ):
            table.add_column(column, justify="left" if column in ("method", "status") else "right")
        for record in (r for r in records if (r["n"], r["d"]) == (n, d)):
            status = record["status"]
            if status == "capped":
                status = f"capped > {record['lower_bound_s']:g} s"
                if "estimate_s" in record:
                    status += f" (est. {format_seconds(record['estimate_s'])})"
            elif status != "measured":
                status = f"{status}: {record.get('reason', '')}"
            elif record["method"] == "floor":
                status = record["notes"]["floor_method"]
            ratio = record.get("ratio_to_floor")
            versus = record.get("baseline_over_ztfl")
            memory = record.get("extra_memory_bytes")
            table.add_row(
                record["label"],
                format_seconds(record.get("best_s")),
                format_seconds(record.get("median_s")),
                f"{ratio:.1f}×" if ratio else "",
                (">" if record.get("ratio_is_lower_bound") else "") + f"{versus:.1f}×"
                if versus
                else "",
                f"{memory / MIB:.0f} MiB" if memory is not None else "",
                status,
            )
        console.print(table)
    if any(t["value"] is not None for t in targets):
        table = Table(title="Targets at n=50, d=1e6", title_justify="left")
        table.add_column("target")
        table.add_column("measured", justify="right")
        table.add_column("met")
        for target in targets:
            value = target["value"]
            shown = "—" if value is None else (
                f"{value / MIB:.0f} MiB" if "memory" in target["target"]
                else format_seconds(value) if target["target"].endswith("s")
                else f"{value:.1f}×"
            )  # fmt: skip
            met = {True: "yes", False: "NO", None: "not measured"}[target["met"]]
            table.add_row(target["target"], shown, met)
        console.print(table)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``50x1e6,10x1e5`` → [(50, 1000000), (10, 100000)]."""
    sizes = []
    for item in text.split(","):
        n_text, _, d_text = item.strip().partition("x")
        sizes.append((int(n_text), int(float(d_text))))
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only n=50, d=1e6, 3 repeats")
    parser.add_argument("--sizes", help="comma-separated NxD, e.g. 50x1e6,200x1e5")
    parser.add_argument("--methods", help="comma-separated method names (default: all)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--cap-s", type=float, default=60.0, help="cap on a baseline's first call")
    parser.add_argument("--ztfl-cap-s", type=float, default=600.0, help="cap on a ztfl call")
    parser.add_argument("--setup-timeout-s", type=float, default=300.0)
    parser.add_argument("--memory-limit-gib", type=float, default=16.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, help="threads for torch, the kernels and BLAS (default: all cores)"
    )
    parser.add_argument(
        "--output", type=Path, help="JSON path (default: results/aggregation-<machine>.json)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--d", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--budget-s", type=float, default=30.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.n, args.d, args.seed, args.repeats, args.budget_s, args.threads)
        return 0
    if args.quick:
        sizes = [QUICK_SIZE]
        args.repeats = min(args.repeats, 3)
    elif args.sizes:
        sizes = parse_sizes(args.sizes)
    else:
        sizes = [(n, d) for d in SIZES_D for n in SIZES_N]
    methods = METHODS
    if args.methods:
        wanted = set(args.methods.split(","))
        unknown = wanted - set(METHODS_BY_NAME)
        if unknown:
            parser.error(f"unknown methods {sorted(unknown)}; known: {sorted(METHODS_BY_NAME)}")
        methods = tuple(m for m in METHODS if m.name in wanted or m.name == "floor")
    machine = machine_description()
    started = time.time()
    load_before = os.getloadavg()
    records = []
    for n, d in sizes:
        for method in methods:
            record = run_measurement(method, n, d, args)
            records.append(record)
            shown = (
                format_seconds(record.get("best_s"))
                if record["status"] == "measured"
                else record["status"]
            )
            print(f"  n={n:<4} d={d:<9.0e} {method.name:<28} {shown}", file=sys.stderr, flush=True)
    estimate_capped(records)
    add_ratios(records)
    targets = check_targets(records)
    print_table(records, targets)
    report = {
        "machine": machine,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "settings": {
            "dtype": "float32",
            "seed": args.seed,
            "repeats": args.repeats,
            "threads": args.threads or "default (torch.get_num_threads())",
            "baseline_cap_s": args.cap_s,
            "memory_limit_gib": args.memory_limit_gib,
            "num_byzantine": "min(int(0.2 n), (n - 3) // 4)",
            "ztfl_rules_called_with": "validated=True",
            "floor": "fastest of numpy add.reduce, torch sum(dim=0), torch ones @ X",
            "memory": "peak RSS (VmHWM, reset before the call) minus RSS with inputs built",
        },
        "records": records,
        "targets": targets,
    }
    output = args.output
    if output is None:
        suffix = ("-quick" if args.quick else "") + (
            f"-{args.threads}thread" if args.threads is not None else ""
        )
        output = RESULTS_DIR / f"aggregation-{machine_slug(machine)}{suffix}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
