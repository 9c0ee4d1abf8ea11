"""Installing an issued certificate: only this folder's key, this CA, the enrolled identity;
the trust anchors land where the client reads them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from ztfl.client.trust_anchor import read_trust_anchor
from ztfl.server.ledger import TRUST_ANCHOR_FILE, prepare_state_dir
from ztfl.trust.keys import generate_signing_key
from ztfl.trust.pki import (
    PkiError,
    PkiErrorReason,
    create_enrolment_request,
    install_certificate,
    read_app_bundle_allow_list,
)
from ztfl.trust.pki.layout import ClientLayout
from ztfl.trust.pki.provisioning import FederationPaths, provision_federation

BUNDLE = "AB" * 32


@pytest.fixture
def anchor(tmp_path: Path) -> Path:
    state = tmp_path / "coordinator-state"
    prepare_state_dir(state, generate_signing_key().public_key())
    return state / TRUST_ANCHOR_FILE


@pytest.fixture
def carol(tmp_path: Path) -> ClientLayout:
    return create_enrolment_request(tmp_path / "carol", "hospitals", "carol")


def _copy_of(federation: FederationPaths, member: str, tmp_path: Path) -> Path:
    copy = tmp_path / f"{member}.pem"
    shutil.copy(federation.clients[member].certificate, copy)
    return copy


def test_install_writes_certificate_ca_trust_anchor_and_allow_list(
    tmp_path: Path, anchor: Path
) -> None:
    paths = provision_federation(
        tmp_path / "f", "hospitals", clients=["alice"], trust_anchor=anchor, app_bundles=[BUNDLE]
    )
    layout = paths.clients["alice"]
    assert layout.certificate.exists()
    assert layout.ca_certificate.read_bytes() == paths.ca_certificate.read_bytes()
    assert read_trust_anchor(layout.trust_anchor) == read_trust_anchor(anchor)
    assert read_app_bundle_allow_list(layout.app_bundle_allow_list) == {BUNDLE.lower()}


def test_certificate_for_another_key_is_refused(
    federation: FederationPaths, carol: ClientLayout, tmp_path: Path, anchor: Path
) -> None:
    with pytest.raises(PkiError) as raised:
        install_certificate(
            carol.root,
            _copy_of(federation, "alice", tmp_path),
            federation.ca_certificate,
            trust_anchor=anchor,
            app_bundles=[BUNDLE],
        )
    assert raised.value.reason is PkiErrorReason.KEY_MISMATCH
    assert not carol.certificate.exists()


def test_certificate_not_signed_by_the_given_ca_is_refused(
    federation: FederationPaths, tmp_path: Path, anchor: Path
) -> None:
    other = provision_federation(tmp_path / "other", "hospitals")
    alice = federation.clients["alice"]
    with pytest.raises(PkiError) as raised:
        install_certificate(
            alice.root,
            _copy_of(federation, "alice", tmp_path),
            other.ca_certificate,
            trust_anchor=anchor,
            app_bundles=[BUNDLE],
        )
    assert raised.value.reason is PkiErrorReason.UNTRUSTED


def test_client_without_trust_anchor_or_allow_list_is_refused(
    federation: FederationPaths, tmp_path: Path, anchor: Path
) -> None:
    alice = federation.clients["alice"]
    certificate = _copy_of(federation, "alice", tmp_path)
    ca = federation.ca_certificate
    with pytest.raises(PkiError, match="trust anchor"):
        install_certificate(alice.root, certificate, ca, trust_anchor=None, app_bundles=[BUNDLE])
    with pytest.raises(PkiError, match="app-bundle"):
        install_certificate(alice.root, certificate, ca, trust_anchor=anchor, app_bundles=[])


@pytest.mark.parametrize("bad", ["ab" * 31, "zz" * 32, "sha256:" + "ab" * 32, ""])
def test_malformed_app_bundle_hash_is_refused(
    federation: FederationPaths, tmp_path: Path, anchor: Path, bad: str
) -> None:
    alice = federation.clients["alice"]
    with pytest.raises(PkiError) as raised:
        install_certificate(
            alice.root,
            _copy_of(federation, "alice", tmp_path),
            federation.ca_certificate,
            trust_anchor=anchor,
            app_bundles=[bad],
        )
    assert raised.value.reason is PkiErrorReason.BAD_VALUE
    assert not alice.app_bundle_allow_list.exists()


def test_trust_anchor_naming_a_file_outside_its_folder_is_refused(
    federation: FederationPaths, tmp_path: Path
) -> None:
    outside = tmp_path / "evil.toml"
    outside.write_text('run-id = "0123"\npublic-keys = ["../../etc/passwd"]\n')
    alice = federation.clients["alice"]
    with pytest.raises(PkiError) as raised:
        install_certificate(
            alice.root,
            _copy_of(federation, "alice", tmp_path),
            federation.ca_certificate,
            trust_anchor=outside,
            app_bundles=[BUNDLE],
        )
    assert raised.value.reason is PkiErrorReason.BAD_FILE


def test_enrolment_request_carries_the_spiffe_id_and_is_self_signed(carol: ClientLayout) -> None:
    from ztfl.trust.pki.issuance import load_request, requested_identity

    request = load_request(carol.request)
    assert request.is_signature_valid
    assert requested_identity(request).spiffe_id == "spiffe://hospitals/client/carol"
    assert b"PRIVATE" not in request.public_bytes(serialization.Encoding.PEM)
