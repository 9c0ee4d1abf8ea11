"""The operators' local-only channel to the SuperLink's Control API: Flower's ``flwr`` CLI
against ``127.0.0.1``, pinning the SuperLink's loopback CA.

Flower 1.42's Control API is unauthenticated in the open-source build and shares the
SuperLink's port with the Fleet API; the gateway never forwards it, so it is reachable from
the coordinator host alone. Registering node keys (``flwr supernode register``) and
starting runs (``flwr run``) go through here. The connection lives in its own
``FLWR_HOME`` (``config.toml``, connection ``ztfl``), next to the service's other files.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from ztfl.client.launch_error import LaunchError, LaunchErrorReason
from ztfl.client.supervised_process import flower_environment, flower_executable

__all__ = [
    "CONNECTION_NAME",
    "ControlChannel",
    "NodeRegistration",
    "RegistrationOutcome",
    "run_config_toml",
]

CONNECTION_NAME: Final = "ztfl"
_ALREADY_REGISTERED: Final = "Public key already in use"
_TIMEOUT_S: Final = 120.0

RunConfigValue = bool | int | float | str


class RegistrationOutcome(StrEnum):
    """What ``flwr supernode register`` did with a node key."""

    REGISTERED = "registered"
    ALREADY_REGISTERED = "already_registered"


@dataclass(frozen=True)
class NodeRegistration:
    """One node key's registration: the node's name, the outcome, Flower's node id if new."""

    name: str
    outcome: RegistrationOutcome
    node_id: str | None = None


def _toml_value(key: str, value: RunConfigValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LaunchError(LaunchErrorReason.BAD_CONFIG, f"{key} must be finite, got {value}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    raise LaunchError(LaunchErrorReason.BAD_CONFIG, f"{key}: unsupported value {value!r}")


def run_config_toml(run_config: Mapping[str, RunConfigValue]) -> str:
    """A run config as the flat TOML file ``flwr run --run-config FILE`` reads: exact for any
    string (paths with spaces or quotes), where ``k=v`` arguments are not."""
    lines = []
    for key, value in sorted(run_config.items()):
        if not key or any(not (c.isalnum() or c in "-_") for c in key):
            raise LaunchError(LaunchErrorReason.BAD_CONFIG, f"{key!r} is not a run-config key")
        lines.append(f"{key} = {_toml_value(key, value)}")
    return "\n".join(lines) + "\n"


def _json_object(output: str) -> dict[str, Any]:
    """The JSON object in a ``flwr … --format json`` answer (Flower may print notes around it)."""
    start, end = output.find("{"), output.rfind("}")
    if start < 0 or end < start:
        return {}
    try:
        value = json.loads(output[start : end + 1])
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class ControlChannel:
    """``flwr`` commands against the loopback SuperLink, with their own ``FLWR_HOME``.

    Args:
        flwr_home: the CLI's Flower home; :meth:`write_connection` fills its config.toml.
        superlink_address: ``127.0.0.1:<port>``.
        root_certificates: the SuperLink's loopback CA certificate.
        timeout_s: the limit of one short command (register, list, stop).
    """

    flwr_home: Path
    superlink_address: str
    root_certificates: Path
    timeout_s: float = _TIMEOUT_S

    def write_connection(self) -> None:
        """Write the ``ztfl`` connection into ``flwr_home/config.toml`` (public data only)."""
        self.flwr_home.mkdir(mode=0o700, parents=True, exist_ok=True)
        config = (
            f'[superlink]\ndefault = "{CONNECTION_NAME}"\n\n'
            f"[superlink.{CONNECTION_NAME}]\n"
            f"address = {json.dumps(self.superlink_address)}\n"
            f"root-certificates = {json.dumps(str(self.root_certificates.resolve()))}\n"
        )
        (self.flwr_home / "config.toml").write_text(config, encoding="utf-8")

    def command(self, *args: str) -> list[str]:
        """The ``flwr`` command line for ``args``."""
        return [str(flower_executable("flwr")), *args]

    def environment(self) -> dict[str, str]:
        """The environment of every ``flwr`` command."""
        return flower_environment(self.flwr_home)

    def _run(self, *args: str, timeout_s: float | None = None) -> str:
        try:
            completed = subprocess.run(
                self.command(*args),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=self.environment(),
                cwd=self.flwr_home,
                timeout=timeout_s or self.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise LaunchError(
                LaunchErrorReason.CONTROL_API_FAILED,
                f"`flwr {args[0]}` did not finish within {timeout_s or self.timeout_s:.0f} s",
            ) from None
        output = completed.stdout.decode(errors="replace") + completed.stderr.decode(
            errors="replace"
        )
        if completed.returncode != 0:
            raise LaunchError(
                LaunchErrorReason.CONTROL_API_FAILED,
                f"`flwr {' '.join(args[:2])}` exited with {completed.returncode}: "
                f"{output.strip()[-1000:]}",
            )
        return output

    def register_node(self, public_key_file: Path, name: str) -> NodeRegistration:
        """Register the OpenSSH public key in ``public_key_file`` (``flwr supernode register``);
        a key registered before is not an error (a restart registers every key again)."""
        answer = _json_object(
            self._run(
                "supernode",
                "register",
                str(public_key_file),
                CONNECTION_NAME,
                "--format",
                "json",
            )
        )
        if answer.get("success") is True:
            return NodeRegistration(name, RegistrationOutcome.REGISTERED, str(answer["node-id"]))
        message = str(answer.get("error-message", "no answer"))
        if _ALREADY_REGISTERED in message:
            return NodeRegistration(name, RegistrationOutcome.ALREADY_REGISTERED)
        raise LaunchError(
            LaunchErrorReason.CONTROL_API_FAILED,
            f"the SuperLink refused node {name}'s key: {message.strip()[-500:]}",
        )

    def list_nodes(self) -> list[dict[str, Any]]:
        """``flwr supernode ls``: every registered node with its status."""
        answer = _json_object(self._run("supernode", "ls", CONNECTION_NAME, "--format", "json"))
        nodes = answer.get("nodes", [])
        return [node for node in nodes if isinstance(node, dict)]

    def run_status(self, run_id: str) -> str:
        """The run's status as ``flwr ls`` reports it (``finished:completed`` …)."""
        answer = _json_object(
            self._run("ls", CONNECTION_NAME, "--run-id", run_id, "--format", "json")
        )
        runs = answer.get("runs", [])
        if not runs or not isinstance(runs[0], dict):
            return "unknown"
        return str(runs[0].get("status", "unknown"))

    def stop_run(self, run_id: str) -> None:
        """``flwr stop``: end a run."""
        self._run("stop", run_id, CONNECTION_NAME)

    def start_run(
        self, app_dir: Path, run_config_file: Path, *, stream: bool
    ) -> subprocess.Popen[str]:
        """Start ``flwr run`` (output on its stdout, merged); the caller reads and waits."""
        args = ["run", str(app_dir), CONNECTION_NAME, "--run-config", str(run_config_file)]
        if stream:
            args.append("--stream")
        return subprocess.Popen(
            self.command(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            cwd=self.flwr_home,
            text=True,
            errors="replace",
        )


def output_lines(process: subprocess.Popen[str]) -> Iterator[str]:
    """The lines a started ``flwr run`` prints, as they come."""
    assert process.stdout is not None
    yield from process.stdout
