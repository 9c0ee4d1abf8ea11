"""``ztfl audit``: verify the hash-chained audit log against its anchors, export it for a SIEM."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ztfl.trust.audit import (
    AuditHead,
    AuditLogError,
    AuditVerification,
    export_jsonl,
    parse_anchor_lines,
    verify_audit_log,
)
from ztfl.trust.model_store import ModelStore, ModelStoreError

EXIT_OK = 0
EXIT_TAMPERED = 1
EXIT_UNREADABLE = 2

console = Console()
errors = Console(stderr=True)

audit_app = typer.Typer(
    name="audit",
    help="Check and export the tamper-evident audit log.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def read_anchors_file(path: Path) -> list[AuditHead]:
    """Anchors from a text file, one ``<seq>:<hex>`` per line (``#`` comments allowed)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read the anchors file: {error}") from None
    try:
        return parse_anchor_lines(text.splitlines())
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def read_store_anchors(store: Path) -> list[AuditHead]:
    """The audit heads recorded in every signed manifest of a model store."""
    if not store.is_dir():
        raise ValueError(f"{store}: not a model store folder")
    try:
        return [AuditHead.parse(manifest.audit_head) for manifest in ModelStore(store).entries()]
    except ModelStoreError as error:
        raise ValueError(str(error)) from None


def _summary(result: AuditVerification, anchors: int) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("log", str(result.path))
    table.add_row("records verified", str(result.records))
    table.add_row("anchors checked", f"{result.anchors_checked} of {anchors}")
    if result.ok:
        matched = ", every anchor matches" if anchors else ""
        table.add_row("result", f"[green]OK[/green]: the chain verifies{matched}")
    else:
        assert result.failure is not None
        table.add_row("result", f"[red]TAMPERED[/red]: {result.failure.value}")
        table.add_row("first bad record", str(result.first_bad_seq))
        table.add_row("detail", result.detail)
    return table


@audit_app.command()
def verify(
    log: Annotated[Path, typer.Argument(help="The audit log (SQLite file).")],
    anchors: Annotated[
        Path | None,
        typer.Option(
            "--anchors",
            help="Text file of anchored heads, one '<seq>:<hex>' per line, e.g. copied from "
            "signed manifests or an off-host store.",
        ),
    ] = None,
    store: Annotated[
        Path | None,
        typer.Option(
            "--store",
            help="Model store folder (a run's state-dir/models): every signed manifest's "
            "audit head becomes an anchor.",
        ),
    ] = None,
) -> None:
    """Check the hash chain and the anchors; report the first bad record.

    Exit code 0: intact; 1: tampered (edited, deleted, reordered, inserted or truncated
    below an anchor); 2: the log or the anchors file cannot be read.
    """
    try:
        heads = [] if anchors is None else read_anchors_file(anchors)
        if store is not None:
            heads += read_store_anchors(store)
        result = verify_audit_log(log, heads)
    except (AuditLogError, ValueError) as error:
        errors.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=EXIT_UNREADABLE) from None
    console.print(_summary(result, len(heads)), highlight=False)
    # On a line of its own and never wrapped: it is copied whole into anchor files.
    label = "head" if result.ok else "last good head"
    console.print(f"[bold]{label}[/bold] {result.head}", highlight=False, soft_wrap=True)
    if not heads:
        console.print(
            "[yellow]note:[/yellow] without anchors, truncation and a consistent rewrite of "
            "the chain cannot be detected (pass --anchors)",
            highlight=False,
        )
    raise typer.Exit(code=EXIT_OK if result.ok else EXIT_TAMPERED)


@audit_app.command()
def export(
    log: Annotated[Path, typer.Argument(help="The audit log (SQLite file).")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write JSON lines to this file instead of standard output."),
    ] = None,
) -> None:
    """Write every record as one JSON object per line, hashes included, for a SIEM.

    Exit code 0: exported; 2: the log cannot be read (a partial output file is removed).
    """
    try:
        if out is None:
            count = export_jsonl(log, sys.stdout)
        else:
            try:
                with out.open("w", encoding="utf-8", newline="\n") as handle:
                    count = export_jsonl(log, handle)
            except BaseException:
                out.unlink(missing_ok=True)
                raise
    except (AuditLogError, OSError) as error:
        errors.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=EXIT_UNREADABLE) from None
    if out is not None:
        console.print(f"exported {count} record(s) to {out}", highlight=False)
