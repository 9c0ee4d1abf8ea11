"""Request targets are decoded once into one canonical path; every ambiguous spelling is refused."""

from __future__ import annotations

import pytest

from ztfl.trust.transport import PathRefusal, RequestPath, fleet_api_path, normalise_path


@pytest.mark.parametrize(
    "target",
    ["/v1/fleet/pull-messages", "/v1/fleet/get-fab", "/v1/fleet/send-node-heartbeat"],
)
def test_fleet_endpoints_pass_unchanged(target: str) -> None:
    assert fleet_api_path(target) == RequestPath(target, "")


def test_percent_encoded_unreserved_characters_are_decoded_to_the_canonical_path() -> None:
    assert fleet_api_path("/v1/%66leet/pull%2Dmessages") == RequestPath(
        "/v1/fleet/pull-messages", ""
    )


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/v1/control/start-run", PathRefusal.NOT_FLEET_API),
        ("/v1/fleet/../control/start-run", PathRefusal.DOT_SEGMENT),
        ("/v1/fleet/%2e%2e/x", PathRefusal.DOT_SEGMENT),
        ("/v1/fleet/%2E/pull-messages", PathRefusal.DOT_SEGMENT),
        ("/v1%2Ffleet/pull-messages", PathRefusal.ENCODED_SEPARATOR),
        ("/v1/fleet%2fpull-messages", PathRefusal.ENCODED_SEPARATOR),
        ("/v1/fleet/%5Cpull-messages", PathRefusal.ENCODED_SEPARATOR),
        ("//v1/fleet/pull-messages", PathRefusal.EMPTY_SEGMENT),
        ("/v1//fleet/pull-messages", PathRefusal.EMPTY_SEGMENT),
        ("/v1/fleet/", PathRefusal.EMPTY_SEGMENT),
        ("/v1/fleet/pull-messages/", PathRefusal.EMPTY_SEGMENT),
        ("/v1/fleet/%252e%252e/x", PathRefusal.INVALID_CHARACTER),
        ("/v1/fleet/pull%00", PathRefusal.INVALID_CHARACTER),
        ("/v1/fleet/pull%zz", PathRefusal.INVALID_CHARACTER),
        ("/v1/fleet/pull\\messages", PathRefusal.INVALID_CHARACTER),
        ("/v1/fleet/pull-messages#x", PathRefusal.INVALID_CHARACTER),
        ("/v1/fleet/pull%3Fx", PathRefusal.INVALID_CHARACTER),
        ("/v1/fleet/pull-messages?x=1", PathRefusal.QUERY_NOT_ALLOWED),
        ("/v1/fleet/pull-messages/extra", PathRefusal.NOT_FLEET_API),
        ("/V1/FLEET/pull-messages", PathRefusal.NOT_FLEET_API),
        ("/health", PathRefusal.NOT_FLEET_API),
        ("http://127.0.0.1:9093/v1/fleet/pull-messages", PathRefusal.NOT_ORIGIN_FORM),
        ("*", PathRefusal.NOT_ORIGIN_FORM),
    ],
)
def test_ambiguous_or_foreign_targets_are_refused_with_their_reason(
    target: str, reason: PathRefusal
) -> None:
    assert fleet_api_path(target) is reason


def test_a_query_is_kept_apart_from_the_path_by_the_general_normaliser() -> None:
    assert normalise_path("/a/b?x=1") == RequestPath("/a/b", "x=1")
