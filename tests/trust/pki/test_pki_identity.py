"""SPIFFE identities: one spelling per identity, everything else refused."""

from __future__ import annotations

import pytest

from ztfl.trust.pki import Identity, Role


def test_spiffe_id_round_trips_through_parse() -> None:
    identity = Identity("hospitals", Role.OPERATOR, "olga-1")
    assert identity.spiffe_id == "spiffe://hospitals/operator/olga-1"
    assert Identity.parse(identity.spiffe_id) == identity


@pytest.mark.parametrize(
    "text",
    [
        "https://hospitals/client/alice",
        "spiffe://hospitals/client",
        "spiffe://hospitals/client/alice/extra",
        "spiffe://hospitals/client/alice/",
        "spiffe://hospitals/admin/alice",
        "spiffe://Hospitals/client/alice",
        "spiffe://hospitals:443/client/alice",
        "spiffe://user@hospitals/client/alice",
        "spiffe://hospitals/client/alice?x=1",
        "spiffe://hospitals/client/alice#f",
        "spiffe://hospitals/client/%61lice",
        "spiffe://hospitals/client/..",
        "spiffe://hospitals//alice",
        "spiffe:///client/alice",
    ],
)
def test_parse_refuses_every_other_spelling(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        Identity.parse(text)


def test_identity_refuses_an_unknown_role() -> None:
    with pytest.raises(ValueError, match="role"):
        Identity("hospitals", "admin", "alice")  # type: ignore[arg-type]
