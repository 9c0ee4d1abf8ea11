"""Honest members refuse what a malicious coordinator (or network) could try: substituted keys,
forged or contradictory rosters, requests for both secrets of one member, tampered shares."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519

from tests.aggregation.secagg.secagg_round_driver import (
    Group,
    MakeGroup,
    answer,
    clipped_inputs,
)
from ztfl.aggregation.secagg import (
    ClientPolicy,
    ClientStage,
    KeyAdvertisement,
    MaskedInput,
    MaskedInputRequest,
    SecAggClient,
    SecAggRefusal,
    SecAggRefusalReason,
    ShareKeysRequest,
    UnmaskRequest,
    UnmaskShares,
    identity_verifier,
    roster_signer,
    roster_verifier,
)
from ztfl.aggregation.secagg.key_agreement import public_bytes
from ztfl.aggregation.secagg.signatures import (
    RosterStage,
    key_advertisement_message,
    sign_roster,
    sign_with_identity,
)


def _share_requests(group: Group) -> dict[str, ShareKeysRequest]:
    requests = group.server.collect(answer(group, group.server.start()))
    return {m: r for m, r in requests.items() if isinstance(r, ShareKeysRequest)}


def _masked_input_requests(group: Group) -> dict[str, MaskedInputRequest]:
    requests = group.server.collect(answer(group, _share_requests(group)))
    return {m: r for m, r in requests.items() if isinstance(r, MaskedInputRequest)}


def _after_masking(group: Group) -> None:
    inputs = clipped_inputs(group.params.members, group.params.vector_length)
    group.server.collect(answer(group, _masked_input_requests(group), inputs))


def _unmask_request(
    group: Group,
    roster_key: ed25519.Ed25519PrivateKey,
    survivors: tuple[str, ...],
    dropped: tuple[str, ...],
) -> UnmaskRequest:
    roster = sign_roster(
        group.params, RosterStage.UNMASK, survivors, roster_signer(roster_key), dropped=dropped
    )
    return UnmaskRequest(roster)


def _refusal(client: SecAggClient, message: object) -> SecAggRefusalReason:
    with pytest.raises(SecAggRefusal) as refused:
        client.handle(message)  # type: ignore[arg-type]
    return refused.value.reason


def test_key_not_signed_by_the_member_is_refused(make_group: MakeGroup) -> None:
    group = make_group(3)
    request = _share_requests(group)["node-0"]
    impostor = ec.generate_private_key(ec.SECP384R1())
    encryption, masking = (public_bytes(x25519.X25519PrivateKey.generate()) for _ in range(2))
    forged = KeyAdvertisement(
        "node-1",
        encryption,
        masking,
        sign_with_identity(
            impostor, key_advertisement_message(group.params, "node-1", encryption, masking)
        ),
    )
    substituted = ShareKeysRequest(
        request.roster,
        tuple(forged if ad.member_id == "node-1" else ad for ad in request.advertisements),
    )

    assert _refusal(group.clients["node-0"], substituted) is SecAggRefusalReason.BAD_SIGNATURE
    assert group.clients["node-0"].stage is ClientStage.ABORTED


def test_key_signed_for_another_round_is_refused(
    make_group: MakeGroup, identity_keys: dict[str, ec.EllipticCurvePrivateKey]
) -> None:
    group = make_group(3)
    request = _share_requests(group)["node-0"]
    genuine = next(ad for ad in request.advertisements if ad.member_id == "node-1")
    other_round = dataclasses.replace(group.params, round=group.params.round + 1)
    replayed = dataclasses.replace(
        genuine,
        signature=sign_with_identity(
            identity_keys["node-1"],
            key_advertisement_message(
                other_round, "node-1", genuine.encryption_key, genuine.masking_key
            ),
        ),
    )
    substituted = ShareKeysRequest(
        request.roster,
        tuple(replayed if ad.member_id == "node-1" else ad for ad in request.advertisements),
    )

    assert _refusal(group.clients["node-0"], substituted) is SecAggRefusalReason.BAD_SIGNATURE


def test_member_refuses_when_its_own_keys_were_replaced(make_group: MakeGroup) -> None:
    group = make_group(3)
    request = _share_requests(group)["node-0"]
    node_2 = next(ad for ad in request.advertisements if ad.member_id == "node-2")
    swapped = tuple(
        dataclasses.replace(node_2, member_id="node-0") if ad.member_id == "node-0" else ad
        for ad in request.advertisements
    )

    reason = _refusal(group.clients["node-0"], ShareKeysRequest(request.roster, swapped))

    assert reason is SecAggRefusalReason.BAD_SIGNATURE


def test_server_drops_a_badly_signed_advertisement_instead_of_forwarding_it(
    make_group: MakeGroup,
) -> None:
    group = make_group(3)
    advertisements = answer(group, group.server.start())
    forged = [
        dataclasses.replace(ad, signature=b"\x30\x00") if ad.member_id == "node-2" else ad
        for ad in advertisements
        if isinstance(ad, KeyAdvertisement)
    ]

    requests = group.server.collect(forged)

    assert set(requests) == {"node-0", "node-1"}
    assert [(m, r.reason) for m, r in group.server.refused_replies] == [
        ("node-2", SecAggRefusalReason.BAD_SIGNATURE)
    ]


def test_unmask_request_for_both_shares_of_one_member_is_refused(
    make_group: MakeGroup, roster_key: ed25519.Ed25519PrivateKey
) -> None:
    group = make_group(3)
    _after_masking(group)
    members = group.params.members
    greedy = _unmask_request(group, roster_key, members, ("node-1",))

    reason = _refusal(group.clients["node-0"], greedy)

    assert reason is SecAggRefusalReason.DOUBLE_UNMASK_REQUEST
    assert group.clients["node-0"].stage is ClientStage.ABORTED


def test_second_unmask_request_is_refused(
    make_group: MakeGroup, roster_key: ed25519.Ed25519PrivateKey
) -> None:
    group = make_group(5)
    _after_masking(group)
    members = group.params.members
    client = group.clients["node-0"]
    client.handle(_unmask_request(group, roster_key, members, ()))
    # The same member now reported dropped: its mask key share would complete the unmasking.
    second = _unmask_request(group, roster_key, members[:1] + members[2:], members[1:2])

    assert _refusal(client, second) is SecAggRefusalReason.DOUBLE_UNMASK_REQUEST
    assert client.stage is ClientStage.DONE


def test_unmask_roster_omitting_a_member_the_client_masked_with_is_refused(
    make_group: MakeGroup, roster_key: ed25519.Ed25519PrivateKey
) -> None:
    group = make_group(3)
    _after_masking(group)
    # node-1 was in the signed SHARES roster; the UNMASK roster lists it neither way.
    request = _unmask_request(group, roster_key, ("node-0", "node-2"), ())

    assert _refusal(group.clients["node-0"], request) is SecAggRefusalReason.ROSTER_MISMATCH


def test_unmask_roster_listing_a_member_the_client_never_masked_with_is_refused(
    make_group: MakeGroup, roster_key: ed25519.Ed25519PrivateKey
) -> None:
    group = make_group(5)
    share_requests = _share_requests(group)
    replies = answer(group, {m: r for m, r in share_requests.items() if m != "node-4"})
    mask_requests = group.server.collect(replies)
    inputs = clipped_inputs(group.params.members, group.params.vector_length)
    group.server.collect(answer(group, mask_requests, inputs))
    # node-4 never distributed shares, so no member masked with it.
    request = _unmask_request(
        group, roster_key, ("node-0", "node-1", "node-2"), ("node-3", "node-4")
    )

    assert _refusal(group.clients["node-0"], request) is SecAggRefusalReason.ROSTER_MISMATCH


def test_shares_roster_listing_a_member_without_advertised_keys_is_refused(
    make_group: MakeGroup, roster_key: ed25519.Ed25519PrivateKey
) -> None:
    group = make_group(5)
    setups = group.server.start()
    share_requests = group.server.collect(
        answer(group, {m: s for m, s in setups.items() if m != "node-4"})
    )
    shares = answer(group, share_requests)
    request = group.server.collect(shares)["node-0"]
    assert isinstance(request, MaskedInputRequest)
    inflated = sign_roster(
        group.params,
        RosterStage.SHARES,
        group.params.members,
        roster_signer(roster_key),
    )

    reason = _refusal(group.clients["node-0"], MaskedInputRequest(inflated, request.ciphertexts))

    assert reason is SecAggRefusalReason.ROSTER_MISMATCH


def test_roster_not_signed_by_the_coordinator_is_refused(make_group: MakeGroup) -> None:
    group = make_group(3)
    _after_masking(group)
    other_key = ed25519.Ed25519PrivateKey.generate()
    request = _unmask_request(group, other_key, group.params.members, ())

    reason = _refusal(group.clients["node-0"], request)

    assert reason is SecAggRefusalReason.BAD_ROSTER_SIGNATURE


def test_unmask_request_below_threshold_is_refused_without_releasing_shares(
    make_group: MakeGroup, roster_key: ed25519.Ed25519PrivateKey
) -> None:
    group = make_group(3)
    _after_masking(group)
    request = _unmask_request(group, roster_key, ("node-0",), ("node-1", "node-2"))

    assert _refusal(group.clients["node-0"], request) is SecAggRefusalReason.BELOW_THRESHOLD
    assert group.clients["node-0"].stage is ClientStage.ABORTED


def test_tampered_share_ciphertext_is_refused(make_group: MakeGroup) -> None:
    group = make_group(3)
    request = _masked_input_requests(group)["node-0"]
    client = group.clients["node-0"]
    client.set_input(np.zeros(group.params.vector_length), extras=[1])
    ciphertext = bytearray(request.ciphertexts["node-1"])
    ciphertext[-1] ^= 0x01
    tampered = MaskedInputRequest(
        request.roster, {**request.ciphertexts, "node-1": bytes(ciphertext)}
    )

    assert _refusal(client, tampered) is SecAggRefusalReason.BAD_SHARE


def test_share_ciphertext_redirected_to_another_member_is_refused(make_group: MakeGroup) -> None:
    group = make_group(3)
    requests = _masked_input_requests(group)
    client = group.clients["node-0"]
    client.set_input(np.zeros(group.params.vector_length), extras=[1])
    # node-2's shares for node-1, delivered to node-0 as if node-2 had encrypted them for it.
    redirected = MaskedInputRequest(
        requests["node-0"].roster,
        {**requests["node-0"].ciphertexts, "node-2": requests["node-1"].ciphertexts["node-2"]},
    )

    assert _refusal(client, redirected) is SecAggRefusalReason.BAD_SHARE


def test_group_below_the_members_policy_floor_is_refused(
    make_group: MakeGroup,
    identity_keys: dict[str, ec.EllipticCurvePrivateKey],
    roster_key: ed25519.Ed25519PrivateKey,
) -> None:
    group = make_group(3)
    strict = SecAggClient(
        "node-0",
        identity_key=identity_keys["node-0"],
        verify_identity=identity_verifier({"node-0": identity_keys["node-0"].public_key()}),
        verify_roster=roster_verifier(roster_key.public_key()),
        policy=ClientPolicy(min_group_size=5, min_threshold=3),
    )

    reason = _refusal(strict, group.server.start()["node-0"])

    assert reason is SecAggRefusalReason.WEAK_PARAMETERS


def test_message_for_a_later_stage_is_refused_as_out_of_order(
    make_group: MakeGroup, roster_key: ed25519.Ed25519PrivateKey
) -> None:
    group = make_group(3)
    group.clients["node-0"].handle(group.server.start()["node-0"])
    early = _unmask_request(group, roster_key, group.params.members, ())

    assert _refusal(group.clients["node-0"], early) is SecAggRefusalReason.OUT_OF_ORDER


def test_member_that_refused_answers_nothing_more(make_group: MakeGroup) -> None:
    group = make_group(3)
    requests = _share_requests(group)
    client = group.clients["node-0"]
    _refusal(client, ShareKeysRequest(requests["node-0"].roster, ()))

    assert _refusal(client, requests["node-0"]) is SecAggRefusalReason.OUT_OF_ORDER


def test_server_treats_a_malformed_masked_input_as_a_dropout(make_group: MakeGroup) -> None:
    group = make_group(5)
    inputs = clipped_inputs(group.params.members, group.params.vector_length)
    replies = answer(group, _masked_input_requests(group), inputs)
    short = [
        MaskedInput(r.member_id, r.values[:-1]) if r.member_id == "node-3" else r
        for r in replies
        if isinstance(r, MaskedInput)
    ]

    unmask_requests = group.server.collect(short)
    group.server.collect(answer(group, unmask_requests))

    outcome = group.server.outcome
    assert outcome is not None
    assert outcome.vector_sum is not None
    assert "node-3" not in outcome.survivors
    plaintext = np.sum([inputs[m][0].astype(np.float64) for m in outcome.survivors], axis=0)
    assert np.abs(outcome.vector_sum - plaintext).max() < group.params.quantization.sum_error_bound(
        4
    )
    assert [(m, r.reason) for m, r in group.server.refused_replies] == [
        ("node-3", SecAggRefusalReason.MALFORMED)
    ]


@pytest.mark.parametrize("responders", [3, 4])
def test_server_aborts_when_a_wrong_key_share_corrupts_the_unmasking(
    make_group: MakeGroup, responders: int
) -> None:
    group = make_group(5)
    inputs = clipped_inputs(group.params.members, group.params.vector_length)
    replies = answer(
        group, {m: r for m, r in _masked_input_requests(group).items() if m != "node-4"}, inputs
    )
    unmask_requests = group.server.collect(replies)
    shares = answer(group, dict(list(unmask_requests.items())[:responders]))
    first = shares[0]
    assert isinstance(first, UnmaskShares)
    wrong = dict(first.pairwise_key_shares)
    wrong["node-4"] = (int.from_bytes(wrong["node-4"], "big") ^ 1).to_bytes(66, "big")
    shares[0] = dataclasses.replace(first, pairwise_key_shares=wrong)

    group.server.collect(shares)

    assert group.server.outcome is not None
    assert group.server.outcome.aborted is SecAggRefusalReason.BAD_SHARE
    assert group.server.outcome.vector_sum is None
