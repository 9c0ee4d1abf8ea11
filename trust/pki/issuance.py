"""Issuing, renewing and revoking member certificates, by the opened CA.

A certificate is issued only from a CSR whose signature verifies (its key holder
made it) and whose requested SPIFFE ID is exactly the identity the operator
approved: the client proposes, the operator decides, a mismatch is refused —
never silently "corrected". Lifetimes are short by default (30 days for clients,
7 for operators, 90 for the gateway's server certificate); ``renew`` reissues for
the same key and identity without a new CSR.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ztfl.trust.audit import AuditEventKind

from .authority import CLOCK_SKEW, SIGNATURE_HASH, Authority, reissue_crl
from .errors import PkiError, PkiErrorReason
from .identity import Identity, Role
from .keyfiles import write_public_file
from .registry import IssuedCertificate, RevocationReason
from .verification import CertificateRefused, certificate_identity, public_key_der

__all__ = [
    "DEFAULT_VALIDITY_DAYS",
    "MAX_VALIDITY_DAYS",
    "issue_certificate",
    "load_request",
    "renew_certificate",
    "requested_identity",
    "revoke_certificate",
]

DEFAULT_VALIDITY_DAYS: Final = {Role.CLIENT: 30, Role.OPERATOR: 7, Role.SERVER: 90}
MAX_VALIDITY_DAYS: Final = 397
"""The longest lifetime ``--days`` may ask for (the CA/Browser Forum's TLS maximum)."""
_MAX_REQUEST_BYTES: Final = 64 * 1024
_DNS_NAME: Final = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)


def load_request(path: Path) -> x509.CertificateSigningRequest:
    """A PEM CSR from ``path``; PkiError(BAD_FILE) otherwise."""
    path = Path(path)
    try:
        if path.stat().st_size > _MAX_REQUEST_BYTES:
            raise PkiError(PkiErrorReason.BAD_FILE, f"{path} is too large for a CSR")
        return x509.load_pem_x509_csr(path.read_bytes())
    except OSError as error:
        raise PkiError(
            PkiErrorReason.BAD_FILE, f"cannot read {path}: {error.strerror or error}"
        ) from None
    except ValueError as error:
        raise PkiError(PkiErrorReason.BAD_FILE, f"{path}: not a PEM CSR ({error})") from None


def requested_identity(request: x509.CertificateSigningRequest) -> Identity:
    """The one SPIFFE ID a CSR asks for; PkiError(IDENTITY_MISMATCH) when none or several."""
    try:
        extension = request.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        raise PkiError(
            PkiErrorReason.IDENTITY_MISMATCH, "the CSR requests no spiffe:// identity"
        ) from None
    uris = extension.value.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise PkiError(
            PkiErrorReason.IDENTITY_MISMATCH,
            f"the CSR must request exactly one spiffe:// identity, it requests {len(uris)}",
        )
    try:
        return Identity.parse(uris[0])
    except ValueError as error:
        raise PkiError(PkiErrorReason.IDENTITY_MISMATCH, f"the CSR's identity: {error}") from None


def _validity(role: Role, days: int | None) -> timedelta:
    chosen = DEFAULT_VALIDITY_DAYS[role] if days is None else days
    if isinstance(chosen, bool) or not 1 <= chosen <= MAX_VALIDITY_DAYS:
        raise PkiError(
            PkiErrorReason.BAD_VALUE,
            f"a certificate lifetime must be 1 to {MAX_VALIDITY_DAYS} days, got {chosen}",
        )
    return timedelta(days=chosen)


def _host_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        label = host.strip().lower().rstrip(".")
        if not _DNS_NAME.fullmatch(label):
            raise PkiError(
                PkiErrorReason.BAD_VALUE,
                f"{host!r} is neither an IP address nor a DNS name (no wildcards)",
            )
        names.append(x509.DNSName(label))
    return names


def _build(
    authority: Authority,
    identity: Identity,
    public_key: ec.EllipticCurvePublicKey,
    lifetime: timedelta,
    moment: datetime,
    hosts: Sequence[str],
) -> x509.Certificate:
    server = identity.role is Role.SERVER
    if server and not hosts:
        raise PkiError(
            PkiErrorReason.BAD_VALUE, "a server certificate needs at least one host (--host)"
        )
    if hosts and not server:
        raise PkiError(PkiErrorReason.BAD_VALUE, "only a server certificate names hosts")
    not_after = min(moment + lifetime, authority.certificate.not_valid_after_utc)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, identity.federation),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.role.value),
            x509.NameAttribute(NameOID.COMMON_NAME, identity.name),
        ]
    )
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    alternative_names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(identity.spiffe_id),
        *_host_names(hosts),
    ]
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(authority.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(moment - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=not server)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.private_key.public_key()),
            critical=False,
        )
        .sign(authority.private_key, SIGNATURE_HASH)
    )


def _record(authority: Authority, certificate: x509.Certificate, identity: Identity) -> Authority:
    entry = IssuedCertificate(
        serial=certificate.serial_number,
        identity=identity,
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        public_key_sha256=hashlib.sha256(public_key_der(certificate)).hexdigest(),
    )
    write_public_file(
        authority.layout.issued_certificate(entry.serial),
        certificate.public_bytes(serialization.Encoding.PEM),
    )
    updated = authority.save_registry(authority.registry.with_certificate(entry))
    authority.audit(
        AuditEventKind.CERTIFICATE_ISSUED,
        {
            "spiffe_id": identity.spiffe_id,
            "serial": entry.serial_hex,
            "not_after": entry.not_after.isoformat(),
            "public_key_fingerprint": entry.public_key_sha256,
        },
    )
    return updated


