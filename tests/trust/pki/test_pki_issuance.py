"""Issuing from a CSR: the approved identity only, the CSR's signature checked; renewal."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ztfl.trust.audit import AuditEventKind, AuditLog
from ztfl.trust.pki import (
    FederationTrust,
    Identity,
    PkiError,
    PkiErrorReason,
    Role,
    create_enrolment_request,
    init_authority,
    issue_certificate,
    open_authority,
    public_key_der,
    renew_certificate,
    revoke_certificate,
    verify_certificate,
)
from ztfl.trust.pki.issuance import load_request
from ztfl.trust.pki.layout import AuthorityLayout, ClientLayout
from ztfl.trust.pki.provisioning import FederationPaths

FEDERATION = "hospitals"  # the conftest federation's name


def read_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@dataclasses.dataclass
class Pending:
    authority: AuthorityLayout
    member: ClientLayout
    request: x509.CertificateSigningRequest


@pytest.fixture
def pending(tmp_path: Path) -> Pending:
    authority = init_authority(tmp_path / "ca", FEDERATION)
    member = create_enrolment_request(tmp_path / "carol", FEDERATION, "carol")
    return Pending(authority, member, load_request(member.request))


def _issue(pending: Pending, identity: Identity, **options: object) -> x509.Certificate:
    with open_authority(pending.authority.root) as authority:
        _, certificate = issue_certificate(authority, pending.request, identity, **options)  # type: ignore[arg-type]
    return certificate


def test_issued_certificate_chains_and_carries_the_spiffe_id_and_role(pending: Pending) -> None:
    certificate = _issue(pending, Identity(FEDERATION, Role.CLIENT, "carol"))
    trust = FederationTrust.load(pending.authority.ca_certificate, pending.authority.crl)
    identity = verify_certificate(certificate, trust, required_role=Role.CLIENT)
    assert identity.spiffe_id == "spiffe://hospitals/client/carol"
    uris = certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["spiffe://hospitals/client/carol"]
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    role = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    assert role[0].value == "client"
    assert isinstance(certificate.signature_hash_algorithm, hashes.SHA384)


def test_client_certificates_last_thirty_days_by_default(pending: Pending) -> None:
    certificate = _issue(pending, Identity(FEDERATION, Role.CLIENT, "carol"))
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert timedelta(days=30) <= lifetime <= timedelta(days=30, minutes=5)


def test_certificate_key_is_the_enrolled_key(pending: Pending) -> None:
    certificate = _issue(pending, Identity(FEDERATION, Role.CLIENT, "carol"))
    assert public_key_der(certificate) == pending.request.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize(
    "approved",
    [
        Identity(FEDERATION, Role.CLIENT, "mallory"),
        Identity(FEDERATION, Role.OPERATOR, "carol"),
    ],
)
def test_request_for_another_identity_is_refused(pending: Pending, approved: Identity) -> None:
    with pytest.raises(PkiError) as raised:
        _issue(pending, approved)
    assert raised.value.reason is PkiErrorReason.IDENTITY_MISMATCH
    assert "spiffe://hospitals/client/carol" in raised.value.message
    assert list((pending.authority.issued).iterdir()) == []


def test_identity_in_another_federation_is_refused(pending: Pending) -> None:
    with pytest.raises(PkiError) as raised:
        _issue(pending, Identity("elsewhere", Role.CLIENT, "carol"))
    assert raised.value.reason is PkiErrorReason.IDENTITY_MISMATCH


def test_csr_signed_by_another_key_is_refused(pending: Pending) -> None:
    # Same subject and SPIFFE ID, but the signature is made by a key other than the one inside.
    forged = x509.load_der_x509_csr(
        _with_foreign_signature(pending.request.public_bytes(serialization.Encoding.DER))
    )
    with open_authority(pending.authority.root) as authority, pytest.raises(PkiError) as raised:
        issue_certificate(authority, forged, Identity(FEDERATION, Role.CLIENT, "carol"))
    assert raised.value.reason is PkiErrorReason.BAD_REQUEST_SIGNATURE


def _with_foreign_signature(der: bytes) -> bytes:
    """The CSR with its signature replaced by one from another key over the same body."""
    request = x509.load_der_x509_csr(der)
    other = ec.generate_private_key(ec.SECP384R1())
    signature = other.sign(request.tbs_certrequest_bytes, ec.ECDSA(hashes.SHA384()))
    old = request.signature
    assert der.endswith(old)
    body = der[: -len(old)]
    # The BIT STRING's length byte precedes the signature; keep DER valid by equal length.
    while len(signature) != len(old):
        signature = other.sign(request.tbs_certrequest_bytes, ec.ECDSA(hashes.SHA384()))
    return body + signature


def test_csr_without_a_spiffe_id_is_refused(tmp_path: Path) -> None:
    layout = init_authority(tmp_path / "ca", FEDERATION)
    key = ec.generate_private_key(ec.SECP384R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "carol")]))
        .sign(key, hashes.SHA384())
    )
    with open_authority(layout.root) as authority, pytest.raises(PkiError) as raised:
        issue_certificate(authority, request, Identity(FEDERATION, Role.CLIENT, "carol"))
    assert raised.value.reason is PkiErrorReason.IDENTITY_MISMATCH


def test_p256_request_is_refused(tmp_path: Path) -> None:
    layout = init_authority(tmp_path / "ca", FEDERATION)
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "carol")]))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("spiffe://hospitals/client/carol")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    with open_authority(layout.root) as authority, pytest.raises(PkiError) as raised:
        issue_certificate(authority, request, Identity(FEDERATION, Role.CLIENT, "carol"))
    assert raised.value.reason is PkiErrorReason.BAD_KEY


def test_lifetime_beyond_the_maximum_is_refused(pending: Pending) -> None:
    with pytest.raises(PkiError) as raised:
        _issue(pending, Identity(FEDERATION, Role.CLIENT, "carol"), days=4000)
    assert raised.value.reason is PkiErrorReason.BAD_VALUE


def test_renew_keeps_the_key_and_identity(federation: FederationPaths) -> None:
    old = read_certificate(federation.clients["alice"].certificate)
    with open_authority(federation.authority.root) as authority:
        _, renewed = renew_certificate(authority, old)
    assert renewed.serial_number != old.serial_number
    assert public_key_der(renewed) == public_key_der(old)
    assert renewed.not_valid_after_utc >= old.not_valid_after_utc
    trust = FederationTrust.load(federation.ca_certificate, federation.crl)
    assert verify_certificate(renewed, trust) == verify_certificate(old, trust)
    assert verify_certificate(renewed, trust).spiffe_id == "spiffe://hospitals/client/alice"


def test_revoked_certificate_cannot_be_renewed(federation: FederationPaths) -> None:
    old = read_certificate(federation.clients["alice"].certificate)
    with open_authority(federation.authority.root) as authority:
        updated, _ = revoke_certificate(authority, old.serial_number)
        with pytest.raises(PkiError) as raised:
            renew_certificate(updated, old)
    assert raised.value.reason is PkiErrorReason.ALREADY_REVOKED


def test_certificate_of_another_ca_cannot_be_renewed(
    federation: FederationPaths, tmp_path: Path
) -> None:
    other = provision_other(tmp_path)
    foreign = read_certificate(other.clients["alice"].certificate)
    with open_authority(federation.authority.root) as authority, pytest.raises(PkiError) as raised:
        renew_certificate(authority, foreign)
    assert raised.value.reason is PkiErrorReason.UNKNOWN_CERTIFICATE


def provision_other(tmp_path: Path) -> FederationPaths:
    from ztfl.trust.pki.provisioning import provision_federation

    return provision_federation(tmp_path / "other", FEDERATION, clients=["alice"])


def test_revoking_an_ambiguous_name_is_refused(tmp_path: Path) -> None:
    from ztfl.trust.pki.provisioning import provision_federation

    paths = provision_federation(tmp_path / "f", FEDERATION, clients=["sam"], operators=["sam"])
    with open_authority(paths.authority.root) as authority, pytest.raises(PkiError) as raised:
        revoke_certificate(authority, "sam")
    assert raised.value.reason is PkiErrorReason.AMBIGUOUS


def test_issue_and_revoke_are_audited_without_key_material(pending: Pending) -> None:
    audit = pending.authority.root.parent / "audit.db"
    with open_authority(pending.authority.root, audit_log=audit) as authority:
        updated, certificate = issue_certificate(
            authority, pending.request, Identity(FEDERATION, Role.CLIENT, "carol")
        )
        revoke_certificate(updated, "carol")
    with AuditLog.open(audit, create=False) as log:
        records = list(log.records())
    assert [r.kind for r in records] == [
        AuditEventKind.CERTIFICATE_ISSUED,
        AuditEventKind.CERTIFICATE_REVOKED,
    ]
    assert records[0].details["serial"] == f"{certificate.serial_number:x}"
    assert records[1].reason == "unspecified"
    assert all("PRIVATE" not in str(r.details) for r in records)


def test_server_certificate_names_its_hosts_and_serves_only(federation: FederationPaths) -> None:
    certificate = read_certificate(federation.gateway.certificate)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
