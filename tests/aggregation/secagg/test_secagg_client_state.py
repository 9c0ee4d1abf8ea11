"""A member's round survives being exported and restored between stages, as a Flower
ClientApp (a fresh object per message) needs; parameters travel as plain records."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from tests.aggregation.secagg.secagg_round_driver import MakeGroup, clipped_inputs
from ztfl.aggregation.secagg import (
    ClientReply,
    GroupParams,
    MaskedInputRequest,
    SecAggClient,
    SecAggRefusal,
    SecAggRefusalReason,
    ServerMessage,
    identity_verifier,
    roster_verifier,
)


def test_round_with_state_restored_before_every_stage_sums_correctly(
    make_group: MakeGroup,
    identity_keys: dict[str, ec.EllipticCurvePrivateKey],
    roster_key: ed25519.Ed25519PrivateKey,
) -> None:
    group = make_group(5)
    members = group.params.members
    inputs = clipped_inputs(members, group.params.vector_length, seed=3)
    states = {m: group.clients[m].export_state() for m in members}
    verify = identity_verifier({m: identity_keys[m].public_key() for m in members})
    verify_roster = roster_verifier(roster_key.public_key())

    messages: dict[str, ServerMessage] = dict(group.server.start())
    while messages:
        replies: list[ClientReply] = []
        for member, message in messages.items():
            if member == "node-2" and isinstance(message, MaskedInputRequest):
                continue  # one dropout after share distribution
            client = SecAggClient.restore(
                states[member],
                identity_key=identity_keys[member],
                verify_identity=verify,
                verify_roster=verify_roster,
            )
            if isinstance(message, MaskedInputRequest):
                vector, extras = inputs[member]
                client.set_input(vector, extras=extras)
            replies.append(client.handle(message))
            states[member] = client.export_state()
        messages = dict(group.server.collect(replies))

    outcome = group.server.outcome
    assert outcome is not None
    assert outcome.vector_sum is not None
    survivors = tuple(m for m in members if m != "node-2")
    assert outcome.survivors == survivors
    plaintext = np.sum([inputs[m][0].astype(np.float64) for m in survivors], axis=0)
    assert np.abs(outcome.vector_sum - plaintext).max() < group.params.quantization.sum_error_bound(
        4
    )


def test_input_set_before_export_is_restored(
    make_group: MakeGroup,
    identity_keys: dict[str, ec.EllipticCurvePrivateKey],
    roster_key: ed25519.Ed25519PrivateKey,
) -> None:
    group = make_group(3)
    client = group.clients["node-0"]
    client.handle(group.server.start()["node-0"])
    client.set_input(np.full(group.params.vector_length, 0.01), extras=[1])

    restored = SecAggClient.restore(
        client.export_state(),
        identity_key=identity_keys["node-0"],
        verify_identity=identity_verifier({}),
        verify_roster=roster_verifier(roster_key.public_key()),
    )

    assert restored.export_state() == client.export_state()
    assert restored.stage is client.stage


@pytest.mark.parametrize("state", [b"", b"{}", b"not json", b'{"version": 99}'])
def test_unreadable_state_is_refused_as_malformed(
    state: bytes, identity_keys: dict[str, ec.EllipticCurvePrivateKey]
) -> None:
    with pytest.raises(SecAggRefusal) as refused:
        SecAggClient.restore(
            state,
            identity_key=identity_keys["node-0"],
            verify_identity=identity_verifier({}),
            verify_roster=lambda message, signature: False,
        )

    assert refused.value.reason is SecAggRefusalReason.MALFORMED


def test_parameters_round_trip_through_a_plain_record(make_group: MakeGroup) -> None:
    params = make_group(5).params

    assert GroupParams.from_record(params.as_record()) == params


def test_parameters_record_with_a_wrong_field_is_refused(make_group: MakeGroup) -> None:
    record = dict(make_group(3).params.as_record())
    record["threshold"] = "2"

    with pytest.raises(SecAggRefusal) as refused:
        GroupParams.from_record(record)

    assert refused.value.reason is SecAggRefusalReason.MALFORMED
