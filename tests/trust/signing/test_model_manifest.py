"""The manifest: canonical JSON, digest, tensor hashes, and refusal of malformed input."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from ztfl.trust.manifest import ModelManifest, RefusedUpdate, hash_tensors
from ztfl.trust.refusal import ModelRefusal, ModelRefusalReason
from ztfl.trust.signing import SignedManifest, build_manifest
from ztfl.trust.tensor_files import tensor_header

MakeSigned = Callable[..., tuple[list[tuple[str, np.ndarray]], SignedManifest]]
ARRAYS: list[tuple[str, np.ndarray]] = [
    ("w", np.arange(6, dtype=np.float32)),
    ("b", np.zeros(2, dtype=np.int64)),
]


def test_manifest_json_round_trips_exactly(make_signed: MakeSigned) -> None:
    _, signed = make_signed()
    manifest = dataclasses.replace(
        signed.manifest,
        refused=(RefusedUpdate("104", "norm_too_large"),),
        privacy={"epsilon": 1.25, "delta": 1e-5, "noise_multiplier": 0.8},
    )
    again = ModelManifest.from_json(manifest.to_json())
    assert again == manifest
    assert again.to_json() == manifest.to_json()
    assert again.digest == hashlib.sha256(manifest.to_json()).hexdigest()


def test_any_field_change_changes_the_digest(make_signed: MakeSigned) -> None:
    _, signed = make_signed()
    manifest = signed.manifest
    edits: list[dict[str, Any]] = [
        {"round": 2},
        {"run_id": "other"},
        {"pipeline": "mean"},
        {"participants": ("101",)},
        {"audit_head": "b" * 64},
        {"expires_at": manifest.expires_at + timedelta(seconds=1)},
        {"privacy": {"epsilon": 2.0}},
    ]
    digests = {dataclasses.replace(manifest, **edit).digest for edit in edits}
    assert manifest.digest not in digests
    assert len(digests) == len(edits)


def test_tensor_hash_covers_name_dtype_shape_and_bytes() -> None:
    base = np.arange(6, dtype=np.float32)
    (reference,) = hash_tensors([("w", base)])
    flipped = base.copy()
    flipped.view(np.uint8)[-1] ^= 1
    variants: list[list[tuple[str, np.ndarray]]] = [
        [("v", base)],
        [("w", base.astype(np.float64))],
        [("w", base.reshape(2, 3))],
        [("w", flipped)],
    ]
    hashes = {hash_tensors(variant)[0].sha256 for variant in variants}
    assert reference.sha256 not in hashes
    assert len(hashes) == 4


def test_tensor_hash_is_the_hash_of_its_canonical_safetensors_bytes() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    (record,) = hash_tensors([("w", array)])
    expected = hashlib.sha256(tensor_header("w", "float32", (2, 3)) + array.tobytes()).hexdigest()
    assert record.sha256 == expected


def test_byte_order_and_memory_layout_do_not_change_the_hash() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    reference = hash_tensors([("w", array)])
    assert hash_tensors([("w", array.astype(">f4"))]) == reference
    assert hash_tensors([("w", np.asfortranarray(array))]) == reference


def test_duplicate_tensor_names_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        hash_tensors([("w", np.zeros(2)), ("w", np.ones(2))])


def test_unsupported_dtypes_are_refused() -> None:
    with pytest.raises(ValueError, match="dtype"):
        hash_tensors([("w", np.zeros(2, dtype=np.complex64))])
    with pytest.raises(ValueError, match="dtype"):
        hash_tensors([("w", np.array(["a"]))])


def test_build_manifest_refuses_naive_times_and_bad_rounds() -> None:
    arguments: dict[str, Any] = {
        "run_id": "r",
        "parent_digest": None,
        "pipeline": "mean",
        "participants": [],
        "refused": [],
        "privacy": None,
        "audit_head": "",
        "valid_for": timedelta(hours=1),
    }
    with pytest.raises(ValueError, match="timezone"):
        build_manifest(ARRAYS, round=1, now=datetime(2026, 1, 1), **arguments)
    for bad_round in (-1, 10**12):
        with pytest.raises(ValueError, match="outside"):
            build_manifest(ARRAYS, round=bad_round, now=datetime.now(UTC), **arguments)
    with pytest.raises(TypeError):
        build_manifest(ARRAYS, round=True, now=datetime.now(UTC), **arguments)


def _edited(manifest: ModelManifest, **changes: object) -> bytes:
    obj = json.loads(manifest.to_json())
    obj.update(changes)
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"round": -1}, "outside"),
        ({"round": 10**30}, "outside"),
        ({"round": "3"}, "integer"),
        ({"round": 1.0}, "integer"),
        ({"parent_digest": "XYZ"}, "hex"),
        ({"parent_digest": "A" * 64}, "hex"),
        ({"run_id": 7}, "string"),
        ({"tensors": "all"}, "list"),
        ({"tensors": [{"name": "w"}]}, "missing"),
        ({"created_at": "yesterday"}, "timestamp"),
        ({"schema": "other/v9"}, "schema"),
        ({"extra": 1}, "unknown"),
        ({"privacy": [1, 2]}, "privacy"),
        ({"participants": [1]}, "string"),
    ],
)
def test_malformed_manifest_fields_are_refused(
    make_signed: MakeSigned, changes: dict[str, object], message: str
) -> None:
    _, signed = make_signed()
    with pytest.raises(ModelRefusal, match=message) as refusal:
        ModelManifest.from_json(_edited(signed.manifest, **changes))
    assert refusal.value.reason is ModelRefusalReason.MALFORMED_MANIFEST


@pytest.mark.parametrize(
    "data", [b"", b"{", b"[]", b"null", b'{"a":NaN}', b"\xff\xfe", b'{"a":1,"a":2}', b"[" * 100_000]
)
def test_malformed_manifest_json_is_refused(data: bytes) -> None:
    with pytest.raises(ModelRefusal) as refusal:
        ModelManifest.from_json(data)
    assert refusal.value.reason is ModelRefusalReason.MALFORMED_MANIFEST


def test_non_canonical_manifest_json_is_refused(make_signed: MakeSigned) -> None:
    _, signed = make_signed()
    pretty = json.dumps(json.loads(signed.manifest.to_json()), indent=2).encode()
    with pytest.raises(ModelRefusal, match="canonical"):
        ModelManifest.from_json(pretty)


def test_signed_manifest_transport_bytes_round_trip(make_signed: MakeSigned) -> None:
    _, signed = make_signed()
    assert SignedManifest.from_bytes(signed.to_bytes()) == signed


@pytest.mark.parametrize(
    "data",
    [
        b"garbage",
        b"{}",
        b'{"format":"ztfl.signed-manifest/v1","manifest":"{}","bundle":"{}"}',
        b'{"format":"ztfl.signed-manifest/v1","manifest":1,"bundle":2}',
    ],
)
def test_garbage_transport_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(ModelRefusal) as refusal:
        SignedManifest.from_bytes(data)
    assert refusal.value.reason is ModelRefusalReason.MALFORMED_MANIFEST


def test_manifest_times_are_utc_microseconds() -> None:
    manifest = build_manifest(
        ARRAYS,
        run_id="r",
        round=0,
        parent_digest=None,
        pipeline="mean",
        participants=[],
        refused=[],
        privacy=None,
        audit_head="",
        valid_for=timedelta(minutes=5),
        now=datetime(2026, 1, 1, 13, 0, 0, 123456, tzinfo=UTC),
    )
    assert b'"created_at":"2026-01-01T13:00:00.123456Z"' in manifest.to_json()
