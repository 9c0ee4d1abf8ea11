"""Fixtures for the gateway tests (helpers in ``gateway_test_federation``)."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPOSITORY = str(Path(__file__).resolve().parents[3])
if _REPOSITORY not in sys.path:  # `pytest` run without `python -m`
    sys.path.insert(0, _REPOSITORY)

from tests.server.gateway.gateway_test_federation import (  # noqa: E402
    ProvisionedFederation,
    RunningGateway,
    provision_test_federation,
    start_gateway,
)
from tests.trust.transport.relay_test_servers import (  # noqa: E402
    LoopThread,
    Upstream,
    loop_thread,
    tls_files,
    upstream,
)

__all__ = ["federation", "gateway", "loop_thread", "tls_files", "upstream"]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> ProvisionedFederation:
    return provision_test_federation(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def gateway(
    loop_thread: LoopThread, federation: ProvisionedFederation, upstream: Upstream, tmp_path: Path
) -> Iterator[RunningGateway]:
    yield from start_gateway(loop_thread, federation, upstream, tmp_path / "audit.sqlite")
