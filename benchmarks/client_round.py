"""What verifying the signed global model adds to a client's training round.

The issue's target: client verification adds < 5 % to a round at 100 MB. A
"round" here is the ClientApp's own work for one train message — decode the
global model, train locally, encode the update (``handle_train``) — without
the network, which would only make the share smaller. Verification is
``verify_broadcast``: parse the signed manifest, check the signature, run id,
expiry and lineage, and hash every received tensor. Both run in the same
process on the same message; the model is the digits MLP widened until its
weights reach the target size, trained on one client's digits share (about
115 examples) for the scenario's local epochs.

    python benchmarks/client_round.py [--sizes-mb 10,100] [--epochs 1,5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from ztfl.client import protocol
from ztfl.client.app import handle_train, verify_broadcast
from ztfl.client.models import DigitsMLP, build_model, register_model
from ztfl.client.trainer import model_weights
from ztfl.simulations.datasets import load_digits_partition
from ztfl.trust.keys import generate_signing_key
from ztfl.trust.signing import build_manifest, sign_manifest
from ztfl.trust.verification import LineageState, TrustAnchor

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_SHARE = 0.05
RUN_ID = "client-round-benchmark"
MB = 1_000_000
# DigitsMLP(hidden=h) holds 64·h + h + 10·h + 10 float32 values.
VALUES_PER_HIDDEN_UNIT = 75


def hidden_units_for(size_mb: int) -> int:
    return max(1, size_mb * MB // 4 // VALUES_PER_HIDDEN_UNIT)


def round_message(size_mb: int, epochs: int, key: Any) -> Message:
    """The coordinator's signed train message for a model of about ``size_mb`` MB."""
    name = f"mlp_{size_mb}mb"
    register_model(name, lambda: DigitsMLP(hidden=hidden_units_for(size_mb)))
    weights = model_weights(build_model(name, seed=0))
    manifest = build_manifest(
        list(weights.items()),
        run_id=RUN_ID,
        round=0,
        parent_digest=None,
        pipeline="nnm -> trimmed_mean",
        participants=(),
        refused=(),
        privacy=None,
        audit_head="0:" + "0" * 64,
        valid_for=timedelta(hours=1),
    )
    content = RecordDict(
        {
            protocol.GLOBAL_MODEL_KEY: ArrayRecord(
                {tensor: Array(values) for tensor, values in weights.items()}
            ),
            protocol.MANIFEST_KEY: ConfigRecord(
                {protocol.SIGNED_MANIFEST: sign_manifest(manifest, key).to_bytes()}
            ),
            protocol.CONFIG_KEY: ConfigRecord(
                {
                    protocol.ROUND: 1,
                    protocol.MODEL: name,
                    protocol.LOCAL_EPOCHS: epochs,
                    protocol.LEARNING_RATE: 0.05,
                    protocol.BATCH_SIZE: 32,
                    protocol.SEED: 0,
                }
            ),
        }
    )
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN, group_id="1")


def best_of(call: Callable[[], Any], repeats: int) -> float:
    call()  # warm-up: first-touch allocations, torch's first optimizer step
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", default="10,100")
    parser.add_argument("--epochs", default="1,5", help="local epochs per round (default: 5)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)

    # Messages are built as the coordinator's ServerApp process builds them.
    TaskIdentity._run_id, TaskIdentity._task_id = 1, 1
    TaskIdentity._node_id = SUPERLINK_NODE_ID
    key = generate_signing_key()
    anchor = TrustAnchor(RUN_ID, (key.public_key(),))
    data = load_digits_partition(0, 10, alpha=None, seed=0)
    records = []
    for size_mb in (int(item) for item in args.sizes_mb.split(",")):
        for epochs in (int(item) for item in args.epochs.split(",")):
            message = round_message(size_mb, epochs, key)
            verify = functools.partial(verify_broadcast, message, anchor, LineageState.empty())
            verify_s = best_of(verify, args.repeats)
            train_s = best_of(functools.partial(handle_train, message, data), args.repeats)
            share = verify_s / train_s
            records.append(
                {
                    "model_mb": size_mb,
                    "local_epochs": epochs,
                    "verify_s": verify_s,
                    "round_without_verification_s": train_s,
                    "added_share": share,
                    "meets_target": share < TARGET_SHARE,
                }
            )
            print(
                f"{size_mb:>5} MB  {epochs} epochs  verify {verify_s * 1e3:8.1f} ms  "
                f"round {train_s * 1e3:8.1f} ms  adds {share:6.1%}",
                flush=True,
            )
    machine = {
        "processor": platform.processor() or platform.machine(),
        "cpus": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    output = args.output or RESULTS_DIR / "client-round-amd-epyc-2cpu.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"machine": machine, "records": records}, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
