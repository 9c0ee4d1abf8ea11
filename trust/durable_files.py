"""Files that survive a crash: replaced atomically, their folder fsynced.

Shared by the coordinator's state, the revocation list it keeps, the model
store and a client's lineage file: each must hold either the old or the new
content after a SIGKILL or a power cut, never a torn write.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_directory(path: Path) -> None:
    """Flush a folder's entries, so a rename or a new file in it is durable."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temporary file (0600), fsync, rename, fsync the folder.

    The rename is the commit point; a failure before it removes the temporary
    file and leaves ``path`` as it was. Raises OSError.
    """
    # mkstemp creates the file with mode 0600 under a name no other writer uses.
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    fsync_directory(path.parent)


def create_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with exactly ``mode`` (whatever the umask), write ``data``, fsync it and
    its folder. An existing file is never replaced (FileExistsError); a failed write leaves
    no file behind. For private keys: never overwrite one, never expose one for a moment."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
