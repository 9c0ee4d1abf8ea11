"""A real Flower SuperLink behind the gateway: Flower's own SuperNode client gets through the
sidecar and gateway, and the SuperLink's other APIs on the same port stay out of reach."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from flwr.proto.fleet_pb2 import PullMessagesRequest, RegisterNodeFleetRequest
from flwr.proto.node_pb2 import Node
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from tests.client.sidecar.sidecar_test_setup import (
    EnrolledClient,
    RunningSidecar,
    enrol_test_client,
    run_sidecar_chain,
)
from tests.server.gateway.gateway_test_federation import node_key_header
from tests.trust.transport.relay_test_servers import LoopThread, Upstream, UpstreamState
from ztfl.trust.pki.keyfiles import read_private_key

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def superlink_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``flower-superlink --insecure`` on loopback: one HTTP port for Fleet, Control, Runtime."""
    port = _free_port()
    log = tmp_path_factory.mktemp("superlink") / "superlink.log"
    bin_dir = str(Path(sys.executable).parent)
    environment = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }
    with open(log, "w") as output:
        process = subprocess.Popen(
            [
                os.path.join(bin_dir, "flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"flower-superlink did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> EnrolledClient:
    return enrol_test_client(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def chain(
    loop_thread: LoopThread, enrolled: EnrolledClient, superlink_port: int, tmp_path: Path
) -> Iterator[RunningSidecar]:
    superlink = Upstream(superlink_port, UpstreamState())
    yield from run_sidecar_chain(loop_thread, enrolled, superlink, tmp_path)


def test_flowers_supernode_client_registers_and_polls_through_sidecar_and_gateway(
    chain: RunningSidecar,
) -> None:
    key = read_private_key(chain.enrolled.client.key)
    with chain.flower_client() as client:
        registered = client.RegisterNode(
            RegisterNodeFleetRequest(public_key=public_key_to_bytes(key.public_key()))
        )
        pulled = client.PullMessages(PullMessagesRequest(node=Node(node_id=registered.node_id)))
    assert registered.node_id != 0
    assert list(pulled.messages_list) == []


def test_the_superlinks_control_api_answers_on_its_port_but_not_through_the_chain(
    chain: RunningSidecar, superlink_port: int
) -> None:
    target = "/v1/control/list-runs"
    direct = httpx.post(f"http://127.0.0.1:{superlink_port}{target}", content=b"")
    local_ca = str(chain.enrolled.client.local.ca_certificate)
    with httpx.Client(verify=ssl.create_default_context(cafile=local_ca)) as client:
        relayed = client.post(
            f"https://127.0.0.1:{chain.port}{target}",
            content=b"",
            headers={"flwr-public-key": node_key_header(chain.enrolled.client)},
        )
    assert direct.status_code != 404  # the Control API shares the Fleet API's port
    assert relayed.status_code == 403
