"""A zero-trust federation of real processes on loopback: ``ztfl server up``, three
``ztfl client up`` nodes, ``ztfl run`` — and what the gateway and sidecars refuse.

The PKI comes from ``provision_federation`` (the CLI's own steps): a CA, three clients
(alice, bob, carol) allowed to run the app bundle this test submits, a fourth (dora)
enrolled with another allow-list, and a gateway certificate. ``ztfl server up`` starts the
SuperLink on loopback (TLS, node authentication), registers the four clients' keys and
starts the gateway; each client runs its SuperNode behind its sidecar. One federation
serves the whole module, so it costs one start-up; tests that change it (a second run,
a revocation) come last and build on the completed run.

The submitted app bundle is built from a snapshot of the package sources taken at start,
so its hash (on the clients' allow-lists) cannot drift while the tests run.

Every process gets its own session and a marker in its environment; Flower's own
children inherit the marker, which is how teardown proves nothing outlived the module.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flwr.common.config import parse_config_args
from typer.testing import CliRunner

from tests.support.marked_processes import (
    LOOPBACK,
    MARKER_VARIABLE,
    end_stragglers,
    free_loopback_port,
    marked_processes,
)
from ztfl.cli.main import app
from ztfl.client.launch_error import LaunchError, LaunchErrorReason
from ztfl.client.launcher import check_enrolment, node_config_text
from ztfl.server.app_bundle import app_bundle_hash
from ztfl.server.enrolled_nodes import enrolled_nodes
from ztfl.server.ledger import TRUST_ANCHOR_FILE, prepare_state_dir
from ztfl.server.run_submission import write_run_config
from ztfl.server.service import CoordinatorService, ServiceConfig
from ztfl.trust.audit import AuditEventKind, AuditLog, AuditRecord
from ztfl.trust.keys import generate_signing_key, read_signing_key, write_signing_key
from ztfl.trust.pki import ClientLayout, Identity, Role, open_authority, revoke_certificate
from ztfl.trust.pki.keyfiles import read_private_key
from ztfl.trust.pki.provisioning import FederationPaths, enrol_member, provision_federation

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FEDERATION = "zerotrust"
NODES = ("alice", "bob", "carol")
OFF_LIST_CLIENT = "dora"
APP_SOURCES = ("pyproject.toml", "aggregation", "server", "client", "simulations", "cli", "trust")
RUN_STARTED = re.compile(r"run id (\d+)")

SERVICE_READY_TIMEOUT_S = 90.0
NODES_ONLINE_TIMEOUT_S = 90.0
RUN_TIMEOUT_S = 240.0
AUDIT_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
ORPHAN_EXIT_TIMEOUT_S = 15.0
CLI_TIMEOUT_S = 60.0


# The federation tests are slow (real processes); the refusals at start-up below them are not.
pytestmark = [
    pytest.mark.skipif(
        not (BIN / "flower-superlink").exists(), reason="Flower's executables are not installed"
    ),
    pytest.mark.skipif(not (BIN / "ztfl").exists(), reason="the ztfl command is not installed"),
    pytest.mark.skipif(
        not Path("/proc/self/environ").exists(), reason="process accounting reads /proc"
    ),
]


def snapshot_app(destination: Path) -> Path:
    """Copy the Flower app's sources, so the bundle's hash is fixed for the whole module."""
    destination.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in APP_SOURCES:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=ignore)
        else:
            shutil.copy2(source, destination / name)
    return destination


def audit_records(path: Path) -> list[AuditRecord]:
    """Every record of an audit log (empty while it does not exist yet)."""
    if not path.exists():
        return []
    with AuditLog.open(path, create=False) as log:
        return list(log.records())


def wait_for_record(
    path: Path, matches: Callable[[AuditRecord], bool], what: str, check: Callable[[], None]
) -> AuditRecord:
    """Poll an audit log until a record matches; fail naming ``what`` after the timeout."""
    deadline = time.monotonic() + AUDIT_TIMEOUT_S
    while time.monotonic() < deadline:
        check()
        found = [record for record in audit_records(path) if matches(record)]
        if found:
            return found[-1]
        time.sleep(0.5)
    pytest.fail(f"no audit record for {what} in {path} within {AUDIT_TIMEOUT_S} s")


def signed_fleet_headers(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """Flower 1.42's node-authentication headers, signed now with ``key``."""
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    timestamp = datetime.now(UTC).isoformat()
    signature = key.sign(timestamp.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    return {
        "flwr-public-key": base64.b64encode(public_pem).decode("ascii"),
        "flwr-timestamp": timestamp,
        "flwr-signature": base64.b64encode(signature).decode("ascii"),
    }


def self_signed_member(folder: Path, name: str) -> ClientLayout:
    """A member layout whose certificate names ``name`` in the federation but signs itself."""
    folder.mkdir(parents=True)
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{FEDERATION}/client/{name}")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA384())
    )
    layout = ClientLayout(folder)
    layout.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    layout.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    layout.key.chmod(0o600)
    return layout


