"""A member's secure-aggregation stages in the production ClientApp: floors, identities,
state between stages, refusals, and the wire format's round trip through Flower's protobuf.

Messages are real Flower messages carrying a model signed by the test coordinator; group
setups come from a real ``SecAggServer`` signing rosters with that coordinator's key; member
identities come from a real federation CA (``provision_federation``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

from ztfl.aggregation.secagg import (
    EncryptedShares,
    GroupParams,
    KeyAdvertisement,
    MaskedInput,
    QuantizationParams,
    Roster,
    RosterStage,
    SecAggClient,
    SecAggRefusal,
    SecAggServer,
    ShareKeysRequest,
    UnmaskRequest,
    UnmaskShares,
    identity_verifier,
    scale_for_modulus_bits,
)
from ztfl.client import protocol
from ztfl.client import secagg_records as records
from ztfl.client.app import ClientRefusal, build_client_app
from ztfl.client.data import ClientData
from ztfl.client.policy import PolicyError, PolicyViolation, SecureAggregationPolicy
from ztfl.client.secure_aggregation import (
    STATE_KEY,
    IdentityError,
    MemberIdentity,
    check_plaintext_allowed,
)
from ztfl.trust.keys import SigningKey, generate_signing_key
from ztfl.trust.pki.provisioning import FederationPaths, provision_federation

MEMBER = "7"  # CLIENT_NODE_ID of the client conftest: the node the round messages address
PEERS = ("8", "9")


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> FederationPaths:
    """A federation CA with the member and its two peers enrolled."""
    return provision_federation(
        tmp_path_factory.mktemp("federation"), "client-tests", clients=["m7", "m8", "m9"]
    )


def identity_of(federation: FederationPaths, member: str) -> MemberIdentity:
    """A member's identity from its enrolment folder."""
    return MemberIdentity.load(federation.clients[f"m{member}"].root, federation.crl)


def group_params(members: tuple[str, ...] = (MEMBER, *PEERS), *, round: int = 1) -> GroupParams:
    """A group of ``members`` in round 1 of the client tests' run."""
    quantization = QuantizationParams(5.0, scale_for_modulus_bits(5.0, len(members)))
    return GroupParams.create(
        run_id="client-tests-run",
        round=round,
        group_id=f"{round}-0",
        members=members,
        quantization=quantization,
        vector_length=4810,
    )


def setup_message(
    round_message: Callable[..., Message], params: GroupParams, roster_key: SigningKey
) -> Message:
    """A signed training broadcast carrying the group's setup, roster signed by ``roster_key``."""
    server = SecAggServer(
        params, sign_roster=roster_key.sign, verify_identity=identity_verifier({})
    )
    broadcast = round_message()
    content = RecordDict(dict(broadcast.content.items()))
    content[protocol.SECAGG_KEY] = records.setup_record(server.start()[MEMBER])
    return Message(content, dst_node_id=7, message_type=protocol.SECAGG_SETUP, group_id="1")


def stage_message(kind: str, record: ConfigRecord) -> Message:
    """A later stage's message to the member."""
    return Message(RecordDict({protocol.SECAGG_KEY: record}), 7, kind, group_id="1")


def member_app(
    federation: FederationPaths, client_data: ClientData, *, identity: str = MEMBER
) -> ClientApp:
    """The production ClientApp with the secure stages, holding ``identity``'s identity."""
    return build_client_app(
        lambda context: client_data,
        load_identity=lambda context: identity_of(federation, identity),
    )


def member_context(anchor_file: Path, **settings: bool | int | str) -> Context:
    """Node 7's context: its trust anchor and any policy settings."""
    config: dict[str, bool | float | int | str] = {"trust-anchor": str(anchor_file), **settings}
    return Context(run_id=1, node_id=7, node_config=config, state=RecordDict(), run_config={})


def error_code(reply: Message) -> int:
    """The reply's error code (the test fails on a reply without one)."""
    assert reply.has_error(), reply.content
    return int(reply.error.code)


# The policy floor ---------------------------------------------------------------------------
def test_the_secure_aggregation_floor_defaults_to_k_3_and_t_2() -> None:
    policy = SecureAggregationPolicy.from_node_config({})
    assert (policy.min_group_size, policy.min_threshold) == (3, 2)


