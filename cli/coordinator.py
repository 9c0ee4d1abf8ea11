"""``ztfl coordinator init``: prepare a coordinator's state folder and the clients' trust anchor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ztfl.server.ledger import PUBLIC_KEY_FILE, TRUST_ANCHOR_FILE, prepare_state_dir
from ztfl.trust.keys import SigningKeyError, read_signing_key

console = Console()

coordinator_app = typer.Typer(
    name="coordinator",
    help="Prepare the coordinator's state folder.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@coordinator_app.command()
def init(
    state_dir: Annotated[
        Path, typer.Argument(help="The run's state folder (run config state-dir).")
    ],
    signing_key: Annotated[
        Path, typer.Option("--signing-key", help="The model-signing key (ztfl model keygen).")
    ],
) -> None:
    """Give the run its ztfl run id and write the trust anchor for the clients.

    Copy STATE_DIR/trust-anchor.toml and STATE_DIR/coordinator.pub.pem to every
    client node and start its SuperNode with --node-config "trust-anchor='…'".
    """
    try:
        key = read_signing_key(signing_key)
    except SigningKeyError as error:
        console.print(f"[red]error:[/red] {error}", soft_wrap=True)
        raise typer.Exit(code=2) from None
    run_id = prepare_state_dir(state_dir, key.public_key())
    console.print(f"run id {run_id}", highlight=False)
    console.print(
        f"clients pin {state_dir / TRUST_ANCHOR_FILE} (with {state_dir / PUBLIC_KEY_FILE})",
        highlight=False,
    )
