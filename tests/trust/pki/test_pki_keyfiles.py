"""Private key files are 0600, and a key others can read is refused on load."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ztfl.trust.pki import PkiError, PkiErrorReason, create_enrolment_request, read_private_key
from ztfl.trust.pki.keyfiles import (
    check_private_key_file,
    generate_private_key,
    read_passphrase_file,
    write_private_key,
)


def test_enrolment_writes_every_private_key_0600(tmp_path: Path) -> None:
    layout = create_enrolment_request(tmp_path / "alice", "hospitals", "alice")
    for path in (layout.key, layout.node_key, layout.local.server_key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_key_file_with_mode_0644_is_refused_on_load(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    write_private_key(path, generate_private_key())
    os.chmod(path, 0o644)
    with pytest.raises(PkiError) as raised:
        read_private_key(path)
    assert raised.value.reason is PkiErrorReason.KEY_FILE_PERMISSIONS
    assert "0644" in raised.value.message


def test_group_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    write_private_key(path, generate_private_key())
    os.chmod(path, 0o640)
    with pytest.raises(PkiError) as raised:
        check_private_key_file(path)
    assert raised.value.reason is PkiErrorReason.KEY_FILE_PERMISSIONS


def test_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    write_private_key(path, generate_private_key())
    before = path.read_bytes()
    with pytest.raises(PkiError) as raised:
        write_private_key(path, generate_private_key())
    assert raised.value.reason is PkiErrorReason.ALREADY_EXISTS
    assert path.read_bytes() == before


def test_second_enrolment_in_one_folder_is_refused(tmp_path: Path) -> None:
    create_enrolment_request(tmp_path / "alice", "hospitals", "alice")
    with pytest.raises(PkiError) as raised:
        create_enrolment_request(tmp_path / "alice", "hospitals", "alice")
    assert raised.value.reason is PkiErrorReason.ALREADY_EXISTS


def test_world_readable_passphrase_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "passphrase"
    path.write_text("secret\n")
    os.chmod(path, 0o644)
    with pytest.raises(PkiError) as raised:
        read_passphrase_file(path)
    assert raised.value.reason is PkiErrorReason.KEY_FILE_PERMISSIONS
