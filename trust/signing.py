"""Signing model manifests in OpenSSF model-signing's format, and checking those signatures.

A signed model is the in-toto statement model-signing 1.x signs for a folder
(predicate ``https://model_signing/signature/v1.0``, file serialization, SHA-256)
over the folder ztfl stores::

    manifest.json                  the manifest's canonical JSON (its digest is the model's digest)
    tensors/000000.safetensors     one canonical safetensors file per tensor
    …
    model.sig                      the bundle (listed in ignore_paths, as model-signing's CLI does)

Because each tensor file's SHA-256 is the manifest's tensor hash, the statement
is computed from the manifest alone: :func:`sign_manifest` needs no weights, a
client checks the statement against the manifest it received, and
``model_signing.verifying`` checks the stored folder (docs/decisions/0007).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from .dsse import IN_TOTO_STATEMENT_TYPE, read_bundle, write_bundle
from .encoding import parse_json_object, require_digest
from .keys import SigningKey, VerifyingKey
from .manifest import ModelManifest, RefusedUpdate, hash_tensors
from .refusal import ModelRefusal, ModelRefusalReason
from .tensor_files import tensor_file_name

__all__ = [
    "MANIFEST_FILE",
    "MODEL_SIGNING_PREDICATE_TYPE",
    "SIGNATURE_FILE",
    "SignedManifest",
    "build_manifest",
    "model_resources",
    "model_statement",
    "read_model_statement",
    "sign_manifest",
    "verify_signed_manifest",
]

MODEL_SIGNING_PREDICATE_TYPE = "https://model_signing/signature/v1.0"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "model.sig"
SIGNED_MANIFEST_FORMAT = "ztfl.signed-manifest/v1"
_MALFORMED = ModelRefusalReason.MALFORMED_MANIFEST


def model_resources(manifest: ModelManifest) -> dict[str, str]:
    """The files of a stored model and their SHA-256: what the signature covers."""
    resources = {MANIFEST_FILE: manifest.digest}
    for index, record in enumerate(manifest.tensors):
        resources[tensor_file_name(index)] = record.sha256
    return resources


def model_statement(
    resources: Mapping[str, str], name: str, ignore_paths: Sequence[str] = (SIGNATURE_FILE,)
) -> dict[str, Any]:
    """The in-toto statement model-signing 1.x signs for files with these digests."""
    names = sorted(resources)
    root = hashlib.sha256(b"".join(bytes.fromhex(resources[item]) for item in names))
    return {
        "_type": IN_TOTO_STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": root.hexdigest()}}],
        "predicateType": MODEL_SIGNING_PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": False,
                "ignore_paths": list(ignore_paths),
            },
            "resources": [
                {"name": item, "algorithm": "sha256", "digest": resources[item]} for item in names
            ],
        },
    }


def read_model_statement(statement: Mapping[str, Any]) -> tuple[dict[str, str], tuple[str, ...]]:
    """(resource name → SHA-256, ignore_paths) of a model-signing v1.0 statement.

    Refuses other predicates, serializations other than whole files with
    SHA-256, duplicate resources, and a subject digest that is not the hash of
    the resource digests (model-signing's own consistency rule).
    """
    try:
        if statement.get("predicateType") != MODEL_SIGNING_PREDICATE_TYPE:
            raise ValueError(f"predicate type is not {MODEL_SIGNING_PREDICATE_TYPE}")
        subjects = statement.get("subject")
        if (
            not isinstance(subjects, list)
            or len(subjects) != 1
            or not isinstance(subjects[0], dict)
        ):
            raise ValueError("expected exactly one subject")
        subject_digest = subjects[0].get("digest")
        if not isinstance(subject_digest, dict):
            raise ValueError("subject has no digest")
        root = require_digest(subject_digest.get("sha256"), "subject sha256")
        predicate = statement.get("predicate")
        if not isinstance(predicate, dict):
            raise ValueError("no predicate")
        serialization = predicate.get("serialization")
        if not isinstance(serialization, dict) or serialization.get("method") != "files":
            raise ValueError("only the 'files' serialization is supported")
        if serialization.get("hash_type") != "sha256":
            raise ValueError("only SHA-256 resource digests are supported")
        ignore = serialization.get("ignore_paths", [])
        if not isinstance(ignore, list) or not all(isinstance(path, str) for path in ignore):
            raise ValueError("ignore_paths must be a list of strings")
        items = predicate.get("resources")
        if not isinstance(items, list):
            raise ValueError("resources must be a list")
        resources: dict[str, str] = {}
        root_hash = hashlib.sha256()
        for item in items:
            if not isinstance(item, dict) or item.get("algorithm") != "sha256":
                raise ValueError("each resource needs algorithm 'sha256'")
            name = item.get("name")
            if not isinstance(name, str) or not name or name in resources:
                raise ValueError(f"resource name {str(name)[:60]!r} is empty or repeated")
            digest = require_digest(item.get("digest"), f"resource {name[:60]!r}")
            resources[name] = digest
            root_hash.update(bytes.fromhex(digest))
        if root_hash.hexdigest() != root:
            raise ValueError("subject digest is not the hash of the resource digests")
    except (ValueError, TypeError) as error:
        raise ModelRefusal(_MALFORMED, f"model-signing statement: {error}") from error
    return resources, tuple(ignore)


@dataclass(frozen=True)
class SignedManifest:
    """A manifest and the signature bundle (``model.sig`` content) that covers it."""

    manifest: ModelManifest
    bundle: bytes

    @property
    def digest(self) -> str:
        """The model's digest (the manifest's)."""
        return self.manifest.digest

    def to_bytes(self) -> bytes:
        """Transport encoding (e.g. a Flower ConfigRecord value); :meth:`from_bytes` inverts it."""
        return json.dumps(
            {
                "format": SIGNED_MANIFEST_FORMAT,
                "manifest": self.manifest.to_json().decode("utf-8"),
                "bundle": self.bundle.decode("utf-8"),
            },
            separators=(",", ":"),
            ensure_ascii=True,
        ).encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedManifest:
        """Parse :meth:`to_bytes` output (not verified); garbage → MALFORMED_MANIFEST."""
        try:
            obj = parse_json_object(data, "signed manifest")
            if (
                set(obj) != {"format", "manifest", "bundle"}
                or obj["format"] != SIGNED_MANIFEST_FORMAT
            ):
                raise ValueError(f"not a {SIGNED_MANIFEST_FORMAT} object")
            if not isinstance(obj["manifest"], str) or not isinstance(obj["bundle"], str):
                raise TypeError("manifest and bundle must be strings")
            manifest_bytes = obj["manifest"].encode("utf-8")
            bundle = obj["bundle"].encode("utf-8")
        except (ValueError, TypeError, UnicodeEncodeError) as error:
            raise ModelRefusal(_MALFORMED, f"signed manifest: {error}") from error
        read_bundle(bundle)  # format check now, so garbage fails at the edge
        return cls(ModelManifest.from_json(manifest_bytes), bundle)


def sign_manifest(manifest: ModelManifest, key: SigningKey) -> SignedManifest:
    """Sign the statement over the model's files (manifest.json and the tensor files)."""
    statement = model_statement(model_resources(manifest), name=manifest.digest)
    return SignedManifest(manifest, write_bundle(statement, key))


