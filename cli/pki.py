"""``ztfl pki``: the federation CA — init, sign, renew, revoke, crl, list, show.

Run these on the CA operator's offline machine; only ca.pem, crl.pem and the
issued certificates travel. Private keys are never printed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ztfl.trust.audit import AuditLogError
from ztfl.trust.pki import (
    AuthorityLayout,
    CertificateRefused,
    Identity,
    PkiError,
    RevocationReason,
    Role,
    init_authority,
    issue_certificate,
    open_authority,
    reissue_crl,
    renew_certificate,
    revoke_certificate,
)
from ztfl.trust.pki.authority import CA_VALIDITY_DAYS, CRL_VALIDITY_DAYS, Authority
from ztfl.trust.pki.issuance import DEFAULT_VALIDITY_DAYS, load_request
from ztfl.trust.pki.keyfiles import read_passphrase_file, write_public_file
from ztfl.trust.pki.registry import IssuedCertificate, read_registry
from ztfl.trust.pki.verification import certificate_identity, public_key_der

pki_app = typer.Typer(
    name="pki",
    help="The federation CA: create it, sign enrolment requests, renew, revoke, list, show.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

CaDir = Annotated[Path, typer.Option("--dir", help="The CA folder (ztfl pki init --dir).")]
PassphraseFile = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        help="File (mode 0600) whose first line is the CA key's passphrase.",
    ),
]
AuditLogPath = Annotated[
    Path | None,
    typer.Option("--audit-log", help="Append certificate events to this ztfl audit log."),
]
Days = Annotated[
    int | None,
    typer.Option(
        "--days",
        help="Lifetime in days (default: client "
        f"{DEFAULT_VALIDITY_DAYS[Role.CLIENT]}, operator {DEFAULT_VALIDITY_DAYS[Role.OPERATOR]}, "
        f"server {DEFAULT_VALIDITY_DAYS[Role.SERVER]}).",
    ),
]


def fail(message: str) -> NoReturn:
    """Print ``error: message`` to stderr and exit with status 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _passphrase(path: Path | None) -> bytes | None:
    return read_passphrase_file(path) if path is not None else None


@contextmanager
def refusals_as_errors() -> Iterator[None]:
    """Turn a refused operation into a one-line error and exit status 2."""
    try:
        yield
    except PkiError as error:
        fail(f"{error.message} [{error.reason.value}]")
    except CertificateRefused as refusal:
        fail(f"{refusal.message} [{refusal.reason.value}]")
    except AuditLogError as error:
        fail(str(error))
    except (ValueError, OSError) as error:
        fail(str(error))


@contextmanager
def _authority(
    ca_dir: Path, passphrase_file: Path | None, audit_log: Path | None
) -> Iterator[Authority]:
    with open_authority(
        ca_dir, passphrase=_passphrase(passphrase_file), audit_log=audit_log
    ) as authority:
        yield authority


def _write_certificate(path: Path, certificate: x509.Certificate) -> None:
    if path.exists():
        fail(f"{path} already exists; refusing to overwrite it")
    write_public_file(path, certificate.public_bytes(serialization.Encoding.PEM))


def _describe(certificate: x509.Certificate) -> str:
    identity = certificate_identity(certificate)
    return (
        f"{identity.spiffe_id} serial {certificate.serial_number:x} "
        f"valid until {certificate.not_valid_after_utc:%Y-%m-%d %H:%M}Z"
    )