def test_a_floor_below_three_members_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match="secagg-min-group-size"):
        SecureAggregationPolicy.from_node_config({"secagg-min-group-size": 2})


def test_a_floor_of_the_wrong_type_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match="secagg-min-threshold"):
        SecureAggregationPolicy.from_node_config({"secagg-min-threshold": "3"})


def test_a_node_requiring_secure_aggregation_refuses_plaintext_rounds() -> None:
    policy = SecureAggregationPolicy.from_node_config({"require-secure-aggregation": True})
    with pytest.raises(PolicyViolation, match="secure aggregation"):
        policy.check_plaintext_round()


def test_a_plaintext_round_is_refused_on_a_node_that_requires_secure_aggregation(
    anchor_file: Path,
) -> None:
    context = member_context(anchor_file, **{"require-secure-aggregation": True})
    with pytest.raises(ClientRefusal) as refused:
        check_plaintext_allowed(context)
    assert refused.value.code is protocol.ClientErrorCode.POLICY_FLOOR


# Stage 0 ------------------------------------------------------------------------------------
def test_a_member_advertises_signed_keys_and_keeps_its_round_in_the_context(
    federation: FederationPaths,
    client_data: ClientData,
    anchor_file: Path,
    round_message: Callable[..., Message],
    coordinator_key: SigningKey,
) -> None:
    context = member_context(anchor_file)
    params = group_params()
    reply = member_app(federation, client_data)(
        setup_message(round_message, params, coordinator_key), context
    )
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    advertisement, certificate = records.read_key_advertisement(
        reply.content.config_records[protocol.SECAGG_KEY]
    )
    assert advertisement.member_id == MEMBER
    assert certificate == identity_of(federation, MEMBER).certificate_pem
    assert STATE_KEY in context.state.config_records
    assert protocol.UPDATE_KEY not in reply.content.array_records


def test_a_group_smaller_than_the_node_floor_is_refused_before_any_key_exists(
    federation: FederationPaths,
    client_data: ClientData,
    anchor_file: Path,
    round_message: Callable[..., Message],
    coordinator_key: SigningKey,
) -> None:
    context = member_context(anchor_file, **{"secagg-min-group-size": 5})
    reply = member_app(federation, client_data)(
        setup_message(round_message, group_params(), coordinator_key), context
    )
    assert error_code(reply) == protocol.SecAggErrorCode.SECAGG_WEAK_PARAMETERS
    assert STATE_KEY not in context.state.config_records


def test_a_threshold_below_the_node_floor_is_refused(
    federation: FederationPaths,
    client_data: ClientData,
    anchor_file: Path,
    round_message: Callable[..., Message],
    coordinator_key: SigningKey,
) -> None:
    context = member_context(anchor_file, **{"secagg-min-threshold": 3})
    reply = member_app(federation, client_data)(
        setup_message(round_message, group_params(), coordinator_key), context
    )
    assert error_code(reply) == protocol.SecAggErrorCode.SECAGG_WEAK_PARAMETERS


def test_a_roster_not_signed_by_the_pinned_coordinator_key_is_refused(
    federation: FederationPaths,
    client_data: ClientData,
    anchor_file: Path,
    round_message: Callable[..., Message],
) -> None:
    context = member_context(anchor_file)
    reply = member_app(federation, client_data)(
        setup_message(round_message, group_params(), generate_signing_key()), context
    )
    assert error_code(reply) == protocol.SecAggErrorCode.SECAGG_BAD_ROSTER_SIGNATURE


def test_a_setup_for_another_round_than_the_broadcast_is_refused(
    federation: FederationPaths,
    client_data: ClientData,
    anchor_file: Path,
    round_message: Callable[..., Message],
    coordinator_key: SigningKey,
) -> None:
    context = member_context(anchor_file)
    reply = member_app(federation, client_data)(
        setup_message(round_message, group_params(round=2), coordinator_key), context
    )
    assert error_code(reply) == protocol.SecAggErrorCode.SECAGG_OUT_OF_ORDER


