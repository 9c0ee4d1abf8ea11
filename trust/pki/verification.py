"""Is this certificate a member of our federation, in this role, right now? One answer.

The gateway (for every request, not only every handshake) and the client's
sidecar call :func:`verify_certificate` with a :class:`FederationTrust`: the
federation CA and its current CRL, the CRL's signature checked when the trust is
built. Everything that is not positively valid is refused with a
:class:`CertificateRefusalReason`, including a CRL whose ``next_update`` has
passed: without a fresh CRL nobody can tell a revoked certificate from a good
one, so verification fails closed (``STALE_CRL``) rather than open.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from .identity import SPIFFE_SCHEME, Identity, Role, validate_federation

__all__ = [
    "CertificateRefusalReason",
    "CertificateRefused",
    "FederationTrust",
    "certificate_identity",
    "federation_of_authority",
    "public_key_der",
    "verify_certificate",
]

# Certificates, CRLs: small files; anything larger is not one of ours.
_MAX_PEM_BYTES: Final = 4 * 1024 * 1024

# Which extended key usage each role's certificate must carry: a server
# certificate can never pass as a client's, nor a client's as a server's.
_ROLE_USAGE: Final = {
    Role.CLIENT: ExtendedKeyUsageOID.CLIENT_AUTH,
    Role.OPERATOR: ExtendedKeyUsageOID.CLIENT_AUTH,
    Role.SERVER: ExtendedKeyUsageOID.SERVER_AUTH,
}
_USAGE_NAMES: Final = {
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
}


class CertificateRefusalReason(StrEnum):
    """Every reason a certificate (or the trust it is checked against) is refused."""

    UNTRUSTED_ISSUER = "untrusted_issuer"
    """Not issued (signed) by the federation CA: self-signed, or another CA's."""
    EXPIRED = "expired"
    """``not_after`` has passed (the certificate's, or the CA's)."""
    NOT_YET_VALID = "not_yet_valid"
    """``not_before`` is still in the future."""
    REVOKED = "revoked"
    """The serial number is on the federation CRL."""
    NO_IDENTITY = "no_identity"
    """The certificate carries no SPIFFE URI SAN."""
    WRONG_FEDERATION = "wrong_federation"
    """The SPIFFE ID names another federation (trust domain)."""
    WRONG_ROLE = "wrong_role"
    """The identity's role (or key usage) is not the one this endpoint requires."""
    MALFORMED = "malformed"
    """Unparseable, several or malformed identities, a CA certificate as a leaf, a non-EC key."""
    BAD_CRL = "bad_crl"
    """The CRL is unreadable, not signed by the CA, lacks next_update, or rolls back."""
    STALE_CRL = "stale_crl"
    """The CRL's ``next_update`` has passed: revocation cannot be checked, so nothing passes."""


