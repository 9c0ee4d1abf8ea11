"""Sign and verify a model folder file by file, as OpenSSF model-signing does, with cryptography.

:func:`verify_model_directory` accepts folders signed by ``model_signing``'s
elliptic-key signer (and by ztfl); :func:`sign_model_directory` writes a
signature ``model_signing.verifying`` accepts. The rules follow model-signing
1.x: every regular file under the folder is a resource named by its POSIX path
relative to the folder; ``.git``, ``.gitattributes``, ``.github``,
``.gitignore`` and the statement's ``ignore_paths`` are skipped; symbolic links
are refused. ztfl additionally skips the signature file being checked when it
lies inside the folder.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .dsse import read_bundle, write_bundle
from .keys import SigningKey, VerifyingKey
from .manifest import ModelManifest
from .refusal import ModelRefusal, ModelRefusalReason
from .signing import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    model_resources,
    model_statement,
    read_model_statement,
)
from .tensor_files import parallel_map

__all__ = ["VerifiedDirectory", "hash_directory", "sign_model_directory", "verify_model_directory"]

GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")
_CHUNK_BYTES = 8 << 20
_MISMATCH = ModelRefusalReason.TENSOR_MISMATCH


@dataclass(frozen=True)
class VerifiedDirectory:
    """A verified folder: the signer, its files' digests and, for a ztfl model, its manifest."""

    key: VerifyingKey
    resources: dict[str, str]
    manifest: ModelManifest | None


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb") as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def _ignored(relative: PurePosixPath, ignore: Sequence[PurePosixPath]) -> bool:
    return any(relative == item or item in relative.parents for item in ignore)


def hash_directory(root: Path, ignore_paths: Sequence[str] = ()) -> dict[str, str]:
    """SHA-256 of every regular file under ``root`` (relative POSIX name → hex), across cores."""
    root = Path(root)
    if not root.is_dir() or root.is_symlink():
        raise ModelRefusal(_MISMATCH, f"{root} is not a folder")
    ignore = [PurePosixPath(path) for path in (*GIT_PATHS, *ignore_paths)]
    files: list[tuple[str, Path]] = []
    for directory, subdirectories, names in os.walk(root, followlinks=False):
        here = Path(directory)
        for name in sorted(subdirectories + names):
            path = here / name
            relative = PurePosixPath(path.relative_to(root).as_posix())
            if _ignored(relative, ignore):
                continue
            if path.is_symlink():
                raise ModelRefusal(_MISMATCH, f"{path}: symbolic links are not allowed in a model")
            if path.is_file():
                files.append((str(relative), path))
            elif not path.is_dir():
                raise ModelRefusal(_MISMATCH, f"{path}: not a regular file")
        subdirectories[:] = [
            name
            for name in subdirectories
            if not _ignored(PurePosixPath((here / name).relative_to(root).as_posix()), ignore)
        ]
    sizes = [path.stat().st_size for _, path in files]
    digests = parallel_map(lambda item: _hash_file(item[1]), files, sizes)
    return {name: digest for (name, _), digest in zip(files, digests, strict=True)}


def _signature_inside(root: Path, signature_path: Path) -> list[str]:
    try:
        return [signature_path.resolve().relative_to(root.resolve()).as_posix()]
    except ValueError:
        return []


def sign_model_directory(root: Path, key: SigningKey, signature_path: Path | None = None) -> Path:
    """Sign every file of a folder (model-signing's file serialization); returns the signature."""
    root = Path(root)
    signature_path = root / SIGNATURE_FILE if signature_path is None else Path(signature_path)
    ignore = _signature_inside(root, signature_path)
    resources = hash_directory(root, ignore)
    statement = model_statement(resources, name=root.resolve().name, ignore_paths=ignore)
    signature_path.write_bytes(write_bundle(statement, key))
    return signature_path


def _difference(actual: dict[str, str], expected: dict[str, str]) -> str:
    extra = sorted(actual.keys() - expected.keys())
    missing = sorted(expected.keys() - actual.keys())
    changed = sorted(
        name for name in actual.keys() & expected.keys() if actual[name] != expected[name]
    )
    parts = []
    if changed:
        parts.append(f"content differs: {', '.join(changed[:5])}")
    if missing:
        parts.append(f"missing: {', '.join(missing[:5])}")
    if extra:
        parts.append(f"not signed: {', '.join(extra[:5])}")
    return "; ".join(parts)


def verify_model_directory(
    root: Path, keys: Sequence[VerifyingKey], signature_path: Path | None = None
) -> VerifiedDirectory:
    """Verify a signed folder; raises ModelRefusal naming the first kind of problem.

    The signature must be by one of ``keys`` (UNKNOWN_KEY, BAD_SIGNATURE), the
    files must hash to the signed digests with none extra or missing
    (TENSOR_MISMATCH, naming the files). If ``manifest.json`` is signed, it
    must parse and describe exactly the signed tensor files.
    """
    root = Path(root)
    signature_path = root / SIGNATURE_FILE if signature_path is None else Path(signature_path)
    try:
        bundle = signature_path.read_bytes()
    except OSError as error:
        raise ModelRefusal(
            ModelRefusalReason.MALFORMED_MANIFEST,
            f"cannot read signature {signature_path}: {error.strerror or error}",
        ) from error
    envelope = read_bundle(bundle)
    key = envelope.verify(keys)
    resources, ignore = read_model_statement(envelope.statement())
    actual = hash_directory(root, [*ignore, *_signature_inside(root, signature_path)])
    if actual != resources:
        raise ModelRefusal(_MISMATCH, f"{root}: {_difference(actual, resources)}")
    manifest = None
    if MANIFEST_FILE in resources:
        manifest = ModelManifest.from_json((root / MANIFEST_FILE).read_bytes())
        if model_resources(manifest) != resources:
            raise ModelRefusal(
                ModelRefusalReason.BAD_SIGNATURE,
                f"{root}: the signed files are not exactly the manifest's tensor files",
            )
    return VerifiedDirectory(key, resources, manifest)
