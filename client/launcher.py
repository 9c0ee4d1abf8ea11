"""``ztfl client up``: a SuperNode behind the client's sidecar, from one enrolment folder.

Flower 1.42's SuperNode cannot present a client certificate, so it talks to the sidecar on
loopback TLS (``--superlink 127.0.0.1:<sidecar port> --root-certificates local/ca.pem``)
and the sidecar talks mutual TLS to the coordinator's gateway with the client certificate.
The SuperNode signs Fleet requests with ``node-key``, the same key as the certificate's, so
the gateway can bind the two. The node config always carries ``trust-anchor`` = the
enrolled anchor, so the ClientApp verifies every global model against it, and by default
``lineage-dir`` = ``<client>/lineage``, so what it accepted outlives a run.

Training runs on CUDA when the host has it and on the CPU otherwise
(:func:`ztfl.client.trainer.select_device`); nothing here changes for either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ztfl.client.launch_error import LaunchError, LaunchErrorReason
from ztfl.client.lineage_file import LINEAGE_DIR_KEY
from ztfl.client.sidecar import Sidecar, SidecarConfig
from ztfl.client.supervised_process import (
    ProcessSpec,
    SupervisedProcess,
    check_port_free,
    flower_environment,
    flower_executable,
)
from ztfl.client.trust_anchor import TRUST_ANCHOR_KEY
from ztfl.trust.pki import ClientLayout, PkiError, Role, check_private_key_file
from ztfl.trust.pki.enrolment import read_enrolment
from ztfl.trust.transport.lifecycle import serve_until_signalled

__all__ = ["ClientLaunchConfig", "ClientLauncher", "check_enrolment", "node_config_text"]

_log = logging.getLogger(__name__)

LOOPBACK: Final = "127.0.0.1"
DEFAULT_RUNTIME_PORT: Final = 9094
SUPERNODE_HOME: Final = "supernode-home"
LINEAGE_DIR: Final = "lineage"
IDENTITY_DIR_KEY: Final = "identity-dir"
"""``ztfl.client.secure_aggregation.IDENTITY_DIR``, named here so the launcher stays light."""
_NODE_CONFIG_PAIR: Final = re.compile(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)")
_WATCH_INTERVAL_S: Final = 1.0


def check_enrolment(client_dir: Path) -> ClientLayout:
    """The enrolment folder's layout if it can run a node; LaunchError naming the problem.

    It must be a client enrolment with its certificate installed, both key files 0600, the
    loopback TLS material, the app-bundle allow-list and the trust anchor.
    """
    layout = ClientLayout(Path(client_dir))
    try:
        identity = read_enrolment(layout.root)
    except PkiError as error:
        raise LaunchError(LaunchErrorReason.MISSING_FILE, error.message) from None
    if identity.role is not Role.CLIENT:
        raise LaunchError(
            LaunchErrorReason.BAD_CONFIG,
            f"{layout.root} is enrolled as {identity.spiffe_id}; a node needs a client enrolment",
        )
    required = {
        layout.certificate: "the certificate (ztfl client install-certificate)",
        layout.ca_certificate: "the federation CA (ztfl client install-certificate)",
        layout.app_bundle_allow_list: "the app-bundle allow-list (ztfl client install-certificate)",
        layout.trust_anchor: "the coordinator's trust anchor (ztfl client install-certificate)",
        layout.local.ca_certificate: "the loopback CA (ztfl client enrol)",
        layout.local.server_certificate: "the sidecar's loopback certificate (ztfl client enrol)",
    }
    for path, what in required.items():
        if not path.is_file():
            raise LaunchError(LaunchErrorReason.MISSING_FILE, f"{path} is missing: {what}")
    for key in (layout.key, layout.node_key, layout.local.server_key):
        try:
            check_private_key_file(key)
        except PkiError as error:
            raise LaunchError(LaunchErrorReason.KEY_FILE_PERMISSIONS, error.message) from None
    if "'" in str(layout.trust_anchor.resolve()):
        raise LaunchError(
            LaunchErrorReason.BAD_CONFIG,
            f"{layout.root}: Flower's node config cannot carry a path with a single quote",
        )
    return layout


def node_config_text(
    user_config: str,
    trust_anchor: Path,
    dataset: str | None,
    lineage_dir: Path | None = None,
    identity_dir: Path | None = None,
) -> str:
    """The SuperNode's ``--node-config``: the user's pairs, ``dataset``, the enrolled
    ``trust-anchor`` and, unless the user names them, ``lineage-dir`` (so the node refuses a
    rolled-back model across runs, docs/signing.md) and ``identity-dir`` (the enrolment
    folder, whose key signs the node's secure-aggregation keys, docs/secure-aggregation.md);
    a different ``trust-anchor`` or ``dataset`` given twice is refused."""
    pairs = dict(_NODE_CONFIG_PAIR.findall(user_config))
    leftover = _NODE_CONFIG_PAIR.sub("", user_config).strip()
    if leftover:
        raise LaunchError(
            LaunchErrorReason.BAD_CONFIG, f"--node-config: cannot parse {leftover[:80]!r}"
        )
    anchor = str(trust_anchor.resolve())
    given = pairs.get(TRUST_ANCHOR_KEY)
    if given is not None and given.strip("'\"") != anchor:
        raise LaunchError(
            LaunchErrorReason.BAD_CONFIG,
            f"--node-config names trust-anchor {given}; the node always pins its enrolled "
            f"anchor {anchor}",
        )
    if dataset is not None:
        if "dataset" in pairs:
            raise LaunchError(
                LaunchErrorReason.BAD_CONFIG, "give the dataset hook once: --dataset or dataset="
            )
        if "'" in dataset:
            raise LaunchError(LaunchErrorReason.BAD_CONFIG, "--dataset cannot contain a quote")
        pairs["dataset"] = f"'{dataset}'"
    pairs[TRUST_ANCHOR_KEY] = f"'{anchor}'"
    if lineage_dir is not None and LINEAGE_DIR_KEY not in pairs:
        if "'" in str(lineage_dir):
            raise LaunchError(LaunchErrorReason.BAD_CONFIG, "lineage-dir cannot contain a quote")
        pairs[LINEAGE_DIR_KEY] = f"'{lineage_dir}'"
    if identity_dir is not None and IDENTITY_DIR_KEY not in pairs:
        if "'" in str(identity_dir):
            raise LaunchError(LaunchErrorReason.BAD_CONFIG, "identity-dir cannot contain a quote")
        pairs[IDENTITY_DIR_KEY] = f"'{identity_dir}'"
    return " ".join(f"{key}={value}" for key, value in pairs.items())


@dataclass(frozen=True)
class ClientLaunchConfig:
    """What ``ztfl client up`` needs.

    Args:
        client_dir: the enrolment folder (``ztfl client enrol`` + ``install-certificate``).
        gateway_host, gateway_port: the coordinator's gateway.
        node_config: extra SuperNode node-config pairs (``key=value`` separated by spaces).
        dataset: the dataset hook, ``module:function`` (node config ``dataset``).
        gateway_server_name: the name on the gateway's certificate, if not its host.
        sidecar_port: the sidecar's loopback port (0: a free port).
        runtime_port: the SuperNode's own Runtime API port on loopback (0: a free port).
        max_wait_time_s: how long the SuperNode keeps trying to reach the coordinator.
    """

    client_dir: Path
    gateway_host: str
    gateway_port: int
    node_config: str = ""
    dataset: str | None = None
    gateway_server_name: str | None = None
    sidecar_port: int = 0
    runtime_port: int = DEFAULT_RUNTIME_PORT
    max_wait_time_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "client_dir", Path(self.client_dir).absolute())
        if not self.gateway_host:
            raise LaunchError(LaunchErrorReason.BAD_CONFIG, "the gateway host must not be empty")
        if not 1 <= self.gateway_port <= 65535:
            raise LaunchError(LaunchErrorReason.BAD_CONFIG, "the gateway port must be 1..65535")
        for name in ("sidecar_port", "runtime_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise LaunchError(LaunchErrorReason.BAD_CONFIG, f"{name} must be 0..65535")
        if self.max_wait_time_s is not None and not self.max_wait_time_s > 0:
            raise LaunchError(LaunchErrorReason.BAD_CONFIG, "max_wait_time_s must be positive")


class ClientLauncher:
    """The sidecar (in this process) and the SuperNode (a child); see the module docstring."""

    def __init__(self, config: ClientLaunchConfig) -> None:
        self.config = config
        self.layout = ClientLayout(config.client_dir)
        self._sidecar: Sidecar | None = None
        self._supernode: SupervisedProcess | None = None
        self._watch: asyncio.Task[None] | None = None
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.failure: str | None = None

    @property
    def sidecar_port(self) -> int:
        """The sidecar's bound loopback port."""
        if self._sidecar is None:
            raise RuntimeError("the client is not started")
        return self._sidecar.port

    @property
    def supernode_log(self) -> Path:
        """The SuperNode's output."""
        return self.layout.root / "logs" / "supernode.log"

    def supernode_argv(self, sidecar_port: int) -> tuple[str, ...]:
        """The ``flower-supernode`` command line, pointed at the sidecar."""
        config, layout = self.config, self.layout
        argv = [
            str(flower_executable("flower-supernode")),
            "--superlink",
            f"{LOOPBACK}:{sidecar_port}",
            "--root-certificates",
            str(layout.local.ca_certificate.resolve()),
            "--auth-supernode-private-key",
            str(layout.node_key.resolve()),
            "--node-config",
            node_config_text(
                config.node_config,
                layout.trust_anchor,
                config.dataset,
                (layout.root / LINEAGE_DIR).resolve(),
                layout.root.resolve(),
            ),
            "--isolation",
            "subprocess",
            "--host",
            LOOPBACK,
            "--port",
            str(config.runtime_port),
        ]
        if config.max_wait_time_s is not None:
            argv += ["--max-wait-time", str(config.max_wait_time_s)]
        return tuple(argv)

    async def start(self) -> None:
        """Check the enrolment, start the sidecar, then the SuperNode; LaunchError on failure
        (nothing is left running)."""
        config = self.config
        check_enrolment(config.client_dir)
        check_port_free(LOOPBACK, config.sidecar_port, "sidecar")
        check_port_free(LOOPBACK, config.runtime_port, "SuperNode Runtime API")
        sidecar = Sidecar(
            SidecarConfig.from_client_dir(
                config.client_dir,
                config.gateway_host,
                config.gateway_port,
                listen_port=config.sidecar_port,
                gateway_server_name=config.gateway_server_name,
            )
        )
        try:
            await sidecar.start()
        except ssl.SSLError as error:
            raise LaunchError(
                LaunchErrorReason.BAD_CONFIG,
                f"{config.client_dir}: the TLS material does not load ({error.reason})",
            ) from None
        except OSError as error:
            raise LaunchError(
                LaunchErrorReason.PORT_IN_USE,
                f"the sidecar cannot listen on {LOOPBACK}:{config.sidecar_port}: "
                f"{error.strerror or error}",
            ) from None
        self._sidecar = sidecar
        try:
            home = self.layout.root / SUPERNODE_HOME
            home.mkdir(mode=0o700, exist_ok=True)
            (self.layout.root / LINEAGE_DIR).mkdir(mode=0o700, exist_ok=True)
            supernode = SupervisedProcess(
                ProcessSpec(
                    name="SuperNode",
                    argv=self.supernode_argv(sidecar.port),
                    environment=flower_environment(home),
                    log_file=self.supernode_log,
                    cwd=home,
                )
            )
            supernode.start()
            self._supernode = supernode
        except BaseException:
            await self.stop()
            raise
        self._watch = asyncio.create_task(self._watch_supernode())
        self.started.set()

    async def _watch_supernode(self) -> None:
        while True:
            await asyncio.sleep(_WATCH_INTERVAL_S)
            supernode = self._supernode
            if supernode is None:
                return
            if not supernode.running:
                self.failure = (
                    f"the SuperNode exited with code {supernode.returncode}; its log "
                    f"({self.supernode_log}) ends:\n{supernode.log_tail()}"
                )
                self.stopped.set()
                return

    async def stop(self) -> list[int]:
        """Stop the SuperNode (and its ClientApps), then the sidecar; pids that were killed."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        killed: list[int] = []
        if self._supernode is not None:
            killed = await asyncio.to_thread(self._supernode.stop)
            self._supernode = None
        if self._sidecar is not None:
            await self._sidecar.stop()
            self._sidecar = None
        self.stopped.set()
        return killed

    async def serve_until_signalled(self) -> None:
        """Start, run until SIGINT/SIGTERM or the SuperNode's exit, then stop."""
        await serve_until_signalled(self, stopped=self.stopped)
