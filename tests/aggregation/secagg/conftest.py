"""Fixtures for the SecAgg+ tests; they live in ``secagg_round_driver`` with the helpers."""

import sys
from pathlib import Path

_REPOSITORY = str(Path(__file__).resolve().parents[3])
if _REPOSITORY not in sys.path:  # `pytest` run without `python -m`
    sys.path.insert(0, _REPOSITORY)

from tests.aggregation.secagg.secagg_round_driver import (  # noqa: E402
    identity_keys,
    make_group,
    roster_key,
)

__all__ = ["identity_keys", "make_group", "roster_key"]
