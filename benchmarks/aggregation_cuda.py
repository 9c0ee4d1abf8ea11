"""Time ztfl's rules on a CUDA device against plain torch and a streaming-read floor.

The GPU counterpart of ``aggregation.py`` at the size the issue names (n=100
updates of d=1e7 float32 values, 4 GB). In the same run: the floor (one
``sum`` over the matrix: the time to read it once), plain torch's
coordinate median (``torch.median(dim=0)``) and sort-based trimmed mean, and
ztfl's rules through their public functions (the Triton back end where
Triton is installed, else the torch path). Times are CUDA-event medians after
warm-up. Needs only torch (and Triton for the compiled path): Flower and ByzFL
have no GPU rules to compare with.

    python benchmarks/aggregation_cuda.py [--sizes 100x1e7] [--repeats 10]
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ztfl.aggregation import (
    build_pipeline,
    coordinate_median,
    kernels,
    krum,
    trimmed_mean,
    weighted_mean,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_RATIO_TO_FLOOR = 10.0
MIB = 1024 * 1024


def time_call(call: Callable[[], Any], repeats: int) -> tuple[float, int]:
    """Median seconds per call over ``repeats`` timed calls, and the peak extra bytes."""
    call()
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times), torch.cuda.max_memory_allocated() - baseline


def plain_torch_trimmed_mean(updates: torch.Tensor, trim: int) -> torch.Tensor:
    ordered = torch.sort(updates, dim=0).values
    return ordered[trim : updates.shape[0] - trim].mean(dim=0)


def methods(updates: torch.Tensor) -> dict[str, tuple[str, Callable[[], Any]]]:
    n = updates.shape[0]
    f = n // 5
    default_pipeline = build_pipeline("nnm -> trimmed_mean", num_byzantine=f)
    return {
        "floor (sum)": ("baseline", lambda: updates.sum(dim=0)),
        "torch median": ("baseline", lambda: torch.median(updates, dim=0)),
        "torch sort trimmed mean": ("baseline", lambda: plain_torch_trimmed_mean(updates, f)),
        "ztfl mean": ("ztfl", lambda: weighted_mean(updates)),
        "ztfl median": ("ztfl", lambda: coordinate_median(updates)),
        "ztfl trimmed mean": ("ztfl", lambda: trimmed_mean(updates, trim=f)),
        "ztfl krum": ("ztfl", lambda: krum(updates, num_byzantine=f)),
        "ztfl nnm -> trimmed_mean": ("ztfl", lambda: default_pipeline(updates)),
    }


def sweep_tiles(updates: torch.Tensor, repeats: int) -> list[dict[str, Any]]:
    """Time the Triton median for each tile shape (the constants in triton_kernels.py)."""
    from ztfl.aggregation import triton_kernels

    n, d = updates.shape
    found = []
    for tile_columns in (16, 32, 64, 128):
        for num_warps in (1, 2, 4):
            median = functools.partial(
                triton_kernels.window_mean,
                updates,
                (n - 1) // 2,
                n // 2 + 1,
                tile_columns=tile_columns,
                num_warps=num_warps,
            )
            try:
                seconds, _ = time_call(median, repeats)
            except Exception as error:  # a shape that does not compile is reported, not fatal
                print(f"tile {tile_columns} × {num_warps} warps: {error!r}", file=sys.stderr)
                continue
            shape = f"tile_columns={tile_columns:<4} num_warps={num_warps}"
            print(f"sweep: {shape} {seconds * 1e3:8.2f} ms")
            found.append(
                {
                    "method": f"sweep median tile={tile_columns} warps={num_warps}",
                    "kind": "sweep",
                    "n": n,
                    "d": d,
                    "seconds": seconds,
                }
            )
    return found


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        rows, columns = item.lower().split("x")
        sizes.append((int(rows), int(float(columns))))
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100x1e7", help="comma-separated NxD")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument(
        "--sweep", action="store_true", help="also time the Triton median per tile shape"
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure", file=sys.stderr)
        return 2
    device_name = torch.cuda.get_device_name()
    records: list[dict[str, Any]] = []
    for n, d in parse_sizes(args.sizes):
        generator = torch.Generator(device="cuda").manual_seed(args.seed)
        updates = torch.randn(n, d, generator=generator, device="cuda", dtype=torch.float32)
        floor_s = None
        for name, (kind, call) in methods(updates).items():
            seconds, peak = time_call(call, args.repeats)
            floor_s = seconds if floor_s is None else floor_s
            print(f"measured {name:<26} n={n} d={d:.0e}: {seconds * 1e3:.2f} ms", flush=True)
            records.append(
                {
                    "method": name,
                    "kind": kind,
                    "n": n,
                    "d": d,
                    "seconds": seconds,
                    "ratio_to_floor": seconds / floor_s,
                    "peak_extra_mib": peak / MIB,
                }
            )
        if args.sweep and kernels.TRITON_AVAILABLE:
            records.extend(sweep_tiles(updates, args.repeats))
        del updates
        torch.cuda.empty_cache()
    by_key = {(r["method"], r["n"], r["d"]): r for r in records}
    for record in records:
        plain = {"ztfl median": "torch median", "ztfl trimmed mean": "torch sort trimmed mean"}
        baseline = plain.get(record["method"])
        if baseline is not None:
            other = by_key[(baseline, record["n"], record["d"])]
            record["speedup_vs_plain_torch"] = other["seconds"] / record["seconds"]
            record["meets_target"] = record["ratio_to_floor"] <= TARGET_RATIO_TO_FLOOR
    print(f"{'method':<26} {'n':>4} {'d':>10} {'ms':>9} {'×floor':>8} {'×torch':>8} {'MiB':>8}")
    for r in records:
        if r["kind"] == "sweep":
            continue
        speedup = r.get("speedup_vs_plain_torch")
        print(
            f"{r['method']:<26} {r['n']:>4} {r['d']:>10.0e} {r['seconds'] * 1e3:>9.2f} "
            f"{r['ratio_to_floor']:>8.1f} {'' if speedup is None else f'{speedup:.1f}':>8} "
            f"{r['peak_extra_mib']:>8.0f}"
        )
    machine = {
        "device": device_name,
        "torch": torch.__version__,
        "triton_backend": kernels.TRITON_AVAILABLE,
        "python": platform.python_version(),
    }
    slug = device_name.lower().replace("nvidia ", "").replace(" ", "-")
    output = args.output or RESULTS_DIR / f"aggregation-cuda-{slug}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"machine": machine, "records": records}, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
