"""The SuperLink as a child process: loopback only, TLS, node authentication, no installs.

Flower 1.42 serves the Fleet, Control and Runtime APIs on one HTTP port, and only the
Fleet API may be reached from the network — through the gateway. So the SuperLink binds
127.0.0.1 and nothing else; its TLS certificate comes from a throw-away loopback CA
(:func:`ztfl.trust.pki.local_tls.create_local_tls`, the same material a client's sidecar
uses), which the gateway and the ``flwr`` CLI pin. Node authentication is on, so only
registered node keys are served, and runtime dependency installation is off, so an app
bundle cannot pull code onto the coordinator. ServerApps run in a subprocess of the
SuperLink's SuperExec (``--isolation subprocess``). docs/decisions/0010.
"""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ztfl.client.launch_error import LaunchError, LaunchErrorReason
from ztfl.client.supervised_process import (
    ProcessSpec,
    SupervisedProcess,
    check_port_free,
    flower_environment,
    flower_executable,
)
from ztfl.trust.pki import LocalTlsLayout, check_private_key_file
from ztfl.trust.pki.local_tls import create_local_tls

__all__ = ["LOOPBACK", "SuperLinkConfig", "SuperLinkProcess", "ensure_superlink_tls"]

LOOPBACK: Final = "127.0.0.1"
HEALTH_PATH: Final = "/health"


def ensure_superlink_tls(tls_dir: Path) -> LocalTlsLayout:
    """The SuperLink's loopback TLS in ``tls_dir``, made on first use (key 0600, CA key
    discarded); an existing folder is reused and its key file's mode checked."""
    layout = LocalTlsLayout(Path(tls_dir))
    if not layout.server_key.exists():
        create_local_tls(layout.root)
    for path in (layout.ca_certificate, layout.server_certificate):
        if not path.is_file():
            raise LaunchError(
                LaunchErrorReason.MISSING_FILE,
                f"{path} is missing; delete {layout.root} to make new loopback TLS material",
            )
    check_private_key_file(layout.server_key)
    return layout


@dataclass(frozen=True)
class SuperLinkConfig:
    """How to run the SuperLink.

    Args:
        port: the loopback port of its Fleet, Control and Runtime APIs.
        tls: its loopback TLS material (:func:`ensure_superlink_tls`).
        flwr_home: its ``FLWR_HOME`` (its SuperExec and ServerApps store app bundles there).
        database: its state database (runs, registered nodes), kept across restarts.
        log_file: where its output goes.
        ready_timeout_s: how long to wait for ``GET /health`` to answer.
    """

    port: int
    tls: LocalTlsLayout
    flwr_home: Path
    database: Path
    log_file: Path
    ready_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not 1 <= self.port <= 65535:
            raise ValueError(f"the SuperLink port must be 1..65535, got {self.port!r}")
        if not self.ready_timeout_s > 0:
            raise ValueError("ready_timeout_s must be positive")

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``: the only address the SuperLink listens on."""
        return f"{LOOPBACK}:{self.port}"

    def argv(self) -> tuple[str, ...]:
        """The ``flower-superlink`` command line."""
        return (
            str(flower_executable("flower-superlink")),
            "--ssl-certfile",
            str(self.tls.server_certificate.resolve()),
            "--ssl-keyfile",
            str(self.tls.server_key.resolve()),
            "--ssl-ca-certfile",
            str(self.tls.ca_certificate.resolve()),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--isolation",
            "subprocess",
            "--database",
            str(self.database.resolve()),
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
        )


class SuperLinkProcess:
    """Starts the SuperLink, waits until it answers, stops it and all it started."""

    def __init__(self, config: SuperLinkConfig) -> None:
        self.config = config
        self._process: SupervisedProcess | None = None

    @property
    def running(self) -> bool:
        """Whether the SuperLink process is alive."""
        return self._process is not None and self._process.running

    @property
    def returncode(self) -> int | None:
        """Its exit status once it has exited."""
        return None if self._process is None else self._process.returncode

    def start(self) -> None:
        """Start it and wait for its health endpoint; LaunchError when it does not come up."""
        config = self.config
        check_port_free(LOOPBACK, config.port, "SuperLink")
        config.flwr_home.mkdir(mode=0o700, parents=True, exist_ok=True)
        config.database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        process = SupervisedProcess(
            ProcessSpec(
                name="SuperLink",
                argv=config.argv(),
                environment=flower_environment(config.flwr_home),
                log_file=config.log_file,
                cwd=config.flwr_home,
            )
        )
        process.start()
        self._process = process
        try:
            self._wait_ready(process)
        except BaseException:
            process.stop()
            raise

    def healthy(self, timeout_s: float = 2.0) -> bool:
        """Whether the SuperLink answers ``GET /health`` over its TLS now."""
        if not self.running:
            return False
        context = ssl.create_default_context(cafile=str(self.config.tls.ca_certificate))
        url = f"https://{self.config.address}{HEALTH_PATH}"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return False

    def _wait_ready(self, process: SupervisedProcess) -> None:
        deadline = time.monotonic() + self.config.ready_timeout_s
        while time.monotonic() < deadline:
            if not process.running:
                raise LaunchError(
                    LaunchErrorReason.PROCESS_EXITED,
                    f"the SuperLink exited with code {process.returncode}; its log "
                    f"({self.config.log_file}) ends:\n{process.log_tail()}",
                )
            if self.healthy():
                return
            time.sleep(0.25)
        raise LaunchError(
            LaunchErrorReason.NOT_READY,
            f"the SuperLink did not answer on {self.config.address} within "
            f"{self.config.ready_timeout_s:.0f} s; see {self.config.log_file}",
        )

    def stop(self) -> list[int]:
        """Stop the SuperLink, its SuperExec and ServerApps; the pids that had to be killed."""
        if self._process is None:
            return []
        killed = self._process.stop()
        self._process = None
        return killed
