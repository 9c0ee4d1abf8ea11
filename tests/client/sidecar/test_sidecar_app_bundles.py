"""The sidecar passes on allow-listed app bundles only, and relays nothing but the Fleet API."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
from flwr.proto.fleet_pb2 import PullMessagesRequest, PullMessagesResponse

from tests.client.sidecar.sidecar_test_setup import (
    APPROVED_BUNDLE,
    APPROVED_SHA256,
    RunningSidecar,
    get_fab_response,
)
from tests.trust.transport.relay_test_servers import Upstream
from ztfl.trust.audit import AuditEventKind


def test_an_allow_listed_app_bundle_reaches_flowers_supernode_client_through_local_tls(
    sidecar: RunningSidecar, upstream: Upstream
) -> None:
    upstream.state.responses["/v1/fleet/get-fab"] = get_fab_response(APPROVED_BUNDLE)
    response = sidecar.get_fab()
    assert response.fab.content == APPROVED_BUNDLE
    assert response.fab.hash_str == APPROVED_SHA256
    [request] = upstream.state.requests  # through the gateway, node key bound to the cert
    assert request.target == "/v1/fleet/get-fab"
    assert request.headers["accept-encoding"] == "identity"
    assert sidecar.audit_records() == []


def test_an_app_bundle_not_on_the_allow_list_is_refused_and_audited(
    sidecar: RunningSidecar, upstream: Upstream
) -> None:
    pushed = b"PK\x03\x04 code the client never agreed to run"
    upstream.state.responses["/v1/fleet/get-fab"] = get_fab_response(pushed)
    with pytest.raises(httpx.HTTPStatusError) as refused:
        sidecar.get_fab()
    assert refused.value.response.status_code == 403
    assert refused.value.response.content == b"403 Forbidden: app_bundle_not_allow_listed\n"
    [record] = sidecar.audit_records()
    assert (record.kind, record.reason) == (
        AuditEventKind.APP_BUNDLE_REFUSED,
        "app_bundle_not_allow_listed",
    )
    assert record.details["fab_sha256"] != APPROVED_SHA256


def test_a_bundle_claiming_an_allow_listed_hash_it_does_not_have_is_refused(
    sidecar: RunningSidecar, upstream: Upstream
) -> None:
    forged = get_fab_response(b"PK\x03\x04 other code", claimed_sha256=APPROVED_SHA256)
    upstream.state.responses["/v1/fleet/get-fab"] = forged
    with pytest.raises(httpx.HTTPStatusError):
        sidecar.get_fab()
    assert [record.reason for record in sidecar.audit_records()] == ["app_bundle_hash_mismatch"]


def test_every_bundle_is_refused_while_the_allow_list_is_unreadable(
    sidecar: RunningSidecar, upstream: Upstream
) -> None:
    upstream.state.responses["/v1/fleet/get-fab"] = get_fab_response(APPROVED_BUNDLE)
    allow_list = sidecar.sidecar.config.app_bundle_allow_list
    saved = allow_list.read_bytes()
    allow_list.write_text("[]")
    try:
        with pytest.raises(httpx.HTTPStatusError):
            sidecar.get_fab()
    finally:
        allow_list.write_bytes(saved)
    assert [record.reason for record in sidecar.audit_records()] == [
        "app_bundle_allow_list_unreadable"
    ]


def test_other_fleet_calls_pass_through_unchanged(
    sidecar: RunningSidecar, upstream: Upstream
) -> None:
    upstream.state.responses["/v1/fleet/pull-messages"] = PullMessagesResponse(
        messages_list=[]
    ).SerializeToString()
    with sidecar.flower_client() as client:
        response = client.PullMessages(PullMessagesRequest())
    assert list(response.messages_list) == []
    assert [request.target for request in upstream.state.requests] == ["/v1/fleet/pull-messages"]


@pytest.mark.parametrize("target", ["/v1/control/start-run", "/v1/fleet/%2e%2e/control/x"])
def test_paths_outside_the_fleet_api_are_not_relayed(
    sidecar: RunningSidecar, upstream: Upstream, target: str
) -> None:
    local_ca = sidecar.enrolled.client.local.ca_certificate
    with httpx.Client(verify=ssl.create_default_context(cafile=str(local_ca))) as client:
        response = client.post(f"https://127.0.0.1:{sidecar.port}{target}", content=b"x")
    assert response.status_code in (400, 403)
    assert upstream.state.requests == []


def test_the_loopback_endpoint_is_not_trusted_without_the_local_ca(
    sidecar: RunningSidecar, tmp_path: Path
) -> None:
    federation_ca = sidecar.enrolled.federation.ca_certificate
    with (
        httpx.Client(verify=ssl.create_default_context(cafile=str(federation_ca))) as client,
        pytest.raises(httpx.ConnectError),
    ):
        client.post(f"https://127.0.0.1:{sidecar.port}/v1/fleet/get-run", content=b"x")
