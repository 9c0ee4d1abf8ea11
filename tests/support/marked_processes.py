"""Processes a test starts, found again by a marker in their environment, and ports for them.

Flower starts processes of its own (SuperExec, ``flwr-serverapp``, ``flwr-clientapp``), some
detached into sessions of their own; they inherit the environment, so a marker variable set
on every process a test starts finds them all, and proves that nothing outlives the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

MARKER_VARIABLE = "ZTFL_TEST_PROCESS_MARKER"
LOOPBACK = "127.0.0.1"

# Ports a Ray cluster (e.g. a simulation running beside the tests) binds by default; a port
# picked by the OS could collide with them later.
RAY_DEFAULT_PORTS = frozenset({6379, 8076, 8265, 10001, 52365, 62365})
RAY_WORKER_PORTS = range(10_002, 20_000)


def free_loopback_port(taken: set[int]) -> int:
    """A TCP port free on loopback now, outside Ray's defaults and not handed out yet."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((LOOPBACK, 0))
            port = int(probe.getsockname()[1])
        if port not in taken and port not in RAY_DEFAULT_PORTS and port not in RAY_WORKER_PORTS:
            taken.add(port)
            return port


def marked_processes(marker: str) -> dict[int, str]:
    """Live processes whose environment carries ``marker`` (zombies excluded): pid → command."""
    needle = f"{MARKER_VARIABLE}={marker}".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        found[int(entry.name)] = command.strip()
    return found


def end_stragglers(marker: str, *, grace_s: float) -> list[str]:
    """Wait up to ``grace_s`` for marked processes to exit, then SIGTERM and SIGKILL the rest;
    what had to be signalled ("SIGTERM pid command")."""
    forced: list[str] = []
    deadline = time.monotonic() + grace_s
    while marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        stragglers = marked_processes(marker)
        for pid, command in stragglers.items():
            forced.append(f"{sig.name} {pid} {command}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if stragglers:
            time.sleep(2.0)
    return forced
