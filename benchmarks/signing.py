"""Time ztfl model signing and verification against a raw SHA-256 pass and OpenSSF model-signing.

Run as ``python benchmarks/signing.py`` (``--quick``: 10 MB and 100 MB only).
For each model size the script builds ~20 seeded float32 tensors and times, in
the same process and run:

- ``sha256_floor``: one ``hashlib.sha256`` pass over the tensors' bytes (one thread);
- ``ztfl_sign``: ``build_manifest`` + ``sign_manifest`` from the arrays in memory
  (what the coordinator does before broadcasting);
- ``ztfl_verify``: ``verify_model`` on the arrays in memory (what a client does);
- ``ztfl_commit`` / ``ztfl_load``: writing the signed model into the store, and
  reading it back with every byte and the signature verified (files in the page cache);
- ``ztfl_verify_directory``: ztfl's file-by-file verifier on the stored folder;
- ``model_signing_sign`` / ``model_signing_verify``: model-signing 1.1.1's
  elliptic-key signer and verifier on the same stored folder.

Each is the best of a few repeats; ratios are against ``sha256_floor``. The
extra Python heap of each ztfl call (tracemalloc, numpy buffers included) is
measured in a separate untimed call. Results go to
``benchmarks/results/signing-<machine>.json``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ztfl.trust.keys import generate_signing_key, write_signing_key, write_verifying_key
from ztfl.trust.model_directory import verify_model_directory
from ztfl.trust.model_store import ModelStore
from ztfl.trust.signing import SignedManifest, build_manifest, sign_manifest
from ztfl.trust.verification import LineageState, TrustAnchor, verify_model

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MB = 1_000_000
SIZES_MB = (10, 100, 1000)
QUICK_SIZES_MB = (10, 100)
NUM_TENSORS = 20
TARGET_RATIO = 1.2


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
    for package in ("numpy", "cryptography", "safetensors", "model-signing"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def machine_slug(machine: dict[str, Any]) -> str:
    words = "".join(c.lower() if c.isalnum() else "-" for c in machine["cpu"]).split("-")
    return "-".join(word for word in words if word) + f"-{machine['cores']}cpu"


def model_arrays(size_mb: int) -> list[tuple[str, np.ndarray]]:
    """~NUM_TENSORS float32 tensors totalling size_mb MB, sizes varying like real layers."""
    rng = np.random.default_rng(0)
    weights = rng.uniform(0.5, 1.5, NUM_TENSORS)
    counts = (weights / weights.sum() * size_mb * MB / 4).astype(np.int64)
    return [
        (f"layer{index:02d}.weight", rng.standard_normal(int(count), dtype=np.float32))
        for index, count in enumerate(counts)
    ]


def best_of(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def peak_extra_bytes(call: Callable[[], object]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def measure_size(size_mb: int, repeats: int, work: Path) -> dict[str, Any]:
    import model_signing  # the benchmark's baseline; ztfl itself never imports it

    arrays = model_arrays(size_mb)
    nbytes = sum(array.nbytes for _, array in arrays)
    key = generate_signing_key()
    private, public = work / f"key-{size_mb}.pem", work / f"key-{size_mb}.pub"
    write_signing_key(key, private)
    write_verifying_key(key.public_key(), public)
    now = datetime.now(UTC)

    def floor() -> str:
        digest = hashlib.sha256()
        for _, array in arrays:
            digest.update(array.data)
        return digest.hexdigest()

    def sign() -> SignedManifest:
        manifest = build_manifest(
            arrays,
            run_id="bench",
            round=1,
            parent_digest=None,
            pipeline="mean",
            participants=["1", "2"],
            refused=[],
            privacy=None,
            audit_head="",
            valid_for=timedelta(hours=1),
            now=now,
        )
        return sign_manifest(manifest, key)

    signed = sign()
    anchor = TrustAnchor("bench", (key.public_key(),))

    def verify() -> object:
        return verify_model(arrays, signed, anchor=anchor, lineage=LineageState.empty(), now=now)

    store_root = work / f"store-{size_mb}"

    def commit() -> Path:
        shutil.rmtree(store_root, ignore_errors=True)
        return ModelStore(store_root).commit(arrays, signed)

    folder = commit()

    def load() -> object:
        return ModelStore(store_root).load(signed.digest, keys=[key.public_key()])

    def verify_directory() -> object:
        return verify_model_directory(folder, [key.public_key()])

    ms_signature = work / f"model-signing-{size_mb}.sig"
    ms_hashing = model_signing.hashing.Config()  # type: ignore[no-untyped-call]
    ms_hashing.set_ignored_paths(paths=["model.sig"])
    ms_signing = model_signing.signing.Config()  # type: ignore[no-untyped-call]
    ms_signing.use_elliptic_key_signer(private_key=private).set_hashing_config(ms_hashing)
    ms_verifying = model_signing.verifying.Config()  # type: ignore[no-untyped-call]
    ms_verifying.use_elliptic_key_verifier(public_key=public)

    def ms_sign() -> None:
        ms_signing.sign(folder, ms_signature)

    def ms_verify() -> None:
        ms_verifying.verify(folder, ms_signature)

    ms_sign()
    calls: dict[str, Callable[[], object]] = {
        "sha256_floor": floor,
        "ztfl_sign": sign,
        "ztfl_verify": verify,
        "ztfl_commit": commit,
        "ztfl_load": load,
        "ztfl_verify_directory": verify_directory,
        "model_signing_sign": ms_sign,
        "model_signing_verify": ms_verify,
    }
    seconds = {name: best_of(call, repeats) for name, call in calls.items()}
    memory = {
        name: peak_extra_bytes(calls[name])
        for name in ("ztfl_sign", "ztfl_verify", "ztfl_commit", "ztfl_load")
    }
    floor_s = seconds["sha256_floor"]
    shutil.rmtree(store_root, ignore_errors=True)
    return {
        "size_mb": size_mb,
        "bytes": nbytes,
        "tensors": len(arrays),
        "repeats": repeats,
        "seconds": seconds,
        "ratio_to_sha256": {name: value / floor_s for name, value in seconds.items()},
        "ztfl_vs_model_signing": {
            "sign": seconds["ztfl_sign"] / seconds["model_signing_sign"],
            "verify": seconds["ztfl_verify"] / seconds["model_signing_verify"],
            "verify_directory": seconds["ztfl_verify_directory"] / seconds["model_signing_verify"],
        },
        "peak_traced_bytes": memory,
        "sha256_floor_gb_per_s": nbytes / floor_s / 1e9,
    }


def print_table(records: list[dict[str, Any]]) -> None:
    names = list(records[0]["seconds"])
    header = f"{'measurement':<24}" + "".join(f"{r['size_mb']:>9} MB  ratio" for r in records)
    print(header)
    print("-" * len(header))
    for name in names:
        cells = "".join(
            f"{r['seconds'][name]:>12.3f} s {r['ratio_to_sha256'][name]:>5.2f}" for r in records
        )
        print(f"{name:<24}{cells}")
    print()
    for record in records:
        peaks = ", ".join(
            f"{name} {value / MB:.1f} MB" for name, value in record["peak_traced_bytes"].items()
        )
        print(f"{record['size_mb']} MB model, extra heap at peak: {peaks}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="10 MB and 100 MB only")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (best is kept)")
    parser.add_argument(
        "--output", type=Path, help="JSON path (default: results/signing-<machine>.json)"
    )
    args = parser.parse_args(argv)
    machine = machine_description()
    sizes = QUICK_SIZES_MB if args.quick else SIZES_MB
    started = time.time()
    load_before = os.getloadavg()
    records = []
    with tempfile.TemporaryDirectory(prefix="ztfl-signing-bench-") as work:
        for size_mb in sizes:
            print(f"measuring {size_mb} MB …", flush=True)
            # Small models time in milliseconds: more repeats so the best is not noise.
            repeats = args.repeats * max(1, 300 // size_mb)
            records.append(measure_size(size_mb, repeats, Path(work)))
    print_table(records)
    targets = []
    for record in records:
        for name in ("ztfl_sign", "ztfl_verify"):
            ratio = record["ratio_to_sha256"][name]
            targets.append(
                {
                    "size_mb": record["size_mb"],
                    "measurement": name,
                    "ratio_to_sha256": round(ratio, 3),
                    "target": TARGET_RATIO,
                    "met": ratio <= TARGET_RATIO,
                }
            )
    missed = [t for t in targets if not t["met"]]
    print("\ntargets (≤ 1.2 × one SHA-256 pass):", "all met" if not missed else f"MISSED {missed}")
    result = {
        "machine": machine,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "settings": {
            "tensors": NUM_TENSORS,
            "dtype": "float32",
            "repeats": args.repeats,
            "timing": "best of repeats, perf_counter, same process, files in the page cache",
            "memory": "tracemalloc peak during one untimed call (numpy buffers included)",
        },
        "records": records,
        "targets": targets,
    }
    output = args.output or RESULTS_DIR / f"signing-{machine_slug(machine)}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
