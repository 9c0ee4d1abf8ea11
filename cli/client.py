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


@client_app.command()
def up(
    client_dir: Annotated[Path, typer.Option("--dir", help="The enrolment folder.")],
    gateway: Annotated[str, typer.Option("--gateway", help="The coordinator's gateway host:port.")],
    node_config: Annotated[
        str,
        typer.Option(
            "--node-config",
            help='Extra SuperNode node-config pairs, e.g. "partition-id=0 num-partitions=3".',
        ),
    ] = "",
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", help="The dataset hook, module:function (node config dataset)."),
    ] = None,
    gateway_server_name: Annotated[
        str | None,
        typer.Option("--gateway-server-name", help="The name on the gateway's certificate."),
    ] = None,
    sidecar_port: Annotated[
        int, typer.Option("--sidecar-port", help="The sidecar's loopback port (0: any free).")
    ] = 0,
    runtime_port: Annotated[
        int, typer.Option("--runtime-port", help="The SuperNode's loopback Runtime API port.")
    ] = 9094,
    max_wait_time_s: Annotated[
        float | None,
        typer.Option("--max-wait-time", help="Seconds the SuperNode keeps retrying the gateway."),
    ] = None,
) -> None:
    """Start the sidecar (loopback TLS for the SuperNode, mutual TLS to the gateway with this
    client's certificate, app-bundle allow-list) and a SuperNode behind it that pins the
    enrolled trust anchor; run until SIGTERM or SIGINT. Trains on CUDA when present."""
    import asyncio
    import logging

    from ztfl.client.launch_error import LaunchError
    from ztfl.client.launcher import ClientLaunchConfig, ClientLauncher
    from ztfl.client.supervised_process import become_subreaper

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    host, _, port = gateway.strip().rpartition(":")
    if not host or not port.isdigit():
        fail(f"--gateway must be host:port, got {gateway!r}")
    try:
        config = ClientLaunchConfig(
            client_dir=client_dir,
            gateway_host=host.strip("[]"),
            gateway_port=int(port),
            node_config=node_config,
            dataset=dataset,
            gateway_server_name=gateway_server_name,
            sidecar_port=sidecar_port,
            runtime_port=runtime_port,
            max_wait_time_s=max_wait_time_s,
        )
    except LaunchError as error:
        fail(error.message)
    become_subreaper()
    launcher = ClientLauncher(config)

    async def serve() -> None:
        serving = asyncio.create_task(launcher.serve_until_signalled())
        started = asyncio.create_task(launcher.started.wait())
        await asyncio.wait({serving, started}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if launcher.started.is_set() and not serving.done():
            typer.echo(
                f"ready: sidecar 127.0.0.1:{launcher.sidecar_port} -> gateway {gateway}; "
                f"SuperNode log {launcher.supernode_log}",
                err=True,
            )
        await serving

    try:
        asyncio.run(serve())
    except LaunchError as error:
        fail(error.message)
    if launcher.failure is not None:
        typer.echo(f"error: {launcher.failure}", err=True)
        raise typer.Exit(code=1)
