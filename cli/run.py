"""``ztfl run``: start a federated run on the coordinator's SuperLink (``flwr run`` over the
loopback-only Control API of the service ``ztfl server up`` started)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from ztfl.client.launch_error import LaunchError

FINAL_STATUS_TIMEOUT_S = 30.0
"""How long the run may take to be marked finished after its log stream ended."""


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)


def run(
    source: Annotated[
        str,
        typer.Argument(
            help="A run-config TOML file (flat run-config keys), or a scenario file or name."
        ),
    ],
    server: Annotated[
        Path, typer.Option("--server", help="The coordinator's service folder (ztfl server up).")
    ],
    defence: Annotated[
        str | None,
        typer.Option("--defence", help="The scenario defence to run (default: its last)."),
    ] = None,
    setting: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a run-config key: KEY=VALUE; repeatable."),
    ] = None,
    app: Annotated[
        Path | None,
        typer.Option("--app", help="The Flower app folder (default: the ztfl project)."),
    ] = None,
    stream: Annotated[
        bool, typer.Option("--stream/--no-stream", help="Follow the run's log until it ends.")
    ] = True,
) -> None:
    """Start a federated run on the coordinator's SuperLink.

    state-dir and signing-key come from the service unless given. Prints the app bundle's
    SHA-256 (clients must allow-list it) and the run id; with --stream (default) waits for
    the end: exit 0 when the run completed, 1 otherwise.
    """
    # Imported here: the coordinator's configuration pulls in torch and the aggregation
    # package, which no other ztfl command needs at start-up.
    from ztfl.server.app_bundle import app_bundle_hash, default_app_dir
    from ztfl.server.control_channel import RunConfigValue, output_lines
    from ztfl.server.run_submission import (
        RUN_STARTED,
        load_run_config,
        parse_setting,
        write_run_config,
    )
    from ztfl.server.service import ServiceLayout, read_service_status

    try:
        status = read_service_status(server)
        overrides: dict[str, RunConfigValue] = dict(parse_setting(item) for item in setting or [])
        config = load_run_config(
            source,
            defence=defence,
            overrides=overrides,
            state_dir=status.state_dir,
            signing_key=status.signing_key,
        )
        app_dir = app or default_app_dir()
        if app_dir is None:
            raise _fail("give the Flower app folder with --app")
        app_dir = app_dir.absolute()
        bundle = app_bundle_hash(app_dir)
        config_file = write_run_config(ServiceLayout(server.absolute()).runs, config)
    except LaunchError as error:
        raise _fail(error.message) from None
    typer.echo(f"app bundle sha256 {bundle}", err=True)
    typer.echo(f"run config {config_file}", err=True)
    channel = status.control_channel()
    process = channel.start_run(app_dir, config_file, stream=stream)
    run_id: str | None = None
    for line in output_lines(process):
        sys.stdout.write(line)
        sys.stdout.flush()
        if run_id is None and (started := RUN_STARTED.search(line)):
            run_id = started.group(1)
    code = process.wait()
    if run_id is None:
        typer.echo(f"error: the SuperLink did not start the run (flwr exited {code})", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"run id {run_id}", err=True)
    if not stream:
        return
    outcome = "unknown"
    deadline = time.monotonic() + FINAL_STATUS_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            outcome = channel.run_status(run_id)
        except LaunchError as error:
            raise _fail(error.message) from None
        if outcome.startswith("finished"):
            break
        time.sleep(1.0)
    typer.echo(f"run {run_id}: {outcome}", err=True)
    if outcome != "finished:completed":
        raise typer.Exit(code=1)
