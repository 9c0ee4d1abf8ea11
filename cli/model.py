"""``ztfl model``: the model-signing key (generate, rotate), revocation lists, verification."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="model",
    help="Signed global models: generate, rotate the signing key, revoke models, verify a folder.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _passphrase(variable: str | None) -> bytes | None:
    if variable is None:
        return None
    value = os.environ.get(variable)
    if not value:
        typer.echo(f"error: environment variable {variable} is not set or empty", err=True)
        raise typer.Exit(code=2)
    return value.encode("utf-8")


@app.command()
def keygen(
    out: Annotated[
        Path, typer.Argument(help="Private key file to create (PKCS#8 PEM, mode 0600).")
    ],
    passphrase_env: Annotated[
        str | None,
        typer.Option(
            help="Encrypt the private key with the passphrase in this environment variable."
        ),
    ] = None,
) -> None:
    """Generate an ECDSA P-256 model-signing key: OUT (private) and OUT.pub (public, to pin)."""
    from ztfl.trust.keys import (
        SigningKeyError,
        generate_signing_key,
        write_signing_key,
        write_verifying_key,
    )

    public_path = out.with_name(out.name + ".pub")
    passphrase = _passphrase(passphrase_env)
    for path in (out, public_path):
        if path.exists():
            typer.echo(f"error: {path} already exists; refusing to overwrite a key", err=True)
            raise typer.Exit(code=2)
    key = generate_signing_key()
    try:
        write_signing_key(key, out, passphrase)
        write_verifying_key(key.public_key(), public_path)
    except (SigningKeyError, OSError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error
    typer.echo(f"private key: {out} (mode 0600)")
    typer.echo(f"public key:  {public_path} (pin this on clients)")
    typer.echo(f"key id:      {key.key_id}")


def _refuse_existing(path: Path, what: str) -> None:
    if path.exists():
        typer.echo(f"error: {path} already exists; refusing to overwrite {what}", err=True)
        raise typer.Exit(code=2)


@app.command()
def rotate(
    old_key: Annotated[
        Path, typer.Argument(help="The current private signing key (the one clients pin).")
    ],
    new_key: Annotated[Path, typer.Argument(help="The successor's public key (KEY.pub).")],
    out: Annotated[Path, typer.Option("--out", help="Rotation statement file to create.")],
    passphrase_env: Annotated[
        str | None,
        typer.Option(help="Decrypt OLD_KEY with the passphrase in this environment variable."),
    ] = None,
) -> None:
    """Sign, with OLD_KEY, the statement that hands trust over to NEW_KEY (for key-rotations)."""
    from ztfl.trust.keys import SigningKeyError, read_signing_key, read_verifying_key
    from ztfl.trust.rotation import rotate_key

    _refuse_existing(out, "a rotation statement")
    passphrase = _passphrase(passphrase_env)
    try:
        old = read_signing_key(old_key, passphrase)
        rotation = rotate_key(old, read_verifying_key(new_key))
        with out.open("xb") as handle:
            handle.write(rotation.to_bytes())
    except (SigningKeyError, OSError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error
    typer.echo(f"rotation:  {out}")
    typer.echo(f"from key:  {old.key_id}")
    typer.echo(f"to key:    {rotation.new_key.key_id}")
    typer.echo("add it to key-rotations and set signing-key to the new private key")


@app.command()
def revoke(
    digests: Annotated[
        list[str], typer.Argument(help="Digests of the models to revoke (64 hex characters).")
    ],
    key: Annotated[Path, typer.Option("--key", help="The private model-signing key.")],
    out: Annotated[Path, typer.Option("--out", help="Signed revocation list file to create.")],
    from_list: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="The current list: keep its run and digests, number the new one one past it.",
        ),
    ] = None,
    run_id: Annotated[
        str | None, typer.Option(help="The ztfl run id (state-dir/run-id); not with --from.")
    ] = None,
    sequence: Annotated[
        int | None, typer.Option(help="The list's number, above any list sent; not with --from.")
    ] = None,
    passphrase_env: Annotated[
        str | None,
        typer.Option(help="Decrypt KEY with the passphrase in this environment variable."),
    ] = None,
) -> None:
    """Sign a cumulative revocation list naming DIGESTS (for revocation-list)."""
    from ztfl.trust.keys import SigningKeyError, read_signing_key
    from ztfl.trust.refusal import ModelRefusal
    from ztfl.trust.revocation import RevocationList, sign_revocation_list

    _refuse_existing(out, "a revocation list")
    passphrase = _passphrase(passphrase_env)
    try:
        signing_key = read_signing_key(key, passphrase)
        revoked: set[str] = set(digests)
        if from_list is not None:
            if run_id is not None or sequence is not None:
                raise ValueError("--from sets the run and the sequence; drop --run-id/--sequence")
            current = RevocationList.from_bytes(from_list.read_bytes())
            current.verify([signing_key.public_key()])
            run_id, sequence = current.run_id, current.sequence + 1
            revoked |= current.digests
        elif run_id is None or sequence is None:
            raise ValueError("give --run-id and --sequence, or --from the current list")
        revocation = sign_revocation_list(run_id, sequence, revoked, signing_key)
        with out.open("xb") as handle:
            handle.write(revocation.to_bytes())
    except (SigningKeyError, ModelRefusal, OSError, ValueError, TypeError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error
    typer.echo(f"revocation list: {out}")
    typer.echo(
        f"run {revocation.run_id}, list #{revocation.sequence}, "
        f"{len(revocation.digests)} model(s) revoked; configure it as revocation-list"
    )


@app.command()
def verify(
    path: Annotated[Path, typer.Argument(help="Model folder (e.g. <store>/<digest>).")],
    public_key: Annotated[
        list[Path], typer.Option("--public-key", help="Trusted public key PEM (repeatable).")
    ],
    signature: Annotated[
        Path | None, typer.Option(help="Signature file. Default: PATH/model.sig.")
    ] = None,
    run_id: Annotated[str | None, typer.Option(help="Refuse a model of another run.")] = None,
    require_current: Annotated[
        bool, typer.Option("--require-current", help="Refuse an expired model.")
    ] = False,
) -> None:
    """Verify a signed model folder, print its manifest and lineage; exit 1 with the reason."""
    from datetime import UTC, datetime

    from ztfl.trust.keys import SigningKeyError, read_verifying_key
    from ztfl.trust.model_directory import verify_model_directory
    from ztfl.trust.model_store import ModelStore, ModelStoreError
    from ztfl.trust.refusal import ModelRefusal, ModelRefusalReason
    from ztfl.trust.signing import verify_signed_manifest

    try:
        keys = [read_verifying_key(item) for item in public_key]
    except SigningKeyError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error
    now = datetime.now(UTC)
    try:
        verified = verify_model_directory(path, keys, signature)
        manifest = verified.manifest
        if manifest is None:
            typer.echo(f"OK: {len(verified.resources)} file(s) signed by key {verified.key.key_id}")
            typer.echo("(no ztfl manifest.json in this folder)")
            return
        if run_id is not None and manifest.run_id != run_id:
            raise ModelRefusal(
                ModelRefusalReason.WRONG_RUN,
                f"model is for run {manifest.run_id!r}, not {run_id!r}",
            )
        expired = now >= manifest.expires_at
        if expired and require_current:
            raise ModelRefusal(ModelRefusalReason.EXPIRED, f"expired at {manifest.expires_at}")
    except ModelRefusal as refusal:
        typer.echo(f"REFUSED {refusal.reason.name}: {refusal.message}", err=True)
        raise typer.Exit(code=1) from refusal
    except OSError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error

    typer.echo(f"OK: model {manifest.digest}")
    typer.echo(f"  signed by key   {verified.key.key_id}")
    typer.echo(f"  run             {manifest.run_id}, round {manifest.round}")
    typer.echo(f"  parent          {manifest.parent_digest or '(none: first model of the run)'}")
    typer.echo(f"  tensors         {len(manifest.tensors)} ({manifest.nbytes:,} bytes)")
    typer.echo(f"  pipeline        {manifest.pipeline}")
    typer.echo(f"  participants    {len(manifest.participants)}; refused {len(manifest.refused)}")
    for item in manifest.refused[:10]:
        typer.echo(f"    refused {item.node_id}: {item.reason}")
    if manifest.privacy is not None:
        typer.echo(f"  privacy         {dict(manifest.privacy)}")
    typer.echo(f"  audit head      {manifest.audit_head or '(none)'}")
    typer.echo(f"  code version    {manifest.code_version}")
    typer.echo(f"  created         {manifest.created_at.isoformat()}")
    status = "EXPIRED" if expired else "valid"
    typer.echo(f"  expires         {manifest.expires_at.isoformat()} ({status})")

    # Lineage: walk parents among the sibling folders (the same store), checking signatures.
    typer.echo("lineage (newest first):")
    typer.echo(f"  round {manifest.round:>6}  {manifest.digest}  (this model)")
    store = ModelStore(path.resolve().parent)
    parent = manifest.parent_digest
    seen = 0
    while parent is not None and seen < 10_000:
        seen += 1
        try:
            if parent not in store:
                typer.echo(f"  {'':>12}  {parent}  (not in this store)")
                break
            signed = store.signed_manifest(parent)
            verify_signed_manifest(signed, keys)
        except (ModelRefusal, ModelStoreError) as error:
            typer.echo(f"REFUSED ancestor {parent}: {error}", err=True)
            raise typer.Exit(code=1) from error
        typer.echo(f"  round {signed.manifest.round:>6}  {parent}  signature ok")
        parent = signed.manifest.parent_digest