@pki_app.command()
def init(
    federation: Annotated[
        str, typer.Option("--federation", help="Federation name: the SPIFFE trust domain.")
    ],
    ca_dir: CaDir,
    passphrase_file: PassphraseFile = None,
    days: Annotated[int, typer.Option("--days", help="CA certificate lifetime.")] = (
        CA_VALIDITY_DAYS
    ),
    crl_days: Annotated[
        int, typer.Option("--crl-days", help="How long each CRL stays fresh.")
    ] = CRL_VALIDITY_DAYS,
    audit_log: AuditLogPath = None,
) -> None:
    """Create the federation CA: ca.pem, ca-key.pem (0600), registry.json and an empty CRL.

    Keep the CA folder offline; give ca.pem and crl.pem to the gateway and clients.
    """
    with refusals_as_errors():
        layout = init_authority(
            ca_dir,
            federation,
            passphrase=_passphrase(passphrase_file),
            validity_days=days,
            crl_validity_days=crl_days,
            audit_log=audit_log,
        )
    certificate = x509.load_pem_x509_certificate(layout.ca_certificate.read_bytes())
    fingerprint = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    typer.echo(f"federation CA spiffe://{federation} in {layout.root}")
    typer.echo(f"certificate: {layout.ca_certificate} (sha256 {fingerprint})")
    typer.echo(f"private key: {layout.ca_key} (mode 0600; keep it offline)")
    typer.echo(f"CRL:         {layout.crl} (reissue at least every {crl_days} days: ztfl pki crl)")


@pki_app.command()
def sign(
    request: Annotated[Path, typer.Argument(help="The member's CSR (request.csr.pem).")],
    ca_dir: CaDir,
    role: Annotated[Role, typer.Option("--role", help="The role you approve.")],
    name: Annotated[str, typer.Option("--name", help="The name you approve.")],
    out: Annotated[Path, typer.Option("--out", help="Certificate file to write.")],
    days: Days = None,
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="DNS name or IP address (server role only; repeatable)."),
    ] = None,
    passphrase_file: PassphraseFile = None,
    audit_log: AuditLogPath = None,
) -> None:
    """Issue a certificate for spiffe://<federation>/<role>/<name> from a CSR.

    The CSR's signature is checked and it must request exactly the identity you
    approve with --role and --name; otherwise nothing is issued.
    """
    if out.exists():
        fail(f"{out} already exists; refusing to overwrite it")
    with refusals_as_errors(), _authority(ca_dir, passphrase_file, audit_log) as authority:
        approved = Identity(authority.federation, role, name)
        _, certificate = issue_certificate(
            authority, load_request(request), approved, days=days, hosts=host or ()
        )
        _write_certificate(out, certificate)
        typer.echo(f"issued {_describe(certificate)}")
    typer.echo(f"certificate: {out}")


@pki_app.command()
def renew(
    certificate_path: Annotated[Path, typer.Argument(help="The certificate to renew.")],
    ca_dir: CaDir,
    out: Annotated[Path, typer.Option("--out", help="New certificate file to write.")],
    days: Days = None,
    passphrase_file: PassphraseFile = None,
    audit_log: AuditLogPath = None,
) -> None:
    """Issue a fresh certificate for the same key and identity (no new CSR needed)."""
    if out.exists():
        fail(f"{out} already exists; refusing to overwrite it")
    with refusals_as_errors(), _authority(ca_dir, passphrase_file, audit_log) as authority:
        try:
            old = x509.load_pem_x509_certificate(certificate_path.read_bytes())
        except ValueError:
            fail(f"{certificate_path} is not a PEM certificate")
        _, certificate = renew_certificate(authority, old, days=days)
        _write_certificate(out, certificate)
        typer.echo(f"renewed {_describe(certificate)} (was serial {old.serial_number:x})")
    typer.echo(f"certificate: {out}")


@pki_app.command()
def revoke(
    target: Annotated[
        str, typer.Argument(help="Serial (hex), SPIFFE ID or name: every certificate it names.")
    ],
    ca_dir: CaDir,
    reason: Annotated[
        RevocationReason, typer.Option("--reason", help="Why (RFC 5280 reason).")
    ] = RevocationReason.UNSPECIFIED,
    passphrase_file: PassphraseFile = None,
    audit_log: AuditLogPath = None,
) -> None:
    """Revoke certificates and reissue the CRL; copy crl.pem to the gateway afterwards."""
    with refusals_as_errors(), _authority(ca_dir, passphrase_file, audit_log) as authority:
        updated, revoked = revoke_certificate(authority, target, reason)
        for entry in revoked:
            typer.echo(f"revoked {entry.identity.spiffe_id} serial {entry.serial_hex}")
        typer.echo(f"CRL {updated.registry.crl_number}: {updated.layout.crl}")


