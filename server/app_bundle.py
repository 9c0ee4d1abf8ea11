"""The hash of the app bundle (FAB) that ``flwr run`` would submit for a project folder.

Clients run only bundles whose SHA-256 is on their enrolled allow-list (their sidecar
refuses the rest), so the operator hands this hash to every client before a run:
``ztfl server app-bundle-hash`` prints it, ``ztfl run`` prints what it submits. Flower
builds bundles deterministically (fixed zip timestamps, the ``fab-include`` patterns of
``pyproject.toml``), so the same sources give the same hash anywhere.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ztfl.client.launch_error import LaunchError, LaunchErrorReason

__all__ = ["app_bundle_hash", "default_app_dir"]


def default_app_dir() -> Path | None:
    """The ztfl project folder this package was installed from, when it has one."""
    candidate = Path(__file__).resolve().parents[1]
    return candidate if (candidate / "pyproject.toml").is_file() else None


def app_bundle_hash(app_dir: Path) -> str:
    """Lower-case hex SHA-256 of the FAB Flower builds from ``app_dir``."""
    from flwr.cli.build import build_fab_from_disk

    app_dir = Path(app_dir)
    if not (app_dir / "pyproject.toml").is_file():
        raise LaunchError(
            LaunchErrorReason.MISSING_FILE, f"{app_dir} is not a Flower app (no pyproject.toml)"
        )
    try:
        content = build_fab_from_disk(app_dir)
    except Exception as error:  # Flower raises click/typer/ValueError variants
        raise LaunchError(
            LaunchErrorReason.BAD_CONFIG,
            f"Flower cannot build an app bundle from {app_dir}: {error}",
        ) from None
    return hashlib.sha256(content).hexdigest()
