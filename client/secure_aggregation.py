"""The member's side of a secure round: four ``train.secagg_*`` stages on Flower's Message API.

Stage 0 (``train.secagg_setup``) is a training broadcast plus the group's signed setup: the
node verifies the model as in every round, checks the round's privacy settings and the
group's k and t against its own floors, trains, clips the update to the group's C and
answers with fresh round keys signed by its identity key (the key of its federation
certificate, which travels along). Stages 1 to 3 carry the protocol on
(``ztfl.aggregation.secagg.SecAggClient``): a ClientApp gets a fresh object for every
message, so the member's round state lives in ``Context.state`` between stages — the node's
memory, never a log or a file — and is erased when the round ends or is refused. The
clipped update waits there as an array and is quantized and masked in one pass at stage 2.

Peers' keys are checked against certificates each member verifies itself with the federation
CA (``ztfl.trust.pki.verify_certificate``, role ``client``, one identity per member), so the
coordinator can neither substitute a key nor invent a member. Rosters are checked against the
coordinator's model-signing key the node already pins (its trust anchor, through the key
rotations of the broadcast): a roster is a ``ztfl/secagg+/v1`` transcript, which no DSSE
envelope of a model manifest can be mistaken for.

Node config: ``identity-dir`` (the member folder of ``ztfl client enrol``: ``key.pem``,
``certificate.pem``, ``ca.pem``), ``federation-crl`` (the federation CRL; default
``<identity-dir>/crl.pem``) and the floor of ``ztfl.client.policy.SecureAggregationPolicy``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from ztfl.aggregation.secagg import (
    ClientPolicy,
    ClientStage,
    GroupParams,
    IdentityVerifier,
    KeyAdvertisement,
    RosterVerifier,
    SecAggClient,
    SecAggRefusal,
    SecAggRefusalReason,
    ServerMessage,
    identity_verifier,
)
from ztfl.aggregation.secagg.masks import ring_dtype
from ztfl.trust.keys import VerifyingKey
from ztfl.trust.pki import (
    CertificateRefused,
    ClientLayout,
    FederationTrust,
    PkiError,
    Role,
    read_private_key,
    verify_certificate,
)
from ztfl.trust.pki.verification import load_certificate_pem
from ztfl.trust.refusal import ModelRefusal
from ztfl.trust.rotation import KeyRotation, trusted_keys
from ztfl.trust.verification import TrustAnchor

from . import protocol
from . import secagg_records as records
from .app import (
    AnchorLoader,
    ClientRefusal,
    ContextDataLoader,
    LineageDirLoader,
    Weights,
    handle_train,
    node_config_anchor,
    node_config_lineage_dir,
    node_privacy_policy,
    run_verified,
)
from .policy import PolicyError, PolicyViolation, SecureAggregationPolicy

IDENTITY_DIR = "identity-dir"
FEDERATION_CRL = "federation-crl"
STATE_KEY = "ztfl.secagg.state"
"""``Context.state`` ConfigRecord: the member's round (round, group, protocol state, roster
keys). It holds the round's secrets: it never leaves the node's memory."""
INPUT_KEY = "ztfl.secagg.input"
"""``Context.state`` ConfigRecord: the member's clipped update (raw float32 bytes) until the
masked-input stage."""


@dataclass(frozen=True)
class RingInput:
    """An input a member quantized itself: d ring words, then the extra channels. Nothing
    clips it — what a member running its own code can send."""

    words: npt.NDArray[np.unsignedinteger]


UpdateHook = Callable[
    [npt.NDArray[np.float32], GroupParams, Message, Context],
    npt.NDArray[np.float32] | RingInput,
]
"""Replaces the trained update before it is clipped and quantized, or the quantized input
itself (``RingInput``): the simulation's attackers poison their own input here, inside the
client, before masking. A real client has none."""


class IdentityError(Exception):
    """The node's identity (key, certificate, federation CA or CRL) cannot be used."""


