"""``ztfl report``: the self-contained HTML report of a run folder, its verification included."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .run_folder_options import (
    EXIT_NOT_VERIFIED,
    EXIT_UNREADABLE,
    PublicKeyOption,
    RunDirArgument,
    TensorsOption,
)

console = Console()
errors = Console(stderr=True)


def report(
    run_dir: RunDirArgument,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="HTML file to write. Default: RUN_DIR/report.html.", dir_okay=False
        ),
    ] = None,
    public_key: PublicKeyOption = None,
    tensors: TensorsOption = True,
) -> None:
    """Write an HTML page: accuracy, loss and ε per round, reputation, quarantine events,
    refused updates by reason, and whether every signed model and the audit chain verify.

    The page needs no network and runs no script. Exit code 0: written and every run
    verified; 1: written, but a signature, the audit chain or a state file did not
    verify (the page says FAILED); 2: not a run folder, or a key cannot be read.
    """
    from ztfl.server.evidence import RunFolderError
    from ztfl.trust.keys import SigningKeyError, read_verifying_key

    try:
        from ztfl.simulations.report import write_report
    except ImportError as error:  # matplotlib lives in the simulation extra
        errors.print(f"[red]error:[/red] the report needs ztfl[simulation] ({error})")
        raise typer.Exit(code=EXIT_UNREADABLE) from None
    try:
        keys = [read_verifying_key(path) for path in public_key or []]
        result = write_report(run_dir, out, public_keys=keys, check_tensors=tensors)
    except (RunFolderError, SigningKeyError, OSError) as error:
        errors.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=EXIT_UNREADABLE) from None
    if result.verified:
        console.print(
            f"report: {result.path} (verification [green]PASSED[/green])",
            highlight=False,
            soft_wrap=True,
        )
        return
    console.print(
        f"report: {result.path} (verification [red]FAILED[/red]: see its Verification section)",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(code=EXIT_NOT_VERIFIED)
