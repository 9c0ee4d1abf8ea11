"""``ztfl model keygen`` and ``ztfl model verify`` through typer's CliRunner."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from typer.testing import CliRunner

from ztfl.cli.main import app
from ztfl.trust.keys import SigningKey, read_signing_key, write_signing_key, write_verifying_key
from ztfl.trust.model_store import ModelStore
from ztfl.trust.revocation import RevocationList, sign_revocation_list
from ztfl.trust.rotation import KeyRotation, trusted_keys
from ztfl.trust.signing import SignedManifest

runner = CliRunner()

MakeSigned = Callable[..., tuple[list[tuple[str, np.ndarray]], SignedManifest]]


def public_key_file(tmp_path: Path, key: SigningKey) -> Path:
    path = tmp_path / "coordinator.pub"
    write_verifying_key(key.public_key(), path)
    return path


def test_keygen_writes_a_private_key_with_mode_0600_and_its_public_key(tmp_path: Path) -> None:
    out = tmp_path / "coordinator.pem"
    result = runner.invoke(app, ["model", "keygen", str(out)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = read_signing_key(out)
    assert key.key_id in result.output
    assert (tmp_path / "coordinator.pem.pub").read_bytes() == key.public_key().to_pem()


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "coordinator.pem"
    out.write_text("keep me")
    result = runner.invoke(app, ["model", "keygen", str(out)])
    assert result.exit_code == 2
    assert "refusing to overwrite" in result.output
    assert out.read_text() == "keep me"


def test_verify_prints_the_manifest_and_its_lineage(
    tmp_path: Path, make_signed: MakeSigned, key: SigningKey
) -> None:
    store = ModelStore(tmp_path / "store")
    arrays1, first = make_signed(round=1)
    arrays2, second = make_signed(round=2, parent=first)
    store.commit(arrays1, first)
    folder = store.commit(arrays2, second)
    result = runner.invoke(
        app, ["model", "verify", str(folder), "--public-key", str(public_key_file(tmp_path, key))]
    )
    assert result.exit_code == 0, result.output
    assert f"OK: model {second.digest}" in result.output
    assert "run-7f3a, round 2" in result.output
    assert f"{first.digest}  signature ok" in result.output


def test_verify_exits_non_zero_with_the_reason_for_a_tampered_model(
    tmp_path: Path, make_signed: MakeSigned, key: SigningKey
) -> None:
    arrays, signed = make_signed()
    folder = ModelStore(tmp_path / "store").commit(arrays, signed)
    path = folder / "tensors/000001.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x80
    path.write_bytes(bytes(data))
    result = runner.invoke(
        app, ["model", "verify", str(folder), "--public-key", str(public_key_file(tmp_path, key))]
    )
    assert result.exit_code == 1
    assert "TENSOR_MISMATCH" in result.output
    assert "000001.safetensors" in result.output


def test_verify_exits_non_zero_for_an_untrusted_key(
    tmp_path: Path, make_signed: MakeSigned, other_key: SigningKey
) -> None:
    arrays, signed = make_signed()
    folder = ModelStore(tmp_path / "store").commit(arrays, signed)
    result = runner.invoke(
        app,
        ["model", "verify", str(folder), "--public-key", str(public_key_file(tmp_path, other_key))],
    )
    assert result.exit_code == 1
    assert "UNKNOWN_KEY" in result.output


def test_verify_exits_non_zero_for_another_run(
    tmp_path: Path, make_signed: MakeSigned, key: SigningKey
) -> None:
    arrays, signed = make_signed()
    folder = ModelStore(tmp_path / "store").commit(arrays, signed)
    public = str(public_key_file(tmp_path, key))
    result = runner.invoke(
        app, ["model", "verify", str(folder), "--public-key", public, "--run-id", "other"]
    )
    assert result.exit_code == 1
    assert "WRONG_RUN" in result.output


def test_verify_refuses_an_ed25519_public_key_clearly(
    tmp_path: Path, make_signed: MakeSigned
) -> None:
    arrays, signed = make_signed()
    folder = ModelStore(tmp_path / "store").commit(arrays, signed)
    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "ed.pub").write_bytes(pem)
    result = runner.invoke(
        app, ["model", "verify", str(folder), "--public-key", str(tmp_path / "ed.pub")]
    )
    assert result.exit_code == 2
    assert "P-256" in result.output


def test_verify_reports_a_folder_without_a_signature(tmp_path: Path, key: SigningKey) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(
        app,
        [
            "model",
            "verify",
            str(tmp_path / "empty"),
            "--public-key",
            str(public_key_file(tmp_path, key)),
        ],
    )
    assert result.exit_code == 1
    assert "MALFORMED_MANIFEST" in result.output


def test_rotate_writes_a_statement_signed_by_the_old_key_naming_the_new_one(
    tmp_path: Path,
) -> None:
    for name in ("old.pem", "new.pem"):
        assert runner.invoke(app, ["model", "keygen", str(tmp_path / name)]).exit_code == 0
    out = tmp_path / "rotation.json"
    arguments = ["model", "rotate", str(tmp_path / "old.pem"), str(tmp_path / "new.pem.pub")]
    result = runner.invoke(app, [*arguments, "--out", str(out)])
    assert result.exit_code == 0, result.output
    old = read_signing_key(tmp_path / "old.pem").public_key()
    new = read_signing_key(tmp_path / "new.pem").public_key()
    assert trusted_keys([old], [KeyRotation.from_bytes(out.read_bytes())]) == (old, new)


def test_rotate_refuses_to_overwrite_a_statement(tmp_path: Path) -> None:
    for name in ("old.pem", "new.pem"):
        assert runner.invoke(app, ["model", "keygen", str(tmp_path / name)]).exit_code == 0
    out = tmp_path / "rotation.json"
    out.write_text("keep me")
    arguments = ["model", "rotate", str(tmp_path / "old.pem"), str(tmp_path / "new.pem.pub")]
    result = runner.invoke(app, [*arguments, "--out", str(out)])
    assert result.exit_code == 2
    assert "refusing to overwrite" in result.output
    assert out.read_text() == "keep me"


def test_revoke_signs_a_list_of_the_digests_for_the_run_and_sequence(
    tmp_path: Path, key: SigningKey
) -> None:
    key_file = tmp_path / "key.pem"
    write_signing_key(key, key_file)
    out = tmp_path / "revocations.json"
    arguments = ["--key", str(key_file), "--run-id", "run-7", "--sequence", "3", "--out", str(out)]
    result = runner.invoke(app, ["model", "revoke", "a" * 64, "b" * 64, *arguments])
    assert result.exit_code == 0, result.output
    listed = RevocationList.from_bytes(out.read_bytes())
    assert (listed.run_id, listed.sequence, listed.digests) == (
        "run-7",
        3,
        frozenset({"a" * 64, "b" * 64}),
    )
    assert listed.verify([key.public_key()]) == key.public_key()


def test_revoke_from_the_current_list_keeps_its_digests_and_numbers_the_next(
    tmp_path: Path, key: SigningKey
) -> None:
    key_file = tmp_path / "key.pem"
    write_signing_key(key, key_file)
    current = tmp_path / "revocations-3.json"
    current.write_bytes(sign_revocation_list("run-7", 3, ["a" * 64], key).to_bytes())
    out = tmp_path / "revocations-4.json"
    arguments = ["--key", str(key_file), "--from", str(current), "--out", str(out)]
    result = runner.invoke(app, ["model", "revoke", "c" * 64, *arguments])
    assert result.exit_code == 0, result.output
    listed = RevocationList.from_bytes(out.read_bytes())
    assert (listed.run_id, listed.sequence, listed.digests) == (
        "run-7",
        4,
        frozenset({"a" * 64, "c" * 64}),
    )


def test_revoke_refuses_a_malformed_digest_and_an_existing_output(
    tmp_path: Path, key: SigningKey
) -> None:
    key_file = tmp_path / "key.pem"
    write_signing_key(key, key_file)
    out = tmp_path / "revocations.json"
    arguments = ["--key", str(key_file), "--run-id", "run-7", "--sequence", "1", "--out", str(out)]
    result = runner.invoke(app, ["model", "revoke", "not-a-digest", *arguments])
    assert result.exit_code == 2
    assert not out.exists()
    out.write_text("keep me")
    result = runner.invoke(app, ["model", "revoke", "a" * 64, *arguments])
    assert result.exit_code == 2
    assert out.read_text() == "keep me"