@dataclass(frozen=True)
class MemberIdentity:
    """What a member signs with and checks peers against.

    Attributes:
        key: the ECDSA P-384 private key of the member's certificate (signs round keys).
        certificate_pem: the member's certificate, sent with its round keys.
        trust: the federation CA and CRL that peers' certificates must chain to.
    """

    key: ec.EllipticCurvePrivateKey
    certificate_pem: bytes
    trust: FederationTrust

    @classmethod
    def load(cls, identity_dir: Path, crl: Path) -> MemberIdentity:
        """The identity in a member folder; IdentityError when the key is unreadable or
        readable by others, or the certificate is not valid now or not for the key."""
        layout = ClientLayout(Path(identity_dir))
        try:
            key = read_private_key(layout.key)
            certificate_pem = layout.certificate.read_bytes()
            trust = FederationTrust.load(layout.ca_certificate, Path(crl))
            certificate = load_certificate_pem(certificate_pem, layout.certificate)
            verify_certificate(certificate, trust, required_role=Role.CLIENT)
        except (PkiError, CertificateRefused, OSError) as error:
            raise IdentityError(f"secure aggregation identity: {error}") from error
        if certificate.public_key() != key.public_key():
            raise IdentityError(f"{layout.certificate} is not the certificate of {layout.key}")
        return cls(key, certificate_pem, trust)


IdentityLoader = Callable[[Context], MemberIdentity]


def node_config_identity(context: Context) -> MemberIdentity:
    """The identity the node config names (``identity-dir``, ``federation-crl``)."""
    folder = context.node_config.get(IDENTITY_DIR)
    if not isinstance(folder, str) or not folder:
        raise IdentityError(f"the node config names no {IDENTITY_DIR}")
    crl = context.node_config.get(FEDERATION_CRL, str(Path(folder) / "crl.pem"))
    if not isinstance(crl, str):
        raise IdentityError(f"{FEDERATION_CRL} must be a path")
    return MemberIdentity.load(Path(folder), Path(crl))


def node_secagg_policy(context: Context) -> SecureAggregationPolicy:
    """The node's secure-aggregation floor; ClientRefusal(INVALID_POLICY) when malformed."""
    try:
        return SecureAggregationPolicy.from_node_config(context.node_config)
    except PolicyError as error:
        raise ClientRefusal(protocol.ClientErrorCode.INVALID_POLICY, str(error)) from error


def check_plaintext_allowed(context: Context) -> None:
    """Refuse a plaintext training round on a node whose policy requires secure aggregation
    (``require-secure-aggregation``): ClientRefusal(POLICY_FLOOR), or INVALID_POLICY for a
    malformed setting. For the plaintext ``train`` handler, before anything is trained."""
    try:
        node_secagg_policy(context).check_plaintext_round()
    except PolicyViolation as violation:
        raise ClientRefusal(protocol.ClientErrorCode.POLICY_FLOOR, str(violation)) from violation


def register_secure_aggregation(
    client_app: ClientApp,
    load_data: ContextDataLoader,
    *,
    load_anchor: AnchorLoader = node_config_anchor,
    load_identity: IdentityLoader = node_config_identity,
    load_lineage_dir: LineageDirLoader = node_config_lineage_dir,
    prepare_update: UpdateHook | None = None,
) -> None:
    """Add the four secure-aggregation stages to ``client_app`` (next to train/evaluate)."""

    @client_app.train(protocol.SECAGG_SETUP_ACTION)
    def setup(message: Message, context: Context) -> Message:
        return run_verified(
            message,
            context,
            load_anchor,
            lambda weights: handle_secure_setup(
                message,
                context,
                weights=weights,
                load_data=load_data,
                load_anchor=load_anchor,
                load_identity=load_identity,
                prepare_update=prepare_update,
            ),
            load_lineage_dir=load_lineage_dir,
        )

    register_later_stages(client_app, load_identity=load_identity)