def non_loopback_address() -> str | None:
    """An IPv4 address of this host outside 127.0.0.0/8, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for UDP connect
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def captured_fleet_headers(member: ClientLayout) -> dict[str, str]:
    """The headers a SuperNode signs (Flower 1.42): node key, timestamp, its signature.

    Signed here with the member's key, they are exactly what an eavesdropper on the
    SuperNode's traffic would capture and replay.
    """
    return signed_fleet_headers(read_private_key(member.key))


def tls_context(ca: Path, member: ClientLayout | None) -> ssl.SSLContext:
    """A client context that verifies the gateway with ``ca``, presenting ``member``'s cert."""
    context = ssl.create_default_context(cafile=str(ca))
    if member is not None:
        context.load_cert_chain(str(member.certificate), str(member.key))
    return context


@dataclass
class CompletedRun:
    """What ``ztfl run`` printed and what the coordinator's audit log holds afterwards."""

    exit_code: int
    output: str
    kinds: list[AuditEventKind]


class ZeroTrustFederation:
    """Provisions the PKI, starts and stops the ztfl processes of the module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.marker = f"{root}:{secrets.token_hex(8)}"
        self.ports: set[int] = set()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.log_files: dict[str, Path] = {}
        self.cli_outputs: list[str] = []
        self.forced: list[str] = []
        self.stopped = False
        self.signing_key = root / "model-signing-key.pem"
        write_signing_key(generate_signing_key(), self.signing_key)
        self.state_dir = root / "coordinator-state"
        prepare_state_dir(self.state_dir, read_signing_key(self.signing_key).public_key())
        self.app_dir = snapshot_app(root / "app")
        self.app_bundle = app_bundle_hash(self.app_dir)
        self.pki: FederationPaths = provision_federation(
            root / "pki",
            FEDERATION,
            clients=NODES,
            trust_anchor=self.state_dir / TRUST_ANCHOR_FILE,
            app_bundles=[self.app_bundle],
        )
        self.off_list = enrol_member(
            self.pki.authority.root,
            root / "pki" / "clients" / OFF_LIST_CLIENT,
            Identity(FEDERATION, Role.CLIENT, OFF_LIST_CLIENT),
            trust_anchor=self.state_dir / TRUST_ANCHOR_FILE,
            app_bundles=["0" * 64],
        )
        self.foreign = provision_federation(root / "foreign", FEDERATION, clients=["alice"])
        self.service_dir = root / "service"
        self.superlink_port = free_loopback_port(self.ports)
        self.metrics_port = free_loopback_port(self.ports)
        self.gateway_port = 0
        self.home = root / "home"
        self.home.mkdir()

    # ------------------------------------------------------------ processes
    def environment(self) -> dict[str, str]:
        """Every process: no phoning home, this Python's tools first, the marker."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("FLWR_", "RAY_ADDRESS"))
        }
        env.update(
            {
                "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
                "HOME": str(self.home),
                "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                "RAY_USAGE_STATS_ENABLED": "0",
                "PYTHONUNBUFFERED": "1",
                MARKER_VARIABLE: self.marker,
            }
        )
        return env

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        """Start a long-running ``ztfl`` command in its own session, logging to a file."""
        log_file = self.root / "logs" / f"{name}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_files[name] = log_file
        with log_file.open("wb") as sink:
            process = subprocess.Popen(
                [str(BIN / "ztfl"), *args],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=self.root,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def ztfl(
        self, *args: str, timeout_s: float = CLI_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """Run a short ``ztfl`` command to completion; its output is kept for the report."""
        completed = subprocess.run(
            [str(BIN / "ztfl"), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self.environment(),
            cwd=self.root,
            timeout=timeout_s,
            check=False,
        )
        self.cli_outputs.append(
            f"$ ztfl {' '.join(args)}  (exit {completed.returncode})\n"
            f"{completed.stdout}{completed.stderr}"
        )
        return completed

    def check_alive(self, *names: str) -> None:
        """Fail early, naming the process, when one of ours has died."""
        for name in names or tuple(self.processes):
            process = self.processes[name]
            if process.poll() is not None:
                pytest.fail(f"{name} exited early with code {process.returncode}")

    def start_server(self) -> None:
        """``ztfl server up`` and wait until it writes service.json and answers health."""
        self.start(
            "server",
            [
                "server",
                "up",
                "--service-dir",
                str(self.service_dir),
                "--ca-dir",
                str(self.pki.authority.root),
                "--gateway-dir",
                str(self.pki.gateway.root),
                "--listen",
                f"{LOOPBACK}:0",
                "--superlink-port",
                str(self.superlink_port),
                "--health-port",
                "0",
                "--state-dir",
                str(self.state_dir),
                "--signing-key",
                str(self.signing_key),
                "--metrics-port",
                str(self.metrics_port),
            ],
        )
        status_file = self.service_dir / "service.json"
        deadline = time.monotonic() + SERVICE_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_alive("server")
            if status_file.exists():
                status = json.loads(status_file.read_text())
                self.gateway_port = int(str(status["gateway"]).rpartition(":")[2])
                self.health_url = str(status["health"])
                return
            time.sleep(0.3)
        pytest.fail(f"ztfl server up was not ready within {SERVICE_READY_TIMEOUT_S} s")

    def start_client(self, name: str, partition_id: int, num_partitions: int) -> None:
        """``ztfl client up`` for ``name`` with its share of the bundled digits."""
        self.start(
            f"client-{name}",
            [
                "client",
                "up",
                "--dir",
                str(self.client_dir(name)),
                "--gateway",
                f"localhost:{self.gateway_port}",
                "--dataset",
                "ztfl.simulations.datasets:digits_node_data",
                "--node-config",
                f"partition-id={partition_id} num-partitions={num_partitions}",
                "--runtime-port",
                str(free_loopback_port(self.ports)),
                "--max-wait-time",
                str(int(RUN_TIMEOUT_S)),
            ],
        )

    def client_dir(self, name: str) -> Path:
        return self.off_list.root if name == OFF_LIST_CLIENT else self.pki.clients[name].root

    def flwr_json(self, *args: str) -> dict[str, object]:
        """A ``flwr … --format json`` answer over the service's loopback Control API."""
        completed = subprocess.run(
            [str(BIN / "flwr"), *args, "--format", "json"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env={**self.environment(), "FLWR_HOME": str(self.service_dir / "control")},
            timeout=CLI_TIMEOUT_S,
            check=False,
        )
        output = completed.stdout
        start, end = output.find("{"), output.rfind("}")
        if completed.returncode != 0 or start < 0:
            return {}
        value = json.loads(output[start : end + 1])
        return value if isinstance(value, dict) else {}

    def wait_for_online_nodes(self, count: int) -> None:
        """Poll the Control API until ``count`` SuperNodes are online."""
        deadline = time.monotonic() + NODES_ONLINE_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_alive()
            nodes = self.flwr_json("supernode", "ls", "ztfl").get("nodes", [])
            assert isinstance(nodes, list)
            if sum(1 for node in nodes if node.get("status") == "online") >= count:
                return
            time.sleep(1.0)
        pytest.fail(f"fewer than {count} SuperNodes online after {NODES_ONLINE_TIMEOUT_S} s")

    def gateway_client(self, member: ClientLayout | None) -> httpx.Client:
        """An HTTP client to the gateway presenting ``member``'s certificate (or none)."""
        return httpx.Client(
            base_url=f"https://localhost:{self.gateway_port}",
            verify=tls_context(self.pki.ca_certificate, member),
            timeout=10.0,
        )

    @property
    def gateway_audit_log(self) -> Path:
        return self.service_dir / "gateway-audit.db"

    # ------------------------------------------------------------ shutdown
    def marked_processes(self) -> dict[int, str]:
        """Live processes carrying this test's marker: pid → command line."""
        return marked_processes(self.marker)

    def stop(self, name: str) -> int | None:
        """SIGTERM one ``ztfl`` process (it stops its own children) and wait for it."""
        process = self.processes[name]
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
        try:
            return process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.forced.append(f"SIGKILL {name}")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_S)
            return None

    def shutdown(self) -> dict[str, int | None]:
        """Stop clients, then the server, by SIGTERM; kill stragglers; the exit codes."""
        if self.stopped:
            return {}
        self.stopped = True
        codes = {
            name: self.stop(name)
            for name in sorted(self.processes, key=lambda name: name == "server")
        }
        self.forced.extend(end_stragglers(self.marker, grace_s=ORPHAN_EXIT_TIMEOUT_S))
        return codes

    def report(self) -> str:
        """Every captured log, for the failure report."""
        parts = []
        logs = dict(self.log_files)
        logs["superlink"] = self.service_dir / "logs" / "superlink.log"
        for name in (*NODES, OFF_LIST_CLIENT):
            logs[f"supernode-{name}"] = self.client_dir(name) / "logs" / "supernode.log"
        for name, path in logs.items():
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            parts.append(f"===== {name} ({path}) =====\n{text[-6000:]}")
        parts.extend(f"===== ztfl CLI =====\n{output}" for output in self.cli_outputs)
        if self.forced:
            parts.append("===== killed after shutdown =====\n" + "\n".join(self.forced))
        return "\n".join(parts)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZeroTrustFederation]:
    """The coordinator service and three nodes, all online; stopped (logs printed) after."""
    federation = ZeroTrustFederation(tmp_path_factory.mktemp("zero-trust"))
    try:
        federation.start_server()
        for partition_id, name in enumerate(NODES):
            federation.start_client(name, partition_id, len(NODES))
        federation.wait_for_online_nodes(len(NODES))
        yield federation
    finally:
        codes = federation.shutdown()
        print(federation.report())  # pytest shows it only when a test failed
        leftovers = federation.marked_processes()
        assert not leftovers, f"processes outlived the module: {leftovers}"
        assert not federation.forced, "processes had to be killed: " + "; ".join(federation.forced)
        assert codes.get("server") == 0, f"ztfl server up exited with {codes.get('server')}"


@pytest.fixture(scope="module")
def completed_run(federation: ZeroTrustFederation) -> CompletedRun:
    """Two rounds through gateway and sidecars with ``ztfl run``, streamed to the end."""
    run_config = federation.root / "run.toml"
    run_config.write_text(
        "num-server-rounds = 2\nlocal-epochs = 1\nbatch-size = 32\n"
        f"min-nodes = {len(NODES)}\nround-timeout-s = 90.0\nnode-wait-timeout-s = 60.0\n"
    )
    completed = federation.ztfl(
        "run",
        str(run_config),
        "--server",
        str(federation.service_dir),
        "--app",
        str(federation.app_dir),
        timeout_s=RUN_TIMEOUT_S,
    )
    records = audit_records(federation.state_dir / "audit.db")
    return CompletedRun(
        completed.returncode, completed.stdout + completed.stderr, [r.kind for r in records]
    )


# ---------------------------------------------------------------- end to end
@pytest.mark.slow
def test_ztfl_run_completes_two_rounds_through_gateway_and_sidecars(
    completed_run: CompletedRun,
) -> None:
    assert completed_run.exit_code == 0, completed_run.output[-3000:]
    assert "finished:completed" in completed_run.output
    for round_number in (1, 2):
        assert f"round {round_number}: {len(NODES)} accepted, 0 refused, committed" in (
            completed_run.output
        )
    assert completed_run.kinds.count(AuditEventKind.ROUND_COMPLETED) == 2


@pytest.mark.slow
def test_every_node_verifies_the_signed_models_it_receives(completed_run: CompletedRun) -> None:
    assert completed_run.kinds.count(AuditEventKind.MODEL_COMMITTED) == 3  # round 0, 1, 2
    assert AuditEventKind.CLIENT_VERIFICATION_FAILED not in completed_run.kinds
    assert AuditEventKind.UPDATE_REFUSED not in completed_run.kinds


@pytest.mark.slow
def test_ztfl_run_prints_the_app_bundle_hash_the_clients_allow(
    federation: ZeroTrustFederation, completed_run: CompletedRun
) -> None:
    assert f"app bundle sha256 {federation.app_bundle}" in completed_run.output


@pytest.mark.slow
def test_health_endpoint_reports_superlink_gateway_and_trust(
    federation: ZeroTrustFederation,
) -> None:
    response = httpx.get(federation.health_url, timeout=10.0)
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "superlink": "running",
        "gateway": "serving",
        "trust": "ok",
    }


# ---------------------------------------------------------------- refused at the gateway
@pytest.mark.slow
def test_a_connection_without_a_client_certificate_is_refused(
    federation: ZeroTrustFederation,
) -> None:
    with (
        pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
        federation.gateway_client(None) as client,
    ):
        client.post("/v1/fleet/pull-messages", content=b"")


@pytest.mark.slow
def test_a_certificate_from_another_ca_cannot_connect(federation: ZeroTrustFederation) -> None:
    impostor = federation.foreign.clients["alice"]  # same federation name, other CA
    with (
        pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
        federation.gateway_client(impostor) as client,
    ):
        client.post(
            "/v1/fleet/pull-messages", content=b"", headers=captured_fleet_headers(impostor)
        )


@pytest.mark.slow
def test_fleet_headers_replayed_over_another_clients_tls_identity_are_refused_and_audited(
    federation: ZeroTrustFederation,
) -> None:
    alice, bob = federation.pki.clients["alice"], federation.pki.clients["bob"]
    captured = captured_fleet_headers(alice)
    with federation.gateway_client(bob) as client:
        replayed = client.post("/v1/fleet/pull-messages", content=b"", headers=captured)
    assert replayed.status_code == 403
    record = wait_for_record(
        federation.gateway_audit_log,
        lambda r: (
            r.kind is AuditEventKind.REQUEST_REFUSED
            and r.reason == "node_key_mismatch"
            and r.details.get("identity") == f"spiffe://{FEDERATION}/client/bob"
        ),
        "the replayed headers",
        federation.check_alive,
    )
    assert record.details.get("identity") == f"spiffe://{FEDERATION}/client/bob"


@pytest.mark.slow
def test_the_control_api_is_not_reachable_through_the_gateway(
    federation: ZeroTrustFederation,
) -> None:
    alice = federation.pki.clients["alice"]
    with federation.gateway_client(alice) as client:
        for target in ("/v1/control/list-runs", "/v1/fleet/../control/list-runs"):
            response = client.post(target, content=b"", headers=captured_fleet_headers(alice))
            assert response.status_code in (400, 403, 404), target
    refusals = [
        record
        for record in audit_records(federation.gateway_audit_log)
        if record.kind is AuditEventKind.REQUEST_REFUSED
        and record.details.get("identity") == f"spiffe://{FEDERATION}/client/alice"
    ]
    assert len(refusals) >= 2


@pytest.mark.slow
def test_the_superlink_listens_on_loopback_only(federation: ZeroTrustFederation) -> None:
    with open("/proc/net/tcp") as table:
        listening = [
            line.split()[1]
            for line in table.read().splitlines()[1:]
            if line.split()[3] == "0A"  # LISTEN
            and int(line.split()[1].rpartition(":")[2], 16) == federation.superlink_port
        ]
    assert listening == ["0100007F:" + f"{federation.superlink_port:04X}"]


@pytest.mark.slow
def test_a_self_signed_certificate_naming_a_member_cannot_connect(
    federation: ZeroTrustFederation,
) -> None:
    forged = self_signed_member(federation.root / "forged", "alice")
    with (
        pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
        federation.gateway_client(forged) as client,
    ):
        client.post("/v1/fleet/pull-messages", content=b"", headers=captured_fleet_headers(forged))


@pytest.mark.slow
def test_an_expired_certificate_is_refused_and_audited(federation: ZeroTrustFederation) -> None:
    # Issued back-dated (valid for one day, three days ago): no sleeping.
    expired = enrol_member(
        federation.pki.authority.root,
        federation.root / "pki" / "clients" / "erin",
        Identity(FEDERATION, Role.CLIENT, "erin"),
        days=1,
        require_client_anchors=False,
        now=datetime.now(UTC) - timedelta(days=3),
    )
    with (
        pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
        federation.gateway_client(expired) as client,
    ):
        client.post("/v1/fleet/pull-messages", content=b"", headers=captured_fleet_headers(expired))
    wait_for_record(
        federation.gateway_audit_log,
        lambda r: r.kind is AuditEventKind.NODE_REFUSED and r.reason == "expired",
        "the expired certificate",
        federation.check_alive,
    )


@pytest.mark.slow
def test_a_node_key_other_than_the_certificates_is_refused_and_audited(
    federation: ZeroTrustFederation,
) -> None:
    bob = federation.pki.clients["bob"]
    # Validly signed Flower headers, but for a node key bob's certificate does not hold.
    key = ec.generate_private_key(ec.SECP384R1())
    with federation.gateway_client(bob) as client:
        response = client.post(
            "/v1/fleet/pull-messages", content=b"", headers=signed_fleet_headers(key)
        )
    assert response.status_code == 403
    wait_for_record(
        federation.gateway_audit_log,
        lambda r: (
            r.kind is AuditEventKind.REQUEST_REFUSED
            and r.reason == "node_key_mismatch"
            and r.details.get("identity") == f"spiffe://{FEDERATION}/client/bob"
        ),
        "the foreign node key",
        federation.check_alive,
    )


@pytest.mark.slow
def test_path_tricks_around_the_fleet_prefix_are_refused(
    federation: ZeroTrustFederation,
) -> None:
    alice = federation.pki.clients["alice"]
    tricks = (
        "/v1/fleet/%2e%2e/control/list-runs",
        "/v1%2Ffleet/pull-messages",
        "/v1/fleet%2F..%2Fcontrol/list-runs",
        "//v1/fleet/pull-messages",
        "/v1/fleetx/pull-messages",
        "/health",
    )
    with federation.gateway_client(alice) as client:
        for target in tricks:
            response = client.post(target, content=b"", headers=captured_fleet_headers(alice))
            assert response.status_code in (400, 403, 404), target


@pytest.mark.slow
def test_the_superlink_port_refuses_connections_from_outside_loopback(
    federation: ZeroTrustFederation,
) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address to connect from")
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection((address, federation.superlink_port), timeout=5),
    ):
        pass


