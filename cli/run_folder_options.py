"""What ``ztfl report`` and ``ztfl evidence`` share: the run folder, verification, exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final

import typer

EXIT_NOT_VERIFIED: Final = 1
"""The output was written, but a signature, the audit chain or a state file did not verify."""
EXIT_UNREADABLE: Final = 2
"""Not a run folder, the output path cannot be used, or a key cannot be read."""

RunDirArgument = Annotated[
    Path,
    typer.Argument(
        help="A ztfl simulate run folder or a coordinator state folder (state-dir).",
        file_okay=False,
    ),
]
PublicKeyOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--public-key",
        help="Verify the signed models against this model-signing public key (PEM) — the "
        "copy clients pin — instead of the key in the folder. Repeatable (rotated keys).",
    ),
]
TensorsOption = Annotated[
    bool,
    typer.Option(
        "--tensors/--no-tensors",
        help="Also hash every tensor file against its signed manifest (reads every model).",
    ),
]
