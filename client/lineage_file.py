"""The node's lineage state on disk, so rollback protection survives a coordinator restart.

Flower keeps ``Context.state`` per Flower run, and a resumed coordinator is a
new Flower run: a client that kept its lineage only there would meet the
resumed coordinator as a first contact and accept any correctly signed model
of the ztfl run, an older one included. A node whose configuration names a
folder (``lineage-dir = "<folder>"``) keeps one file per ztfl run id there::

    <lineage-dir>/<run id>.json    LineageState JSON (docs/signing.md), mode 0600

Each write goes to a temporary file in the same folder, is fsynced, renamed
over the old file, and the folder fsynced, so a crash leaves the old state or
the new one. A file that exists but cannot be read or parsed is an error
naming it — never a fresh start, which is exactly what a rollback needs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

from ztfl.trust.durable_files import write_atomically
from ztfl.trust.refusal import ModelRefusal
from ztfl.trust.verification import LineageState

LINEAGE_DIR_KEY = "lineage-dir"
"""The node-config key naming the folder that keeps the node's lineage files."""

_PLAIN_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class LineageFileError(Exception):
    """The lineage folder or file cannot be used; the message starts with its path."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path


def node_lineage_dir(node_config: Mapping[str, object]) -> Path | None:
    """The folder the node configuration names (``lineage-dir``), or None when it names none."""
    value = node_config.get(LINEAGE_DIR_KEY)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise LineageFileError(Path(str(value)), f"{LINEAGE_DIR_KEY} must name a folder")
    return Path(value)


def lineage_file(folder: Path, run_id: str) -> Path:
    """The file that keeps the lineage of ztfl run ``run_id`` in ``folder``.

    A run id that is not a plain file name (ztfl's are 32 hex digits) is
    replaced by its SHA-256, so no run id can point outside the folder.
    """
    if _PLAIN_RUN_ID.fullmatch(run_id) is None:
        run_id = hashlib.sha256(run_id.encode()).hexdigest()
    return folder / f"{run_id}.json"


def read_lineage_file(path: Path) -> LineageState | None:
    """The lineage state kept in ``path``; None when there is no such file yet.

    Raises LineageFileError naming the file when it exists but cannot be read
    or is not a lineage state.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise LineageFileError(path, f"cannot read the lineage state: {error}") from None
    try:
        return LineageState.from_json(data)
    except ModelRefusal as refusal:
        raise LineageFileError(
            path, f"not a readable lineage state ({refusal.message}); refusing to start over"
        ) from None


def write_lineage_file(path: Path, lineage: LineageState) -> None:
    """Replace ``path`` with ``lineage`` atomically (temporary file, fsync, rename; mode 0600)."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(path, lineage.to_json())
    except OSError as error:
        raise LineageFileError(path, f"cannot keep the lineage state: {error}") from None
