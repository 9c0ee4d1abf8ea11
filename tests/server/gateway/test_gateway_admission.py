"""The gateway admits only valid client certificates of the federation, checked every request."""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Callable
from pathlib import Path

import h11
import pytest

from tests.server.gateway.gateway_test_federation import (
    ProvisionedFederation,
    RunningGateway,
    fleet_call,
)
from tests.trust.transport.relay_test_servers import Upstream
from ztfl.trust.audit import AuditEventKind, AuditRecord
from ztfl.trust.pki.authority import open_authority
from ztfl.trust.pki.issuance import revoke_certificate
from ztfl.trust.pki.layout import ClientLayout

HANDSHAKE_FAILURES = (ssl.SSLError, ConnectionError, OSError, h11.RemoteProtocolError)


def _refused_node(reason: str) -> Callable[[AuditRecord], bool]:
    def matches(record: AuditRecord) -> bool:
        return record.kind is AuditEventKind.NODE_REFUSED and record.reason == reason

    return matches


def _handshake_refused(gateway: RunningGateway, member: ClientLayout | None) -> None:
    client = gateway.connect(member)
    try:
        with pytest.raises(HANDSHAKE_FAILURES):
            fleet_call(client, member or gateway.federation.paths.clients["alice"])
    finally:
        client.close()


def test_a_client_certificate_of_the_federation_reaches_the_upstream(
    gateway: RunningGateway, upstream: Upstream
) -> None:
    client = gateway.connect(gateway.federation.paths.clients["alice"])
    response = fleet_call(client, gateway.federation.paths.clients["alice"])
    client.close()
    assert response.status == 200
    assert [request.target for request in upstream.state.requests] == ["/v1/fleet/pull-messages"]


def test_a_connection_without_a_client_certificate_fails_its_handshake_and_is_audited(
    gateway: RunningGateway, upstream: Upstream
) -> None:
    _handshake_refused(gateway, None)
    record = gateway.wait_for_audit(_refused_node("no_client_certificate"))
    assert record.details["peer"] == "127.0.0.1"
    assert upstream.state.requests == []


def test_a_certificate_from_another_ca_fails_its_handshake_and_is_audited(
    gateway: RunningGateway, federation: ProvisionedFederation, upstream: Upstream
) -> None:
    _handshake_refused(gateway, federation.foreign.clients["alice"])
    gateway.wait_for_audit(_refused_node("untrusted_issuer"))
    assert upstream.state.requests == []


def test_an_expired_certificate_fails_its_handshake_and_is_audited(
    gateway: RunningGateway, federation: ProvisionedFederation, upstream: Upstream
) -> None:
    _handshake_refused(gateway, federation.expired)
    gateway.wait_for_audit(_refused_node("expired"))
    assert upstream.state.requests == []


def test_an_operator_certificate_is_refused_on_the_fleet_api(
    gateway: RunningGateway, federation: ProvisionedFederation, upstream: Upstream
) -> None:
    operator = federation.paths.operators["ops"]
    client = gateway.connect(operator)
    response = fleet_call(client, operator)
    client.close()
    assert (response.status, response.body) == (403, b"403 Forbidden: wrong_role\n")
    record = gateway.wait_for_audit(_refused_node("wrong_role"))
    assert record.details["identity"] == f"spiffe://{federation.paths.federation}/operator/ops"
    assert upstream.state.requests == []


def test_a_certificate_revoked_mid_connection_is_refused_at_its_next_request_on_that_connection(
    gateway: RunningGateway, federation: ProvisionedFederation, upstream: Upstream
) -> None:
    revokee = federation.paths.clients["revokee"]
    client = gateway.connect(revokee)
    first = fleet_call(client, revokee)
    with open_authority(federation.paths.authority.root) as authority:
        revoke_certificate(authority, "revokee")
    second = fleet_call(client, revokee)  # the same TCP and TLS connection
    client.close()
    assert first.status == 200
    assert (second.status, second.body) == (403, b"403 Forbidden: revoked\n")
    record = gateway.wait_for_audit(_refused_node("revoked"))
    assert record.details["identity"] == f"spiffe://{federation.paths.federation}/client/revokee"
    assert len(upstream.state.requests) == 1


def test_an_unreadable_crl_fails_closed_and_a_good_one_restores_service(
    gateway: RunningGateway, federation: ProvisionedFederation, tmp_path: Path
) -> None:
    alice = federation.paths.clients["alice"]
    crl = federation.paths.crl
    good = crl.read_bytes()
    broken = tmp_path / "broken.pem"
    broken.write_bytes(b"-----BEGIN X509 CRL-----\nnot a crl\n-----END X509 CRL-----\n")
    broken.replace(crl)
    try:
        client = gateway.connect(alice)
        refused = fleet_call(client, alice)
        client.close()
    finally:
        restored = tmp_path / "restored.pem"
        restored.write_bytes(good)
        restored.replace(crl)
    client = gateway.connect(alice)
    served = fleet_call(client, alice)
    client.close()
    assert (refused.status, refused.body) == (503, b"503 Service Unavailable: bad_crl\n")
    assert served.status == 200
    gateway.wait_for_audit(_refused_node("bad_crl"))


def test_the_health_endpoint_answers_on_loopback_without_a_certificate(
    gateway: RunningGateway,
) -> None:
    port = gateway.gateway.health_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ztfl/health", timeout=5) as answer:
        status, document = answer.status, json.loads(answer.read())
    assert status == 200
    assert document == {"status": "ok", "federation": gateway.federation.paths.federation}