@pytest.mark.slow
def test_the_gateway_refusals_are_counted_in_the_coordinators_metrics(
    federation: ZeroTrustFederation,
) -> None:
    alice = federation.pki.clients["alice"]
    with federation.gateway_client(alice) as client:
        client.post("/v1/control/list-runs", content=b"", headers=captured_fleet_headers(alice))
    scraped = httpx.get(f"http://{LOOPBACK}:{federation.metrics_port}/metrics", timeout=10.0)
    assert scraped.status_code == 200
    refusals = [
        line
        for line in scraped.text.splitlines()
        if line.startswith("ztfl_gateway_refusals_total{")
    ]
    assert any('kind="request_refused"' in line for line in refusals), scraped.text
    assert "alice" not in scraped.text  # no per-client labels


@pytest.mark.slow
def test_a_secure_round_runs_through_gateway_and_sidecars(
    federation: ZeroTrustFederation, completed_run: CompletedRun
) -> None:
    # Members check each other's certificates against the federation CRL: the operator hands
    # every client the current one (the default <identity-dir>/crl.pem).
    for name in NODES:
        shutil.copyfile(federation.pki.crl, federation.pki.clients[name].root / "crl.pem")
    run_config = federation.root / "secure-run.toml"
    run_config.write_text(
        "num-server-rounds = 3\nresume = true\nsecure-aggregation = true\ngroup-size = 3\n"
        'pipeline = "mean"\nnum-byzantine = 0\nlocal-epochs = 1\nbatch-size = 32\n'
        f"min-nodes = {len(NODES)}\nround-timeout-s = 90.0\nnode-wait-timeout-s = 60.0\n"
        f"federation-ca = {json.dumps(str(federation.pki.ca_certificate))}\n"
        f"federation-crl = {json.dumps(str(federation.pki.crl))}\n"
    )
    completed = federation.ztfl(
        "run",
        str(run_config),
        "--server",
        str(federation.service_dir),
        "--app",
        str(federation.app_dir),
        timeout_s=RUN_TIMEOUT_S,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    records = audit_records(federation.state_dir / "audit.db")
    completed_rounds = [
        record.round for record in records if record.kind is AuditEventKind.ROUND_COMPLETED
    ]
    assert completed_rounds == [1, 2, 3]
    secure_trouble = {
        AuditEventKind.SECAGG_GROUP_ABORTED,
        AuditEventKind.SECAGG_REPLY_REFUSED,
        AuditEventKind.SECAGG_MEMBER_REFUSED,
        AuditEventKind.GROUP_MEAN_REFUSED,
        AuditEventKind.CLIENT_VERIFICATION_FAILED,
    }
    assert not [record for record in records if record.kind in secure_trouble]
    for name in NODES:  # every node took part in all four stages of the secure round
        log = (federation.client_dir(name) / "logs" / "supernode.log").read_text(errors="replace")
        for stage in ("setup", "share_keys", "masked_input", "unmask"):
            assert f"train.secagg_{stage}" in log, f"{name} missed the secagg {stage} stage"


# ---------------------------------------------------------------- changes the federation
@pytest.mark.slow
def test_an_app_bundle_off_the_clients_allow_list_is_refused_by_its_sidecar(
    federation: ZeroTrustFederation, completed_run: CompletedRun
) -> None:
    federation.start_client(OFF_LIST_CLIENT, 0, len(NODES))
    federation.wait_for_online_nodes(len(NODES) + 1)
    second_state = federation.root / "second-run-state"
    prepare_state_dir(second_state, read_signing_key(federation.signing_key).public_key())
    run_config = federation.root / "second-run.toml"
    run_config.write_text(
        f"num-server-rounds = 1\nmin-nodes = {len(NODES) + 1}\nnode-wait-timeout-s = 60.0\n"
    )
    submitted = federation.ztfl(
        "run",
        str(run_config),
        "--server",
        str(federation.service_dir),
        "--app",
        str(federation.app_dir),
        "--set",
        f"state-dir={json.dumps(str(second_state))}",
        "--no-stream",
    )
    assert submitted.returncode == 0, submitted.stderr
    started = RUN_STARTED.search(submitted.stderr)
    assert started is not None
    try:
        record = wait_for_record(
            federation.off_list.root / "sidecar-audit.sqlite",
            lambda r: r.kind is AuditEventKind.APP_BUNDLE_REFUSED,
            "the refused app bundle",
            lambda: federation.check_alive("server"),
        )
    finally:
        subprocess.run(
            [str(BIN / "flwr"), "stop", started.group(1), "ztfl"],
            env={**federation.environment(), "FLWR_HOME": str(federation.service_dir / "control")},
            capture_output=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )
    assert federation.app_bundle in json.dumps(dict(record.details))


@pytest.mark.slow
def test_a_revoked_clients_next_request_is_refused_and_audited(
    federation: ZeroTrustFederation, completed_run: CompletedRun
) -> None:
    carol = f"spiffe://{FEDERATION}/client/carol"
    revoked = federation.ztfl("pki", "revoke", carol, "--dir", str(federation.pki.authority.root))
    assert revoked.returncode == 0, revoked.stderr
    # Carol's SuperNode keeps polling through her sidecar: its next request is refused.
    record = wait_for_record(
        federation.gateway_audit_log,
        lambda r: (
            r.kind is AuditEventKind.NODE_REFUSED
            and r.reason == "revoked"
            and r.details.get("identity") == carol
        ),
        "carol's revoked certificate",
        lambda: federation.check_alive("server"),
    )
    assert record.reason == "revoked"
    with (
        federation.gateway_client(federation.pki.clients["carol"]) as client,
    ):
        response = client.post(
            "/v1/fleet/pull-messages",
            content=b"",
            headers=captured_fleet_headers(federation.pki.clients["carol"]),
        )
    assert response.status_code == 403


# ---------------------------------------------------------------- refused before anything starts
@pytest.fixture(scope="module")
def small_pki(tmp_path_factory: pytest.TempPathFactory) -> FederationPaths:
    """A CA with two clients (anchors installed), an operator and a gateway; no processes."""
    root = tmp_path_factory.mktemp("small-pki")
    signing_key = root / "signing.pem"
    write_signing_key(generate_signing_key(), signing_key)
    prepare_state_dir(root / "state", read_signing_key(signing_key).public_key())
    return provision_federation(
        root / "pki",
        "unittest",
        clients=["ann", "ben"],
        operators=["op"],
        trust_anchor=root / "state" / TRUST_ANCHOR_FILE,
        app_bundles=["a" * 64],
    )


def copy_member(member: ClientLayout, destination: Path) -> ClientLayout:
    """A copy of an enrolment folder (keys keep their 0600 mode) to break on purpose."""
    shutil.copytree(member.root, destination)
    return ClientLayout(destination)


def test_client_up_refuses_a_node_key_others_can_read(
    small_pki: FederationPaths, tmp_path: Path
) -> None:
    member = copy_member(small_pki.clients["ann"], tmp_path / "ann")
    member.node_key.chmod(0o644)
    result = CliRunner().invoke(
        app, ["client", "up", "--dir", str(member.root), "--gateway", "localhost:9"]
    )
    assert result.exit_code == 2
    assert "mode 0644" in result.output
    assert "PRIVATE KEY" not in result.output


def test_client_up_refuses_an_enrolment_without_its_certificate(
    small_pki: FederationPaths, tmp_path: Path
) -> None:
    member = copy_member(small_pki.clients["ann"], tmp_path / "ann")
    member.certificate.unlink()
    with pytest.raises(LaunchError) as refused:
        check_enrolment(member.root)
    assert refused.value.reason is LaunchErrorReason.MISSING_FILE


def test_client_up_refuses_an_operator_enrolment(small_pki: FederationPaths) -> None:
    with pytest.raises(LaunchError) as refused:
        check_enrolment(small_pki.operators["op"].root)
    assert refused.value.reason is LaunchErrorReason.BAD_CONFIG


def test_the_node_config_always_pins_the_enrolled_trust_anchor(tmp_path: Path) -> None:
    enrolled = tmp_path / "trust-anchor.toml"
    text = node_config_text("partition-id=0", enrolled, "pkg.data:load", tmp_path / "lineage")
    assert f"trust-anchor='{enrolled.resolve()}'" in text
    assert f"lineage-dir='{tmp_path / 'lineage'}'" in text
    with pytest.raises(LaunchError) as refused:
        node_config_text(f"trust-anchor='{tmp_path / 'other.toml'}'", enrolled, None)
    assert refused.value.reason is LaunchErrorReason.BAD_CONFIG


def test_server_up_refuses_a_gateway_port_in_use(
    small_pki: FederationPaths, tmp_path: Path
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = ServiceConfig(
            service_dir=tmp_path / "service",
            ca_dir=small_pki.authority.root,
            gateway_dir=small_pki.gateway.root,
            listen_host=LOOPBACK,
            listen_port=port,
        )
        with pytest.raises(LaunchError) as refused:
            asyncio.run(CoordinatorService(config).start())
    assert refused.value.reason is LaunchErrorReason.PORT_IN_USE
    assert not (tmp_path / "service").exists()  # refused before anything was made or started


def test_server_up_refuses_a_gateway_key_others_can_read(
    small_pki: FederationPaths, tmp_path: Path
) -> None:
    gateway = copy_member(small_pki.gateway, tmp_path / "gateway")
    gateway.key.chmod(0o640)
    config = ServiceConfig(
        service_dir=tmp_path / "service", ca_dir=small_pki.authority.root, gateway_dir=gateway.root
    )
    with pytest.raises(LaunchError) as refused:
        config.check_files()
    assert refused.value.reason is LaunchErrorReason.KEY_FILE_PERMISSIONS


def test_only_valid_client_certificates_are_registered_as_nodes(tmp_path: Path) -> None:
    pki = provision_federation(
        tmp_path / "pki", "unittest", clients=["ann", "ben"], operators=["op"]
    )
    with open_authority(pki.authority.root) as authority:
        revoke_certificate(authority, "spiffe://unittest/client/ben")
    names = [node.identity.name for node in enrolled_nodes(pki.authority.root)]
    assert names == ["ann"]  # ben revoked; the operator and the gateway are not nodes


def test_the_run_config_file_carries_paths_exactly_as_flower_reads_them(tmp_path: Path) -> None:
    awkward = str(tmp_path / "state dir with 'quotes' and \"double\"")
    written = write_run_config(tmp_path, {"state-dir": awkward, "num-server-rounds": 2})
    assert parse_config_args([str(written)]) == {"state-dir": awkward, "num-server-rounds": 2}


def test_ztfl_run_refuses_when_no_service_runs(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "default", "--server", str(tmp_path / "service")])
    assert result.exit_code == 2
    assert "ztfl server up" in result.output
