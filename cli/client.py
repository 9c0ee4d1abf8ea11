"""``ztfl client``: a data holder's side of enrolment — ``enrol``, then ``install-certificate``.

``enrol`` makes the key (it never leaves this machine), the CSR for the CA
operator and the loopback TLS material; ``install-certificate`` checks what the
operator returned and installs it with the client's trust anchors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ztfl.trust.pki import ClientLayout, Role, create_enrolment_request, install_certificate
from ztfl.trust.pki.enrolment import read_enrolment

from .pki import fail, refusals_as_errors

client_app = typer.Typer(
    name="client",
    help="A data holder's node: enrol with the federation CA, install its certificate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@client_app.command()
def enrol(
    federation: Annotated[str, typer.Option("--federation", help="The federation's name.")],
    name: Annotated[str, typer.Option("--name", help="This member's name in the federation.")],
    client_dir: Annotated[
        Path, typer.Option("--dir", help="The enrolment folder to create (one per key).")
    ],
    role: Annotated[
        Role, typer.Option("--role", help="client (a data holder), operator, or server.")
    ] = Role.CLIENT,
) -> None:
    """Make this member's P-384 key (0600), its CSR and, for a client, the loopback TLS."""
    with refusals_as_errors():
        layout = create_enrolment_request(client_dir, federation, name, role)
    typer.echo(f"enrolment for spiffe://{federation}/{role.value}/{name} in {layout.root}")
    typer.echo(f"private key: {layout.key} and {layout.node_key} (mode 0600, stays here)")
    typer.echo(f"send the CSR {layout.request} to the CA operator (ztfl pki sign)")
    if role is Role.CLIENT:
        typer.echo(f"register {layout.node_public_key} with `flwr supernode register`")
        typer.echo(f"loopback TLS for the SuperNode: {layout.local.root}")


def _bundle_hashes(values: list[str] | None, files: list[Path] | None) -> list[str]:
    hashes = list(values or [])
    for path in files or []:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            fail(f"cannot read {path}: {error}")
        hashes.extend(text for line in lines if (text := line.split("#", 1)[0].strip()))
    return hashes


@client_app.command(name="install-certificate")
def install(
    certificate: Annotated[Path, typer.Argument(help="The certificate the CA operator issued.")],
    client_dir: Annotated[Path, typer.Option("--dir", help="The enrolment folder.")],
    ca: Annotated[Path, typer.Option("--ca", help="The federation CA certificate (ca.pem).")],
    trust_anchor: Annotated[
        Path | None,
        typer.Option(
            "--trust-anchor",
            help="The coordinator's trust-anchor.toml (ztfl coordinator init); required "
            "for a client.",
        ),
    ] = None,
    allow_app_bundle: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-app-bundle", help="SHA-256 (hex) of an approved app bundle; repeatable."
        ),
    ] = None,
    allow_app_bundles_file: Annotated[
        list[Path] | None,
        typer.Option("--allow-app-bundles-file", help="File with one approved SHA-256 per line."),
    ] = None,
) -> None:
    """Check CERTIFICATE (this folder's key, signed by --ca, the enrolled identity, valid
    now) and install it with the CA, the coordinator's trust anchor and the app-bundle
    allow-list."""
    layout = ClientLayout(client_dir)
    with refusals_as_errors():
        enrolled = read_enrolment(client_dir)
        if trust_anchor is not None:
            # The ClientApp's own reader: what installs here is what the client will load.
            from ztfl.client.trust_anchor import TrustAnchorError, read_trust_anchor

            try:
                read_trust_anchor(trust_anchor)
            except TrustAnchorError as error:
                fail(str(error))
        identity = install_certificate(
            client_dir,
            certificate,
            ca,
            trust_anchor=trust_anchor,
            app_bundles=_bundle_hashes(allow_app_bundle, allow_app_bundles_file),
        )
    typer.echo(f"installed {identity.spiffe_id} in {layout.root}")
    typer.echo(f"certificate: {layout.certificate}; CA: {layout.ca_certificate}")
    if enrolled.role is Role.CLIENT:
        typer.echo(f"trust anchor: {layout.trust_anchor}")
        typer.echo(f"app-bundle allow-list: {layout.app_bundle_allow_list}")
