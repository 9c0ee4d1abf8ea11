"""``python -m ztfl.client.sidecar``: run the sidecar for an enrolment folder."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from ztfl.client.sidecar.config import SidecarConfig
from ztfl.client.sidecar.sidecar import run_sidecar


def parse_config(argv: Sequence[str] | None = None) -> SidecarConfig:
    """The ``SidecarConfig`` that the command-line options describe."""
    parser = argparse.ArgumentParser(
        prog="python -m ztfl.client.sidecar",
        description="The ztfl client sidecar: loopback TLS for the SuperNode, mutual TLS "
        "to the gateway, app-bundle allow-list.",
    )
    parser.add_argument("--client-dir", type=Path, required=True, help="enrolment folder")
    parser.add_argument("--gateway", required=True, help="gateway host:port")
    parser.add_argument("--gateway-server-name", default=None)
    parser.add_argument("--listen-port", type=int, default=9095)
    args = parser.parse_args(argv)
    host, _, port = str(args.gateway).rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--gateway must be host:port, got {args.gateway!r}")
    return SidecarConfig.from_client_dir(
        args.client_dir,
        host.strip("[]"),
        int(port),
        listen_port=args.listen_port,
        gateway_server_name=args.gateway_server_name,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the options and run the sidecar until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_sidecar(parse_config(argv))


if __name__ == "__main__":
    main()
