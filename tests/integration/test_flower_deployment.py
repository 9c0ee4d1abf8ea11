"""The Flower app runs, unchanged, under a real SuperLink with real SuperNodes.

One SuperLink and two SuperNodes start as separate processes on loopback
(insecure: TLS comes with the deployment work), each SuperNode loading its share
of the bundled digits through the ``dataset`` node-config hook. ``flwr run``
submits this repository as a Flower app for one round, and the test checks that
the run completed and that the coordinator accepted both nodes' updates. The
coordinator signs with a key the test provisions (``state-dir``, ``signing-key``)
and each SuperNode pins the trust anchor ``ztfl coordinator init`` wrote.

Every process gets its own session, its own Flower home under the test's
temporary folder and a marker in its environment. Flower starts further
processes of its own (SuperExec, ``flwr-serverapp``, ``flwr-clientapp``), some
detached into sessions of their own; they inherit the marker, which is how the
test finds them and proves that nothing it started outlives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.marked_processes import (
    LOOPBACK,
    MARKER_VARIABLE,
    end_stragglers,
    free_loopback_port,
    marked_processes,
)
from ztfl.server.ledger import TRUST_ANCHOR_FILE, prepare_state_dir
from ztfl.trust.audit import AuditEventKind, AuditLog
from ztfl.trust.keys import generate_signing_key, read_signing_key, write_signing_key

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CONNECTION = "ztfl-test"
NUM_NODES = 2
ROUND_COMMITTED = re.compile(rf"round 1: {NUM_NODES} accepted, 0 refused, committed")
RUN_STARTED = re.compile(r"Successfully started run (\d+)")
RUN_CONFIG = (
    "num-server-rounds=1 local-epochs=1 batch-size=32 round-timeout-s=90.0 node-wait-timeout-s=60.0"
)

SUPERLINK_READY_TIMEOUT_S = 30.0
NODES_ONLINE_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 150.0
RUN_STATUS_TIMEOUT_S = 30.0
CLI_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
ORPHAN_EXIT_TIMEOUT_S = 15.0


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (BIN / "flower-superlink").exists(), reason="Flower's executables are not installed"
    ),
    pytest.mark.skipif(
        not Path("/proc/self/environ").exists(), reason="process accounting reads /proc"
    ),
]


class LoopbackFederation:
    """Starts, watches and stops the Flower processes of one test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.marker = f"{root}:{secrets.token_hex(8)}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.log_files: dict[str, Path] = {}
        self.cli_outputs: list[str] = []
        self.forced: list[str] = []
        self.stopped = False
        self.ports: set[int] = set()
        self.superlink_port = free_loopback_port(self.ports)
        self.signing_key = root / "model-signing-key.pem"
        write_signing_key(generate_signing_key(), self.signing_key)
        self.state_dir = root / "coordinator-state"
        prepare_state_dir(self.state_dir, read_signing_key(self.signing_key).public_key())
        self.trust_anchor = self.state_dir / TRUST_ANCHOR_FILE
        self.cli_home = self._home("cli")
        config = (
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{LOOPBACK}:{self.superlink_port}"\n'
            "insecure = true\n"
        )
        (self.cli_home / "config.toml").write_text(config)

    def _home(self, name: str) -> Path:
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        return home

    def environment(self, home: Path) -> dict[str, str]:
        """The environment of every process: own Flower home, no phoning home, the marker."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("FLWR_", "RAY_ADDRESS"))
        }
        env.update(
            {
                "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
                "FLWR_HOME": str(home),
                "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                "RAY_USAGE_STATS_ENABLED": "0",
                "PYTHONUNBUFFERED": "1",
                MARKER_VARIABLE: self.marker,
            }
        )
        return env

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        """Start a long-running Flower process in its own session, logging to a file."""
        log_file = self.root / "logs" / f"{name}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_files[name] = log_file
        with log_file.open("wb") as sink:
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=self.environment(self._home(name)),
                cwd=self.root,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def start_superlink(self) -> None:
        """Start the SuperLink with every API on one loopback port and wait until it answers."""
        self.start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--isolation",
                "subprocess",
                "--host",
                LOOPBACK,
                "--port",
                str(self.superlink_port),
            ],
        )
        deadline = time.monotonic() + SUPERLINK_READY_TIMEOUT_S
        url = f"http://{LOOPBACK}:{self.superlink_port}/health"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        pytest.fail(f"SuperLink did not answer on {url} within {SUPERLINK_READY_TIMEOUT_S} s")

    def start_supernode(self, partition_id: int) -> None:
        """Start a SuperNode that loads its digits share through the dataset hook."""
        node_config = (
            "dataset='ztfl.simulations.datasets:digits_node_data' "
            f"partition-id={partition_id} num-partitions={NUM_NODES} "
            f"trust-anchor='{self.trust_anchor}'"
        )
        self.start(
            f"supernode-{partition_id}",
            [
                str(BIN / "flower-supernode"),
                "--insecure",
                "--superlink",
                f"{LOOPBACK}:{self.superlink_port}",
                "--host",
                LOOPBACK,
                "--port",
                str(free_loopback_port(self.ports)),
                "--node-config",
                node_config,
                "--max-wait-time",
                str(int(RUN_TIMEOUT_S)),
            ],
        )

    def flwr(self, *args: str, timeout_s: float = CLI_TIMEOUT_S, check: bool = True) -> str:
        """Run a ``flwr`` CLI command against the test's SuperLink; its stdout and stderr.

        A non-zero exit fails the test, unless ``check`` is off (polling tolerates a
        transient failure and tries again before its deadline).
        """
        shown = f"flwr {' '.join(args)}"
        try:
            completed = subprocess.run(
                [str(BIN / "flwr"), *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=self.environment(self.cli_home),
                cwd=self.root,
                timeout=timeout_s,
                start_new_session=True,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            output = _text(error.stdout) + _text(error.stderr)
            self.cli_outputs.append(f"$ {shown}  (timed out)\n{output}")
            pytest.fail(f"`{shown}` did not finish within {timeout_s} s")
        output = _text(completed.stdout) + _text(completed.stderr)
        self.cli_outputs.append(f"$ {shown}  (exit {completed.returncode})\n{output}")
        if check and completed.returncode != 0:
            pytest.fail(f"`{shown}` exited with {completed.returncode}")
        return output if completed.returncode == 0 else ""

    def poll_json(self, *args: str) -> dict[str, Any]:
        """A ``flwr … --format json`` answer; empty when the command failed this time."""
        output = self.flwr(*args, "--format", "json", check=False)
        return _json_object(output) if output else {}

    def wait_for_online_nodes(self, count: int) -> None:
        """Poll the Control API until ``count`` SuperNodes are online."""
        deadline = time.monotonic() + NODES_ONLINE_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_alive()
            listing = self.poll_json("supernode", "ls", CONNECTION)
            online = [node for node in listing.get("nodes", []) if node.get("status") == "online"]
            if len(online) >= count:
                return
            time.sleep(1.0)
        pytest.fail(f"fewer than {count} SuperNodes online after {NODES_ONLINE_TIMEOUT_S} s")

    def run_status(self, run_id: str) -> str:
        """The run's status as ``flwr ls`` reports it, polled until it is final."""
        deadline = time.monotonic() + RUN_STATUS_TIMEOUT_S
        status = "unknown"
        while time.monotonic() < deadline:
            listing = self.poll_json("ls", CONNECTION, "--run-id", run_id)
            runs = listing.get("runs", [])
            status = str(runs[0].get("status", "unknown")) if runs else "unknown"
            if status.startswith("finished"):
                return status
            time.sleep(1.0)
        return status

    def check_alive(self) -> None:
        """Fail early, naming the process, when one of ours has died."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                pytest.fail(f"{name} exited early with code {process.returncode}")

    def marked_processes(self) -> dict[int, str]:
        """Live processes carrying this test's marker: pid → command line."""
        return marked_processes(self.marker)

    def shutdown(self) -> None:
        """Stop our processes, give Flower's own children time to exit, kill stragglers."""
        if self.stopped:
            return
        self.stopped = True
        for name in sorted(self.processes, key=lambda name: name == "superlink"):
            _stop_group(self.processes[name])
        self.forced.extend(end_stragglers(self.marker, grace_s=ORPHAN_EXIT_TIMEOUT_S))

    def report(self) -> str:
        """Every captured log, for the failure report."""
        parts = []
        for name, path in self.log_files.items():
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            parts.append(f"===== {name} ({path}) =====\n{text}")
        parts.extend(f"===== flwr CLI =====\n{output}" for output in self.cli_outputs)
        if self.forced:
            parts.append("===== killed after shutdown =====\n" + "\n".join(self.forced))
        return "\n".join(parts)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it when it lingers, and reap the leader."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
            # Members that outlive the leader are still in the group: end them too.
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
        return


