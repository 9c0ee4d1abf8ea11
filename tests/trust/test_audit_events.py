"""What an audit event may hold: validated kinds, reasons and JSON details, no secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from ztfl.aggregation.validation import RefusalReason
from ztfl.trust.audit import AuditEvent, AuditEventKind, AuditLog

RUN = "run-1"


def event(**details: object) -> AuditEvent:
    return AuditEvent(AuditEventKind.CONFIG_CHANGED, RUN, details=details)


@pytest.mark.parametrize(
    "name",
    [
        "key",
        "private_key",
        "signingKey",
        "secret",
        "client_secret",
        "password",
        "api_token",
        "privateExponent",
        "db_credentials",
        "passphrase",
    ],
)
def test_secret_named_detail_keys_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="named like a secret"):
        event(**{name: "x"})


def test_secret_named_keys_are_refused_when_nested() -> None:
    with pytest.raises(ValueError, match="named like a secret"):
        event(new={"tls": [{"private_key": "x"}]})


@pytest.mark.parametrize("name", ["key_id", "signing_key_fingerprint", "monkey", "keyboard"])
def test_identifying_or_unrelated_names_are_allowed(name: str) -> None:
    assert name in event(**{name: "ab12"}).details


@pytest.mark.parametrize("value", [b"\x00", bytearray(b"k"), memoryview(b"k")])
def test_bytes_values_are_refused(value: object) -> None:
    with pytest.raises(TypeError, match="bytes"):
        event(digest=value)


def test_pem_private_key_text_is_refused() -> None:
    pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n"
    with pytest.raises(ValueError, match="PEM private key"):
        event(note=pem)


@pytest.mark.parametrize("value", [object(), {1, 2}, 1j, Path("x")])
def test_values_json_cannot_hold_are_refused(value: object) -> None:
    with pytest.raises(TypeError, match="not JSON"):
        event(value=value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_numbers_are_refused(value: float) -> None:
    with pytest.raises(ValueError, match="not finite"):
        event(norm=value)


def test_non_string_detail_keys_are_refused() -> None:
    with pytest.raises(TypeError, match="not a string"):
        AuditEvent(AuditEventKind.CONFIG_CHANGED, RUN, details={"ok": {1: "x"}})


def test_oversized_details_are_refused() -> None:
    with pytest.raises(ValueError, match="bytes as JSON"):
        event(blob="x" * 70_000)


def test_details_are_normalised_to_plain_json() -> None:
    built = event(reason=RefusalReason.NON_FINITE, shape=(3, 2), nested={"n": [1, 2.5, None]})
    assert built.details == {
        "reason": "non_finite",
        "shape": [3, 2],
        "nested": {"n": [1, 2.5, None]},
    }
    assert type(built.details["reason"]) is str


@pytest.mark.parametrize(
    "kind",
    [
        AuditEventKind.NODE_REFUSED,
        AuditEventKind.UPDATE_REFUSED,
        AuditEventKind.ROUND_SKIPPED,
        AuditEventKind.CLIENT_VERIFICATION_FAILED,
    ],
)
def test_refusals_need_a_reason(kind: AuditEventKind) -> None:
    with pytest.raises(ValueError, match="needs a reason"):
        AuditEvent(kind, RUN, round=1)


def test_round_events_need_a_round() -> None:
    with pytest.raises(ValueError, match="needs a round"):
        AuditEvent(AuditEventKind.ROUND_STARTED, RUN)


@pytest.mark.parametrize("reason", ["norm too big", "", "x" * 200, "überlast"])
def test_free_text_reasons_are_refused(reason: str) -> None:
    with pytest.raises(ValueError, match="refusal enum"):
        AuditEvent(AuditEventKind.NODE_REFUSED, RUN, reason=reason)


def test_refusal_enum_reason_is_stored_as_its_value() -> None:
    built = AuditEvent(AuditEventKind.UPDATE_REFUSED, RUN, round=1, reason=RefusalReason.NON_FINITE)
    assert built.reason == "non_finite"
    assert type(built.reason) is str


def test_kind_given_as_its_value_becomes_the_enum() -> None:
    assert AuditEvent("round_started", RUN, round=0).kind is AuditEventKind.ROUND_STARTED  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [("run_id", ""), ("round", -1), ("round", True), ("node_id", -1), ("node_id", 2**64)],
)
def test_out_of_range_identifiers_are_refused(field: str, value: object) -> None:
    arguments: dict[str, object] = {
        "kind": AuditEventKind.NODE_ADMITTED,
        "run_id": RUN,
        field: value,
    }
    with pytest.raises(ValueError, match=field):
        AuditEvent(**arguments)  # type: ignore[arg-type]


def test_refused_event_leaves_the_log_unchanged(tmp_path: Path) -> None:
    with AuditLog.open(tmp_path / "audit.db", create=True) as log:
        with pytest.raises(ValueError, match="named like a secret"):
            log.append(AuditEventKind.KEY_ROTATED, run_id=RUN, details={"new_key": "pem"})
        assert log.head.seq == 0