def register_later_stages(
    client_app: ClientApp,
    *,
    load_identity: IdentityLoader = node_config_identity,
    wrap: Callable[[Message, Context], Message] | None = None,
) -> None:
    """Add stages 1 to 3 (no model, no data) to ``client_app``; ``wrap(reply, context)``
    post-processes each reply (the simulation tags which partition answered)."""

    def stage(message: Message, context: Context) -> Message:
        reply = handle_secure_stage(message, context, load_identity=load_identity)
        return reply if wrap is None else wrap(reply, context)

    for action in (
        protocol.SECAGG_SHARE_KEYS_ACTION,
        protocol.SECAGG_MASKED_INPUT_ACTION,
        protocol.SECAGG_UNMASK_ACTION,
    ):
        client_app.train(action)(stage)


def handle_secure_setup(
    message: Message,
    context: Context,
    *,
    weights: Weights,
    load_data: ContextDataLoader,
    load_anchor: AnchorLoader,
    load_identity: IdentityLoader,
    prepare_update: UpdateHook | None = None,
) -> Message:
    """Stage 0 on a verified broadcast: check the floors, train, clip, advertise keys.

    Raises ClientRefusal for what a plaintext round refuses too (privacy floor, no data,
    bad configuration); a SecAgg+ refusal becomes a ``SecAggErrorCode`` error reply.
    """
    privacy_policy = node_privacy_policy(context)
    anchor = load_anchor(context)

    def train(params: GroupParams) -> MemberInput:
        trained = handle_train(message, load_data(context), weights=weights, policy=privacy_policy)
        return _member_input(message, trained, params, context, prepare_update)

    try:
        setup_record = records.secagg_record(message.content)
        keys = _roster_keys(message, anchor)
    except SecAggRefusal as refusal:
        _erase(context)
        return secagg_refusal_reply(message, refusal)
    return join_group(
        message,
        context,
        setup_record,
        member_input=train,
        identity=lambda: load_identity(context),
        roster_keys=keys,
        expected_run=(anchor.run_id, _declared_round(message)),
    )


MemberInput = tuple[npt.NDArray[np.float32], bool] | RingInput
"""A clipped update and its "was within C" bit, or an input the member quantized itself."""


def join_group(
    message: Message,
    context: Context,
    setup_record: ConfigRecord,
    *,
    member_input: Callable[[GroupParams], MemberInput],
    identity: Callable[[], MemberIdentity],
    roster_keys: tuple[VerifyingKey, ...],
    expected_run: tuple[str, object] | None = None,
) -> Message:
    """Stage 0's protocol part: accept the signed setup (floors, roster, membership),
    compute the input (``member_input``, after the setup is accepted so a refused group costs
    no training), keep it and the round in ``Context.state``, reply with signed round keys.

    ``expected_run``: (ztfl run id, round) the setup must name (those of the verified
    broadcast). SecAgg+ refusals and a missing identity become error replies; a
    ClientRefusal from ``member_input`` propagates (the caller answers it).
    """
    _erase(context)
    policy = node_secagg_policy(context)
    try:
        setup = records.read_setup(setup_record)
        params = setup.params
        if expected_run is not None and (params.run_id, params.round) != expected_run:
            raise SecAggRefusal(
                SecAggRefusalReason.OUT_OF_ORDER,
                f"the group is for run {params.run_id!r} round {params.round}, the broadcast "
                f"for run {expected_run[0]!r} round {expected_run[1]!r}",
            )
        member = identity()
        client = SecAggClient(
            _member_id(context),
            identity_key=member.key,
            verify_identity=_nobody,
            verify_roster=_roster_verifier(roster_keys),
            policy=_client_policy(policy),
        )
        advertisement = client.handle(setup)
        assert isinstance(advertisement, KeyAdvertisement)
        prepared = member_input(params)
        _check_input_length(prepared, params)
        _store(context, params, client, roster_keys, prepared)
    except SecAggRefusal as refusal:
        _erase(context)
        return secagg_refusal_reply(message, refusal)
    except IdentityError as error:
        _erase(context)
        return no_identity_reply(message, error)
    content = RecordDict(
        {
            protocol.SECAGG_KEY: records.key_advertisement_record(
                params, advertisement, member.certificate_pem
            )
        }
    )
    return Message(content, reply_to=message)


