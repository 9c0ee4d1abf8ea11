"""A member's side of enrolment: make the key and CSR, later install what the CA returned.

Two steps, so the private key never leaves the member's machine:

1. :func:`create_enrolment_request` makes the P-384 key (PKCS#8 for TLS and the
   same key in OpenSSH format for Flower's SuperNode, both 0600), the CSR asking
   for ``spiffe://<federation>/<role>/<name>``, and — for a client — the loopback
   TLS material. The CSR goes to the CA operator (``ztfl pki sign``).
2. :func:`install_certificate` checks the returned certificate (this folder's key,
   chained to the given CA, the identity asked for, valid now) and installs it with
   the trust anchors: the CA certificate, the coordinator's model-signing anchor and
   the allow-list of app-bundle hashes.
"""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ztfl.trust.keys import SigningKeyError, read_verifying_key

from .authority import SIGNATURE_HASH
from .errors import PkiError, PkiErrorReason
from .identity import Identity, Role
from .keyfiles import (
    generate_private_key,
    read_private_key,
    write_openssh_private_key,
    write_private_key,
    write_public_file,
)
from .layout import ClientLayout
from .local_tls import create_local_tls
from .verification import (
    CertificateRefused,
    certificate_identity,
    federation_of_authority,
    load_certificate_pem,
    public_key_der,
)

__all__ = [
    "APP_BUNDLE_ALLOW_LIST_FORMAT",
    "create_enrolment_request",
    "install_certificate",
    "normalise_app_bundle_hash",
    "read_app_bundle_allow_list",
    "read_enrolment",
]

APP_BUNDLE_ALLOW_LIST_FORMAT: Final = "ztfl-app-bundle-allow-list"
_ENROLMENT_FORMAT: Final = "ztfl-enrolment"
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
_MAX_FILE_BYTES: Final = 1024 * 1024


def create_enrolment_request(
    client_dir: Path, federation: str, name: str, role: Role = Role.CLIENT
) -> ClientLayout:
    """Make this member's key, its CSR and (clients) the loopback TLS; returns the layout.

    Refuses a folder that already holds a key: re-enrolling a key is ``renew``'s job,
    and a new key is a new folder.
    """
    identity = Identity(federation, role, name)
    layout = ClientLayout(Path(client_dir))
    layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if layout.key.exists() or layout.node_key.exists():
        raise PkiError(
            PkiErrorReason.ALREADY_EXISTS,
            f"{layout.root} already holds a key; enrol a new key in a new folder",
        )
    key = generate_private_key()
    write_private_key(layout.key, key)
    write_openssh_private_key(layout.node_key, key)
    write_public_file(
        layout.node_public_key,
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + f" {identity.spiffe_id}\n".encode(),
    )
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, identity.federation),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.role.value),
                    x509.NameAttribute(NameOID.COMMON_NAME, identity.name),
                ]
            )
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.spiffe_id)]),
            critical=False,
        )
        .sign(key, SIGNATURE_HASH)
    )
    write_public_file(layout.request, request.public_bytes(serialization.Encoding.PEM))
    document = {
        "format": _ENROLMENT_FORMAT,
        "version": 1,
        "spiffe_id": identity.spiffe_id,
        "federation": identity.federation,
        "role": identity.role.value,
        "name": identity.name,
    }
    write_public_file(layout.enrolment, (json.dumps(document, indent=2) + "\n").encode())
    if role is Role.CLIENT:
        create_local_tls(layout.local.root)
    return layout


