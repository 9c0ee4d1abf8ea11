"""``ztfl pki`` and ``ztfl client`` end to end on the real app, and no private key in any output."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from ztfl.cli.main import app
from ztfl.server.ledger import TRUST_ANCHOR_FILE, prepare_state_dir
from ztfl.trust.keys import generate_signing_key
from ztfl.trust.pki import FederationTrust, Role, verify_certificate
from ztfl.trust.pki.layout import AuthorityLayout, ClientLayout
from ztfl.trust.pki.registry import read_registry

BUNDLE = "c0ffee" + "0" * 58


class Session:
    """Runs ztfl commands and keeps every output, to search it for key material."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runner = CliRunner()
        self.outputs: list[str] = []

    def ok(self, *arguments: str | Path) -> str:
        result = self.runner.invoke(app, [str(a) for a in arguments])
        self.outputs.append(result.output)
        assert result.exit_code == 0, result.output
        return result.output

    def refused(self, *arguments: str | Path) -> str:
        result = self.runner.invoke(app, [str(a) for a in arguments])
        self.outputs.append(result.output)
        assert result.exit_code == 2, result.output
        return result.output


def _private_key_fragments(*paths: Path) -> list[str]:
    """The base64 body lines of the PEM / OpenSSH private keys (long enough to be unique)."""
    fragments = []
    for path in paths:
        for line in path.read_text().splitlines():
            if not line.startswith("-----") and len(line) >= 32:
                fragments.append(line)
    return fragments


@pytest.fixture
def session(tmp_path: Path) -> Session:
    return Session(tmp_path)


def _enrolled(session: Session) -> tuple[AuthorityLayout, ClientLayout, Path]:
    root = session.root
    ca, alice = AuthorityLayout(root / "ca"), ClientLayout(root / "alice")
    state = root / "state"
    prepare_state_dir(state, generate_signing_key().public_key())
    audit = root / "audit.db"
    session.ok("pki", "init", "--federation", "hospitals", "--dir", ca.root, "--audit-log", audit)
    session.ok(
        "client", "enrol", "--federation", "hospitals", "--name", "alice", "--dir", alice.root
    )
    issued = root / "alice.pem"
    session.ok(
        "pki", "sign", alice.request, "--dir", ca.root, "--role", "client", "--name", "alice",
        "--out", issued, "--audit-log", audit,
    )  # fmt: skip
    session.ok(
        "client", "install-certificate", issued, "--dir", alice.root, "--ca", ca.ca_certificate,
        "--trust-anchor", state / TRUST_ANCHOR_FILE, "--allow-app-bundle", BUNDLE,
    )  # fmt: skip
    return ca, alice, issued


def test_init_enrol_sign_install_gives_a_verifiable_client(session: Session) -> None:
    ca, alice, _ = _enrolled(session)
    trust = FederationTrust.load(ca.ca_certificate, ca.crl)
    certificate = x509.load_pem_x509_certificate(alice.certificate.read_bytes())
    assert verify_certificate(certificate, trust, required_role=Role.CLIENT).name == "alice"
    assert alice.trust_anchor.exists()
    assert BUNDLE in alice.app_bundle_allow_list.read_text()


def test_sign_refuses_a_request_for_another_name(session: Session) -> None:
    ca, alice, _ = _enrolled(session)
    output = session.refused(
        "pki", "sign", alice.request, "--dir", ca.root, "--role", "client", "--name", "mallory",
        "--out", session.root / "mallory.pem",
    )  # fmt: skip
    assert "spiffe://hospitals/client/alice" in output
    assert "identity_mismatch" in output
    assert not (session.root / "mallory.pem").exists()


def test_revoke_list_show_and_renew(session: Session) -> None:
    ca, _, issued = _enrolled(session)
    serial = f"{x509.load_pem_x509_certificate(issued.read_bytes()).serial_number:x}"
    assert "valid" in session.ok("pki", "list", "--dir", ca.root)
    renewed = session.root / "renewed.pem"
    assert "renewed spiffe://hospitals/client/alice" in session.ok(
        "pki", "renew", issued, "--dir", ca.root, "--out", renewed
    )
    output = session.ok("pki", "revoke", serial, "--dir", ca.root, "--reason", "key_compromise")
    assert f"revoked spiffe://hospitals/client/alice serial {serial}" in output
    listing = session.ok("pki", "list", "--dir", ca.root)
    assert f"{serial}  spiffe://hospitals/client/alice" in listing
    assert "revoked (key_compromise)" in listing
    shown = session.ok("pki", "show", serial, "--dir", ca.root)
    assert "identity:    spiffe://hospitals/client/alice" in shown
    assert "state:       revoked (key_compromise)" in shown
    assert "spiffe://hospitals/client/alice" in session.ok("pki", "show", renewed)
    registry = read_registry(ca.registry)
    assert [entry.revoked for entry in registry.certificates] == [True, False]
    trust = FederationTrust.load(ca.ca_certificate, ca.crl)
    assert len(trust.crl) == 1


