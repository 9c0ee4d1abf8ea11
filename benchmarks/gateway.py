"""Model transfers through the mutual-TLS gateway versus the SuperLink's own TLS, same run.

The issue's targets: the gateway adds ≤ 10 % latency to a 10 MB transfer and keeps
≥ 90 % of the direct throughput at 100 MB. Rounds are dominated by SuperNode polling, so
this times single Fleet API *requests* that carry a model-sized body, against a real
``flower-superlink`` (TLS from its loopback CA, node authentication on, a SQLite
database; ztfl's own launcher and argv, with ``--isolation process`` so that no SuperExec
claims the benchmark's run):

- **up**, ``POST /v1/fleet/push-object``: a client pushing its update. The body is a
  ``PushObjectRequest`` holding one ``ArrayChunk`` object of the size; the SuperLink parses
  it, checks the object id (SHA-256), stores it in its database and answers ``stored``.
- **down**, ``POST /v1/fleet/pull-object``: a client pulling the model. The response is a
  ``PullObjectResponse`` with the same object read back from the database.

Each request goes two ways, alternately, on kept-alive connections (as a SuperNode's
HTTP client keeps them):

- **direct**: client → SuperLink, TLS verified against the SuperLink's loopback CA;
- **gateway**: client → gateway (mutual TLS with an enrolled client certificate; every
  request re-checks the certificate, the CRL, the rate limit, the path and that the
  ``flwr-public-key`` header is the certificate's key) → SuperLink over its TLS on
  loopback. The gateway runs in its own process (``python -m ztfl.server.gateway``),
  as it does in ``ztfl server up``.

The node is a real registered node whose key is the client certificate's key, and every
request carries Flower's signed node-authentication headers. The run, the node and the
object's push session are written with Flower's own ``LinkState`` into the SuperLink's
database (what the Control API and a ServerApp would do; no ServerApp is started), and
the run's heartbeat is kept alive. A request is timed from the first byte sent to the
last byte of the response received; the request bytes are built before the clock starts.
Flower itself sends arrays in chunks of at most 5 MiB, so a 100 MB object in one request
is a stress case: it is what the request-size target asks for, and it shows the
streaming throughput of the relay with the per-request costs amortised.

Reported per size, direction and path: median and best latency (after one warm-up round),
throughput (MB/s, MB = 10⁶ bytes) at the median, added latency = gateway/direct − 1
(medians, and bests), the gateway process's CPU time per request (from /proc, so less
sensitive to other load than wall time), and the load average before and after: on a
small shared machine the gateway is a third busy process on the same cores. Results go to
``benchmarks/results/gateway-<machine>[-quick].json``.

    python benchmarks/gateway.py [--quick] [--sizes-mb 10,100] [--repeats 7]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import importlib.metadata
import json
import os
import platform
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app.message.arraychunk import ArrayChunk
from flwr.common.constant import NOOP_FLWR_AID, TIMESTAMP_HEADER
from flwr.proto.message_pb2 import (
    ObjectTree,
    PullObjectRequest,
    PullObjectResponse,
    PushObjectRequest,
    PushObjectResponse,
)
from flwr.proto.node_pb2 import Node
from flwr.server.superlink.linkstate import LinkState, LinkStateFactory
from flwr.supercore.constant import (
    FLEET_HTTP_PUBLIC_KEY_HEADER,
    FLEET_HTTP_SIGNATURE_HEADER,
    NOOP_FEDERATION_ID,
    TaskType,
)
from flwr.supercore.date import now
from flwr.supercore.inflatable.inflatable_object import get_object_id
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.primitives.asymmetric import public_key_to_bytes, sign_message
from flwr.superlink.federation import NoOpFederationManager

from ztfl.server.superlink_process import (
    LOOPBACK,
    SuperLinkConfig,
    SuperLinkProcess,
    ensure_superlink_tls,
)
from ztfl.trust.pki.keyfiles import read_private_key
from ztfl.trust.pki.provisioning import FederationPaths, provision_federation
from ztfl.trust.transport import RelayLimits

RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
MB: Final = 1_000_000
SIZES_MB: Final = (10, 100)
REPEATS: Final = 7
QUICK_REPEATS: Final = 3
WARM_UP: Final = 1
TARGET_ADDED_LATENCY_10MB: Final = 0.10
TARGET_THROUGHPUT_SHARE_100MB: Final = 0.90
FEDERATION: Final = "gwbench"
PUSH_PATH: Final = "/v1/fleet/push-object"
PULL_PATH: Final = "/v1/fleet/pull-object"
PATHS: Final = ("direct", "gateway")
DIRECTIONS: Final = ("up", "down")
IDLE_REOPEN_S: Final = 3.0


@dataclass(frozen=True)
class _BenchSuperLinkConfig(SuperLinkConfig):
    """ztfl's SuperLink command line with ``--isolation process``: no SuperExec is started,
    so nothing but the benchmark touches its run."""

    def argv(self) -> tuple[str, ...]:
        argv = list(super().argv())
        argv[argv.index("--isolation") + 1] = "process"
        return tuple(argv)


def machine_description() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with (
        contextlib.suppress(OSError),
        open("/proc/cpuinfo", encoding="ascii", errors="replace") as f,
    ):
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str | None] = {}
    for package in ("flwr", "h11", "uvicorn", "httptools", "cryptography"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "platform": platform.platform(),
        "versions": versions,
    }


def machine_tag() -> str:
    """``amd-epyc-2cpu`` and the like, for the results file name."""
    cpu = machine_description()["cpu"].lower().split()
    words = [word for word in cpu if word.isalpha()][:2] or ["cpu"]
    return f"{'-'.join(words)}-{os.cpu_count()}cpu"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection((LOOPBACK, port), 0.5).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                message = f"the gateway did not start:\n{log.read_text()[-2000:]}"
                raise RuntimeError(message) from None
            time.sleep(0.1)


@dataclass(frozen=True)
class GatewayProcess:
    port: int
    pid: int

    def cpu_s(self) -> float:
        """User plus system CPU seconds the gateway has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def running_gateway(
    federation: FederationPaths, superlink_port: int, superlink_ca: Path, work: Path
) -> Iterator[GatewayProcess]:
    """``python -m ztfl.server.gateway`` in its own process, as ``ztfl server up`` runs it."""
    port = free_port()
    log = work / "gateway.log"
    argv = [
        sys.executable,
        "-m",
        "ztfl.server.gateway",
        "--listen",
        f"{LOOPBACK}:{port}",
        "--certificate",
        str(federation.gateway.certificate),
        "--key",
        str(federation.gateway.key),
        "--federation-ca",
        str(federation.ca_certificate),
        "--crl",
        str(federation.crl),
        "--upstream",
        f"https://{LOOPBACK}:{superlink_port}",
        "--upstream-ca",
        str(superlink_ca),
        "--audit-log",
        str(work / "gateway-audit.db"),
    ]
    with open(log, "wb") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, log)
        yield GatewayProcess(port, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@dataclass
class FleetFixture:
    """A RUNNING run and a registered node, written with Flower's LinkState."""

    state: LinkState
    run_id: int
    task_id: int
    node_id: int

    @classmethod
    def create(cls, database: Path, node_public_key: bytes) -> FleetFixture:
        factory = LinkStateFactory(
            str(database), NoOpFederationManager(), ObjectStoreFactory(str(database))
        )
        state = factory.state()
        node_id = state.create_node(NOOP_FLWR_AID, "bench", node_public_key, 30.0)
        run_id = state.create_run(
            None, None, None, {}, NOOP_FEDERATION_ID, None, NOOP_FLWR_AID, TaskType.SERVER_APP
        )
        (task,) = state.get_tasks(run_ids=[run_id])
        if state.claim_task(task.task_id) is None or not state.activate_task(task.task_id):
            raise RuntimeError("could not move the benchmark run to RUNNING")
        return cls(state, run_id, task.task_id, node_id)

    def heartbeat(self) -> None:
        if not self.state.acknowledge_task_heartbeat(self.task_id):
            raise RuntimeError("the benchmark run is no longer running")

    def expect_push(self, object_id: str) -> str:
        """A fresh push session waiting for ``object_id`` (removed from the store first)."""
        self.state.object_store.delete(object_id)
        session_id = self.state.start_session(self.run_id)
        missing = self.state.preregister_object_tree(
            ObjectTree(object_id=object_id, children=[]), session_id
        )
        if object_id not in missing:
            raise RuntimeError("the object is already in the SuperLink's store")
        return session_id


class NodeSigner:
    """Flower's SuperNode authentication headers, signed fresh for every request."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        self.public_key = public_key_to_bytes(key.public_key())
        self._encoded = base64.b64encode(self.public_key).decode("ascii")

    def headers(self) -> dict[str, str]:
        timestamp = now().isoformat()
        signature = sign_message(self._key, timestamp.encode("ascii"))
        return {
            "content-type": "application/protobuf",
            FLEET_HTTP_PUBLIC_KEY_HEADER: self._encoded,
            TIMESTAMP_HEADER: timestamp,
            FLEET_HTTP_SIGNATURE_HEADER: base64.b64encode(signature).decode("ascii"),
        }


class KeptAliveConnection:
    """One client connection, reopened before the clock starts when the server may have
    dropped it (uvicorn closes connections idle for 5 s), so no handshake is timed."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.port = port
        self._context = context
        self._connection: http.client.HTTPSConnection | None = None
        self._last_used = 0.0
        self.reconnects = 0

    def timed_post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[float, bytes]:
        """Seconds from the first byte sent to the last byte received, and the body."""
        if self._connection is None or time.monotonic() - self._last_used > IDLE_REOPEN_S:
            self.close()
            self._connection = http.client.HTTPSConnection(
                LOOPBACK, self.port, context=self._context, timeout=300
            )
            self._connection.connect()
            self.reconnects += 1
        connection = self._connection
        start = time.perf_counter()
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as error:
            self.close()
            raise RuntimeError(f"{path} to port {self.port}: {error!r}") from error
        elapsed = time.perf_counter() - start
        self._last_used = time.monotonic()
        if response.status != 200:
            raise RuntimeError(f"{path}: HTTP {response.status}: {data[:300]!r}")
        return elapsed, data

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def summarise(times: list[float], size_bytes: int) -> dict[str, float]:
    median = statistics.median(times)
    return {
        "median_s": median,
        "best_s": min(times),
        "throughput_mb_s": size_bytes / MB / median,
        "best_throughput_mb_s": size_bytes / MB / min(times),
    }


def measure_size(
    size_mb: int,
    repeats: int,
    fixture: FleetFixture,
    signer: NodeSigner,
    connections: dict[str, KeptAliveConnection],
    gateway: GatewayProcess,
) -> dict[str, Any]:
    # One ArrayChunk object of the size (random bytes: nothing on the way compresses).
    content = ArrayChunk(memoryview(os.urandom(size_mb * MB))).deflate()
    object_id = get_object_id(content)
    node = Node(node_id=fixture.node_id)
    pull_body = PullObjectRequest(
        node=node, run_id=fixture.run_id, object_id=object_id
    ).SerializeToString()
    times = {direction: {path: list[float]() for path in PATHS} for direction in DIRECTIONS}
    gateway_cpu = {direction: list[float]() for direction in DIRECTIONS}

    def timed(direction: str, path: str, endpoint: str, body: bytes, keep: bool) -> bytes:
        cpu_before = gateway.cpu_s()
        elapsed, data = connections[path].timed_post(endpoint, body, signer.headers())
        if keep:
            times[direction][path].append(elapsed)
            if path == "gateway":
                gateway_cpu[direction].append(gateway.cpu_s() - cpu_before)
        return data

    for round_index in range(WARM_UP + repeats):
        fixture.heartbeat()
        keep = round_index >= WARM_UP
        order = PATHS if round_index % 2 == 0 else PATHS[::-1]
        for path in order:
            push_body = PushObjectRequest(
                node=node,
                run_id=fixture.run_id,
                object_id=object_id,
                object_content=content,
                session_id=fixture.expect_push(object_id),
            ).SerializeToString()
            data = timed("up", path, PUSH_PATH, push_body, keep)
            del push_body
            if not PushObjectResponse.FromString(data).stored:
                raise RuntimeError(f"push through {path}: the SuperLink did not store the object")
        for path in order:
            data = timed("down", path, PULL_PATH, pull_body, keep)
            if PullObjectResponse.FromString(data).object_content != content:
                raise RuntimeError(f"pull through {path}: the object came back different")
        print(f"  {size_mb} MB round {round_index + 1}/{WARM_UP + repeats}", flush=True)
    record: dict[str, Any] = {"model_mb": size_mb, "object_bytes": len(content)}
    for direction, by_path in times.items():
        direct = summarise(by_path["direct"], len(content))
        through = summarise(by_path["gateway"], len(content))
        record[direction] = {
            "direct": direct,
            "gateway": through,
            "added_latency": through["median_s"] / direct["median_s"] - 1,
            "added_latency_best": through["best_s"] / direct["best_s"] - 1,
            "throughput_share": through["throughput_mb_s"] / direct["throughput_mb_s"],
            "gateway_cpu_s_median": statistics.median(gateway_cpu[direction]),
            "times_s": by_path,
        }
    return record


def run(sizes_mb: tuple[int, ...], repeats: int, work: Path) -> list[dict[str, Any]]:
    federation = provision_federation(work / "pki", FEDERATION, clients=["bench"])
    client = federation.clients["bench"]
    key = read_private_key(client.key)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    signer = NodeSigner(key)
    tls = ensure_superlink_tls(work / "superlink-tls")
    database = work / "superlink.db"
    superlink = SuperLinkProcess(
        _BenchSuperLinkConfig(
            port=free_port(),
            tls=tls,
            flwr_home=work / "superlink-home",
            database=database,
            log_file=work / "superlink.log",
        )
    )
    superlink.start()
    try:
        fixture = FleetFixture.create(database, signer.public_key)
        superlink_port = superlink.config.port
        with running_gateway(federation, superlink_port, tls.ca_certificate, work) as gateway:
            direct_context = ssl.create_default_context(cafile=str(tls.ca_certificate))
            gateway_context = ssl.create_default_context(cafile=str(federation.ca_certificate))
            gateway_context.load_cert_chain(str(client.certificate), str(client.key))
            connections = {
                "direct": KeptAliveConnection(superlink_port, direct_context),
                "gateway": KeptAliveConnection(gateway.port, gateway_context),
            }
            try:
                return [
                    measure_size(size_mb, repeats, fixture, signer, connections, gateway)
                    for size_mb in sizes_mb
                ]
            finally:
                for connection in connections.values():
                    connection.close()
    finally:
        superlink.stop()


def print_table(records: list[dict[str, Any]]) -> None:
    print(
        f"\n{'size':>6} {'dir':>4}  {'direct median':>13} {'gateway median':>14} "
        f"{'direct MB/s':>11} {'gateway MB/s':>12} {'added':>7} {'share':>6} {'gw CPU':>7}"
    )
    for record in records:
        for direction in ("up", "down"):
            row = record[direction]
            direct, gateway = row["direct"], row["gateway"]
            print(
                f"{record['model_mb']:>4} MB {direction:>4}  "
                f"{direct['median_s'] * 1e3:>10.0f} ms {gateway['median_s'] * 1e3:>11.0f} ms "
                f"{direct['throughput_mb_s']:>11.0f} {gateway['throughput_mb_s']:>12.0f} "
                f"{row['added_latency']:>+7.1%} {row['throughput_share']:>6.0%} "
                f"{row['gateway_cpu_s_median'] * 1e3:>4.0f} ms"
            )


def targets(records: list[dict[str, Any]]) -> dict[str, Any]:
    by_size = {record["model_mb"]: record for record in records}
    verdict: dict[str, Any] = {}
    if 10 in by_size:
        worst = max(by_size[10][d]["added_latency"] for d in ("up", "down"))
        verdict["added_latency_10mb"] = {
            "target": TARGET_ADDED_LATENCY_10MB,
            "worst_direction": worst,
            "met": worst <= TARGET_ADDED_LATENCY_10MB,
        }
    if 100 in by_size:
        worst = min(by_size[100][d]["throughput_share"] for d in ("up", "down"))
        verdict["throughput_share_100mb"] = {
            "target": TARGET_THROUGHPUT_SHARE_100MB,
            "worst_direction": worst,
            "met": worst >= TARGET_THROUGHPUT_SHARE_100MB,
        }
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REPEATS} repeats")
    parser.add_argument("--sizes-mb", default=",".join(map(str, SIZES_MB)))
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="keep PKI, database and logs here"
    )
    args = parser.parse_args(argv)
    sizes = tuple(int(item) for item in args.sizes_mb.split(","))
    repeats = args.repeats or (QUICK_REPEATS if args.quick else REPEATS)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    load_before = os.getloadavg()
    started = time.monotonic()
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=False)
        records = run(sizes, repeats, args.work_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="ztfl-gwbench-") as work:
            records = run(sizes, repeats, Path(work))
    load_after = os.getloadavg()
    print_table(records)
    verdict = targets(records)
    for name, result in verdict.items():
        print(
            f"{name}: {result['worst_direction']:.3f} (target {result['target']}) "
            f"{'met' if result['met'] else 'MISSED'}"
        )
    result = {
        "machine": machine_description(),
        "what": "per-request Fleet API transfers, real flower-superlink (TLS, node auth)",
        "relay_chunk_bytes": RelayLimits().chunk_bytes,
        "repeats": repeats,
        "warm_up": WARM_UP,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "wall_s": time.monotonic() - started,
        "records": records,
        "targets": verdict,
    }
    suffix = "-quick" if args.quick else ""
    output = args.output or RESULTS_DIR / f"gateway-{machine_tag()}{suffix}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