def handle_secure_stage(
    message: Message, context: Context, *, load_identity: IdentityLoader
) -> Message:
    """Stages 1 to 3: restore the member from ``Context.state``, answer, store or erase it."""
    try:
        if not message.has_content():
            raise SecAggRefusal(SecAggRefusalReason.MALFORMED, "the message has no content")
        record = records.secagg_record(message.content)
        state = _stored(context, records.addressed(record))
        identity = load_identity(context)
        kind = message.metadata.message_type
        verify_identity: IdentityVerifier = _nobody
        request: ServerMessage
        if kind == protocol.SECAGG_SHARE_KEYS:
            request, certificates = records.read_share_keys(record)
            verify_identity = _peer_verifier(certificates, identity.trust)
        elif kind == protocol.SECAGG_MASKED_INPUT:
            request = records.read_masked_input_request(record)
        elif kind == protocol.SECAGG_UNMASK:
            request = records.read_unmask_request(record)
        else:
            raise SecAggRefusal(SecAggRefusalReason.OUT_OF_ORDER, f"unknown stage {kind!r}")
        client = SecAggClient.restore(
            state.protocol_state,
            identity_key=identity.key,
            verify_identity=verify_identity,
            verify_roster=_roster_verifier(state.roster_keys),
            policy=_client_policy(node_secagg_policy(context)),
        )
        params = client.params
        assert params is not None
        if kind == protocol.SECAGG_MASKED_INPUT:
            _set_stored_input(client, params, context)  # quantized just before masking
        reply = client.handle(request)
        if client.stage is ClientStage.DONE:
            _erase(context)
        else:
            _store(context, params, client, state.roster_keys)
    except SecAggRefusal as refusal:
        _erase(context)
        return secagg_refusal_reply(message, refusal)
    except ClientRefusal as refusal:
        _erase(context)
        return Message(Error(code=int(refusal.code), reason=refusal.reason), reply_to=message)
    except IdentityError as error:
        _erase(context)
        return no_identity_reply(message, error)
    if kind == protocol.SECAGG_SHARE_KEYS:
        content = RecordDict({protocol.SECAGG_KEY: records.encrypted_shares_record(params, reply)})  # type: ignore[arg-type]
    elif kind == protocol.SECAGG_MASKED_INPUT:
        content = records.masked_input_content(params, reply)  # type: ignore[arg-type]
    else:
        content = RecordDict({protocol.SECAGG_KEY: records.unmask_shares_record(params, reply)})  # type: ignore[arg-type]
    return Message(content, reply_to=message)


def secagg_refusal_reply(message: Message, refusal: SecAggRefusal) -> Message:
    """The error reply that tells the coordinator why this member refused the stage."""
    code = protocol.secagg_refusal_code(refusal.reason.value)
    return Message(Error(code=int(code), reason=refusal.message[:500]), reply_to=message)


def no_identity_reply(message: Message, error: IdentityError) -> Message:
    """The error reply of a node that cannot take part for want of a usable identity."""
    code = protocol.SecAggErrorCode.SECAGG_NO_IDENTITY
    return Message(Error(code=int(code), reason=str(error)[:500]), reply_to=message)


# Stage 0 helpers ---------------------------------------------------------------------------
def _declared_round(message: Message) -> object:
    config = message.content.config_records.get(protocol.CONFIG_KEY)
    return None if config is None else config.get(protocol.ROUND)


