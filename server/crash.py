"""Deterministic crash injection for resume tests: ``ZTFL_CRASH_AT=<point>:<round>``.

The coordinator calls :func:`crash_point` at the moments where a crash would
leave its files in distinct states. When the environment variable names that
point and round, the process kills itself with SIGKILL — no ``finally`` blocks,
no flushing, no atexit handlers — exactly like a power cut or an OOM kill.
Unset (the normal case) it costs one dictionary lookup.

Points, in the order a round reaches them:

``before-aggregation``
    updates collected and refusals logged; no model, no state for the round.
``after-model-write``
    the new model and its signed manifest are in the store; the state file
    still names the previous round.
``after-state-commit``
    the state file names the new round (the round is committed).
"""

from __future__ import annotations

import os
import signal
from enum import StrEnum

CRASH_VARIABLE = "ZTFL_CRASH_AT"


class CrashPoint(StrEnum):
    """Where in a round the coordinator can be made to die."""

    BEFORE_AGGREGATION = "before-aggregation"
    AFTER_MODEL_WRITE = "after-model-write"
    AFTER_STATE_COMMIT = "after-state-commit"


def crash_point(point: CrashPoint, server_round: int) -> None:
    """SIGKILL this process if ``ZTFL_CRASH_AT`` is ``<point>:<server_round>``."""
    wanted = os.environ.get(CRASH_VARIABLE)
    if wanted is not None and wanted.strip() == f"{point.value}:{server_round}":
        os.kill(os.getpid(), signal.SIGKILL)
