"""Private key files: ECDSA P-384, created 0600, refused on load when others can read them.

P-384 with SHA-384 for every PKI key: ECDSA because Flower's SuperNode
authentication signs with the node's ECDSA key, and a client's certificate key
*is* its node key; P-384 because Flower accepts any NIST curve (it generates
P-384 itself) and it gives a margin over P-256 for a CA meant to live for years.

A key file another user can read is a leaked key: loading one raises
``PkiError(KEY_FILE_PERMISSIONS)`` rather than using it. Keys are never printed;
their ``repr`` comes from ``cryptography`` and holds no key material.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ztfl.trust.durable_files import create_new_file, write_atomically

from .errors import PkiError, PkiErrorReason

__all__ = [
    "CURVE",
    "check_private_key_file",
    "generate_private_key",
    "read_passphrase_file",
    "read_private_key",
    "write_openssh_private_key",
    "write_private_key",
    "write_public_file",
]

CURVE: Final = ec.SECP384R1()
_MAX_KEY_FILE_BYTES: Final = 64 * 1024


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-384 key from the operating system's CSPRNG."""
    return ec.generate_private_key(CURVE)


def _create_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` 0600 and write ``data``; never replaces an existing file."""
    try:
        create_new_file(path, data, 0o600)
    except FileExistsError:
        raise PkiError(
            PkiErrorReason.ALREADY_EXISTS, f"{path} already exists; refusing to overwrite a key"
        ) from None


def write_private_key(
    path: Path, key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None
) -> None:
    """PKCS#8 PEM, mode 0600, encrypted when ``passphrase`` is given; refuses to overwrite."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    _create_private_file(Path(path), pem)


def write_openssh_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """OpenSSH private key format, mode 0600, unencrypted: what Flower's SuperNode loads
    (``load_ssh_private_key(data, None)``, so it cannot take a passphrase)."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    _create_private_file(Path(path), data)


def write_public_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with public ``data`` (certificate, CRL, public key), 0644."""
    write_atomically(Path(path), data)
    os.chmod(path, 0o644)


def check_private_key_file(path: Path) -> None:
    """Refuse a key file that is not a regular file or that its group or others may read.

    Call it before handing a key path to a library that reads the file itself
    (``ssl.SSLContext.load_cert_chain``, Flower's SuperNode).
    """
    path = Path(path)
    try:
        status = path.stat()
    except OSError as error:
        raise PkiError(
            PkiErrorReason.BAD_KEY, f"cannot read the key file {path}: {error.strerror or error}"
        ) from None
    if not stat.S_ISREG(status.st_mode):
        raise PkiError(PkiErrorReason.BAD_KEY, f"{path} is not a regular file")
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o077:
        raise PkiError(
            PkiErrorReason.KEY_FILE_PERMISSIONS,
            f"{path} has mode {mode:04o}: a private key must be readable by its owner only; "
            f"run `chmod 600 {path}` if no one else has read it, otherwise treat the key as "
            "compromised (revoke and re-enrol)",
        )
    if status.st_size > _MAX_KEY_FILE_BYTES:
        raise PkiError(PkiErrorReason.BAD_KEY, f"{path} is {status.st_size} bytes; not a key file")


def read_private_key(path: Path, passphrase: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """Load a PEM P-384 private key after :func:`check_private_key_file`."""
    path = Path(path)
    check_private_key_file(path)
    data = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, passphrase)
    except TypeError:
        needs = "needs a passphrase" if passphrase is None else "is not encrypted"
        raise PkiError(PkiErrorReason.BAD_KEY, f"{path}: the key {needs}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise PkiError(
            PkiErrorReason.BAD_KEY, f"{path}: not a PEM private key, or the passphrase is wrong"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
        raise PkiError(PkiErrorReason.BAD_KEY, f"{path}: not an ECDSA P-384 key")
    return key


def read_passphrase_file(path: Path) -> bytes:
    """The passphrase in ``path`` (first line, without its line end); refused when empty
    or readable by others, like a key."""
    check_private_key_file(path)
    lines = Path(path).read_bytes().splitlines()
    if not lines or not lines[0]:
        raise PkiError(PkiErrorReason.BAD_KEY, f"{path}: the passphrase file is empty")
    return lines[0]
