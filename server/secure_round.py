"""Secure rounds on the coordinator: random groups, SecAgg+ in each, robust rules over group means.

The sampled nodes are split at random into groups of at least k members
(``split_into_groups``); every group runs SecAgg+ (``ztfl.aggregation.secagg``), all groups
side by side, one ``Grid.send_and_receive`` per protocol stage, so a round costs four message
exchanges whatever the number of groups. The coordinator learns one sum per group, never a
member's update. Each group mean is dequantized and refused (audited, GROUP_MEAN_REFUSED)
when it is longer than the clip norm C every member had to clip to — a poisoner inside a group
moves that group's mean by at most C — and the robust pipeline then runs across the group
means (``aggregate_group_means``), so a group containing an attacker counts as one corrupted
input. The honest limit: with f attackers up to f groups are corrupted, so the rule must
tolerate f of the n/k groups (roughly f < n/(2k) for a median-type rule).

Every stage's refusals go to the audit log: a member's refusal (SECAGG_MEMBER_REFUSED, with
its ``SecAggRefusalReason``), a reply the coordinator refused (SECAGG_REPLY_REFUSED, counted
as a dropout), an aborted group (SECAGG_GROUP_ABORTED).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from ztfl.aggregation import Pipeline, RefusalReason
from ztfl.aggregation.privacy.clipping import (
    UnclippedCount,
    check_group_mean,
    check_unclipped_count,
)
from ztfl.aggregation.secagg import (
    ClientReply,
    GroupOutcome,
    GroupParams,
    GroupSetup,
    MaskedInputRequest,
    QuantizationParams,
    RosterSigner,
    SecAggRefusal,
    SecAggRefusalReason,
    SecAggServer,
    ShareKeysRequest,
    UnmaskRequest,
    identity_verifier,
    scale_for_modulus_bits,
)
from ztfl.aggregation.secagg.params import MIN_GROUP_SIZE
from ztfl.client import protocol
from ztfl.client import secagg_records as records
from ztfl.trust.audit import AuditEvent, AuditEventKind, AuditLog
from ztfl.trust.keys import read_signing_key
from ztfl.trust.pki import CertificateRefused, FederationTrust, Role, verify_certificate
from ztfl.trust.pki.verification import load_certificate_pem

from .unpacking import CollectedUpdates

if TYPE_CHECKING:
    from .config import CoordinatorConfig
    from .ledger import RunLedger

DEFAULT_GROUP_SIZE = 5


class SecureRoundError(ValueError):
    """The secure round's settings are unusable (group size below 3, bad threshold)."""


@dataclass(frozen=True)
class SecureRoundSettings:
    """How a secure round groups and thresholds its members.

    Attributes:
        group_size: k, the smallest group (≥ 3); groups hold k to 2k − 1 members.
        threshold: t for a group of k; None = ⌊k/2⌋ + 1. A larger group keeps at least
            ⌊size/2⌋ + 1, so two disjoint sets of survivors can never both unmask.
        trust: the federation CA and CRL the coordinator checks members' certificates
            against, so one member with a bad certificate drops out alone instead of making
            every honest peer refuse the group. None: only the signature's consistency with
            the certificate it came with is checked here (peers always check the chain).
    """

    group_size: int = DEFAULT_GROUP_SIZE
    threshold: int | None = None
    trust: FederationTrust | None = None

    def __post_init__(self) -> None:
        if self.group_size < MIN_GROUP_SIZE:
            raise SecureRoundError(f"group-size must be at least 3, got {self.group_size}")
        if self.threshold is not None and not (
            2 * self.threshold > self.group_size and self.threshold <= self.group_size
        ):
            raise SecureRoundError(
                f"secagg-threshold must satisfy k/2 < t ≤ k for k = {self.group_size}, "
                f"got {self.threshold}"
            )

    def threshold_for(self, size: int) -> int:
        """t for a group of ``size`` members."""
        majority = size // 2 + 1
        return majority if self.threshold is None else max(self.threshold, majority)


