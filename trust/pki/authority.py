"""The federation CA: created once (``init_authority``), then opened briefly, under a lock,
to issue, renew and revoke, and to reissue the CRL.

The CA key is meant to stay offline: the CA folder lives on a machine (or a
removable disk) that is not the coordinator, and only ``ca.pem`` and ``crl.pem``
travel. The key file is 0600 and may be passphrase-encrypted. Certificates and
CRLs are signed ECDSA P-384 with SHA-384 (see ``keyfiles`` for why P-384).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ztfl.trust.audit import AuditEventKind, AuditLog

from .errors import PkiError, PkiErrorReason
from .identity import SPIFFE_SCHEME, validate_federation
from .keyfiles import generate_private_key, read_private_key, write_private_key, write_public_file
from .layout import AuthorityLayout
from .registry import Registry, RevocationReason, read_registry, write_registry
from .verification import CertificateRefused, FederationTrust, federation_of_authority

__all__ = [
    "CA_VALIDITY_DAYS",
    "CRL_VALIDITY_DAYS",
    "SIGNATURE_HASH",
    "Authority",
    "init_authority",
    "open_authority",
    "reissue_crl",
]

CA_VALIDITY_DAYS: Final = 5 * 365
"""The CA certificate's lifetime: long, because replacing it means re-enrolling everyone."""
CRL_VALIDITY_DAYS: Final = 7
"""How long a CRL stays fresh: verifiers refuse everything after ``next_update``, so the CA
operator reissues it (``ztfl pki crl``) at least this often."""
SIGNATURE_HASH: Final = hashes.SHA384()
CLOCK_SKEW: Final = timedelta(minutes=5)
"""``not_before`` and ``last_update`` are back-dated by this, so a verifier whose clock is a
little behind the CA's does not refuse a fresh certificate or CRL."""


def _now(now: datetime | None) -> datetime:
    moment = now or datetime.now(UTC)
    if moment.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Authority:
    """An opened CA: its files, certificate, private key and registry. Short-lived."""

    layout: AuthorityLayout
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    registry: Registry
    audit_log: Path | None = None

    @property
    def federation(self) -> str:
        """The federation (SPIFFE trust domain) this CA serves."""
        return self.registry.federation

    def __repr__(self) -> str:  # never the key
        return f"Authority(federation={self.federation!r}, root={self.layout.root})"

    def save_registry(self, registry: Registry) -> Authority:
        """Write ``registry`` and return the authority holding it."""
        write_registry(self.layout.registry, registry)
        return Authority(self.layout, self.certificate, self.private_key, registry, self.audit_log)

    def audit(
        self, kind: AuditEventKind, details: Mapping[str, object], reason: str | None = None
    ) -> None:
        """Append one event to the audit log, when the CA was opened with one.

        The run id is ``pki:<federation>``: CA events belong to no training run.
        """
        if self.audit_log is None:
            return
        with AuditLog.open(self.audit_log, create=not self.audit_log.exists()) as log:
            log.append(kind, run_id=f"pki:{self.federation}", reason=reason, details=details)


def _ca_certificate(
    federation: str, key: ec.EllipticCurvePrivateKey, moment: datetime, validity_days: int
) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
            x509.NameAttribute(NameOID.COMMON_NAME, f"ztfl federation CA {federation}"),
        ]
    )
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(moment - CLOCK_SKEW)
        .not_valid_after(moment + timedelta(days=validity_days))
        # path_length 0: the CA signs members only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"{SPIFFE_SCHEME}{federation}")]
            ),
            critical=False,
        )
        .sign(key, SIGNATURE_HASH)
    )


