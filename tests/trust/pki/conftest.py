"""A small real federation (CA, two clients, an operator, the gateway) per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztfl.trust.pki import FederationTrust
from ztfl.trust.pki.provisioning import FederationPaths, provision_federation

FEDERATION = "hospitals"


@pytest.fixture
def federation(tmp_path: Path) -> FederationPaths:
    return provision_federation(
        tmp_path / "federation", FEDERATION, clients=["alice", "bob"], operators=["olga"]
    )


@pytest.fixture
def trust(federation: FederationPaths) -> FederationTrust:
    return FederationTrust.load(federation.ca_certificate, federation.crl)
