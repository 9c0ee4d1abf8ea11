"""``python -m ztfl.server.gateway``: run the gateway from command-line options."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from ztfl.server.gateway.config import GatewayConfig
from ztfl.server.gateway.gateway import run_gateway


def parse_config(argv: Sequence[str] | None = None) -> GatewayConfig:
    """The ``GatewayConfig`` that the command-line options describe."""
    parser = argparse.ArgumentParser(
        prog="python -m ztfl.server.gateway",
        description="The ztfl mutual-TLS gateway in front of a loopback SuperLink.",
    )
    parser.add_argument("--listen", default="0.0.0.0:9093", help="host:port to listen on")
    parser.add_argument("--certificate", type=Path, required=True, help="gateway TLS certificate")
    parser.add_argument("--key", type=Path, required=True, help="gateway TLS private key")
    parser.add_argument("--federation-ca", type=Path, required=True)
    parser.add_argument("--crl", type=Path, required=True)
    parser.add_argument("--upstream", required=True, help="http(s)://127.0.0.1:<port>")
    parser.add_argument("--upstream-ca", type=Path, default=None)
    parser.add_argument("--audit-log", type=Path, required=True)
    parser.add_argument("--health-port", type=int, default=None)
    parser.add_argument("--requests-per-second", type=float, default=50.0)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--max-request-mib", type=int, default=128)
    args = parser.parse_args(argv)
    host, _, port = str(args.listen).rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--listen must be host:port, got {args.listen!r}")
    return GatewayConfig(
        listen_host=host.strip("[]"),
        listen_port=int(port),
        server_certificate=args.certificate,
        server_key=args.key,
        federation_ca=args.federation_ca,
        crl=args.crl,
        upstream_url=args.upstream,
        upstream_ca=args.upstream_ca,
        audit_log=args.audit_log,
        health_port=args.health_port,
        requests_per_second=args.requests_per_second,
        burst=args.burst,
        max_request_bytes=args.max_request_mib * 1024 * 1024,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the options and run the gateway until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_gateway(parse_config(argv))


if __name__ == "__main__":
    main()
