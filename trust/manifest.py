"""The model manifest: what a committed global model is, where it came from, until when it holds.

A manifest is a frozen value validated when built. Its canonical JSON
(:meth:`ModelManifest.to_json`) is the ``manifest.json`` file of a stored model,
and the SHA-256 of those bytes is the model's digest — the name of its folder in
the model store, the ``parent_digest`` of the next round's manifest, and what a
revocation list names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from types import MappingProxyType
from typing import Any

import numpy as np

from .encoding import (
    canonical_json,
    format_timestamp,
    parse_json_object,
    parse_timestamp,
    require_aware,
    require_digest,
    require_json_value,
    require_keys,
    require_round,
    require_text,
    sha256_hex,
)
from .refusal import ModelRefusal, ModelRefusalReason
from .tensor_files import (
    parallel_map,
    require_dtype,
    require_shape,
    require_tensor_name,
    tensor_nbytes,
    tensor_sha256,
)

__all__ = ["MANIFEST_SCHEMA", "ModelManifest", "RefusedUpdate", "TensorRecord", "hash_tensors"]

MANIFEST_SCHEMA = "ztfl.model-manifest/v1"
MAX_MANIFEST_BYTES = 16 << 20
MAX_TENSORS = 100_000
MAX_PARTICIPANTS = 1_000_000


@dataclass(frozen=True)
class TensorRecord:
    """One tensor: name, numpy dtype name, shape, SHA-256 of its canonical safetensors bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    sha256: str

    def __post_init__(self) -> None:
        require_tensor_name(self.name)
        require_dtype(self.dtype)
        object.__setattr__(self, "shape", require_shape(self.shape))
        require_digest(self.sha256, f"tensor {self.name!r} sha256")

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's data."""
        return tensor_nbytes(self.dtype, self.shape)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, obj: object) -> TensorRecord:
        if not isinstance(obj, dict):
            raise TypeError(f"tensor record: expected an object, got {type(obj).__name__}")
        require_keys(obj, {"name", "dtype", "shape", "sha256"}, "tensor record")
        shape = obj["shape"]
        if not isinstance(shape, list):
            raise TypeError("tensor record shape: expected a list")
        return cls(obj["name"], obj["dtype"], tuple(shape), obj["sha256"])


@dataclass(frozen=True)
class RefusedUpdate:
    """A client update the coordinator refused this round, and why."""

    node_id: str
    reason: str

    def __post_init__(self) -> None:
        require_text(self.node_id, "refused node_id")
        require_text(self.reason, "refused reason")


def hash_tensors(arrays: Sequence[tuple[str, np.ndarray]]) -> tuple[TensorRecord, ...]:
    """Tensor records of named arrays, hashed across the available cores.

    Names must be unique; dtypes must be ones safetensors and numpy share.
    """
    names = [name for name, _ in arrays]
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"duplicate tensor names: {', '.join(map(repr, duplicates[:5]))}")

    def record(item: tuple[str, np.ndarray]) -> TensorRecord:
        name, array = item
        dtype, shape, digest = tensor_sha256(name, array)
        return TensorRecord(name, dtype, shape, digest)

    sizes = [int(getattr(array, "nbytes", 0)) for _, array in arrays]
    return tuple(parallel_map(record, list(arrays), sizes))


