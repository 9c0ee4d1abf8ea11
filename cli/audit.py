"""``ztfl audit``: verify the hash-chained audit log against its anchors, export it for a SIEM."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
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
from ztfl.trust.keys import VerifyingKey, read_verifying_key
from ztfl.trust.model_store import ModelStore, ModelStoreError
from ztfl.trust.refusal import ModelRefusal
from ztfl.trust.signing import verify_signed_manifest

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


@dataclass(frozen=True)
class RejectedManifest:
    """A model-store manifest whose audit head is not used as an anchor, and why."""

    digest: str
    problem: str


@dataclass(frozen=True)
class StoreAnchors:
    """The audit heads a model store's manifests anchor, and the manifests that failed."""

    heads: list[AuditHead]
    rejected: list[RejectedManifest]
    authenticated: bool
    """Whether every head came from a manifest signed by a pinned key."""


def read_store_anchors(store: Path, keys: Sequence[VerifyingKey] = ()) -> StoreAnchors:
    """The audit heads recorded in the signed manifests of a model store.

    With ``keys``, a head counts only if a pinned key signed its manifest (the
    signature over the manifest file; tensors are not re-hashed). A manifest
    that does not hash to its folder name, whose signature does not cover it,
    or that no pinned key signed is rejected, naming its digest: whoever
    rewrote the log could have edited it. Without keys the signatures are not
    checked and the heads are taken on trust. ValueError when the store
    cannot be read at all.
    """
    if not store.is_dir():
        raise ValueError(f"{store}: not a model store folder")
    models = ModelStore(store)
    heads: list[AuditHead] = []
    rejected: list[RejectedManifest] = []
    try:
        digests = models.digests()
        for digest in digests:
            try:
                signed = models.signed_manifest(digest)
                if keys:
                    verify_signed_manifest(signed, keys)
            except ModelStoreError as error:
                rejected.append(RejectedManifest(digest, str(error)))
                continue
            except ModelRefusal as refusal:
                rejected.append(
                    RejectedManifest(digest, f"{refusal.reason.value}: {refusal.message}")
                )
                continue
            try:
                heads.append(AuditHead.parse(signed.manifest.audit_head))
            except ValueError as error:
                raise ValueError(f"{models.path(digest)}: audit head: {error}") from None
    except OSError as error:
        raise ValueError(f"{store}: cannot read the model store: {error}") from None
    return StoreAnchors(heads, rejected, authenticated=bool(keys))


def _summary(result: AuditVerification, anchors: int, rejected: int) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("log", str(result.path))
    table.add_row("records verified", str(result.records))
    table.add_row("anchors checked", f"{result.anchors_checked} of {anchors}")
    if result.ok and rejected:
        table.add_row(
            "result",
            f"[red]TAMPERED[/red]: the chain verifies, but {rejected} manifest(s) in the store "
            "are not authentic",
        )
    elif result.ok:
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
            help="Model store folder (a run's state-dir/models): the audit head of every "
            "manifest signed by a --public-key becomes an anchor.",
        ),
    ] = None,
    public_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--public-key",
            help="The coordinator's model-signing public key (PEM) that the store's manifests "
            "must verify against: the copy clients pin, not one from the same host as the "
            "log. Repeatable (rotated keys).",
        ),
    ] = None,
) -> None:
    """Check the hash chain and the anchors; report the first bad record.

    Exit code 0: intact; 1: tampered (edited, deleted, reordered, inserted or truncated
    below an anchor, or a store manifest that no pinned key signed); 2: the log, the
    anchors file, a key or the store cannot be read.
    """
    keys = public_key or []
    try:
        if keys and store is None:
            raise ValueError("--public-key checks the manifests of --store; pass --store too")
        pinned = [read_verifying_key(path) for path in keys]
        heads = [] if anchors is None else read_anchors_file(anchors)
        from_store = None if store is None else read_store_anchors(store, pinned)
        if from_store is not None:
            heads += from_store.heads
        result = verify_audit_log(log, heads)
    except (AuditLogError, ValueError) as error:
        errors.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=EXIT_UNREADABLE) from None
    rejected = [] if from_store is None else from_store.rejected
    console.print(_summary(result, len(heads), len(rejected)), highlight=False)
    # On a line of its own and never wrapped: it is copied whole into anchor files.
    label = "head" if result.ok else "last good head"
    console.print(f"[bold]{label}[/bold] {result.head}", highlight=False, soft_wrap=True)
    for item in rejected:
        console.print(
            f"[red]rejected manifest[/red] {item.digest}: {item.problem}",
            highlight=False,
            soft_wrap=True,
        )
    if from_store is not None and not from_store.authenticated:
        console.print(
            "[yellow]warning:[/yellow] the store's anchors are unauthenticated: without "
            "--public-key their signatures are not checked, so manifests edited along with "
            "the log would pass",
            highlight=False,
        )
    if not heads:
        console.print(
            "[yellow]note:[/yellow] without anchors, truncation and a consistent rewrite of "
            "the chain cannot be detected (pass --anchors)",
            highlight=False,
        )
    tampered = not result.ok or bool(rejected)
    raise typer.Exit(code=EXIT_TAMPERED if tampered else EXIT_OK)


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