def split_into_groups(
    nodes: Sequence[int], group_size: int, generator: np.random.Generator
) -> tuple[tuple[int, ...], ...]:
    """A uniformly random partition of ``nodes`` into ⌊n/k⌋ groups of ⌊n/g⌋ or ⌈n/g⌉ members
    (every group ≥ k), members sorted within a group; () when fewer than k nodes."""
    if group_size < MIN_GROUP_SIZE:
        raise SecureRoundError(f"group size must be at least 3, got {group_size}")
    count = len(nodes) // group_size
    if count == 0:
        return ()
    order = [nodes[int(index)] for index in generator.permutation(len(nodes))]
    base, extra = divmod(len(order), count)
    groups, start = [], 0
    for index in range(count):
        size = base + (1 if index < extra else 0)
        groups.append(tuple(sorted(order[start : start + size])))
        start += size
    return tuple(groups)


class GroupStatus(StrEnum):
    """How a group's round ended."""

    ACCEPTED = "accepted"
    ABORTED = "aborted"
    """The protocol ended without a sum (``abort_reason`` says why)."""
    MEAN_REFUSED = "mean_refused"
    """The sum was learnt but refused (``mean_refusal`` says why)."""


@dataclass(frozen=True)
class GroupResult:
    """One group's round: who was in it, who is in the sum, the mean or why there is none."""

    group_id: str
    members: tuple[int, ...]
    survivors: tuple[int, ...]
    status: GroupStatus
    mean: torch.Tensor | None = None
    unclipped_bits: int | None = None
    abort_reason: SecAggRefusalReason | None = None
    mean_refusal: RefusalReason | None = None
    detail: str = ""