def test_a_node_without_an_identity_refuses_with_its_own_code(
    client_data: ClientData,
    anchor_file: Path,
    round_message: Callable[..., Message],
    coordinator_key: SigningKey,
) -> None:
    app = build_client_app(lambda context: client_data)  # node config: no identity-dir
    reply = app(
        setup_message(round_message, group_params(), coordinator_key), member_context(anchor_file)
    )
    assert error_code(reply) == protocol.SecAggErrorCode.SECAGG_NO_IDENTITY


# Later stages -------------------------------------------------------------------------------
def test_a_stage_message_without_a_round_in_progress_is_refused(
    federation: FederationPaths, client_data: ClientData, anchor_file: Path
) -> None:
    record = records.unmask_request_record(group_params(), _unmask_request())
    reply = member_app(federation, client_data)(
        stage_message(protocol.SECAGG_UNMASK, record), member_context(anchor_file)
    )
    assert error_code(reply) == protocol.SecAggErrorCode.SECAGG_OUT_OF_ORDER


def test_a_stage_message_for_another_group_is_refused_and_erases_the_round(
    federation: FederationPaths,
    client_data: ClientData,
    anchor_file: Path,
    round_message: Callable[..., Message],
    coordinator_key: SigningKey,
) -> None:
    app = member_app(federation, client_data)
    context = member_context(anchor_file)
    app(setup_message(round_message, group_params(), coordinator_key), context)
    other = GroupParams.create(
        run_id="client-tests-run",
        round=1,
        group_id="1-9",
        members=(MEMBER, *PEERS),
        quantization=group_params().quantization,
        vector_length=4810,
    )
    reply = app(
        stage_message(
            protocol.SECAGG_UNMASK, records.unmask_request_record(other, _unmask_request())
        ),
        context,
    )
    assert error_code(reply) == protocol.SecAggErrorCode.SECAGG_OUT_OF_ORDER
    assert STATE_KEY not in context.state.config_records


def test_peer_keys_under_a_duplicated_identity_are_refused(
    federation: FederationPaths,
    client_data: ClientData,
    anchor_file: Path,
    round_message: Callable[..., Message],
    coordinator_key: SigningKey,
) -> None:
    """Two members presenting one certificate: a single enrolled party holding two seats."""
    reply = _share_keys_reply(
        federation,
        client_data,
        anchor_file,
        round_message,
        coordinator_key,
        certificate_of={"8": "8", "9": "8"},
    )
    assert error_code(reply) == protocol.SecAggErrorCode.SECAGG_ROSTER_MISMATCH


def test_peer_keys_signed_by_another_key_than_the_certificate_are_refused(
    federation: FederationPaths,
    client_data: ClientData,
    anchor_file: Path,
    round_message: Callable[..., Message],
    coordinator_key: SigningKey,
) -> None:
    """A coordinator substituting a peer's keys cannot sign them with the peer's key."""
    reply = _share_keys_reply(
        federation,
        client_data,
        anchor_file,
        round_message,
        coordinator_key,
        signer_of={"9": "8"},
    )
    assert error_code(reply) == protocol.SecAggErrorCode.SECAGG_BAD_SIGNATURE


def test_honest_peer_keys_are_accepted_and_shares_are_encrypted_for_each_peer(
    federation: FederationPaths,
    client_data: ClientData,
    anchor_file: Path,
    round_message: Callable[..., Message],
    coordinator_key: SigningKey,
) -> None:
    reply = _share_keys_reply(federation, client_data, anchor_file, round_message, coordinator_key)
    shares = records.read_encrypted_shares(reply.content.config_records[protocol.SECAGG_KEY])
    assert sorted(shares.ciphertexts) == list(PEERS)


# The member's identity ----------------------------------------------------------------------
def test_an_identity_key_readable_by_others_is_refused(
    tmp_path: Path, federation: FederationPaths
) -> None:
    copy = provision_federation(tmp_path, "client-tests-2", clients=["m"])
    os.chmod(copy.clients["m"].key, 0o644)
    with pytest.raises(IdentityError, match="key"):
        MemberIdentity.load(copy.clients["m"].root, copy.crl)


def test_a_certificate_that_is_not_for_the_identity_key_is_refused(
    tmp_path: Path, federation: FederationPaths
) -> None:
    copy = provision_federation(tmp_path, "client-tests", clients=["a", "b"])
    a, b = copy.clients["a"], copy.clients["b"]
    b.certificate.chmod(0o644)
    b.certificate.write_bytes(a.certificate.read_bytes())
    with pytest.raises(IdentityError, match="not the certificate"):
        MemberIdentity.load(b.root, copy.crl)


