"""CA initialisation: a 0600 key, a self-signed P-384 CA for the federation, a valid empty CRL."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ztfl.trust.audit import AuditEventKind, AuditLog
from ztfl.trust.pki import (
    FederationTrust,
    PkiError,
    PkiErrorReason,
    init_authority,
    open_authority,
)
from ztfl.trust.pki.registry import read_registry


def test_init_writes_a_0600_key_and_a_valid_empty_crl(tmp_path: Path) -> None:
    layout = init_authority(tmp_path / "ca", "hospitals")
    assert stat.S_IMODE(layout.ca_key.stat().st_mode) == 0o600
    trust = FederationTrust.load(layout.ca_certificate, layout.crl)
    assert trust.federation == "hospitals"
    assert len(trust.crl) == 0
    trust.check_crl_fresh()
    assert read_registry(layout.registry).certificates == ()


def test_ca_is_ecdsa_p384_signed_with_sha384(tmp_path: Path) -> None:
    layout = init_authority(tmp_path / "ca", "hospitals")
    certificate = x509.load_pem_x509_certificate(layout.ca_certificate.read_bytes())
    key = certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP384R1)
    assert isinstance(certificate.signature_hash_algorithm, hashes.SHA384)
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_init_refuses_a_folder_that_holds_a_ca(tmp_path: Path) -> None:
    init_authority(tmp_path / "ca", "hospitals")
    with pytest.raises(PkiError) as raised:
        init_authority(tmp_path / "ca", "hospitals")
    assert raised.value.reason is PkiErrorReason.ALREADY_EXISTS


def test_passphrase_encrypted_ca_key_opens_only_with_the_passphrase(tmp_path: Path) -> None:
    layout = init_authority(tmp_path / "ca", "hospitals", passphrase=b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in layout.ca_key.read_bytes()
    with pytest.raises(PkiError) as raised, open_authority(layout.root):
        pass
    assert raised.value.reason is PkiErrorReason.BAD_KEY
    with open_authority(layout.root, passphrase=b"correct horse") as authority:
        assert authority.federation == "hospitals"


def test_init_with_an_audit_log_records_the_new_ca(tmp_path: Path) -> None:
    init_authority(tmp_path / "ca", "hospitals", audit_log=tmp_path / "audit.db")
    with AuditLog.open(tmp_path / "audit.db", create=False) as log:
        records = list(log.records())
    assert [record.kind for record in records] == [AuditEventKind.CONFIG_CHANGED]
    assert records[0].details["setting"] == "federation_ca"


def test_init_refuses_an_invalid_federation_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="federation"):
        init_authority(tmp_path / "ca", "Bad/Name")
