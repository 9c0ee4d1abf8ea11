"""Fixtures for the transport tests; they live in ``relay_test_servers`` with the helpers.

The helpers are imported by their path from the repository root (``tests.trust...``), the
one name that both pytest and mypy resolve, so the gateway and sidecar tests share them.
"""

import sys
from pathlib import Path

_REPOSITORY = str(Path(__file__).resolve().parents[3])
if _REPOSITORY not in sys.path:  # `pytest` run without `python -m`
    sys.path.insert(0, _REPOSITORY)

from tests.trust.transport.relay_test_servers import (  # noqa: E402
    loop_thread,
    tls_files,
    upstream,
)

__all__ = ["loop_thread", "tls_files", "upstream"]