@pki_app.command()
def crl(
    ca_dir: CaDir,
    passphrase_file: PassphraseFile = None,
) -> None:
    """Reissue the CRL (same revocations, new next_update): run it before the current one
    goes stale, or every verifier refuses every certificate."""
    with refusals_as_errors(), _authority(ca_dir, passphrase_file, None) as authority:
        updated = reissue_crl(authority)
        typer.echo(
            f"CRL {updated.registry.crl_number}: {updated.layout.crl} "
            f"(fresh for {updated.registry.crl_validity_days} days)"
        )


def _state(entry: IssuedCertificate, now: datetime) -> str:
    if entry.revoked:
        reason = entry.revocation_reason.value if entry.revocation_reason else "unspecified"
        return f"revoked ({reason})"
    return "expired" if entry.not_after < now else "valid"


@pki_app.command(name="list")
def list_certificates(ca_dir: CaDir) -> None:
    """Every certificate the CA issued: serial, identity, expiry, state."""
    with refusals_as_errors():
        registry = read_registry(AuthorityLayout(ca_dir).registry)
    now = datetime.now(UTC)
    typer.echo(f"federation {registry.federation}, CRL number {registry.crl_number}")
    for entry in sorted(registry.certificates, key=lambda item: item.not_before):
        typer.echo(
            f"{entry.serial_hex}  {entry.identity.spiffe_id}  "
            f"until {entry.not_after:%Y-%m-%d %H:%M}Z  {_state(entry, now)}"
        )
    if not registry.certificates:
        typer.echo("no certificates issued")


@pki_app.command()
def show(
    target: Annotated[
        str, typer.Argument(help="A certificate file, or a serial, SPIFFE ID or name.")
    ],
    ca_dir: Annotated[
        Path | None, typer.Option("--dir", help="The CA folder, to look TARGET up.")
    ] = None,
) -> None:
    """Print certificates: identity, serial, validity, key fingerprint, revocation state."""
    with refusals_as_errors():
        path = Path(target)
        if path.is_file():
            certificates = [x509.load_pem_x509_certificate(path.read_bytes())]
            entries: list[IssuedCertificate | None] = [None]
            if ca_dir is not None:
                registry = read_registry(AuthorityLayout(ca_dir).registry)
                entries = [registry.get(certificates[0].serial_number)]
        else:
            if ca_dir is None:
                fail(f"{target} is not a file; give --dir to look it up in a CA's registry")
            layout = AuthorityLayout(ca_dir)
            found = read_registry(layout.registry).find(target)
            if not found:
                fail(f"no certificate in {layout.registry} matches {target}")
            certificates = [
                x509.load_pem_x509_certificate(layout.issued_certificate(e.serial).read_bytes())
                for e in found
            ]
            entries = list(found)
        now = datetime.now(UTC)
        for certificate, entry in zip(certificates, entries, strict=True):
            _print_certificate(certificate, entry, now)


def _print_certificate(
    certificate: x509.Certificate, entry: IssuedCertificate | None, now: datetime
) -> None:
    try:
        identity = certificate_identity(certificate).spiffe_id
    except CertificateRefused as refusal:
        identity = f"none ({refusal.reason.value})"
    typer.echo(f"identity:    {identity}")
    typer.echo(f"subject:     {certificate.subject.rfc4514_string()}")
    typer.echo(f"issuer:      {certificate.issuer.rfc4514_string()}")
    typer.echo(f"serial:      {certificate.serial_number:x}")
    typer.echo(f"not before:  {certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z")
    typer.echo(f"not after:   {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z")
    typer.echo(f"public key:  sha256 {hashlib.sha256(public_key_der(certificate)).hexdigest()}")
    if entry is not None:
        typer.echo(f"state:       {_state(entry, now)}")
    typer.echo("")
