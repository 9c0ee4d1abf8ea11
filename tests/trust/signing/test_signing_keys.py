"""Model-signing keys: P-256 only, PEM files with mode 0600, never overwritten, key ids."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ztfl.trust.keys import (
    SigningKey,
    SigningKeyError,
    VerifyingKey,
    generate_signing_key,
    read_signing_key,
    read_verifying_key,
    write_signing_key,
    write_verifying_key,
)


def test_key_id_is_sha256_of_the_spki_der(key: SigningKey) -> None:
    der = serialization.load_pem_public_key(key.public_key().to_pem()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key.key_id == hashlib.sha256(der).hexdigest() == key.public_key().key_id


def test_private_key_file_round_trips_with_mode_0600(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "signing.pem"
    write_signing_key(key, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in path.read_bytes()  # PKCS#8
    assert read_signing_key(path).key_id == key.key_id


def test_writing_a_key_never_overwrites_an_existing_file(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "signing.pem"
    path.write_bytes(b"precious")
    with pytest.raises(SigningKeyError, match="refusing to overwrite"):
        write_signing_key(key, path)
    with pytest.raises(SigningKeyError, match="refusing to overwrite"):
        write_verifying_key(key.public_key(), path)
    assert path.read_bytes() == b"precious"


def test_encrypted_key_needs_the_right_passphrase(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "signing.pem"
    write_signing_key(key, path, passphrase=b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    assert read_signing_key(path, passphrase=b"correct horse").key_id == key.key_id
    with pytest.raises(SigningKeyError):
        read_signing_key(path, passphrase=b"wrong")
    with pytest.raises(SigningKeyError):
        read_signing_key(path)


def test_public_key_file_round_trips(tmp_path: Path, key: SigningKey) -> None:
    path = tmp_path / "signing.pub"
    write_verifying_key(key.public_key(), path)
    assert read_verifying_key(path) == key.public_key()


@pytest.mark.parametrize(
    "private_key",
    [
        ed25519.Ed25519PrivateKey.generate(),
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=1024),
    ],
    ids=["ed25519", "p384", "rsa"],
)
def test_keys_other_than_p256_are_refused_clearly(tmp_path: Path, private_key: object) -> None:
    assert isinstance(
        private_key,
        ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    )
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "private.pem").write_bytes(private_pem)
    (tmp_path / "public.pem").write_bytes(public_pem)
    with pytest.raises(SigningKeyError, match="P-256"):
        read_signing_key(tmp_path / "private.pem")
    with pytest.raises(SigningKeyError, match="P-256"):
        read_verifying_key(tmp_path / "public.pem")


@pytest.mark.parametrize(
    "content", [b"", b"not a key", b"\x00" * 100, b"-----BEGIN PUBLIC KEY-----\n"]
)
def test_garbage_key_files_are_refused_clearly(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(content)
    with pytest.raises(SigningKeyError):
        read_signing_key(path)
    with pytest.raises(SigningKeyError):
        read_verifying_key(path)


def test_missing_key_file_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="cannot read"):
        read_verifying_key(tmp_path / "absent.pem")


def test_signatures_verify_only_under_the_matching_key(key: SigningKey) -> None:
    other = generate_signing_key()
    signature = key.sign(b"payload")
    assert key.public_key().verify(signature, b"payload")
    assert not key.public_key().verify(signature, b"payload!")
    assert not other.public_key().verify(signature, b"payload")
    assert not VerifyingKey.from_pem(key.public_key().to_pem()).verify(b"garbage", b"payload")
