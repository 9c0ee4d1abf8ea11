"""The ``ztfl`` command line."""

from __future__ import annotations

import os

import typer

from .audit import audit_app
from .client import client_app
from .coordinator import coordinator_app
from .evidence import evidence
from .model import app as model_app
from .nodes import nodes_app
from .pki import pki_app
from .report import report
from .run import run
from .server import server_app
from .simulate import simulate

# Offline by default: no Flower telemetry, no Ray usage statistics.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

app = typer.Typer(
    name="ztfl",
    help="ztfl — zero-trust federated learning on Flower: robust aggregation, checked updates, "
    "signed models and an audited trail.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.command()(simulate)
app.command()(report)
app.command()(evidence)
app.add_typer(model_app, name="model")
app.add_typer(audit_app)
app.add_typer(coordinator_app)
app.add_typer(pki_app, name="pki")
app.add_typer(client_app, name="client")
app.add_typer(nodes_app, name="nodes")
app.add_typer(server_app, name="server")
app.command("run")(run)


@app.command()
def version() -> None:
    """Print the installed ztfl and Flower versions."""
    from importlib.metadata import version as installed

    typer.echo(f"ztfl {installed('ztfl')} (flwr {installed('flwr')})")


if __name__ == "__main__":
    app()