def read_enrolment(client_dir: Path) -> Identity:
    """The identity a folder enrolled for; PkiError(BAD_FILE) if it is not an enrolment."""
    layout = ClientLayout(Path(client_dir))
    try:
        document = json.loads(layout.enrolment.read_text(encoding="utf-8"))
        if document.get("format") != _ENROLMENT_FORMAT:
            raise ValueError("not a ztfl enrolment file")
        return Identity.parse(document["spiffe_id"])
    except OSError as error:
        raise PkiError(
            PkiErrorReason.BAD_FILE,
            f"{layout.root} is not an enrolment folder ({error.strerror or error}); "
            "run `ztfl client enrol` first",
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise PkiError(PkiErrorReason.BAD_FILE, f"{layout.enrolment}: {error}") from None


def _read_small(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise PkiError(PkiErrorReason.BAD_FILE, f"{path} is too large for a {what}")
        return path.read_bytes()
    except OSError as error:
        raise PkiError(
            PkiErrorReason.BAD_FILE, f"cannot read the {what} {path}: {error.strerror or error}"
        ) from None


def normalise_app_bundle_hash(value: str) -> str:
    """Lower-case hex SHA-256 of an app bundle; PkiError(BAD_VALUE) unless 64 hex digits."""
    text = value.strip().lower()
    if not _SHA256_HEX.fullmatch(text):
        raise PkiError(
            PkiErrorReason.BAD_VALUE,
            f"{value.strip()[:80]!r} is not an app-bundle SHA-256 (64 hex digits)",
        )
    return text


def _write_app_bundle_allow_list(path: Path, hashes: Iterable[str]) -> tuple[str, ...]:
    allowed = tuple(sorted({normalise_app_bundle_hash(value) for value in hashes}))
    if not allowed:
        raise PkiError(
            PkiErrorReason.BAD_VALUE, "a client needs at least one approved app-bundle hash"
        )
    document = {"format": APP_BUNDLE_ALLOW_LIST_FORMAT, "version": 1, "sha256": list(allowed)}
    write_public_file(path, (json.dumps(document, indent=2) + "\n").encode())
    return allowed


def read_app_bundle_allow_list(path: Path) -> frozenset[str]:
    """The approved app-bundle hashes (lower-case hex); PkiError(BAD_FILE) on any problem.

    The sidecar refuses every bundle when this fails: no list, no code.
    """
    path = Path(path)
    data = _read_small(path, "app-bundle allow-list")
    try:
        document = json.loads(data)
        if document.get("format") != APP_BUNDLE_ALLOW_LIST_FORMAT:
            raise ValueError(f"not a {APP_BUNDLE_ALLOW_LIST_FORMAT} file")
        values = document["sha256"]
        if not isinstance(values, list) or not values:
            raise ValueError("sha256 must list at least one hash")
        if any(not isinstance(v, str) or not _SHA256_HEX.fullmatch(v) for v in values):
            raise ValueError("every entry must be 64 lower-case hex digits")
        return frozenset(values)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise PkiError(PkiErrorReason.BAD_FILE, f"{path}: {error}") from None


def _anchor_references(anchor: Path, document: dict[str, object]) -> list[PurePosixPath]:
    """The files a trust-anchor TOML names, as relative paths inside its folder."""
    named: list[object] = []
    keys = document.get("public-keys")
    if not isinstance(keys, list) or not keys:
        raise PkiError(
            PkiErrorReason.BAD_FILE, f"{anchor}: public-keys must list at least one PEM file"
        )
    named.extend(keys)
    if "revocation-list" in document:
        named.append(document["revocation-list"])
    references = []
    for item in named:
        if not isinstance(item, str) or not item:
            raise PkiError(PkiErrorReason.BAD_FILE, f"{anchor}: file names must be strings")
        relative = PurePosixPath(item)
        if relative.is_absolute() or ".." in relative.parts:
            raise PkiError(
                PkiErrorReason.BAD_FILE,
                f"{anchor}: {item!r} must be a path relative to the anchor's folder, inside it",
            )
        references.append(relative)
    return references


def _install_trust_anchor(source: Path, layout: ClientLayout) -> None:
    """Copy the anchor made by ``ztfl coordinator init`` and the files it names."""
    source = Path(source)
    try:
        document = tomllib.loads(_read_small(source, "trust anchor").decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise PkiError(PkiErrorReason.BAD_FILE, f"{source}: not a trust anchor ({error})") from None
    run_id = document.get("run-id")
    if not isinstance(run_id, str) or not run_id:
        raise PkiError(PkiErrorReason.BAD_FILE, f"{source}: run-id must be a non-empty string")
    references = _anchor_references(source, document)
    for relative in references[: len(document["public-keys"])]:
        try:
            read_verifying_key(source.parent / relative)
        except SigningKeyError as error:
            raise PkiError(PkiErrorReason.BAD_FILE, f"{source}: {error}") from None
    target = layout.trust_anchor_dir
    staging = target.with_name(f".{target.name}.new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o755)
    for relative in references:
        destination = staging / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        write_public_file(destination, _read_small(source.parent / relative, "anchor file"))
    write_public_file(staging / layout.trust_anchor.name, source.read_bytes())
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def install_certificate(
    client_dir: Path,
    certificate_path: Path,
    ca_certificate_path: Path,
    *,
    trust_anchor: Path | None,
    app_bundles: Sequence[str],
    require_client_anchors: bool = True,
    now: datetime | None = None,
) -> Identity:
    """Check the issued certificate and install it with the member's trust anchors.

    The certificate must be for this folder's key, signed by the given federation CA,
    carry exactly the identity enrolled for, and be valid now. A client needs the
    coordinator's trust anchor and at least one app-bundle hash (unless
    ``require_client_anchors`` is False, for tests of the PKI alone); an operator
    needs neither. Nothing is written unless every check passes.
    """
    layout = ClientLayout(Path(client_dir))
    enrolled = read_enrolment(layout.root)
    try:
        certificate = load_certificate_pem(
            _read_small(Path(certificate_path), "certificate"), certificate_path
        )
        ca = load_certificate_pem(
            _read_small(Path(ca_certificate_path), "CA certificate"), ca_certificate_path
        )
        ca_federation = federation_of_authority(ca)
        identity = certificate_identity(certificate)
    except CertificateRefused as refusal:
        raise PkiError(PkiErrorReason.BAD_FILE, refusal.message) from None
    key = read_private_key(layout.key)
    own = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if public_key_der(certificate) != own:
        raise PkiError(
            PkiErrorReason.KEY_MISMATCH,
            f"{certificate_path} is not for this folder's key ({layout.key})",
        )
    try:
        ca.verify_directly_issued_by(ca)
        certificate.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        raise PkiError(
            PkiErrorReason.UNTRUSTED, f"{certificate_path} is not signed by {ca_certificate_path}"
        ) from None
    if ca_federation != enrolled.federation or identity != enrolled:
        raise PkiError(
            PkiErrorReason.IDENTITY_MISMATCH,
            f"the certificate is for {identity.spiffe_id} (CA of {ca_federation!r}); "
            f"this folder enrolled as {enrolled.spiffe_id}",
        )
    moment = now or datetime.now(UTC)
    if not certificate.not_valid_before_utc <= moment <= certificate.not_valid_after_utc:
        raise PkiError(
            PkiErrorReason.UNTRUSTED,
            f"the certificate is valid {certificate.not_valid_before_utc:%Y-%m-%d} to "
            f"{certificate.not_valid_after_utc:%Y-%m-%d}, not now",
        )
    if enrolled.role is Role.CLIENT and require_client_anchors:
        if trust_anchor is None:
            raise PkiError(
                PkiErrorReason.BAD_VALUE,
                "a client needs the coordinator's trust anchor (ztfl coordinator init)",
            )
        if not app_bundles:
            raise PkiError(
                PkiErrorReason.BAD_VALUE, "a client needs at least one approved app-bundle hash"
            )
    hashes = [normalise_app_bundle_hash(value) for value in app_bundles]
    if trust_anchor is not None:
        _install_trust_anchor(Path(trust_anchor), layout)
    if hashes:
        _write_app_bundle_allow_list(layout.app_bundle_allow_list, hashes)
    write_public_file(layout.ca_certificate, ca.public_bytes(serialization.Encoding.PEM))
    write_public_file(layout.certificate, certificate.public_bytes(serialization.Encoding.PEM))
    return identity