def test_revoke_by_name_then_crl_reissue(session: Session) -> None:
    ca, _, _ = _enrolled(session)
    session.ok("pki", "revoke", "alice", "--dir", ca.root)
    assert "already_revoked" in session.refused("pki", "revoke", "alice", "--dir", ca.root)
    before = FederationTrust.load(ca.ca_certificate, ca.crl).crl_number
    session.ok("pki", "crl", "--dir", ca.root)
    assert FederationTrust.load(ca.ca_certificate, ca.crl).crl_number == before + 1


def test_install_refuses_a_malformed_app_bundle_hash(session: Session) -> None:
    root = session.root
    ca, bob = AuthorityLayout(root / "ca"), ClientLayout(root / "bob")
    session.ok("pki", "init", "--federation", "hospitals", "--dir", ca.root)
    session.ok("client", "enrol", "--federation", "hospitals", "--name", "bob", "--dir", bob.root)
    session.ok(
        "pki", "sign", bob.request, "--dir", ca.root, "--role", "client", "--name", "bob",
        "--out", root / "bob.pem",
    )  # fmt: skip
    state = root / "state"
    prepare_state_dir(state, generate_signing_key().public_key())
    output = session.refused(
        "client", "install-certificate", root / "bob.pem", "--dir", bob.root,
        "--ca", ca.ca_certificate, "--trust-anchor", state / TRUST_ANCHOR_FILE,
        "--allow-app-bundle", "not-a-hash",
    )  # fmt: skip
    assert "64 hex digits" in output
    assert not bob.certificate.exists()


def test_passphrase_protected_ca_signs_with_its_passphrase_file(session: Session) -> None:
    root = session.root
    passphrase = root / "passphrase"
    passphrase.write_text("a long passphrase\n")
    passphrase.chmod(0o600)
    ca, op = AuthorityLayout(root / "ca"), ClientLayout(root / "olga")
    session.ok(
        "pki", "init", "--federation", "hospitals", "--dir", ca.root,
        "--passphrase-file", passphrase,
    )  # fmt: skip
    session.ok(
        "client", "enrol", "--federation", "hospitals", "--name", "olga", "--dir", op.root,
        "--role", "operator",
    )  # fmt: skip
    sign = ("pki", "sign", op.request, "--dir", ca.root, "--role", "operator", "--name", "olga")
    assert "needs a passphrase" in session.refused(*sign, "--out", root / "x.pem")
    session.ok(*sign, "--out", root / "olga.pem", "--passphrase-file", passphrase)
    session.ok(
        "client",
        "install-certificate",
        root / "olga.pem",
        "--dir",
        op.root,
        "--ca",
        ca.ca_certificate,
    )
    assert not op.local.root.exists()


def test_no_private_key_material_appears_in_any_output(session: Session) -> None:
    ca, alice, issued = _enrolled(session)
    session.ok("pki", "list", "--dir", ca.root)
    session.ok("pki", "show", "alice", "--dir", ca.root)
    session.ok("pki", "show", alice.certificate)
    session.ok("pki", "renew", issued, "--dir", ca.root, "--out", session.root / "r.pem")
    session.ok("pki", "revoke", "alice", "--dir", ca.root, "--reason", "superseded")
    session.refused(
        "client", "enrol", "--federation", "hospitals", "--name", "alice", "--dir", alice.root
    )
    text = "\n".join(session.outputs)
    assert "PRIVATE KEY" not in text
    fragments = _private_key_fragments(ca.ca_key, alice.key, alice.node_key, alice.local.server_key)
    assert fragments
    assert not [fragment for fragment in fragments if fragment in text]
    # Nor a long base64 run that decodes to anything at all (a key printed another way).
    for run in re.findall(r"[A-Za-z0-9+/=]{60,}", text):
        assert not base64.b64decode(run + "==", validate=False).startswith(b"openssh-key-v1")