def _text(stream: bytes | str | None) -> str:
    if isinstance(stream, bytes):
        return stream.decode(errors="replace")
    return stream or ""


def _json_object(output: str) -> dict[str, Any]:
    """The JSON object in a ``flwr --format json`` answer (Flower may print notes around it)."""
    start, end = output.find("{"), output.rfind("}")
    if start < 0 or end < start:
        pytest.fail(f"no JSON in flwr output: {output!r}")
    value = json.loads(output[start : end + 1])
    if not isinstance(value, dict):
        pytest.fail(f"flwr answered {value!r}, expected an object")
    return value


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[LoopbackFederation]:
    """A SuperLink and its SuperNodes, stopped (and their logs printed) at teardown."""
    federation = LoopbackFederation(tmp_path)
    try:
        yield federation
    finally:
        federation.shutdown()
        # pytest shows this only when the test fails.
        print(federation.report())
        leftovers = federation.marked_processes()
        assert not leftovers, f"processes outlived the test: {leftovers}"


def test_flwr_run_completes_a_round_with_both_supernodes_updates_accepted(
    federation: LoopbackFederation,
) -> None:
    federation.start_superlink()
    for partition_id in range(NUM_NODES):
        federation.start_supernode(partition_id)
    federation.wait_for_online_nodes(NUM_NODES)

    # `--stream` keeps `flwr run` attached until the run's log stream ends.
    run_output = federation.flwr(
        "run",
        str(REPO_ROOT),
        CONNECTION,
        "--run-config",
        f"{RUN_CONFIG} state-dir='{federation.state_dir}' signing-key='{federation.signing_key}'",
        "--stream",
        timeout_s=RUN_TIMEOUT_S,
    )
    started = RUN_STARTED.search(run_output)
    assert started, "flwr run did not report a run id"
    run_id = started.group(1)

    assert federation.run_status(run_id) == "finished:completed"
    run_log = run_output
    if not ROUND_COMMITTED.search(run_log):
        run_log += federation.flwr("log", run_id, CONNECTION, "--show")
    assert ROUND_COMMITTED.search(run_log), "the ServerApp did not commit round 1 with both nodes"
    for partition_id in range(NUM_NODES):
        node_log = federation.log_files[f"supernode-{partition_id}"].read_text(errors="replace")
        assert "Sending: train message" in node_log, f"supernode-{partition_id} sent no update"
    with AuditLog.open(federation.state_dir / "audit.db", create=False) as log:
        kinds = [record.kind for record in log.records()]
    assert kinds.count(AuditEventKind.ROUND_COMPLETED) == 1
    assert AuditEventKind.CLIENT_VERIFICATION_FAILED not in kinds

    federation.shutdown()
    assert federation.marked_processes() == {}
    assert not federation.forced, "Flower processes had to be killed: " + "; ".join(
        federation.forced
    )
