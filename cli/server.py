"""``ztfl server``: the coordinator service — ``up`` (SuperLink, node registration, gateway,
health) and ``app-bundle-hash`` (what clients must allow-list)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from ztfl.client.launch_error import LaunchError
from ztfl.client.supervised_process import become_subreaper
from ztfl.server.service import (
    DEFAULT_HEALTH_PORT,
    DEFAULT_LISTEN,
    DEFAULT_SUPERLINK_PORT,
    CoordinatorService,
    ServiceConfig,
    parse_host_port,
)

server_app = typer.Typer(
    name="server",
    help="The coordinator service: SuperLink on loopback behind the mutual-TLS gateway.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _fail(error: LaunchError) -> typer.Exit:
    typer.echo(f"error: {error.message}", err=True)
    return typer.Exit(code=2)


@server_app.command()
def up(
    config_file: Annotated[
        Path | None,
        typer.Option("--config", help="TOML file with a [server] table (docs/deployment.md)."),
    ] = None,
    service_dir: Annotated[
        Path | None, typer.Option("--service-dir", help="The service folder (made if missing).")
    ] = None,
    ca_dir: Annotated[
        Path | None,
        typer.Option("--ca-dir", help="CA folder or its public part: ca.pem, crl.pem, issued/."),
    ] = None,
    gateway_dir: Annotated[
        Path | None,
        typer.Option("--gateway-dir", help="The gateway's enrolment (role server)."),
    ] = None,
    listen: Annotated[
        str | None,
        typer.Option("--listen", help=f"The gateway's public host:port [{DEFAULT_LISTEN}]."),
    ] = None,
    superlink_port: Annotated[
        int | None,
        typer.Option("--superlink-port", help=f"SuperLink port [{DEFAULT_SUPERLINK_PORT}]"),
    ] = None,
    health_port: Annotated[
        int | None,
        typer.Option("--health-port", help=f"Loopback health port [{DEFAULT_HEALTH_PORT}]."),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="The coordinator state folder (ztfl coordinator init)."),
    ] = None,
    signing_key: Annotated[
        Path | None, typer.Option("--signing-key", help="The model-signing key (for ztfl run).")
    ] = None,
    node_key: Annotated[
        list[Path] | None,
        typer.Option("--node-key", help="Another OpenSSH node public key to register."),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            help="Serve the gateway's refusal counters as Prometheus metrics on 127.0.0.1 "
            "at this port (docs/metrics.md) [off].",
        ),
    ] = None,
) -> None:
    """Start the SuperLink on 127.0.0.1 (TLS, node authentication, no runtime installs),
    register every enrolled client's node key, start the gateway and the health endpoint;
    run until SIGTERM or SIGINT, then stop everything."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        overrides: dict[str, object] = {
            "service_dir": service_dir,
            "ca_dir": ca_dir,
            "gateway_dir": gateway_dir,
            "superlink_port": superlink_port,
            "health_port": health_port,
            "state_dir": state_dir,
            "signing_key": signing_key,
            "extra_node_keys": tuple(node_key) if node_key else None,
            "metrics_port": metrics_port,
        }
        if listen is not None:
            overrides["listen_host"], overrides["listen_port"] = parse_host_port(listen, "--listen")
        if config_file is not None:
            config = ServiceConfig.from_toml(config_file, **overrides)
        else:
            missing = [
                f"--{name.replace('_', '-')}"
                for name in ("service_dir", "ca_dir", "gateway_dir")
                if overrides[name] is None
            ]
            if missing:
                typer.echo(f"error: give --config or {', '.join(missing)}", err=True)
                raise typer.Exit(code=2)
            config = ServiceConfig(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except LaunchError as error:
        raise _fail(error) from None
    become_subreaper()
    service = CoordinatorService(config)

    async def serve() -> None:
        serving = asyncio.create_task(service.serve_until_signalled())
        started = asyncio.create_task(service.started.wait())
        await asyncio.wait({serving, started}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if service.started.is_set() and not serving.done():
            typer.echo(
                f"ready: gateway {config.listen_host}:{service.gateway_port}, SuperLink "
                f"127.0.0.1:{config.superlink_port} (loopback), health "
                f"http://127.0.0.1:{service.health_port}/ztfl/health, "
                f"{len(service.registrations)} node key(s) registered",
                err=True,
            )
        await serving

    try:
        asyncio.run(serve())
    except LaunchError as error:
        raise _fail(error) from None
    if service.failure is not None:
        typer.echo(f"error: {service.failure}", err=True)
        raise typer.Exit(code=1)


@server_app.command(name="app-bundle-hash")
def app_bundle_hash_command(
    app_dir: Annotated[
        Path | None,
        typer.Argument(help="The Flower app folder (default: the ztfl project folder)."),
    ] = None,
) -> None:
    """Print the SHA-256 of the app bundle `flwr run` would submit: clients allow-list it
    (ztfl client install-certificate --allow-app-bundle)."""
    from ztfl.server.app_bundle import app_bundle_hash, default_app_dir

    folder = app_dir or default_app_dir()
    if folder is None:
        typer.echo("error: give the Flower app folder", err=True)
        raise typer.Exit(code=2)
    try:
        typer.echo(app_bundle_hash(folder))
    except LaunchError as error:
        raise _fail(error) from None
