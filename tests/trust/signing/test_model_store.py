"""The model store: atomic idempotent commits, verified loads that name the bad file, lineage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from ztfl.trust.keys import SigningKey
from ztfl.trust.model_store import ModelStore, ModelStoreError
from ztfl.trust.refusal import ModelRefusal, ModelRefusalReason
from ztfl.trust.signing import SignedManifest

MakeSigned = Callable[..., tuple[list[tuple[str, np.ndarray]], SignedManifest]]


def committed(tmp_path: Path, make_signed: MakeSigned) -> tuple[ModelStore, SignedManifest]:
    store = ModelStore(tmp_path / "models")
    arrays, signed = make_signed()
    store.commit(arrays, signed)
    return store, signed


def test_commit_then_load_returns_the_same_arrays(
    tmp_path: Path, make_signed: MakeSigned, key: SigningKey
) -> None:
    store = ModelStore(tmp_path)
    arrays, signed = make_signed()
    folder = store.commit(arrays, signed)
    assert folder == tmp_path / signed.digest
    loaded, loaded_signed = store.load(signed.digest, keys=[key.public_key()])
    assert loaded_signed == signed
    assert [name for name, _ in loaded] == [name for name, _ in arrays]
    for (_, got), (_, want) in zip(loaded, arrays, strict=True):
        assert got.dtype == want.dtype
        assert np.array_equal(got, want)


def test_tensor_files_are_standard_safetensors(tmp_path: Path, make_signed: MakeSigned) -> None:
    store, signed = committed(tmp_path, make_signed)
    first = signed.manifest.tensors[0]
    loaded = safetensors.numpy.load_file(store.path(signed.digest) / "tensors/000000.safetensors")
    assert list(loaded) == [first.name]
    assert loaded[first.name].shape == first.shape


def test_commit_is_idempotent_for_the_same_model(tmp_path: Path, make_signed: MakeSigned) -> None:
    store = ModelStore(tmp_path)
    arrays, signed = make_signed()
    assert store.commit(arrays, signed) == store.commit(arrays, signed)
    assert [entry.digest for entry in store.entries()] == [signed.digest]


def test_commit_refuses_arrays_that_differ_and_leaves_nothing(
    tmp_path: Path, make_signed: MakeSigned
) -> None:
    store = ModelStore(tmp_path)
    arrays, signed = make_signed()
    tampered = [
        (name, array + 1) if name == "fc1.bias" else (name, array) for name, array in arrays
    ]
    with pytest.raises(ValueError, match=r"fc1\.bias"):
        store.commit(tampered, signed)
    assert store.entries() == []
    assert list((tmp_path / ".staging").iterdir()) == []


def test_commit_refuses_a_bundle_for_another_manifest(
    tmp_path: Path, make_signed: MakeSigned
) -> None:
    arrays, signed = make_signed(round=1)
    _, other = make_signed(round=2)
    with pytest.raises(ValueError, match="does not cover"):
        ModelStore(tmp_path).commit(arrays, SignedManifest(signed.manifest, other.bundle))


def test_flipped_byte_in_a_tensor_file_is_reported_with_its_path(
    tmp_path: Path, make_signed: MakeSigned
) -> None:
    store, signed = committed(tmp_path, make_signed)
    path = store.path(signed.digest) / "tensors/000002.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ModelStoreError, match="corrupted") as error:
        store.load(signed.digest)
    assert error.value.path == path
    assert "000002.safetensors" in str(error.value)


def test_truncated_tensor_file_is_reported_with_its_path(
    tmp_path: Path, make_signed: MakeSigned
) -> None:
    store, signed = committed(tmp_path, make_signed)
    path = store.path(signed.digest) / "tensors/000001.safetensors"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ModelStoreError, match="truncated") as error:
        store.load(signed.digest)
    assert error.value.path == path


def test_missing_tensor_file_is_reported_with_its_path(
    tmp_path: Path, make_signed: MakeSigned
) -> None:
    store, signed = committed(tmp_path, make_signed)
    path = store.path(signed.digest) / "tensors/000003.safetensors"
    path.unlink()
    with pytest.raises(ModelStoreError, match="missing") as error:
        store.load(signed.digest)
    assert error.value.path == path


def test_edited_manifest_file_is_reported_with_its_path(
    tmp_path: Path, make_signed: MakeSigned
) -> None:
    store, signed = committed(tmp_path, make_signed)
    path = store.path(signed.digest) / "manifest.json"
    path.write_bytes(path.read_bytes().replace(b'"round":1', b'"round":9'))
    with pytest.raises(ModelStoreError, match="folder name") as error:
        store.load(signed.digest)
    assert error.value.path == path


def test_unexpected_file_in_a_model_folder_is_reported(
    tmp_path: Path, make_signed: MakeSigned
) -> None:
    store, signed = committed(tmp_path, make_signed)
    intruder = store.path(signed.digest) / "tensors" / "extra.safetensors"
    intruder.write_bytes(b"x")
    with pytest.raises(ModelStoreError, match="unexpected") as error:
        store.load(signed.digest)
    assert error.value.path == intruder


def test_load_with_other_keys_is_refused(
    tmp_path: Path, make_signed: MakeSigned, other_key: SigningKey
) -> None:
    store, signed = committed(tmp_path, make_signed)
    with pytest.raises(ModelRefusal) as refusal:
        store.load(signed.digest, keys=[other_key.public_key()])
    assert refusal.value.reason is ModelRefusalReason.UNKNOWN_KEY


@pytest.mark.parametrize("digest", ["", "../etc", "A" * 64, "z" * 64, "ab"])
def test_non_hex_digests_are_refused(tmp_path: Path, digest: str) -> None:
    with pytest.raises(ModelStoreError, match="hex"):
        ModelStore(tmp_path).load(digest)


def test_entries_list_round_and_parent_in_order(tmp_path: Path, make_signed: MakeSigned) -> None:
    store = ModelStore(tmp_path)
    arrays1, first = make_signed(round=1)
    arrays2, second = make_signed(round=2, parent=first)
    store.commit(arrays2, second)
    store.commit(arrays1, first)
    entries = store.entries()
    assert [(entry.round, entry.parent_digest) for entry in entries] == [
        (1, None),
        (2, first.digest),
    ]


def test_chain_lists_the_manifests_between_two_models(
    tmp_path: Path, make_signed: MakeSigned
) -> None:
    store = ModelStore(tmp_path)
    parent = None
    models = []
    for round_number in range(1, 5):
        arrays, signed = make_signed(round=round_number, parent=parent)
        store.commit(arrays, signed)
        models.append(signed)
        parent = signed
    assert store.chain(models[0].digest, models[3].digest) == models[1:]
    assert store.chain(None, models[2].digest) == models[:3]
    assert store.chain(models[3].digest, models[3].digest) == []


def test_chain_across_unrelated_models_is_an_error(tmp_path: Path, make_signed: MakeSigned) -> None:
    store = ModelStore(tmp_path)
    arrays1, first = make_signed(round=1)
    arrays2, unrelated = make_signed(round=2, seed=5)
    store.commit(arrays1, first)
    store.commit(arrays2, unrelated)
    with pytest.raises(ModelStoreError, match="does not descend"):
        store.chain(first.digest, unrelated.digest)


def test_chain_with_a_missing_ancestor_is_an_error(tmp_path: Path, make_signed: MakeSigned) -> None:
    store = ModelStore(tmp_path)
    _, first = make_signed(round=1)
    arrays2, second = make_signed(round=2, parent=first)
    store.commit(arrays2, second)
    with pytest.raises(ModelStoreError, match="missing from the store"):
        store.chain(None, second.digest)