class CertificateRefused(Exception):  # noqa: N818 - a refusal is an outcome, not an error
    """A certificate or trust was refused; ``reason`` says why, ``message`` what exactly."""

    def __init__(self, reason: CertificateRefusalReason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message


def public_key_der(certificate: x509.Certificate) -> bytes:
    """The certificate's public key as DER SubjectPublicKeyInfo (what the gateway compares)."""
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read_pem(path: Path, what: str, reason: CertificateRefusalReason) -> bytes:
    try:
        size = path.stat().st_size
        if size > _MAX_PEM_BYTES:
            raise CertificateRefused(reason, f"{path}: {size} bytes is too large for a {what}")
        return path.read_bytes()
    except OSError as error:
        raise CertificateRefused(
            reason, f"cannot read the {what} {path}: {error.strerror or error}"
        ) from None


def _uri_sans(certificate: x509.Certificate) -> list[str]:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    except ValueError as error:  # a duplicate or undecodable extension
        raise CertificateRefused(
            CertificateRefusalReason.MALFORMED, f"unreadable extensions: {error}"
        ) from None
    return list(extension.value.get_values_for_type(x509.UniformResourceIdentifier))


def federation_of_authority(ca_certificate: x509.Certificate) -> str:
    """The federation a CA certificate is for: its ``spiffe://<federation>`` URI SAN."""
    uris = [uri for uri in _uri_sans(ca_certificate) if uri.startswith(SPIFFE_SCHEME)]
    if len(uris) != 1:
        raise CertificateRefused(
            CertificateRefusalReason.MALFORMED,
            "the CA certificate must carry exactly one spiffe://<federation> URI SAN",
        )
    try:
        return validate_federation(uris[0][len(SPIFFE_SCHEME) :])
    except ValueError as error:
        raise CertificateRefused(CertificateRefusalReason.MALFORMED, str(error)) from None


def certificate_identity(certificate: x509.Certificate) -> Identity:
    """The one SPIFFE identity a leaf certificate carries; NO_IDENTITY or MALFORMED otherwise.

    Checks the form only, not trust: use :func:`verify_certificate` for that.
    """
    uris = [uri for uri in _uri_sans(certificate) if uri.startswith(SPIFFE_SCHEME)]
    if not uris:
        raise CertificateRefused(
            CertificateRefusalReason.NO_IDENTITY, "the certificate has no spiffe:// URI SAN"
        )
    if len(uris) > 1:
        raise CertificateRefused(
            CertificateRefusalReason.MALFORMED,
            f"the certificate names {len(uris)} SPIFFE identities; exactly one is allowed",
        )
    try:
        return Identity.parse(uris[0])
    except ValueError as error:
        raise CertificateRefused(CertificateRefusalReason.MALFORMED, str(error)) from None


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


def _extended_key_usages(certificate: x509.Certificate) -> frozenset[x509.ObjectIdentifier]:
    try:
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except x509.ExtensionNotFound:
        return frozenset()
    return frozenset(usage.value)


def _signed_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    if certificate.issuer != issuer.subject:
        return False
    try:
        certificate.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


@dataclass(frozen=True)
class FederationTrust:
    """What a verifier trusts: the federation CA and its CRL (signature checked when built).

    Raises :class:`CertificateRefused` when built from a CA certificate that is not a
    self-signed CA for ``federation`` (MALFORMED / WRONG_FEDERATION), or a CRL the CA
    did not sign or without ``next_update`` (BAD_CRL). Staleness is checked at each
    verification, against that verification's clock.
    """

    federation: str
    ca_certificate: x509.Certificate
    crl: x509.CertificateRevocationList

    def __post_init__(self) -> None:
        ca = self.ca_certificate
        if not _is_ca(ca) or not _signed_by(ca, ca):
            raise CertificateRefused(
                CertificateRefusalReason.MALFORMED,
                "the federation CA certificate must be a self-signed CA certificate",
            )
        own = federation_of_authority(ca)
        if own != self.federation:
            raise CertificateRefused(
                CertificateRefusalReason.WRONG_FEDERATION,
                f"the CA certificate is for federation {own!r}, not {self.federation!r}",
            )
        crl = self.crl
        if crl.issuer != ca.subject or not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
            raise CertificateRefused(
                CertificateRefusalReason.BAD_CRL,
                f"the CRL is not signed by the {self.federation!r} federation CA",
            )
        if crl.next_update_utc is None:
            raise CertificateRefused(
                CertificateRefusalReason.BAD_CRL, "the CRL has no next_update; it cannot go stale"
            )

    @classmethod
    def load(cls, ca_path: Path, crl_path: Path) -> FederationTrust:
        """Read the CA certificate and CRL (PEM); the federation is the CA's own."""
        ca = load_certificate_pem(_read_pem(Path(ca_path), "CA certificate", _MALFORMED), ca_path)
        return cls(federation_of_authority(ca), ca, _load_crl(Path(crl_path)))

    @property
    def crl_number(self) -> int:
        """The CRL's number (0 when it has none): larger is newer."""
        try:
            return self.crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except x509.ExtensionNotFound:
            return 0

    def with_crl(self, crl_path: Path) -> FederationTrust:
        """This trust with the CRL at ``crl_path``; an older CRL (smaller number) is BAD_CRL.

        For verifiers that reload the CRL while running: a replayed old CRL would
        un-revoke certificates, so it is refused and the current one kept.
        """
        updated = FederationTrust(self.federation, self.ca_certificate, _load_crl(crl_path))
        if updated.crl_number < self.crl_number:
            raise CertificateRefused(
                CertificateRefusalReason.BAD_CRL,
                f"{crl_path}: CRL number {updated.crl_number} is older than the current "
                f"{self.crl_number}",
            )
        return updated

    def check_crl_fresh(self, now: datetime | None = None) -> None:
        """STALE_CRL when the CRL's ``next_update`` has passed at ``now``."""
        moment = now or datetime.now(UTC)
        next_update = self.crl.next_update_utc
        if next_update is None or next_update < moment:
            raise CertificateRefused(
                CertificateRefusalReason.STALE_CRL,
                f"the federation CRL expired at {next_update:%Y-%m-%d %H:%M:%SZ}; the CA "
                "operator must reissue it (ztfl pki crl)"
                if next_update
                else "the federation CRL has no next_update",
            )


_MALFORMED: Final = CertificateRefusalReason.MALFORMED


def load_certificate_pem(data: bytes, source: object = "certificate") -> x509.Certificate:
    """One PEM certificate; MALFORMED naming ``source`` otherwise."""
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as error:
        raise CertificateRefused(_MALFORMED, f"{source}: not a PEM certificate ({error})") from None


def _load_crl(path: Path) -> x509.CertificateRevocationList:
    data = _read_pem(path, "CRL", CertificateRefusalReason.BAD_CRL)
    try:
        return x509.load_pem_x509_crl(data)
    except ValueError as error:
        raise CertificateRefused(
            CertificateRefusalReason.BAD_CRL, f"{path}: not a PEM CRL ({error})"
        ) from None


def verify_certificate(
    certificate: x509.Certificate,
    trust: FederationTrust,
    *,
    required_role: Role | None = None,
    now: datetime | None = None,
) -> Identity:
    """The certificate's identity if it is valid now; :class:`CertificateRefused` otherwise.

    Checked in order: issued by the federation CA, the CRL fresh, the CA and the
    certificate within their validity, the serial not revoked, a leaf with an EC key,
    exactly one SPIFFE ID in this federation, and — when ``required_role`` is given —
    that role together with the key usage it needs (clientAuth or serverAuth).
    """
    moment = now or datetime.now(UTC)
    ca = trust.ca_certificate
    if not _signed_by(certificate, ca):
        raise CertificateRefused(
            CertificateRefusalReason.UNTRUSTED_ISSUER,
            f"not issued by the {trust.federation!r} federation CA "
            f"(issuer: {certificate.issuer.rfc4514_string()[:120]})",
        )
    trust.check_crl_fresh(moment)
    for subject, what in ((ca, "the federation CA"), (certificate, "the certificate")):
        if moment < subject.not_valid_before_utc:
            raise CertificateRefused(
                CertificateRefusalReason.NOT_YET_VALID,
                f"{what} is valid from {subject.not_valid_before_utc:%Y-%m-%d %H:%M:%SZ}",
            )
        if moment > subject.not_valid_after_utc:
            raise CertificateRefused(
                CertificateRefusalReason.EXPIRED,
                f"{what} expired at {subject.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}",
            )
    serial = certificate.serial_number
    if trust.crl.get_revoked_certificate_by_serial_number(serial) is not None:
        raise CertificateRefused(
            CertificateRefusalReason.REVOKED, f"certificate serial {serial:x} is revoked"
        )
    if _is_ca(certificate):
        raise CertificateRefused(_MALFORMED, "a CA certificate cannot be a member's certificate")
    if not isinstance(certificate.public_key(), ec.EllipticCurvePublicKey):
        raise CertificateRefused(_MALFORMED, "the certificate's key is not an ECDSA key")
    identity = certificate_identity(certificate)
    if identity.federation != trust.federation:
        raise CertificateRefused(
            CertificateRefusalReason.WRONG_FEDERATION,
            f"{identity.spiffe_id} is not in federation {trust.federation!r}",
        )
    if required_role is not None:
        if identity.role != required_role:
            raise CertificateRefused(
                CertificateRefusalReason.WRONG_ROLE,
                f"{identity.spiffe_id} has role {identity.role.value}; "
                f"{required_role.value} is required",
            )
        usage = _ROLE_USAGE[required_role]
        if usage not in _extended_key_usages(certificate):
            raise CertificateRefused(
                CertificateRefusalReason.WRONG_ROLE,
                f"{identity.spiffe_id} lacks the {_USAGE_NAMES[usage]} key usage "
                f"a {required_role.value} certificate needs",
            )
    return identity