# The wire format ----------------------------------------------------------------------------
def test_every_reply_record_survives_flowers_serialization() -> None:
    params = group_params()
    replies = [
        records.key_advertisement_record(
            params, KeyAdvertisement(MEMBER, b"e" * 32, b"m" * 32, b"sig"), b"pem"
        ),
        records.encrypted_shares_record(params, EncryptedShares(MEMBER, {"8": b"x", "9": b"y"})),
        records.unmask_shares_record(params, UnmaskShares(MEMBER, {"7": b"s"}, {})),
    ]
    for record in replies:
        wire = recorddict_from_proto(recorddict_to_proto(RecordDict({"r": record})))
        assert dict(wire.config_records["r"]) == dict(record)
    words = np.arange(params.input_length, dtype=np.uint32)
    content = records.masked_input_content(params, MaskedInput(MEMBER, words))
    decoded = records.read_masked_input(recorddict_from_proto(recorddict_to_proto(content)), params)
    np.testing.assert_array_equal(decoded.values, words)


def test_a_masked_input_of_another_word_type_is_malformed() -> None:
    params = group_params()
    words = np.arange(params.input_length, dtype=np.int64)
    content = records.masked_input_content(params, MaskedInput(MEMBER, words))  # type: ignore[arg-type]
    with pytest.raises(SecAggRefusal, match="MALFORMED"):
        records.read_masked_input(content, params)


def test_a_record_with_a_field_of_the_wrong_type_is_malformed() -> None:
    record = records.unmask_request_record(group_params(), _unmask_request())
    record[records.ROSTER_MEMBERS] = "7,8,9"
    with pytest.raises(SecAggRefusal, match="MALFORMED"):
        records.read_unmask_request(record)


# Helpers ------------------------------------------------------------------------------------
def _unmask_request() -> UnmaskRequest:
    return UnmaskRequest(Roster(RosterStage.UNMASK, (MEMBER, *PEERS), (), b"signature"))


def _share_keys_reply(
    federation: FederationPaths,
    client_data: ClientData,
    anchor_file: Path,
    round_message: Callable[..., Message],
    coordinator_key: SigningKey,
    *,
    certificate_of: dict[str, str] | None = None,
    signer_of: dict[str, str] | None = None,
) -> Message:
    """Run stage 0 on the member, then send it the KEYS stage with peers' advertisements
    made by real peers (``signer_of``: a peer's keys signed by another member's identity;
    ``certificate_of``: the certificate presented for a peer)."""
    params = group_params()
    signer = coordinator_key
    server = SecAggServer(
        params,
        sign_roster=signer.sign,
        verify_identity=lambda member, message, signature: True,
    )
    setups = server.start()
    app = member_app(federation, client_data)
    context = member_context(anchor_file)
    broadcast = setup_message(round_message, params, coordinator_key)
    broadcast.content[protocol.SECAGG_KEY] = records.setup_record(setups[MEMBER])
    own = app(broadcast, context)
    own_record = own.content.config_records[protocol.SECAGG_KEY]
    advertisements = [records.read_key_advertisement(own_record)[0]]
    certificates = {MEMBER: identity_of(federation, MEMBER).certificate_pem}
    for peer in PEERS:
        signing_identity = identity_of(federation, (signer_of or {}).get(peer, peer))
        peer_client = SecAggClient(
            peer,
            identity_key=signing_identity.key,
            verify_identity=lambda member, message, signature: True,
            verify_roster=_verifier(coordinator_key),
        )
        advertisements.append(peer_client.handle(setups[peer]))  # type: ignore[arg-type]
        certificates[peer] = identity_of(
            federation, (certificate_of or {}).get(peer, peer)
        ).certificate_pem
    request = server.collect(advertisements)[MEMBER]
    assert isinstance(request, ShareKeysRequest)
    record = records.share_keys_record(params, request, certificates)
    return app(stage_message(protocol.SECAGG_SHARE_KEYS, record), context)


def _verifier(key: SigningKey) -> Callable[[bytes, bytes], bool]:
    public = key.public_key()
    return lambda message, signature: public.verify(signature, message)
