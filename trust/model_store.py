"""The coordinator's content-addressed store of committed global models.

Layout (one folder per model, named by the manifest digest)::

    <root>/<digest>/manifest.json
    <root>/<digest>/tensors/000000.safetensors …
    <root>/<digest>/model.sig
    <root>/.staging/             half-written commits; never read

A commit is written into ``.staging``, every file and folder fsynced, then
renamed into place, so a crash leaves either the whole entry or none. Each
folder verifies with ``ztfl model verify`` and with OpenSSF model-signing.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .dsse import read_bundle
from .durable_files import fsync_directory
from .encoding import require_digest
from .keys import VerifyingKey
from .manifest import ModelManifest
from .refusal import ModelRefusal
from .signing import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    SignedManifest,
    model_resources,
    read_model_statement,
    verify_signed_manifest,
)
from .tensor_files import (
    TensorFileError,
    parallel_map,
    read_tensor_file,
    tensor_file_name,
    write_tensor_file,
)

__all__ = ["ModelStore", "ModelStoreError"]

_STAGING = ".staging"


class ModelStoreError(Exception):
    """A store entry that is missing, corrupted or inconsistent; ``path`` names the file."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class ModelStore:
    """Signed global models by digest: commit, load (verified), list, walk lineage."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        """The folder of model ``digest`` (whether or not it exists)."""
        try:
            require_digest(digest, "digest")
        except (ValueError, TypeError) as error:
            raise ModelStoreError(self.root, str(error)) from error
        return self.root / digest

    def __contains__(self, digest: object) -> bool:
        return isinstance(digest, str) and (self.path(digest) / MANIFEST_FILE).is_file()

    def commit(self, arrays: Sequence[tuple[str, np.ndarray]], signed: SignedManifest) -> Path:
        """Write the model atomically; idempotent for a digest already stored. Returns its folder.

        The arrays are hashed while they are written and must match the
        manifest, and the signature bundle must cover exactly these files (its
        signature itself is checked by whoever holds the public key).
        """
        manifest = signed.manifest
        target = self.path(manifest.digest)
        resources, _ = read_model_statement(read_bundle(signed.bundle).statement())
        if resources != model_resources(manifest):
            raise ValueError("the signature bundle does not cover this manifest's files")
        records = manifest.tensors
        by_name = dict(arrays)
        if len(by_name) != len(arrays) or set(by_name) != {record.name for record in records}:
            raise ValueError("the arrays are not exactly the manifest's tensors")
        if target.exists():
            existing = target / MANIFEST_FILE
            if existing.is_file() and existing.read_bytes() == manifest.to_json():
                return target
            raise ModelStoreError(target, "exists but does not hold this manifest")

        staging_root = self.root / _STAGING
        staging_root.mkdir(parents=True, exist_ok=True)
        staging = staging_root / f"{manifest.digest[:16]}-{secrets.token_hex(8)}"
        try:
            (staging / "tensors").mkdir(parents=True)

            def write(index: int) -> str:
                record = records[index]
                path = staging / tensor_file_name(index)
                return write_tensor_file(path, record.name, by_name[record.name])

            sizes = [record.nbytes for record in records]
            digests = parallel_map(write, list(range(len(records))), sizes)
            for record, digest in zip(records, digests, strict=True):
                if digest != record.sha256:
                    raise ValueError(f"tensor {record.name!r} does not hash to the manifest")
            _write_file(staging / MANIFEST_FILE, manifest.to_json())
            _write_file(staging / SIGNATURE_FILE, signed.bundle)
            fsync_directory(staging / "tensors")
            fsync_directory(staging)
            try:
                os.rename(staging, target)
            except OSError:
                if (target / MANIFEST_FILE).is_file():  # a concurrent commit of the same model won
                    return target
                raise
            fsync_directory(self.root)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return target

    def signed_manifest(self, digest: str) -> SignedManifest:
        """The manifest and signature of a stored model (no tensors read, signature not checked)."""
        folder = self.path(digest)
        manifest_path, signature_path = folder / MANIFEST_FILE, folder / SIGNATURE_FILE
        for path in (manifest_path, signature_path):
            if not path.is_file():
                raise ModelStoreError(path, "missing")
        try:
            manifest = ModelManifest.from_json(manifest_path.read_bytes())
        except ModelRefusal as refusal:
            raise ModelStoreError(manifest_path, refusal.message) from refusal
        if manifest.digest != digest:
            raise ModelStoreError(
                manifest_path, f"hashes to {manifest.digest}, not its folder name"
            )
        bundle = signature_path.read_bytes()
        try:
            resources, _ = read_model_statement(read_bundle(bundle).statement())
        except ModelRefusal as refusal:
            raise ModelStoreError(signature_path, refusal.message) from refusal
        if resources != model_resources(manifest):
            raise ModelStoreError(
                signature_path, "does not cover this folder's manifest and tensors"
            )
        return SignedManifest(manifest, bundle)

    def load(
        self, digest: str, keys: Sequence[VerifyingKey] | None = None
    ) -> tuple[list[tuple[str, np.ndarray]], SignedManifest]:
        """Read a model, verifying every byte against its manifest (and the signature, given keys).

        Raises ModelStoreError naming the first missing, truncated, corrupted or
        unexpected file; ModelRefusal when ``keys`` are given and the signature
        is not by one of them.
        """
        signed = self.signed_manifest(digest)
        if keys is not None:
            verify_signed_manifest(signed, keys)
        folder = self.path(digest)
        expected = set(model_resources(signed.manifest)) | {SIGNATURE_FILE}
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink() or (path.is_file() and relative not in expected):
                raise ModelStoreError(path, "unexpected file in a model folder")
        records = signed.manifest.tensors

        def read(index: int) -> np.ndarray:
            record = records[index]
            path = folder / tensor_file_name(index)
            return read_tensor_file(path, record.name, record.dtype, record.shape, record.sha256)

        try:
            arrays = parallel_map(read, list(range(len(records))), [r.nbytes for r in records])
        except TensorFileError as error:
            raise ModelStoreError(error.path, str(error).removeprefix(f"{error.path}: ")) from error
        return [(record.name, array) for record, array in zip(records, arrays, strict=True)], signed

    def digests(self) -> list[str]:
        """The digests of the stored model folders (their names; nothing inside is read)."""
        if not self.root.is_dir():
            return []
        found = []
        for folder in self.root.iterdir():
            if folder.name == _STAGING or not folder.is_dir():
                continue
            try:
                require_digest(folder.name, "folder")
            except ValueError:
                continue  # not a model folder
            found.append(folder.name)
        return sorted(found)

    def entries(self) -> list[ModelManifest]:
        """Manifests of all stored models, by round then creation time."""
        manifests = [self.signed_manifest(digest).manifest for digest in self.digests()]
        return sorted(manifests, key=lambda item: (item.round, item.created_at, item.digest))

    def chain(self, from_digest: str | None, to_digest: str) -> list[SignedManifest]:
        """Signed manifests after ``from_digest`` up to ``to_digest``, oldest first.

        With ``from_digest=None`` the chain reaches back to the lineage's root.
        This is what a client that last accepted ``from_digest`` needs with
        model ``to_digest``. Raises ModelStoreError if the lineage is broken.
        """
        if from_digest is not None:
            self.path(from_digest)
        result: list[SignedManifest] = []
        digest: str | None = to_digest
        while digest != from_digest:
            if digest is None:
                raise ModelStoreError(self.path(to_digest), f"does not descend from {from_digest}")
            if digest not in self:
                raise ModelStoreError(self.path(digest), "missing from the store: lineage broken")
            signed = self.signed_manifest(digest)
            result.append(signed)
            digest = signed.manifest.parent_digest
        result.reverse()
        return result
