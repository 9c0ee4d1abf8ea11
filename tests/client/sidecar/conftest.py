"""Fixtures for the sidecar tests (helpers in ``sidecar_test_setup``)."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPOSITORY = str(Path(__file__).resolve().parents[3])
if _REPOSITORY not in sys.path:  # `pytest` run without `python -m`
    sys.path.insert(0, _REPOSITORY)

from tests.client.sidecar.sidecar_test_setup import (  # noqa: E402
    EnrolledClient,
    RunningSidecar,
    enrol_test_client,
    run_sidecar_chain,
)
from tests.trust.transport.relay_test_servers import (  # noqa: E402
    LoopThread,
    Upstream,
    loop_thread,
    upstream,
)

__all__ = ["enrolled", "loop_thread", "sidecar", "upstream"]


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> EnrolledClient:
    return enrol_test_client(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def sidecar(
    loop_thread: LoopThread, enrolled: EnrolledClient, upstream: Upstream, tmp_path: Path
) -> Iterator[RunningSidecar]:
    yield from run_sidecar_chain(loop_thread, enrolled, upstream, tmp_path)