@dataclass(frozen=True)
class ModelManifest:
    """Provenance of one committed global model (see docs/signing.md for every field)."""

    run_id: str
    round: int
    parent_digest: str | None
    tensors: tuple[TensorRecord, ...]
    pipeline: str
    participants: tuple[str, ...]
    refused: tuple[RefusedUpdate, ...]
    # DP parameters and ε so far; filled in by the privacy step, None until then.
    privacy: Mapping[str, object] | None = field(hash=False)
    audit_head: str
    code_version: str
    created_at: datetime
    expires_at: datetime

    def __post_init__(self) -> None:
        require_text(self.run_id, "run_id")
        require_round(self.round)
        if self.parent_digest is not None:
            require_digest(self.parent_digest, "parent_digest")
        if not isinstance(self.tensors, tuple) or not all(
            isinstance(record, TensorRecord) for record in self.tensors
        ):
            raise TypeError("tensors: expected a tuple of TensorRecord")
        if len(self.tensors) > MAX_TENSORS:
            raise ValueError(f"tensors: more than {MAX_TENSORS}")
        names = [record.name for record in self.tensors]
        if len(set(names)) != len(names):
            raise ValueError("tensors: duplicate tensor names")
        require_text(self.pipeline, "pipeline")
        if not isinstance(self.participants, tuple) or len(self.participants) > MAX_PARTICIPANTS:
            raise TypeError("participants: expected a tuple of node ids")
        for participant in self.participants:
            require_text(participant, "participant")
        if not isinstance(self.refused, tuple) or not all(
            isinstance(item, RefusedUpdate) for item in self.refused
        ):
            raise TypeError("refused: expected a tuple of RefusedUpdate")
        if self.privacy is not None:
            if not isinstance(self.privacy, Mapping):
                raise TypeError("privacy: expected a mapping or None")
            cleaned = require_json_value(self.privacy, "privacy")
            assert isinstance(cleaned, dict)
            object.__setattr__(self, "privacy", MappingProxyType(cleaned))
        require_text(self.audit_head, "audit_head", allow_empty=True)
        require_text(self.code_version, "code_version")
        require_aware(self.created_at, "created_at")
        require_aware(self.expires_at, "expires_at")
        # Timestamps are stored to the microsecond in UTC; normalise so that
        # from_json(to_json()) is equal to the original.
        object.__setattr__(
            self, "created_at", parse_timestamp(format_timestamp(self.created_at), "created_at")
        )
        object.__setattr__(
            self, "expires_at", parse_timestamp(format_timestamp(self.expires_at), "expires_at")
        )
        if self.expires_at <= self.created_at:
            raise ValueError("expires_at must be after created_at")

    def to_dict(self) -> dict[str, object]:
        """The manifest as a JSON object (schema ``ztfl.model-manifest/v1``)."""
        return {
            "schema": MANIFEST_SCHEMA,
            "run_id": self.run_id,
            "round": self.round,
            "parent_digest": self.parent_digest,
            "tensors": [record.to_dict() for record in self.tensors],
            "pipeline": self.pipeline,
            "participants": list(self.participants),
            "refused": [{"node_id": item.node_id, "reason": item.reason} for item in self.refused],
            "privacy": None if self.privacy is None else dict(self.privacy),
            "audit_head": self.audit_head,
            "code_version": self.code_version,
            "created_at": format_timestamp(self.created_at),
            "expires_at": format_timestamp(self.expires_at),
        }

    def to_json(self) -> bytes:
        """Canonical JSON bytes: the content of ``manifest.json``."""
        return self._canonical

    @cached_property
    def _canonical(self) -> bytes:
        return canonical_json(self.to_dict())

    @property
    def digest(self) -> str:
        """Hex SHA-256 of :meth:`to_json` — the model's content address."""
        return sha256_hex(self._canonical)

    @property
    def nbytes(self) -> int:
        """Bytes of all tensor data."""
        return sum(record.nbytes for record in self.tensors)

    @classmethod
    def from_json(cls, data: bytes) -> ModelManifest:
        """Parse canonical manifest JSON; anything else raises ModelRefusal(MALFORMED_MANIFEST)."""
        try:
            if len(data) > MAX_MANIFEST_BYTES:
                raise ValueError(f"{len(data)} bytes, more than {MAX_MANIFEST_BYTES}")
            manifest = cls._from_dict(parse_json_object(data, "manifest"))
        except ModelRefusal:
            raise
        except (ValueError, TypeError, KeyError, OverflowError) as error:
            raise ModelRefusal(
                ModelRefusalReason.MALFORMED_MANIFEST, f"manifest: {error}"
            ) from error
        if manifest.to_json() != bytes(data):
            # One manifest, one byte string: the digest is the hash of the file.
            raise ModelRefusal(
                ModelRefusalReason.MALFORMED_MANIFEST, "manifest JSON is not in canonical form"
            )
        return manifest

    @classmethod
    def _from_dict(cls, obj: dict[str, Any]) -> ModelManifest:
        require_keys(
            obj,
            {
                "schema", "run_id", "round", "parent_digest", "tensors", "pipeline",
                "participants", "refused", "privacy", "audit_head", "code_version",
                "created_at", "expires_at",
            },
            "manifest",
        )  # fmt: skip
        if obj["schema"] != MANIFEST_SCHEMA:
            raise ValueError(f"schema {str(obj['schema'])[:60]!r} is not {MANIFEST_SCHEMA!r}")
        for key in ("tensors", "participants", "refused"):
            if not isinstance(obj[key], list):
                raise TypeError(f"{key}: expected a list")
        refused = []
        for item in obj["refused"]:
            if not isinstance(item, dict):
                raise TypeError("refused: expected objects")
            require_keys(item, {"node_id", "reason"}, "refused entry")
            refused.append(RefusedUpdate(item["node_id"], item["reason"]))
        privacy = obj["privacy"]
        if privacy is not None and not isinstance(privacy, dict):
            raise TypeError("privacy: expected an object or null")
        return cls(
            run_id=obj["run_id"],
            round=obj["round"],
            parent_digest=obj["parent_digest"],
            tensors=tuple(TensorRecord.from_dict(record) for record in obj["tensors"]),
            pipeline=obj["pipeline"],
            participants=tuple(obj["participants"]),
            refused=tuple(refused),
            privacy=privacy,
            audit_head=obj["audit_head"],
            code_version=obj["code_version"],
            created_at=parse_timestamp(obj["created_at"], "created_at"),
            expires_at=parse_timestamp(obj["expires_at"], "expires_at"),
        )