def _require_p384(key: object, what: str) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise PkiError(PkiErrorReason.BAD_KEY, f"{what} is not for an ECDSA P-384 key")
    return key


def issue_certificate(
    authority: Authority,
    request: x509.CertificateSigningRequest,
    approved: Identity,
    *,
    days: int | None = None,
    hosts: Sequence[str] = (),
    now: datetime | None = None,
) -> tuple[Authority, x509.Certificate]:
    """Issue a certificate for ``approved`` from ``request``; returns the updated authority.

    Refuses a CSR whose signature does not verify, whose key is not P-384, or whose
    requested identity is not exactly ``approved`` (IDENTITY_MISMATCH), and an
    identity outside this CA's federation. ``hosts`` (DNS names, IP addresses) only
    for the server role.
    """
    if not request.is_signature_valid:
        raise PkiError(
            PkiErrorReason.BAD_REQUEST_SIGNATURE,
            "the CSR's signature does not verify; it was not made by the key it carries",
        )
    public_key = _require_p384(request.public_key(), "the CSR")
    requested = requested_identity(request)
    if approved.federation != authority.federation:
        raise PkiError(
            PkiErrorReason.IDENTITY_MISMATCH,
            f"this CA serves federation {authority.federation!r}, not {approved.federation!r}",
        )
    if requested != approved:
        raise PkiError(
            PkiErrorReason.IDENTITY_MISMATCH,
            f"the CSR requests {requested.spiffe_id} but you approved {approved.spiffe_id}; "
            "nothing was issued",
        )
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    certificate = _build(
        authority, approved, public_key, _validity(approved.role, days), moment, hosts
    )
    return _record(authority, certificate, approved), certificate


def _hosts_of(certificate: x509.Certificate) -> list[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*names.get_values_for_type(x509.DNSName)] + [
        str(address) for address in names.get_values_for_type(x509.IPAddress)
    ]


def renew_certificate(
    authority: Authority,
    certificate: x509.Certificate,
    *,
    days: int | None = None,
    now: datetime | None = None,
) -> tuple[Authority, x509.Certificate]:
    """A fresh certificate for the same key, identity (and hosts) as ``certificate``.

    Only for a certificate this CA issued (it is in the registry with the same key)
    and has not revoked. The old certificate stays valid until it expires, so the
    holder can switch without downtime; revoke it as ``superseded`` to end it early.
    """
    entry = authority.registry.get(certificate.serial_number)
    fingerprint = hashlib.sha256(public_key_der(certificate)).hexdigest()
    if entry is None or entry.public_key_sha256 != fingerprint:
        raise PkiError(
            PkiErrorReason.UNKNOWN_CERTIFICATE,
            f"certificate serial {certificate.serial_number:x} was not issued by this CA",
        )
    if entry.revoked:
        raise PkiError(
            PkiErrorReason.ALREADY_REVOKED,
            f"certificate serial {entry.serial_hex} is revoked; the holder must enrol again",
        )
    try:
        identity = certificate_identity(certificate)
    except CertificateRefused as refusal:
        raise PkiError(PkiErrorReason.BAD_FILE, refusal.message) from None
    if identity != entry.identity:
        raise PkiError(PkiErrorReason.IDENTITY_MISMATCH, "the certificate differs from its record")
    public_key = _require_p384(certificate.public_key(), "the certificate")
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    hosts = _hosts_of(certificate) if identity.role is Role.SERVER else []
    renewed = _build(authority, identity, public_key, _validity(identity.role, days), moment, hosts)
    return _record(authority, renewed, identity), renewed


def revoke_certificate(
    authority: Authority,
    target: str | int,
    reason: RevocationReason = RevocationReason.UNSPECIFIED,
    *,
    now: datetime | None = None,
) -> tuple[Authority, list[IssuedCertificate]]:
    """Revoke by serial (int or hex), SPIFFE ID or name, and reissue the CRL.

    A name or SPIFFE ID revokes every unrevoked certificate of that identity; a name
    held under several roles is refused as AMBIGUOUS. Returns the entries revoked.
    """
    registry = authority.registry
    if isinstance(target, int):
        entry = registry.get(target)
        matches = [entry] if entry else []
    else:
        try:
            matches = registry.find(target)
        except ValueError as error:
            raise PkiError(PkiErrorReason.BAD_VALUE, str(error)) from None
    if not matches:
        raise PkiError(
            PkiErrorReason.UNKNOWN_CERTIFICATE, f"no certificate in the registry matches {target}"
        )
    identities = {item.identity for item in matches}
    if len(identities) > 1:
        raise PkiError(
            PkiErrorReason.AMBIGUOUS,
            f"{target!r} names {len(identities)} identities ("
            + ", ".join(sorted(i.spiffe_id for i in identities))
            + "); give the SPIFFE ID or a serial",
        )
    pending = [item for item in matches if not item.revoked]
    if not pending:
        raise PkiError(
            PkiErrorReason.ALREADY_REVOKED, f"every certificate matching {target} is revoked"
        )
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    revoked = [replace(item, revoked_at=moment, revocation_reason=reason) for item in pending]
    updated_registry = registry
    for item in revoked:
        updated_registry = updated_registry.with_certificate(item)
    updated = reissue_crl(authority.save_registry(updated_registry), now=moment)
    for item in revoked:
        updated.audit(
            AuditEventKind.CERTIFICATE_REVOKED,
            {
                "spiffe_id": item.identity.spiffe_id,
                "serial": item.serial_hex,
                "revocation_reason": reason.value,
                "crl_number": updated.registry.crl_number,
            },
            reason=reason.value,
        )
    return updated, revoked