def verify_signed_manifest(signed: SignedManifest, keys: Sequence[VerifyingKey]) -> VerifyingKey:
    """Check that a trusted key signed exactly this manifest's files; return that key.

    Raises ModelRefusal: MALFORMED_MANIFEST, UNKNOWN_KEY, or BAD_SIGNATURE when
    the signature is valid but covers other files (an edited manifest or a
    signature moved from another model).
    """
    envelope = read_bundle(signed.bundle)
    key = envelope.verify(keys)
    resources, _ = read_model_statement(envelope.statement())
    expected = model_resources(signed.manifest)
    if resources != expected:
        if resources.get(MANIFEST_FILE) != expected[MANIFEST_FILE]:
            detail = "manifest.json differs from the signed one (edited or swapped manifest)"
        else:
            detail = "the signed files differ from the manifest's tensors"
        raise ModelRefusal(
            ModelRefusalReason.BAD_SIGNATURE, f"the signature does not cover this model: {detail}"
        )
    return key


def _code_version() -> str:
    try:
        return f"ztfl {version('ztfl')}"
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "ztfl (not installed)"


def build_manifest(
    arrays: Sequence[tuple[str, np.ndarray]],
    *,
    run_id: str,
    round: int,
    parent_digest: str | None,
    pipeline: str,
    participants: Sequence[str],
    refused: Sequence[RefusedUpdate],
    privacy: Mapping[str, object] | None,
    audit_head: str,
    valid_for: timedelta,
    now: datetime | None = None,
    code_version: str | None = None,
) -> ModelManifest:
    """Hash the arrays and describe the model; the manifest expires ``valid_for`` after ``now``."""
    if not isinstance(valid_for, timedelta) or valid_for <= timedelta(0):
        raise ValueError("valid_for must be a positive timedelta")
    created_at = datetime.now(UTC) if now is None else now
    return ModelManifest(
        run_id=run_id,
        round=round,
        parent_digest=parent_digest,
        tensors=hash_tensors(arrays),
        pipeline=pipeline,
        participants=tuple(participants),
        refused=tuple(refused),
        privacy=privacy,
        audit_head=audit_head,
        code_version=_code_version() if code_version is None else code_version,
        created_at=created_at,
        expires_at=created_at + valid_for,
    )