@dataclass(frozen=True)
class SecureRoundResult:
    """What the coordinator learnt from one secure round."""

    groups: tuple[GroupResult, ...]
    setup_replies: tuple[Message, ...] = ()
    """The stage-0 replies, for the model-verification verdicts (lineage, refusals)."""
    member_refusals: tuple[tuple[int, str, str], ...] = ()
    """(node, refusal, detail) for every member that refused a stage."""

    @property
    def accepted(self) -> tuple[GroupResult, ...]:
        """The groups whose mean is aggregated."""
        return tuple(group for group in self.groups if group.status is GroupStatus.ACCEPTED)

    @property
    def participants(self) -> tuple[int, ...]:
        """Every node whose update is in an accepted group's sum, sorted."""
        return tuple(sorted(node for group in self.accepted for node in group.survivors))

    def group_means(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(g, d): one row per accepted group (empty (0, 0) when none)."""
        means = [group.mean for group in self.accepted if group.mean is not None]
        if not means:
            return torch.empty((0, 0), dtype=dtype)
        return torch.stack(means).to(dtype)

    def collected(self, dtype: torch.dtype = torch.float32) -> CollectedUpdates:
        """The round as the coordinator's pipeline takes it: one row per accepted group mean,
        the participants (survivors of accepted groups), no per-client weights or figures.
        Refusals are already in the audit log under their secure-aggregation kinds."""
        means = self.group_means(dtype)
        return CollectedUpdates(means, self.participants, None, (), (), {})

    def unclipped_count(self) -> UnclippedCount:
        """The summed "not clipped" bits of the accepted groups, over their survivors."""
        groups = [g for g in self.accepted if g.unclipped_bits is not None]
        return UnclippedCount(
            sum(g.unclipped_bits or 0 for g in groups), sum(len(g.survivors) for g in groups)
        )


def secure_aggregator(
    config: CoordinatorConfig, ledger: RunLedger, roster_signer: RosterSigner | None = None
) -> SecureAggregator:
    """The run's aggregator: k, t and the federation trust from ``config``; rosters signed
    with ``roster_signer`` or else the model-signing key ``signing-key`` names (the key the
    clients pin); refusals in the ledger's audit log."""
    if roster_signer is None:
        if not config.signing_key:
            raise SecureRoundError("secure-aggregation signs rosters with signing-key; none set")
        roster_signer = read_signing_key(Path(config.signing_key)).sign
    trust = None
    if config.federation_ca:
        try:
            trust = FederationTrust.load(Path(config.federation_ca), Path(config.federation_crl))
        except CertificateRefused as error:
            raise SecureRoundError(f"federation-ca / federation-crl: {error}") from error
    settings = SecureRoundSettings(
        group_size=config.group_size, threshold=config.secagg_threshold or None, trust=trust
    )
    return SecureAggregator(
        settings,
        run_id=ledger.run_id,
        sign_roster=roster_signer,
        audit=ledger.audit,
        seed=config.seed,
    )


def aggregate_group_means(
    result: SecureRoundResult,
    pipeline: Pipeline,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The robust pipeline over the accepted group means (each row already has norm ≤ C).

    Raises ToleranceError (from the pipeline) when fewer groups remain than it needs.
    """
    means = result.group_means(dtype)
    return pipeline(means, None, generator=generator, validated=True).aggregate


def fixed_denominator_sum(
    result: SecureRoundResult, *, expected_clients: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Σ over accepted groups of their sums, / ``expected_clients``: DP-FedAvg's fixed-
    denominator mean (McMahan et al., 2018). It does not depend on how members were grouped,
    so its sensitivity is the plaintext one, C / m."""
    sums = [g.mean * len(g.survivors) for g in result.accepted if g.mean is not None]
    if not sums:
        raise ValueError("no accepted group")
    return (torch.stack(sums).to(torch.float64).sum(0) / expected_clients).to(dtype)


@dataclass
class _Group:
    params: GroupParams
    server: SecAggServer
    public_keys: dict[str, ec.EllipticCurvePublicKey]
    certificates: dict[str, bytes] = field(default_factory=dict)
    identities: dict[str, str] = field(default_factory=dict)


_Request = GroupSetup | ShareKeysRequest | MaskedInputRequest | UnmaskRequest

_NEXT_STAGE = {
    GroupSetup: protocol.SECAGG_SETUP,
    ShareKeysRequest: protocol.SECAGG_SHARE_KEYS,
    MaskedInputRequest: protocol.SECAGG_MASKED_INPUT,
    UnmaskRequest: protocol.SECAGG_UNMASK,
}


class SecureAggregator:
    """Runs the secure part of a round: grouping, the four stages, dequantized group means.

    Args:
        settings: group size, threshold and the federation trust.
        run_id: the ztfl run (bound into every group's parameters and signatures).
        sign_roster: the coordinator's roster signer — its model-signing key, which clients
            already pin (``SigningKey.sign``).
        audit: where refusals and aborted groups are recorded (the run's audit log).
        seed: replay the grouping (simulations); None draws it from the OS.
    """

    def __init__(
        self,
        settings: SecureRoundSettings,
        *,
        run_id: str,
        sign_roster: RosterSigner,
        audit: AuditLog | None = None,
        seed: int | None = None,
    ) -> None:
        self.settings = settings
        self.run_id = run_id
        self._sign = sign_roster
        self._audit = audit
        self._seed = seed

    def groups_for(self, server_round: int, nodes: Sequence[int]) -> tuple[tuple[int, ...], ...]:
        """The round's random groups: seeded by (seed, round) so a resumed simulation regroups
        exactly as before, otherwise from the OS."""
        entropy = secrets.randbits(128) if self._seed is None else [self._seed, server_round]
        generator = np.random.default_rng(entropy)
        return split_into_groups(sorted(nodes), self.settings.group_size, generator)

    def run(
        self,
        grid: Grid,
        *,
        server_round: int,
        broadcasts: Mapping[int, Message],
        clip_norm: float,
        vector_length: int,
        extra_channel: bool = False,
        timeout: float | None = None,
    ) -> SecureRoundResult:
        """Group the nodes of ``broadcasts`` (each node's training message), run SecAgg+ in
        every group and return the dequantized group means, refused or accepted."""
        groups: dict[str, _Group] = {}
        for index, members in enumerate(self.groups_for(server_round, list(broadcasts))):
            params = self._params(
                server_round,
                f"{server_round}-{index}",
                members,
                clip_norm=clip_norm,
                vector_length=vector_length,
                extra_channel=extra_channel,
            )
            # The server checks signatures against the certificates admitted at stage 0.
            public_keys: dict[str, ec.EllipticCurvePublicKey] = {}
            server = SecAggServer(
                params, sign_roster=self._sign, verify_identity=identity_verifier(public_keys)
            )
            groups[params.group_id] = _Group(params, server, public_keys)
        group_of = {int(m): gid for gid, g in groups.items() for m in g.params.members}
        member_refusals: list[tuple[int, str, str]] = []
        setup_replies: list[Message] = []
        pending: dict[str, dict[str, _Request]] = {
            gid: dict(g.server.start()) for gid, g in groups.items()
        }
        while any(pending.values()):
            outgoing = []
            for gid, messages in pending.items():
                for member, request in messages.items():
                    node = int(member)
                    outgoing.append(self._message(groups[gid], node, request, broadcasts[node]))
            replies = list(grid.send_and_receive(outgoing, timeout=timeout))
            by_group: dict[str, list[ClientReply]] = {gid: [] for gid in pending if pending[gid]}
            for reply in replies:
                node = int(reply.metadata.src_node_id)
                found = group_of.get(node)
                if found is None or found not in by_group or str(node) not in pending[found]:
                    continue  # not asked this stage: never read
                gid = found
                stage = type(pending[gid][str(node)])
                if stage is GroupSetup:
                    setup_replies.append(reply)
                if reply.has_error():
                    refusal = protocol.secagg_refusal_name(reply.error.code)
                    if refusal is not None or protocol.refusal_reason(reply.error.code) is None:
                        name = refusal or _error_name(reply.error.code)
                        member_refusals.append((node, name, str(reply.error.reason)[:500]))
                    continue
                decoded = self._decode(groups[gid], node, stage, reply)
                if decoded is not None:
                    by_group[gid].append(decoded)
            pending = {
                gid: dict(groups[gid].server.collect(by_group[gid])) if gid in by_group else {}
                for gid in pending
            }
        results = tuple(self._result(group, clip_norm) for group in groups.values())
        outcome = SecureRoundResult(results, tuple(setup_replies), tuple(member_refusals))
        self._record(server_round, groups, outcome)
        return outcome

    # Parameters and messages ---------------------------------------------------------------
    def _params(
        self,
        server_round: int,
        group_id: str,
        members: tuple[int, ...],
        *,
        clip_norm: float,
        vector_length: int,
        extra_channel: bool,
    ) -> GroupParams:
        """The group's parameters: b = 32 (4 bytes a coordinate) with the finest scale at
        which its sum cannot wrap; one extra channel for the adaptive-clipping bit."""
        size = len(members)
        quantization = QuantizationParams(
            clip_norm,
            scale_for_modulus_bits(clip_norm, size),
            num_extra_channels=1 if extra_channel else 0,
        )
        return GroupParams.create(
            run_id=self.run_id,
            round=server_round,
            group_id=group_id,
            members=tuple(str(member) for member in members),
            quantization=quantization,
            vector_length=vector_length,
            threshold=self.settings.threshold_for(size),
        )

    def _message(
        self,
        group: _Group,
        node: int,
        request: _Request,
        broadcast: Message,
    ) -> Message:
        params = group.params
        kind = _NEXT_STAGE[type(request)]
        if isinstance(request, GroupSetup):
            content = RecordDict(dict(broadcast.content.items()))
            content[protocol.SECAGG_KEY] = records.setup_record(request)
        elif isinstance(request, ShareKeysRequest):
            record = records.share_keys_record(params, request, group.certificates)
            content = RecordDict({protocol.SECAGG_KEY: record})
        elif isinstance(request, MaskedInputRequest):
            record = records.masked_input_request_record(params, request)
            content = RecordDict({protocol.SECAGG_KEY: record})
        else:
            content = RecordDict(
                {protocol.SECAGG_KEY: records.unmask_request_record(params, request)}
            )
        return Message(content, dst_node_id=node, message_type=kind, group_id=str(params.round))

    # Replies -------------------------------------------------------------------------------
    def _decode(self, group: _Group, node: int, stage: type, reply: Message) -> ClientReply | None:
        """The protocol reply in a Flower reply; a malformed one is refused (and audited as
        SECAGG_REPLY_REFUSED by the group's server, which counts it as a dropout)."""
        member = str(node)
        try:
            if not reply.has_content():
                raise SecAggRefusal(SecAggRefusalReason.MALFORMED, "reply without content")
            content = reply.content
            decoded: ClientReply
            if stage is GroupSetup:
                decoded, certificate = records.read_key_advertisement(
                    records.secagg_record(content)
                )
                if decoded.member_id == member:
                    self._admit_certificate(group, member, certificate)
            elif stage is ShareKeysRequest:
                decoded = records.read_encrypted_shares(records.secagg_record(content))
            elif stage is MaskedInputRequest:
                decoded = records.read_masked_input(content, group.params)
            else:
                decoded = records.read_unmask_shares(records.secagg_record(content))
            if decoded.member_id != member:
                raise SecAggRefusal(
                    SecAggRefusalReason.MALFORMED,
                    f"node {node} answered as member {decoded.member_id!r}",
                )
        except SecAggRefusal as refusal:
            group.server.refused_replies.append((member, refusal))
            return None
        return decoded

    def _admit_certificate(self, group: _Group, member: str, certificate_pem: bytes) -> None:
        """Take the member's certificate: valid for the federation (when the coordinator has
        its trust) and not another member's identity; its key then checks the signature."""
        try:
            certificate = load_certificate_pem(certificate_pem, f"certificate of {member}")
            key = certificate.public_key()
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise SecAggRefusal(SecAggRefusalReason.BAD_SIGNATURE, "not an ECDSA certificate")
            trust = self.settings.trust
            name = certificate.subject.rfc4514_string()
            if trust is not None:
                name = verify_certificate(certificate, trust, required_role=Role.CLIENT).spiffe_id
        except CertificateRefused as error:
            raise SecAggRefusal(
                SecAggRefusalReason.BAD_SIGNATURE, f"certificate refused: {error}"
            ) from error
        if name in group.identities:
            raise SecAggRefusal(
                SecAggRefusalReason.ROSTER_MISMATCH,
                f"{name} already holds member {group.identities[name]} of this group",
            )
        group.identities[name] = member
        group.public_keys[member] = key
        group.certificates[member] = certificate_pem

    def _result(self, group: _Group, clip_norm: float) -> GroupResult:
        params = group.params
        outcome: GroupOutcome | None = group.server.outcome
        members = tuple(int(m) for m in params.members)
        if outcome is None or outcome.aborted is not None or outcome.vector_sum is None:
            return GroupResult(
                params.group_id,
                members,
                (),
                GroupStatus.ABORTED,
                abort_reason=SecAggRefusalReason.MALFORMED if outcome is None else outcome.aborted,
                detail="the round ended early" if outcome is None else outcome.detail,
            )
        survivors = tuple(int(m) for m in outcome.survivors)
        total = torch.from_numpy(outcome.vector_sum)
        refusal = check_group_mean(total, num_clients=len(survivors), clip_norm=clip_norm)
        bits = None
        if refusal is None and params.quantization.num_extra_channels:
            assert outcome.extra_sums is not None
            bits = int(outcome.extra_sums[0])
            refusal = check_unclipped_count(bits, num_clients=len(survivors))
        if refusal is not None:
            return GroupResult(
                params.group_id,
                members,
                survivors,
                GroupStatus.MEAN_REFUSED,
                mean_refusal=refusal.reason,
                detail=refusal.detail,
            )
        return GroupResult(
            params.group_id,
            members,
            survivors,
            GroupStatus.ACCEPTED,
            mean=total / len(survivors),
            unclipped_bits=bits,
            detail=outcome.detail,
        )

    def _record(
        self, server_round: int, groups: Mapping[str, _Group], outcome: SecureRoundResult
    ) -> None:
        if self._audit is None:
            return
        events = []
        for node, refusal, detail in outcome.member_refusals:
            events.append(
                AuditEvent(
                    AuditEventKind.SECAGG_MEMBER_REFUSED,
                    self.run_id,
                    round=server_round,
                    node_id=node,
                    reason=refusal,
                    details={"detail": detail},
                )
            )
        for gid, group in groups.items():
            for member, refused in group.server.refused_replies:
                events.append(
                    AuditEvent(
                        AuditEventKind.SECAGG_REPLY_REFUSED,
                        self.run_id,
                        round=server_round,
                        node_id=_node_or_none(member),
                        reason=refused.reason,
                        details={"group": gid, "detail": refused.message[:500]},
                    )
                )
        for result in outcome.groups:
            summary = {
                "group": result.group_id,
                "members": [str(m) for m in result.members],
                "survivors": [str(m) for m in result.survivors],
                "detail": result.detail[:500],
            }
            if result.status is GroupStatus.ABORTED:
                events.append(
                    AuditEvent(
                        AuditEventKind.SECAGG_GROUP_ABORTED,
                        self.run_id,
                        round=server_round,
                        reason=result.abort_reason,
                        details=summary,
                    )
                )
            elif result.status is GroupStatus.MEAN_REFUSED:
                events.append(
                    AuditEvent(
                        AuditEventKind.GROUP_MEAN_REFUSED,
                        self.run_id,
                        round=server_round,
                        reason=result.mean_refusal,
                        details=summary,
                    )
                )
        self._audit.append_many(events)


def _error_name(code: int) -> str:
    try:
        return protocol.ClientErrorCode(code).name.lower()
    except ValueError:
        return f"error_{code}"


def _node_or_none(member: str) -> int | None:
    try:
        node = int(member)
    except ValueError:
        return None
    return node if 0 <= node < 2**64 else None
