"""Interoperability with OpenSSF model-signing 1.1.1 (elliptic-key signer, verifier), both ways."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import model_signing
import numpy as np
import pytest

from ztfl.trust.keys import SigningKey, write_signing_key, write_verifying_key
from ztfl.trust.model_directory import sign_model_directory, verify_model_directory
from ztfl.trust.model_store import ModelStore
from ztfl.trust.refusal import ModelRefusal, ModelRefusalReason
from ztfl.trust.signing import SignedManifest
from ztfl.trust.verification import LineageState, TrustAnchor, verify_model

MakeSigned = Callable[..., tuple[list[tuple[str, np.ndarray]], SignedManifest]]


def key_files(tmp_path: Path, key: SigningKey) -> tuple[Path, Path]:
    private, public = tmp_path / "signing.pem", tmp_path / "signing.pub"
    write_signing_key(key, private)
    write_verifying_key(key.public_key(), public)
    return private, public


def model_signing_sign(folder: Path, private: Path, signature: Path) -> None:
    hashing = model_signing.hashing.Config()  # type: ignore[no-untyped-call]
    hashing.set_ignored_paths(paths=[signature.name])
    signing = model_signing.signing.Config()  # type: ignore[no-untyped-call]
    signing.use_elliptic_key_signer(private_key=private).set_hashing_config(hashing)
    signing.sign(folder, signature)


def model_signing_verify(folder: Path, public: Path, signature: Path) -> None:
    verifying = model_signing.verifying.Config()  # type: ignore[no-untyped-call]
    verifying.use_elliptic_key_verifier(public_key=public).verify(folder, signature)


def test_ztfl_signed_model_verifies_with_model_signing(
    tmp_path: Path, make_signed: MakeSigned, key: SigningKey
) -> None:
    _, public = key_files(tmp_path, key)
    arrays, signed = make_signed()
    folder = ModelStore(tmp_path / "store").commit(arrays, signed)
    model_signing_verify(folder, public, folder / "model.sig")


def test_model_signing_detects_a_tampered_ztfl_model(
    tmp_path: Path, make_signed: MakeSigned, key: SigningKey
) -> None:
    _, public = key_files(tmp_path, key)
    arrays, signed = make_signed()
    folder = ModelStore(tmp_path / "store").commit(arrays, signed)
    path = folder / "tensors/000000.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="Hash mismatch"):
        model_signing_verify(folder, public, folder / "model.sig")


def test_model_signing_signed_ztfl_model_verifies_with_ztfl(
    tmp_path: Path, make_signed: MakeSigned, key: SigningKey, anchor: TrustAnchor, now: datetime
) -> None:
    private, _ = key_files(tmp_path, key)
    arrays, signed = make_signed()
    store = ModelStore(tmp_path / "store")
    folder = store.commit(arrays, signed)
    (folder / "model.sig").unlink()
    model_signing_sign(folder, private, folder / "model.sig")

    verified = verify_model_directory(folder, [key.public_key()])
    assert verified.manifest == signed.manifest
    loaded, resigned = store.load(signed.digest, keys=[key.public_key()])
    verify_model(loaded, resigned, anchor=anchor, lineage=LineageState.empty(), now=now)
    transported = SignedManifest.from_bytes(resigned.to_bytes())
    verify_model(arrays, transported, anchor=anchor, lineage=LineageState.empty(), now=now)


def test_model_signing_signed_folder_verifies_with_ztfl(tmp_path: Path, key: SigningKey) -> None:
    private, _ = key_files(tmp_path, key)
    folder = tmp_path / "plain-model"
    (folder / "weights").mkdir(parents=True)
    (folder / "config.json").write_text('{"layers": 2}')
    (folder / "weights" / "model.bin").write_bytes(bytes(range(256)) * 64)
    model_signing_sign(folder, private, folder / "model.sig")
    verified = verify_model_directory(folder, [key.public_key()])
    assert set(verified.resources) == {"config.json", "weights/model.bin"}
    assert verified.manifest is None


def test_ztfl_refuses_a_tampered_model_signing_folder(tmp_path: Path, key: SigningKey) -> None:
    private, _ = key_files(tmp_path, key)
    folder = tmp_path / "plain-model"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"weights")
    model_signing_sign(folder, private, tmp_path / "outside.sig")
    (folder / "model.bin").write_bytes(b"weightz")
    with pytest.raises(ModelRefusal, match=r"model\.bin") as refusal:
        verify_model_directory(folder, [key.public_key()], tmp_path / "outside.sig")
    assert refusal.value.reason is ModelRefusalReason.TENSOR_MISMATCH


def test_ztfl_refuses_a_model_signing_folder_signed_by_another_key(
    tmp_path: Path, key: SigningKey, other_key: SigningKey
) -> None:
    private, _ = key_files(tmp_path, other_key)
    folder = tmp_path / "plain-model"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"weights")
    model_signing_sign(folder, private, folder / "model.sig")
    with pytest.raises(ModelRefusal) as refusal:
        verify_model_directory(folder, [key.public_key()])
    assert refusal.value.reason is ModelRefusalReason.UNKNOWN_KEY


def test_ztfl_signed_plain_folder_verifies_with_model_signing(
    tmp_path: Path, key: SigningKey
) -> None:
    _, public = key_files(tmp_path, key)
    folder = tmp_path / "plain-model"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"a" * 5000)
    (folder / "sub" / "b.txt").write_text("b")
    signature = sign_model_directory(folder, key)
    model_signing_verify(folder, public, signature)
