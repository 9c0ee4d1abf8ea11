"""A Flower executable run as a child that is stopped together with everything it started.

Flower's SuperLink and SuperNode start further processes (SuperExec, ``flwr-serverapp``,
``flwr-clientapp``), some detached into sessions of their own, so signalling the child's
process group is not enough to leave no orphans. The child gets its own session; at stop
its descendants are listed from ``/proc`` first, then the group gets SIGTERM, and whatever
of the list is still alive after the grace period gets SIGTERM and then SIGKILL.

:func:`become_subreaper` (Linux) makes this process adopt orphaned descendants, so a
process that outlived its parent is still found, and reaped, by the supervisor.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ztfl.client.launch_error import LaunchError, LaunchErrorReason

__all__ = [
    "ProcessSpec",
    "SupervisedProcess",
    "become_subreaper",
    "check_port_free",
    "flower_environment",
    "flower_executable",
]

_PR_SET_CHILD_SUBREAPER: Final = 36
_PROC: Final = Path("/proc")


def flower_executable(name: str) -> Path:
    """The Flower executable ``name`` next to this Python, else on PATH; LaunchError if none."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    if found is None:
        raise LaunchError(
            LaunchErrorReason.MISSING_FILE,
            f"{name} is not installed next to {sys.executable} nor on PATH (pip install flwr)",
        )
    return Path(found)


def flower_environment(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a Flower process: its own ``FLWR_HOME``, no phoning home.

    Flower looks up its helper executables (``flower-superexec``) on PATH, so the folder of
    this Python comes first.
    """
    environment = dict(os.environ)
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}"
    environment["FLWR_HOME"] = str(flwr_home)
    environment.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    environment.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    environment.setdefault("PYTHONUNBUFFERED", "1")
    environment.update(extra or {})
    return environment


def check_port_free(host: str, port: int, what: str) -> None:
    """LaunchError(PORT_IN_USE) unless ``host:port`` can be bound now (port 0 always can)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise LaunchError(
                LaunchErrorReason.PORT_IN_USE,
                f"cannot listen on {host}:{port} for the {what}: {error.strerror or error}",
            ) from None


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


@dataclass(frozen=True)
class ProcessSpec:
    """What to run: a name for messages, the command, its environment and log file."""

    name: str
    argv: tuple[str, ...]
    environment: Mapping[str, str]
    log_file: Path
    cwd: Path | None = None
    stop_timeout_s: float = 15.0

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError("argv must name a program")
        if not self.stop_timeout_s > 0:
            raise ValueError("stop_timeout_s must be positive")


def _parent_pids() -> dict[int, int]:
    """pid → parent pid of every live, non-zombie process we may read."""
    parents: dict[int, int] = {}
    if not _PROC.is_dir():
        return parents
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    return parents


def _descendants(root: int) -> set[int]:
    parents = _parent_pids()
    found: set[int] = set()
    frontier = {root}
    while frontier:
        children = {pid for pid, parent in parents.items() if parent in frontier}
        frontier = children - found
        found |= children
    return found


def _alive(pid: int) -> bool:
    try:
        fields = (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z"


def _reap(pids: set[int]) -> None:
    """Collect those of ``pids`` that are exited children of ours (adopted orphans), so
    none stays a zombie; only these, never another component's children."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


class SupervisedProcess:
    """One child in its own session; :meth:`stop` ends it and all its descendants."""

    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The child's process id."""
        if self._process is None:
            raise RuntimeError(f"{self.spec.name} is not started")
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the child has exited, else None."""
        return None if self._process is None else self._process.poll()

    @property
    def running(self) -> bool:
        """Whether the child was started and has not exited."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the child, its output appended to the log file (made 0600)."""
        if self._process is not None:
            raise RuntimeError(f"{self.spec.name} is already started")
        log_file = self.spec.log_file
        log_file.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self._process = subprocess.Popen(
                list(self.spec.argv),
                stdin=subprocess.DEVNULL,
                stdout=descriptor,
                stderr=subprocess.STDOUT,
                env=dict(self.spec.environment),
                cwd=self.spec.cwd,
                start_new_session=True,
            )
        except OSError as error:
            raise LaunchError(
                LaunchErrorReason.MISSING_FILE,
                f"cannot start {self.spec.name} ({self.spec.argv[0]}): {error.strerror or error}",
            ) from None
        finally:
            os.close(descriptor)

    def log_tail(self, max_chars: int = 2000) -> str:
        """The end of the child's log, for an error message."""
        try:
            text = self.spec.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return text[-max_chars:]

    def stop(self) -> list[int]:
        """SIGTERM the child's group, wait, then end every descendant still alive.

        Returns the process ids that had to be killed (SIGKILL) — empty after a clean stop.
        """
        process = self._process
        if process is None:
            return []
        family = _descendants(process.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=self.spec.stop_timeout_s)
        family |= _descendants(process.pid) if process.poll() is None else set()
        killed: list[int] = []
        deadline = time.monotonic() + self.spec.stop_timeout_s
        for sig in (signal.SIGTERM, signal.SIGKILL):
            targets = [pid for pid in sorted(family | {process.pid}) if _alive(pid)]
            if not targets:
                break
            for pid in targets:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
                if sig is signal.SIGKILL:
                    killed.append(pid)
            while time.monotonic() < deadline and any(_alive(pid) for pid in targets):
                _reap(family)
                time.sleep(0.1)
            deadline = time.monotonic() + self.spec.stop_timeout_s
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=self.spec.stop_timeout_s)
        _reap(family)
        return killed