def init_authority(
    ca_dir: Path,
    federation: str,
    *,
    passphrase: bytes | None = None,
    validity_days: int = CA_VALIDITY_DAYS,
    crl_validity_days: int = CRL_VALIDITY_DAYS,
    audit_log: Path | None = None,
    now: datetime | None = None,
) -> AuthorityLayout:
    """Create a federation CA in ``ca_dir`` (a new or empty folder, made 0700).

    Writes ca-key.pem (0600, encrypted with ``passphrase`` if given), ca.pem, an
    empty registry and an empty signed CRL. Refuses a folder that already holds a CA.
    With ``audit_log``, records ``config_changed`` (setting ``federation_ca``, the new
    CA certificate's SHA-256).
    """
    validate_federation(federation)
    if not 1 <= validity_days <= 50 * 365:
        raise PkiError(PkiErrorReason.BAD_VALUE, "the CA lifetime must be 1 to 18250 days")
    if not 1 <= crl_validity_days <= 366:
        raise PkiError(PkiErrorReason.BAD_VALUE, "the CRL lifetime must be 1 to 366 days")
    layout = AuthorityLayout(Path(ca_dir))
    layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    existing = [p for p in (layout.ca_key, layout.ca_certificate, layout.registry) if p.exists()]
    if existing:
        raise PkiError(
            PkiErrorReason.ALREADY_EXISTS,
            f"{layout.root} already holds a CA ({existing[0].name}); refusing to replace it",
        )
    moment = _now(now)
    key = generate_private_key()
    write_private_key(layout.ca_key, key, passphrase)
    certificate = _ca_certificate(federation, key, moment, validity_days)
    write_public_file(layout.ca_certificate, certificate.public_bytes(serialization.Encoding.PEM))
    layout.issued.mkdir(mode=0o700, exist_ok=True)
    registry = Registry(federation, crl_validity_days, crl_number=0)
    authority = Authority(layout, certificate, key, registry, audit_log)
    reissue_crl(authority, now=moment)
    authority.audit(
        AuditEventKind.CONFIG_CHANGED,
        {
            "setting": "federation_ca",
            "old": None,
            "new": hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest(),
            "spiffe_id": f"{SPIFFE_SCHEME}{federation}",
            "not_after": certificate.not_valid_after_utc.isoformat(),
        },
    )
    return layout


@contextlib.contextmanager
def open_authority(
    ca_dir: Path, *, passphrase: bytes | None = None, audit_log: Path | None = None
) -> Iterator[Authority]:
    """Open the CA under an exclusive lock (one issuer at a time); checks that the key,
    the certificate and the registry belong together."""
    layout = AuthorityLayout(Path(ca_dir))
    if not layout.ca_certificate.exists():
        raise PkiError(
            PkiErrorReason.BAD_FILE,
            f"{layout.root} is not a CA folder (no {layout.ca_certificate.name})",
        )
    with open(layout.lock, "a") as lock:
        os.chmod(layout.lock, 0o600)
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            try:
                certificate = x509.load_pem_x509_certificate(layout.ca_certificate.read_bytes())
                federation = federation_of_authority(certificate)
            except (OSError, ValueError, CertificateRefused) as error:
                raise PkiError(
                    PkiErrorReason.BAD_FILE, f"{layout.ca_certificate}: unusable CA ({error})"
                ) from None
            key = read_private_key(layout.ca_key, passphrase)
            if key.public_key() != certificate.public_key():
                raise PkiError(
                    PkiErrorReason.KEY_MISMATCH,
                    f"{layout.ca_key} is not the key of {layout.ca_certificate}",
                )
            registry = read_registry(layout.registry)
            if registry.federation != federation:
                raise PkiError(
                    PkiErrorReason.BAD_FILE,
                    f"{layout.registry} is for federation {registry.federation!r}, the CA for "
                    f"{federation!r}",
                )
            yield Authority(layout, certificate, key, registry, audit_log)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def reissue_crl(authority: Authority, *, now: datetime | None = None) -> Authority:
    """Sign a new CRL listing every revoked certificate; bumps the CRL number.

    Returns the authority with the updated registry. Verifiers refuse all
    certificates once ``next_update`` passes, so call this on a schedule too.
    """
    moment = _now(now)
    registry = authority.registry
    number = registry.crl_number + 1
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(authority.certificate.subject)
        .last_update(moment - CLOCK_SKEW)
        .next_update(moment + timedelta(days=registry.crl_validity_days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.private_key.public_key()),
            critical=False,
        )
    )
    for entry in registry.revoked():
        reason = entry.revocation_reason or RevocationReason.UNSPECIFIED
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.revoked_at or moment)
        )
        if reason is not RevocationReason.UNSPECIFIED:
            revoked = revoked.add_extension(x509.CRLReason(reason.flag), critical=False)
        builder = builder.add_revoked_certificate(revoked.build())
    crl = builder.sign(authority.private_key, SIGNATURE_HASH)
    # Check what we publish the way every verifier will, before it replaces the old CRL.
    FederationTrust(authority.federation, authority.certificate, crl)
    updated = authority.save_registry(
        Registry(registry.federation, registry.crl_validity_days, number, registry.certificates)
    )
    write_public_file(authority.layout.crl, crl.public_bytes(serialization.Encoding.PEM))
    return updated
