"""verify_certificate: each way a certificate or its trust is wrong is refused with a reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ztfl.trust.pki import (
    CertificateRefusalReason,
    CertificateRefused,
    FederationTrust,
    Identity,
    Role,
    create_enrolment_request,
    issue_certificate,
    open_authority,
    reissue_crl,
    revoke_certificate,
    verify_certificate,
)
from ztfl.trust.pki.issuance import load_request
from ztfl.trust.pki.provisioning import FederationPaths, provision_federation

Reason = CertificateRefusalReason

FEDERATION = "hospitals"  # the conftest federation's name


def read_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _refusal(certificate: x509.Certificate, trust: FederationTrust, **options: object) -> Reason:
    with pytest.raises(CertificateRefused) as raised:
        verify_certificate(certificate, trust, **options)  # type: ignore[arg-type]
    return raised.value.reason


def _issue_at(
    federation: FederationPaths, tmp_path: Path, moment: datetime, days: int
) -> x509.Certificate:
    member = create_enrolment_request(tmp_path / "dave", FEDERATION, "dave")
    with open_authority(federation.authority.root) as authority:
        _, certificate = issue_certificate(
            authority,
            load_request(member.request),
            Identity(FEDERATION, Role.CLIENT, "dave"),
            days=days,
            now=moment,
        )
    return certificate


def test_valid_client_certificate_passes_as_client(
    federation: FederationPaths, trust: FederationTrust
) -> None:
    certificate = read_certificate(federation.clients["alice"].certificate)
    identity = verify_certificate(certificate, trust, required_role=Role.CLIENT)
    assert identity == Identity(FEDERATION, Role.CLIENT, "alice")


def test_expired_certificate_is_refused(
    federation: FederationPaths, trust: FederationTrust, tmp_path: Path
) -> None:
    back_dated = _issue_at(federation, tmp_path, datetime.now(UTC) - timedelta(days=3), days=1)
    assert _refusal(back_dated, trust) is Reason.EXPIRED


def test_not_yet_valid_certificate_is_refused(
    federation: FederationPaths, trust: FederationTrust, tmp_path: Path
) -> None:
    future = _issue_at(federation, tmp_path, datetime.now(UTC) + timedelta(days=2), days=5)
    assert _refusal(future, trust) is Reason.NOT_YET_VALID


def test_revoked_certificate_is_refused_after_revoke(federation: FederationPaths) -> None:
    certificate = read_certificate(federation.clients["alice"].certificate)
    with open_authority(federation.authority.root) as authority:
        revoke_certificate(authority, "alice")
    trust = FederationTrust.load(federation.ca_certificate, federation.crl)
    assert _refusal(certificate, trust) is Reason.REVOKED
    bob = read_certificate(federation.clients["bob"].certificate)
    assert verify_certificate(bob, trust).name == "bob"


def test_crl_signed_by_another_ca_is_refused(federation: FederationPaths, tmp_path: Path) -> None:
    other = provision_federation(tmp_path / "other", FEDERATION)
    with pytest.raises(CertificateRefused) as raised:
        FederationTrust.load(federation.ca_certificate, other.crl)
    assert raised.value.reason is Reason.BAD_CRL


def test_stale_crl_refuses_every_certificate(
    federation: FederationPaths, trust: FederationTrust
) -> None:
    certificate = read_certificate(federation.clients["alice"].certificate)
    eight_days_on = datetime.now(UTC) + timedelta(days=8)
    assert _refusal(certificate, trust, now=eight_days_on) is Reason.STALE_CRL


def test_reissued_crl_is_fresh_again(federation: FederationPaths) -> None:
    later = datetime.now(UTC) + timedelta(days=8)
    with open_authority(federation.authority.root) as authority:
        reissue_crl(authority, now=later)
    trust = FederationTrust.load(federation.ca_certificate, federation.crl)
    certificate = read_certificate(federation.clients["alice"].certificate)
    assert verify_certificate(certificate, trust, now=later).name == "alice"


def test_older_crl_cannot_replace_a_newer_one(federation: FederationPaths, tmp_path: Path) -> None:
    old_crl = tmp_path / "old-crl.pem"
    old_crl.write_bytes(federation.crl.read_bytes())
    with open_authority(federation.authority.root) as authority:
        revoke_certificate(authority, "alice")
    current = FederationTrust.load(federation.ca_certificate, federation.crl)
    with pytest.raises(CertificateRefused) as raised:
        current.with_crl(old_crl)
    assert raised.value.reason is Reason.BAD_CRL


def test_certificate_from_another_ca_is_refused(trust: FederationTrust, tmp_path: Path) -> None:
    # Same federation name, same member name: only the issuing key differs.
    other = provision_federation(tmp_path / "other", FEDERATION, clients=["alice"])
    impostor = read_certificate(other.clients["alice"].certificate)
    assert _refusal(impostor, trust) is Reason.UNTRUSTED_ISSUER


def test_self_signed_certificate_is_refused(trust: FederationTrust) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    name = trust.ca_certificate.subject  # even one that copies the CA's name
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("spiffe://hospitals/client/alice")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA384())
    )
    assert _refusal(certificate, trust) is Reason.UNTRUSTED_ISSUER


def test_operator_certificate_is_refused_where_a_client_is_required(
    federation: FederationPaths, trust: FederationTrust
) -> None:
    operator = read_certificate(federation.operators["olga"].certificate)
    assert _refusal(operator, trust, required_role=Role.CLIENT) is Reason.WRONG_ROLE
    assert verify_certificate(operator, trust, required_role=Role.OPERATOR).name == "olga"


def test_client_certificate_is_refused_where_an_operator_is_required(
    federation: FederationPaths, trust: FederationTrust
) -> None:
    client = read_certificate(federation.clients["alice"].certificate)
    assert _refusal(client, trust, required_role=Role.OPERATOR) is Reason.WRONG_ROLE


def test_gateway_server_certificate_never_passes_as_a_client(
    federation: FederationPaths, trust: FederationTrust
) -> None:
    server = read_certificate(federation.gateway.certificate)
    assert _refusal(server, trust, required_role=Role.CLIENT) is Reason.WRONG_ROLE
    assert verify_certificate(server, trust, required_role=Role.SERVER).name == "gateway"


def _signed_by_ca(
    federation: FederationPaths, alternative_names: list[x509.GeneralName]
) -> x509.Certificate:
    """A leaf signed by the real CA key with arbitrary SANs: what a CA bug could produce."""
    with open_authority(federation.authority.root) as authority:
        key = ec.generate_private_key(ec.SECP384R1())
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
            .issuer_name(authority.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
        )
        if alternative_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(alternative_names), critical=False
            )
        return builder.sign(authority.private_key, hashes.SHA384())


def test_certificate_without_identity_is_refused(
    federation: FederationPaths, trust: FederationTrust
) -> None:
    certificate = _signed_by_ca(federation, [x509.DNSName("alice.example")])
    assert _refusal(certificate, trust) is Reason.NO_IDENTITY


def test_certificate_with_two_identities_is_refused(
    federation: FederationPaths, trust: FederationTrust
) -> None:
    certificate = _signed_by_ca(
        federation,
        [
            x509.UniformResourceIdentifier("spiffe://hospitals/client/alice"),
            x509.UniformResourceIdentifier("spiffe://hospitals/operator/alice"),
        ],
    )
    assert _refusal(certificate, trust) is Reason.MALFORMED


def test_identity_in_another_federation_is_refused(
    federation: FederationPaths, trust: FederationTrust
) -> None:
    certificate = _signed_by_ca(
        federation, [x509.UniformResourceIdentifier("spiffe://elsewhere/client/alice")]
    )
    assert _refusal(certificate, trust) is Reason.WRONG_FEDERATION


def test_ca_certificate_itself_is_refused_as_a_member(trust: FederationTrust) -> None:
    assert _refusal(trust.ca_certificate, trust) is Reason.MALFORMED
