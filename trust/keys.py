"""The coordinator's model-signing key: ECDSA P-256, PEM files, key ids.

A model-signing key is its own key pair, never the coordinator's TLS key: it
lives longer than a certificate, it is pinned by clients out of band, and its
compromise is handled differently (docs/signing.md). Only P-256 is accepted —
the curve OpenSSF model-signing and Sigstore bundles support everywhere; other
curves, RSA and Ed25519 keys are refused with :class:`SigningKeyError`.

The key id is the lower-case hex SHA-256 of the public key's DER
SubjectPublicKeyInfo.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .durable_files import create_new_file

__all__ = [
    "SigningKey",
    "SigningKeyError",
    "VerifyingKey",
    "generate_signing_key",
    "read_signing_key",
    "read_verifying_key",
    "write_signing_key",
    "write_verifying_key",
]

# PEM key files are small; anything larger is not a key.
_MAX_KEY_FILE_BYTES = 64 * 1024


class SigningKeyError(ValueError):
    """A key file or key object that cannot be used for model signing."""


def _describe(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"an ECDSA key on {key.curve.name}"
    name = type(key).__name__.lstrip("_")
    for family in ("Ed25519", "Ed448", "RSA", "DSA", "X25519", "X448"):
        if family in name:
            return f"an {family} key" if family[0] in "AEIOUX" else f"a {family} key"
    return f"a {name}"


def _require_p256_public(key: object) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SigningKeyError(
            f"model signing needs an ECDSA P-256 (secp256r1) key, got {_describe(key)}"
        )
    return key


class VerifyingKey:
    """A P-256 public key that checks model signatures; compared by key id."""

    def __init__(self, public_key: ec.EllipticCurvePublicKey) -> None:
        self._key = _require_p256_public(public_key)
        self._spki_der = self._key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.key_id: str = hashlib.sha256(self._spki_der).hexdigest()

    @property
    def model_signing_hint(self) -> str:
        """The key hint OpenSSF model-signing 1.x writes: SHA-256 hex of the PEM SPKI."""
        return hashlib.sha256(self.to_pem()).hexdigest()

    def to_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM."""
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def from_pem(cls, data: bytes) -> VerifyingKey:
        """Load a SubjectPublicKeyInfo PEM; non-P-256 keys raise :class:`SigningKeyError`."""
        if not isinstance(data, bytes):
            raise SigningKeyError(f"public key PEM must be bytes, got {type(data).__name__}")
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as error:
            raise SigningKeyError(f"not a PEM public key ({error})") from error
        return cls(_require_p256_public(key))

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when ``signature`` (DER ECDSA over SHA-256) is valid for ``data``."""
        try:
            self._key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyingKey) and other.key_id == self.key_id

    def __hash__(self) -> int:
        return hash(self.key_id)

    def __repr__(self) -> str:
        return f"VerifyingKey(key_id={self.key_id[:16]}…)"


class SigningKey:
    """A P-256 private key that signs model manifests and trust statements."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key, ec.EllipticCurvePrivateKey):
            raise SigningKeyError(
                f"model signing needs an ECDSA P-256 (secp256r1) key, got {_describe(private_key)}"
            )
        self._public = VerifyingKey(private_key.public_key())
        self._key = private_key
        self.key_id: str = self._public.key_id

    def public_key(self) -> VerifyingKey:
        """The matching verifying key."""
        return self._public

    def sign(self, data: bytes) -> bytes:
        """DER-encoded ECDSA signature over SHA-256 of ``data``."""
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    def to_pem(self, passphrase: bytes | None = None) -> bytes:
        """PKCS#8 PEM, encrypted with ``passphrase`` when one is given."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id[:16]}…)"


def generate_signing_key() -> SigningKey:
    """A fresh P-256 key from the operating system's CSPRNG."""
    return SigningKey(ec.generate_private_key(ec.SECP256R1()))


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` and write ``data``; an existing file is never replaced."""
    try:
        create_new_file(path, data, mode)
    except FileExistsError as error:
        raise SigningKeyError(f"{path} already exists; refusing to overwrite a key") from error


def write_signing_key(key: SigningKey, path: Path, passphrase: bytes | None = None) -> None:
    """Write the private key as PKCS#8 PEM with mode 0600; refuses to overwrite a file."""
    _write_new_file(Path(path), key.to_pem(passphrase), 0o600)


def write_verifying_key(key: VerifyingKey, path: Path) -> None:
    """Write the public key as SubjectPublicKeyInfo PEM (mode 0644); refuses to overwrite."""
    _write_new_file(Path(path), key.to_pem(), 0o644)


def _read_key_file(path: Path) -> bytes:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > _MAX_KEY_FILE_BYTES:
            raise SigningKeyError(f"{path} is {size} bytes; not a PEM key file")
        return path.read_bytes()
    except OSError as error:
        raise SigningKeyError(f"cannot read {path}: {error.strerror or error}") from error


def read_signing_key(path: Path, passphrase: bytes | None = None) -> SigningKey:
    """Load a PEM private key (PKCS#8 or SEC1), decrypting with ``passphrase`` if given."""
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, passphrase)
    except TypeError as error:  # encrypted without passphrase, or passphrase for a plain key
        raise SigningKeyError(f"{path}: {error}") from error
    except (ValueError, UnsupportedAlgorithm) as error:
        raise SigningKeyError(
            f"{path}: not a PEM private key, or the passphrase is wrong ({error})"
        ) from error
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SigningKeyError(
            f"{path}: model signing needs an ECDSA P-256 (secp256r1) key, got {_describe(key)}"
        )
    return SigningKey(key)


def read_verifying_key(path: Path) -> VerifyingKey:
    """Load a SubjectPublicKeyInfo PEM public key (P-256 only)."""
    data = _read_key_file(path)
    try:
        return VerifyingKey.from_pem(data)
    except SigningKeyError as error:
        raise SigningKeyError(f"{path}: {error}") from error