def _roster_keys(message: Message, anchor: TrustAnchor) -> tuple[VerifyingKey, ...]:
    """The coordinator keys this node trusts: pinned, or reached by the broadcast's rotations
    (the model verification already accepted them)."""
    manifest = message.content.config_records.get(protocol.MANIFEST_KEY)
    raw = [] if manifest is None else manifest.get(protocol.ROTATIONS, [])
    try:
        rotations = [KeyRotation.from_bytes(item) for item in raw]  # type: ignore[union-attr, arg-type]
        return trusted_keys(anchor.keys, rotations)
    except (ModelRefusal, TypeError) as error:
        raise SecAggRefusal(SecAggRefusalReason.BAD_ROSTER_SIGNATURE, str(error)) from error


def _member_input(
    message: Message,
    trained: Message,
    params: GroupParams,
    context: Context,
    prepare_update: UpdateHook | None,
) -> tuple[npt.NDArray[np.float32], bool] | RingInput:
    """The trained update as one float32 vector in the global model's tensor order, clipped
    to the group's C, and whether it was within C already (the DP round's own bit if any)."""
    update = trained.content.array_records[protocol.UPDATE_KEY]
    names = list(message.content.array_records[protocol.GLOBAL_MODEL_KEY].keys())
    if list(update.keys()) != names:
        raise SecAggRefusal(
            SecAggRefusalReason.MALFORMED, "the update's tensors are not the model's"
        )
    vector = np.concatenate([update[name].numpy().reshape(-1) for name in names]).astype(
        np.float32, copy=False
    )
    if prepare_update is not None:
        prepared = prepare_update(vector, params, message, context)
        if isinstance(prepared, RingInput):
            return prepared
        vector = prepared
    clip_norm = params.quantization.clip_norm
    norm = math.sqrt(float(np.dot(vector.astype(np.float64), vector.astype(np.float64))))
    unclipped = norm <= clip_norm
    if not math.isfinite(norm):
        raise SecAggRefusal(SecAggRefusalReason.MALFORMED, "the trained update is not finite")
    if not unclipped:
        vector = np.multiply(vector, clip_norm / norm, dtype=np.float32)
    bit = trained.content.metric_records[protocol.METRICS_KEY].get(protocol.UNCLIPPED)
    return vector, bool(bit) if isinstance(bit, int) else unclipped


# State between stages ----------------------------------------------------------------------
@dataclass(frozen=True)
class _StoredRound:
    protocol_state: bytes
    roster_keys: tuple[VerifyingKey, ...]


def _store(
    context: Context,
    params: GroupParams,
    client: SecAggClient,
    roster_keys: tuple[VerifyingKey, ...],
    member_input: MemberInput | None = None,
) -> None:
    """Keep the round in ``Context.state``: the protocol state (keys, seed, shares) as bytes,
    and until the masked-input stage the member's input as an array (not re-encoded at
    every stage)."""
    record = ConfigRecord(
        {
            records.ROUND: params.round,
            records.GROUP: params.group_id,
            "state": client.export_state(),
            "roster-keys": [key.to_pem() for key in roster_keys],
        }
    )
    previous = context.state.config_records.get(STATE_KEY)
    if previous is not None and "unclipped" in previous:
        record["unclipped"] = previous["unclipped"]
    # The input as raw little-endian bytes: one copy in, none out (np.frombuffer at stage 2).
    if isinstance(member_input, RingInput):
        words = member_input.words
        context.state[INPUT_KEY] = ConfigRecord(
            {"ring": words.astype(words.dtype.newbyteorder("<"), copy=False).tobytes()}
        )
    elif member_input is not None:
        vector, unclipped = member_input
        context.state[INPUT_KEY] = ConfigRecord({"update": vector.astype("<f4").tobytes()})
        record["unclipped"] = int(unclipped)
    context.state[STATE_KEY] = record


