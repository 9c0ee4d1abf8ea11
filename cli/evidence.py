"""``ztfl evidence``: export a run folder's compliance evidence bundle (folder or zip)."""

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


def evidence(
    run_dir: RunDirArgument,
    out: Annotated[
        Path,
        typer.Option("--out", help="The bundle to create: a new folder, or a file ending in .zip."),
    ],
    public_key: PublicKeyOption = None,
    tensors: TensorsOption = True,
) -> None:
    """Export signed manifests, the audit log and its verification, the privacy ledger,
    participants per round and the configuration, indexed by control with SHA-256s.

    A run that does not verify is still exported, marked FAILED in index.json and
    index.md. Exit code 0: exported and verified; 1: exported, verification FAILED;
    2: not a run folder, the bundle path exists, or a key cannot be read.
    """
    from ztfl.server.evidence import RunFolderError, export_evidence_bundle
    from ztfl.trust.keys import SigningKeyError, read_verifying_key

    try:
        keys = [read_verifying_key(path) for path in public_key or []]
        bundle = export_evidence_bundle(run_dir, out, public_keys=keys, check_tensors=tensors)
    except (RunFolderError, SigningKeyError, OSError) as error:
        errors.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=EXIT_UNREADABLE) from None
    verdict = "[green]PASSED[/green]" if bundle.verified else "[red]FAILED[/red]"
    console.print(
        f"evidence bundle: {bundle.path} ({bundle.artefacts} artefacts; verification {verdict})",
        highlight=False,
        soft_wrap=True,
    )
    if not bundle.verified:
        raise typer.Exit(code=EXIT_NOT_VERIFIED)
