"""The coordinator's side of one group's SecAgg+ round: routes messages, then unmasks the sum.

The server never sees a member's input: it sums the masked inputs of the survivors U3 and
removes, from Shamir-reconstructed secrets, each survivor's self mask and the pairwise masks
survivors share with members that dropped after distributing their shares. A group with fewer
than t members at any stage is aborted (``GroupOutcome.aborted``), before any unmask request
is sent. Malformed, unexpected or duplicate replies are refused, recorded in
``refused_replies`` (for the audit log) and treated as that member dropping out.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric import x25519

from . import key_agreement, masks, shamir
from .key_agreement import PAIRWISE_MASK
from .messages import (
    ClientReply,
    EncryptedShares,
    GroupSetup,
    KeyAdvertisement,
    MaskedInput,
    MaskedInputRequest,
    ShareKeysRequest,
    UnmaskRequest,
    UnmaskShares,
)
from .params import GroupParams
from .quantization import dequantize_sum
from .refusal import SecAggRefusal, SecAggRefusalReason
from .signatures import (
    IdentityVerifier,
    RosterSigner,
    RosterStage,
    key_advertisement_message,
    sign_roster,
)


class ServerStage(enum.StrEnum):
    """Which replies the server collects next."""

    NOT_STARTED = "not_started"
    KEY_ADVERTISEMENTS = "key_advertisements"
    ENCRYPTED_SHARES = "encrypted_shares"
    MASKED_INPUTS = "masked_inputs"
    UNMASK_SHARES = "unmask_shares"
    DONE = "done"
    ABORTED = "aborted"


@dataclass(frozen=True)
class GroupOutcome:
    """What the coordinator learns from one group: the survivors' sum, or why it was aborted.

    Attributes:
        params: the group's parameters.
        survivors: U3, the members whose inputs are in the sum (empty when aborted).
        vector_sum: the dequantized sum of their updates (None when aborted).
        extra_sums: the exact sums of the extra integer channels (None when aborted).
        aborted: the reason the group was aborted, or None.
        detail: what exactly happened, for the audit log.
    """

    params: GroupParams
    survivors: tuple[str, ...]
    vector_sum: npt.NDArray[np.float64] | None
    extra_sums: npt.NDArray[np.int64] | None
    aborted: SecAggRefusalReason | None = None
    detail: str = ""

    @property
    def vector_mean(self) -> npt.NDArray[np.float64]:
        """The group mean (sum / |survivors|); ValueError for an aborted group."""
        if self.vector_sum is None or not self.survivors:
            raise ValueError(f"group {self.params.group_id} was aborted: {self.detail}")
        return self.vector_sum / len(self.survivors)


@dataclass
class _Advertised:
    encryption_key: bytes
    masking_key: bytes


@dataclass
class _Collected:
    advertised: dict[str, _Advertised] = field(default_factory=dict)
    ciphertexts: dict[str, Mapping[str, bytes]] = field(default_factory=dict)
    shared: tuple[str, ...] = ()
    masked_sum: npt.NDArray[np.unsignedinteger] | None = None
    survivors: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()


ServerMessages = dict[str, GroupSetup | ShareKeysRequest | MaskedInputRequest | UnmaskRequest]


class SecAggServer:
    """One group's round on the coordinator: ``start``, then ``collect`` each stage's replies.

    ``collect`` returns the next stage's messages by member id; it returns ``{}`` once the
    round is over, and ``outcome`` then holds the group sum or the abort reason.

    Args:
        params: the group's parameters.
        sign_roster: the coordinator's roster signer (see ``signatures.roster_signer``).
        verify_identity: checks members' key signatures, so a bad one drops only that member
            instead of making every honest peer refuse the round.
    """

    def __init__(
        self,
        params: GroupParams,
        *,
        sign_roster: RosterSigner,
        verify_identity: IdentityVerifier,
    ) -> None:
        self.params = params
        self._sign = sign_roster
        self._verify_identity = verify_identity
        self._stage = ServerStage.NOT_STARTED
        self._collected = _Collected()
        self.refused_replies: list[tuple[str, SecAggRefusal]] = []
        self.outcome: GroupOutcome | None = None

    @property
    def stage(self) -> ServerStage:
        """Which replies the server collects next."""
        return self._stage

    def start(self) -> dict[str, GroupSetup]:
        """Stage 0: the signed setup for every member."""
        if self._stage is not ServerStage.NOT_STARTED:
            raise SecAggRefusal(SecAggRefusalReason.OUT_OF_ORDER, "the round already started")
        roster = sign_roster(self.params, RosterStage.SETUP, self.params.members, self._sign)
        self._stage = ServerStage.KEY_ADVERTISEMENTS
        return {member: GroupSetup(self.params, roster) for member in self.params.members}

    def collect(self, replies: Iterable[ClientReply]) -> ServerMessages:
        """Take one stage's replies (from the members that answered) and return the next
        stage's messages; ``{}`` when the round has ended (see ``outcome``)."""
        handlers = {
            ServerStage.KEY_ADVERTISEMENTS: (KeyAdvertisement, self._after_advertisements),
            ServerStage.ENCRYPTED_SHARES: (EncryptedShares, self._after_shares),
            ServerStage.MASKED_INPUTS: (MaskedInput, self._after_masked_inputs),
            ServerStage.UNMASK_SHARES: (UnmaskShares, self._after_unmask_shares),
        }
        if self._stage not in handlers:
            raise SecAggRefusal(
                SecAggRefusalReason.OUT_OF_ORDER, f"nothing to collect while {self._stage}"
            )
        reply_type, handler = handlers[self._stage]
        expected = self._expected_senders()
        accepted: dict[str, ClientReply] = {}
        for reply in replies:
            sender = getattr(reply, "member_id", "?")
            if not isinstance(reply, reply_type) or sender not in expected:
                self._refuse_reply(sender, SecAggRefusalReason.OUT_OF_ORDER, "unexpected reply")
            elif sender in accepted:
                self._refuse_reply(sender, SecAggRefusalReason.MALFORMED, "duplicate reply")
            else:
                accepted[sender] = reply
        ordered = [accepted[m] for m in self.params.members if m in accepted]
        return handler(ordered)

    # Stage handlers ----------------------------------------------------------------------
    def _after_advertisements(self, replies: list[ClientReply]) -> ServerMessages:
        valid: list[KeyAdvertisement] = []
        for reply in replies:
            assert isinstance(reply, KeyAdvertisement)
            if self._advertisement_is_valid(reply):
                valid.append(reply)
                self._collected.advertised[reply.member_id] = _Advertised(
                    reply.encryption_key, reply.masking_key
                )
        members = tuple(ad.member_id for ad in valid)
        if not self._enough(members, "advertised keys"):
            return {}
        roster = sign_roster(self.params, RosterStage.KEYS, members, self._sign)
        request = ShareKeysRequest(roster, tuple(valid))
        self._stage = ServerStage.ENCRYPTED_SHARES
        return {member: request for member in members}

    def _after_shares(self, replies: list[ClientReply]) -> ServerMessages:
        advertised = set(self._collected.advertised)
        for reply in replies:
            assert isinstance(reply, EncryptedShares)
            peers = advertised - {reply.member_id}
            if not isinstance(reply.ciphertexts, Mapping) or set(reply.ciphertexts) != peers:
                self._refuse_reply(
                    reply.member_id, SecAggRefusalReason.MALFORMED, "shares not for exactly U1"
                )
                continue
            self._collected.ciphertexts[reply.member_id] = reply.ciphertexts
        shared = tuple(m for m in self.params.members if m in self._collected.ciphertexts)
        if not self._enough(shared, "distributed shares"):
            return {}
        self._collected.shared = shared
        roster = sign_roster(self.params, RosterStage.SHARES, shared, self._sign)
        self._stage = ServerStage.MASKED_INPUTS
        return {
            receiver: MaskedInputRequest(
                roster,
                {
                    sender: self._collected.ciphertexts[sender][receiver]
                    for sender in shared
                    if sender != receiver
                },
            )
            for receiver in shared
        }

    def _after_masked_inputs(self, replies: list[ClientReply]) -> ServerMessages:
        params = self.params
        length = params.input_length
        dtype = masks.ring_dtype(params.modulus_bits)
        total = np.zeros(length, dtype=dtype)
        survivors: list[str] = []
        for reply in replies:
            assert isinstance(reply, MaskedInput)
            values = reply.values
            if (
                not isinstance(values, np.ndarray)
                or values.dtype != dtype
                or values.shape != (length,)
                or (
                    params.modulus_bits < 8 * dtype.itemsize
                    and int(values.max()) >> params.modulus_bits
                )
            ):
                self._refuse_reply(
                    reply.member_id, SecAggRefusalReason.MALFORMED, "masked input of wrong shape"
                )
                continue
            np.add(total, values, out=total)
            survivors.append(reply.member_id)
        if not self._enough(tuple(survivors), "masked inputs"):
            return {}
        self._collected.survivors = tuple(survivors)
        self._collected.dropped = tuple(m for m in self._collected.shared if m not in survivors)
        self._collected.masked_sum = total
        roster = sign_roster(
            params,
            RosterStage.UNMASK,
            self._collected.survivors,
            self._sign,
            dropped=self._collected.dropped,
        )
        self._stage = ServerStage.UNMASK_SHARES
        return {member: UnmaskRequest(roster) for member in survivors}

    def _after_unmask_shares(self, replies: list[ClientReply]) -> ServerMessages:
        survivors, dropped = self._collected.survivors, self._collected.dropped
        seed_shares: dict[str, dict[int, int]] = {m: {} for m in survivors}
        key_shares: dict[str, dict[int, int]] = {m: {} for m in dropped}
        responders = []
        for reply in replies:
            assert isinstance(reply, UnmaskShares)
            try:
                seeds, keys = self._decode_unmask_reply(reply)
            except SecAggRefusal as refusal:
                self._refuse_reply(reply.member_id, refusal.reason, refusal.message)
                continue
            x = self.params.position(reply.member_id)
            for member, y in seeds.items():
                seed_shares[member][x] = y
            for member, y in keys.items():
                key_shares[member][x] = y
            responders.append(reply.member_id)
        if not self._enough(tuple(responders), "unmask shares"):
            return {}
        try:
            total = self._unmask(seed_shares, key_shares)
        except SecAggRefusal as refusal:
            self._abort(refusal.reason, refusal.message)
            return {}
        vector_sum, extra_sums = dequantize_sum(
            total, self.params.quantization, self.params.modulus_bits
        )
        self.outcome = GroupOutcome(
            self.params,
            survivors,
            vector_sum,
            extra_sums,
            detail=f"{len(survivors)} of {len(self.params.members)} members summed",
        )
        self._stage = ServerStage.DONE
        return {}

    # Unmasking -------------------------------------------------------------------------
    def _unmask(
        self, seed_shares: dict[str, dict[int, int]], key_shares: dict[str, dict[int, int]]
    ) -> npt.NDArray[np.unsignedinteger]:
        params = self.params
        total = self._collected.masked_sum
        assert total is not None
        keys: list[tuple[bytes, int]] = []
        for member, shares in seed_shares.items():
            secret = shamir.reconstruct_secret(shares, threshold=params.threshold)
            seed = _secret_bytes(secret)
            keys.append((key_agreement.self_mask_key(params, seed, member), -1))
        for member, shares in key_shares.items():
            secret = shamir.reconstruct_secret(shares, threshold=params.threshold)
            masking_key = x25519.X25519PrivateKey.from_private_bytes(_secret_bytes(secret))
            advertised = self._collected.advertised[member].masking_key
            if key_agreement.public_bytes(masking_key) != advertised:
                raise SecAggRefusal(
                    SecAggRefusalReason.BAD_SHARE,
                    f"the reconstructed mask key of {member} does not match its advertised key",
                )
            for survivor in self._collected.survivors:
                pairwise = key_agreement.agreed_key(
                    params,
                    PAIRWISE_MASK,
                    masking_key,
                    self._collected.advertised[survivor].masking_key,
                    member,
                    survivor,
                )
                # The survivor added +mask when it precedes the dropped member, −mask otherwise.
                survivor_added = 1 if params.position(survivor) < params.position(member) else -1
                keys.append((pairwise, -survivor_added))
        # Every mask removed in one pass over the sum.
        masks.add_masks(total, keys)
        masks.reduce(total, params.modulus_bits)
        return total

    def _decode_unmask_reply(self, reply: UnmaskShares) -> tuple[dict[str, int], dict[str, int]]:
        survivors, dropped = self._collected.survivors, self._collected.dropped
        if not (
            isinstance(reply.self_mask_shares, Mapping)
            and isinstance(reply.pairwise_key_shares, Mapping)
            and set(reply.self_mask_shares) == set(survivors)
            and set(reply.pairwise_key_shares) == set(dropped)
        ):
            raise SecAggRefusal(SecAggRefusalReason.MALFORMED, "shares not for the UNMASK roster")
        seeds = {m: shamir.decode_share(reply.self_mask_shares[m]) for m in survivors}
        keys = {m: shamir.decode_share(reply.pairwise_key_shares[m]) for m in dropped}
        return seeds, keys

    # Helpers ---------------------------------------------------------------------------
    def _expected_senders(self) -> set[str]:
        collected = self._collected
        if self._stage is ServerStage.KEY_ADVERTISEMENTS:
            return set(self.params.members)
        if self._stage is ServerStage.ENCRYPTED_SHARES:
            return set(collected.advertised)
        if self._stage is ServerStage.MASKED_INPUTS:
            return set(collected.shared)
        return set(collected.survivors)

    def _advertisement_is_valid(self, ad: KeyAdvertisement) -> bool:
        try:
            key_agreement.load_public_key(ad.encryption_key)
            key_agreement.load_public_key(ad.masking_key)
        except SecAggRefusal as refusal:
            self._refuse_reply(ad.member_id, refusal.reason, refusal.message)
            return False
        message = key_advertisement_message(
            self.params, ad.member_id, ad.encryption_key, ad.masking_key
        )
        if not isinstance(ad.signature, bytes) or not self._verify_identity(
            ad.member_id, message, ad.signature
        ):
            self._refuse_reply(
                ad.member_id, SecAggRefusalReason.BAD_SIGNATURE, "keys not signed by the member"
            )
            return False
        return True

    def _enough(self, members: tuple[str, ...], what: str) -> bool:
        if len(members) >= self.params.threshold:
            return True
        self._abort(
            SecAggRefusalReason.BELOW_THRESHOLD,
            f"only {len(members)} members with {what}, below t = {self.params.threshold}",
        )
        return False

    def _abort(self, reason: SecAggRefusalReason, detail: str) -> None:
        self.outcome = GroupOutcome(self.params, (), None, None, aborted=reason, detail=detail)
        self._collected = _Collected()
        self._stage = ServerStage.ABORTED

    def _refuse_reply(self, member: str, reason: SecAggRefusalReason, detail: str) -> None:
        self.refused_replies.append((member, SecAggRefusal(reason, f"{member}: {detail}")))


def _secret_bytes(secret: int) -> bytes:
    if secret >= 1 << 256:
        raise SecAggRefusal(SecAggRefusalReason.BAD_SHARE, "a reconstructed secret is too large")
    return secret.to_bytes(masks.KEY_BYTES, "big")