def _set_stored_input(client: SecAggClient, params: GroupParams, context: Context) -> None:
    stored = context.state.config_records.get(INPUT_KEY)
    record = context.state.config_records[STATE_KEY]
    if stored is None:
        raise SecAggRefusal(SecAggRefusalReason.OUT_OF_ORDER, "no input kept for this round")
    ring, update = stored.get("ring"), stored.get("update")
    if isinstance(ring, bytes):
        dtype = ring_dtype(params.modulus_bits)
        client.set_quantized_input(
            np.frombuffer(ring, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
        )
    elif isinstance(update, bytes):
        bit = record.get("unclipped")
        extras = [int(bit)] if params.quantization.num_extra_channels == 1 else []  # type: ignore[arg-type]
        client.set_input(np.frombuffer(update, dtype="<f4"), extras=extras)
    else:
        raise SecAggRefusal(SecAggRefusalReason.MALFORMED, "unreadable input kept for this round")
    del context.state[INPUT_KEY]


def _check_input_length(member_input: MemberInput, params: GroupParams) -> None:
    expected = params.input_length if isinstance(member_input, RingInput) else params.vector_length
    values = member_input.words if isinstance(member_input, RingInput) else member_input[0]
    if values.shape != (expected,):
        raise SecAggRefusal(
            SecAggRefusalReason.MALFORMED,
            f"the member's input has {values.size} values, the group expects {expected}",
        )


def _stored(context: Context, where: records.Addressed) -> _StoredRound:
    record = context.state.config_records.get(STATE_KEY)
    if record is None:
        raise SecAggRefusal(SecAggRefusalReason.OUT_OF_ORDER, "this node is in no secure round")
    if (record.get(records.ROUND), record.get(records.GROUP)) != (where.round, where.group_id):
        raise SecAggRefusal(
            SecAggRefusalReason.OUT_OF_ORDER,
            f"this node is in group {record.get(records.GROUP)!r} of round "
            f"{record.get(records.ROUND)!r}, not {where.group_id!r} of round {where.round}",
        )
    state, keys = record.get("state"), record.get("roster-keys")
    if not isinstance(state, bytes) or not isinstance(keys, list):
        raise SecAggRefusal(SecAggRefusalReason.MALFORMED, "unreadable member state")
    return _StoredRound(state, tuple(VerifyingKey.from_pem(pem) for pem in keys))  # type: ignore[arg-type]


def _erase(context: Context) -> None:
    for key in (STATE_KEY, INPUT_KEY):
        if key in context.state:
            del context.state[key]


# Identities and signatures -----------------------------------------------------------------
def _member_id(context: Context) -> str:
    """The coordinator names members by their Flower node id."""
    return str(context.node_id)


def _client_policy(policy: SecureAggregationPolicy) -> ClientPolicy:
    return ClientPolicy(min_group_size=policy.min_group_size, min_threshold=policy.min_threshold)


def _roster_verifier(keys: tuple[VerifyingKey, ...]) -> RosterVerifier:
    def verify(message: bytes, signature: bytes) -> bool:
        return any(key.verify(signature, message) for key in keys)

    return verify


def _nobody(member_id: str, message: bytes, signature: bytes) -> bool:
    return False


def _peer_verifier(certificates: Mapping[str, bytes], trust: FederationTrust) -> IdentityVerifier:
    """Check every advertised member's certificate with the federation CA (role client, one
    identity per member); a refused certificate refuses the round (BAD_SIGNATURE)."""
    public_keys: dict[str, ec.EllipticCurvePublicKey] = {}
    identities: dict[str, str] = {}
    for member, pem in certificates.items():
        try:
            certificate = load_certificate_pem(pem, f"certificate of member {member}")
            identity = verify_certificate(certificate, trust, required_role=Role.CLIENT)
        except CertificateRefused as error:
            raise SecAggRefusal(
                SecAggRefusalReason.BAD_SIGNATURE,
                f"the certificate of member {member} is refused: {error}",
            ) from error
        if identity.spiffe_id in identities:
            raise SecAggRefusal(
                SecAggRefusalReason.ROSTER_MISMATCH,
                f"members {identities[identity.spiffe_id]} and {member} are one identity "
                f"({identity.spiffe_id})",
            )
        identities[identity.spiffe_id] = member
        key = certificate.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        public_keys[member] = key
    return identity_verifier(public_keys)
