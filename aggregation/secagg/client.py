"""The member's side of SecAgg+: a state machine that answers one stage message at a time.

A member holds its round secrets (two X25519 private keys, the self-mask seed and the shares
peers sent it) only inside this object. Every refusal aborts the member for the round, erases
those secrets and releases nothing further: in particular a member refuses to reveal both the
seed share and the mask-key share of one peer (which would unmask that peer's input), to
answer a second unmask request, or to answer any request once fewer than t members remain.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from . import key_agreement, masks, shamir
from .key_agreement import PAIRWISE_MASK, SHARE_ENCRYPTION
from .messages import (
    ClientReply,
    EncryptedShares,
    GroupSetup,
    KeyAdvertisement,
    MaskedInput,
    MaskedInputRequest,
    ServerMessage,
    ShareKeysRequest,
    UnmaskRequest,
    UnmaskShares,
)
from .params import MIN_GROUP_SIZE, GroupParams
from .quantization import quantize
from .refusal import SecAggRefusal, SecAggRefusalReason
from .signatures import (
    IdentityVerifier,
    RosterStage,
    RosterVerifier,
    check_roster,
    key_advertisement_message,
    sign_with_identity,
)


class ClientStage(enum.StrEnum):
    """Where a member is in the round."""

    AWAITING_SETUP = "awaiting_setup"
    ADVERTISED = "advertised"
    SHARED = "shared"
    MASKED = "masked"
    DONE = "done"
    ABORTED = "aborted"


@dataclass(frozen=True)
class ClientPolicy:
    """The member's floor: it refuses groups smaller or thresholds lower than these."""

    min_group_size: int = MIN_GROUP_SIZE
    min_threshold: int = 2


class SecAggClient:
    """One member's round: ``handle`` each server message in order, ``set_input`` before stage 2.

    Args:
        member_id: this member's id, as the coordinator's roster names it.
        identity_key: the member's ECDSA identity key (its certificate's key); signs round keys.
        verify_identity: checks a peer's signature against its certified identity key.
        verify_roster: checks the coordinator's roster signature (its pinned key).
        policy: the smallest group and threshold this member takes part in.
    """

    def __init__(
        self,
        member_id: str,
        *,
        identity_key: ec.EllipticCurvePrivateKey,
        verify_identity: IdentityVerifier,
        verify_roster: RosterVerifier,
        policy: ClientPolicy | None = None,
    ) -> None:
        self.member_id = member_id
        self._identity_key = identity_key
        self._verify_identity = verify_identity
        self._verify_roster = verify_roster
        self._policy = policy or ClientPolicy()
        self._stage = ClientStage.AWAITING_SETUP
        self._params: GroupParams | None = None
        self._encryption_key: x25519.X25519PrivateKey | None = None
        self._masking_key: x25519.X25519PrivateKey | None = None
        self._masking_public_keys: dict[str, bytes] = {}
        self._encryption_public_keys: dict[str, bytes] = {}
        self._advertised: tuple[str, ...] = ()
        self._masked_with: tuple[str, ...] = ()
        self._seed: bytes | None = None
        self._held_shares: dict[str, tuple[int, int]] = {}
        self._input: npt.NDArray[np.unsignedinteger] | None = None

    @property
    def stage(self) -> ClientStage:
        """The stage this member has reached."""
        return self._stage

    @property
    def params(self) -> GroupParams | None:
        """The group's parameters, once the setup was accepted."""
        return self._params

    def set_input(
        self, update: npt.ArrayLike | torch.Tensor, *, extras: Sequence[int] = ()
    ) -> None:
        """Quantize the clipped update (and the extra integers) for the masked-input stage.

        Raises:
            SecAggRefusal: OUT_OF_ORDER before the setup or after masking; MALFORMED for an
                update longer than C, non-finite, or extras that do not fit the parameters.
        """
        if self._params is None or self._stage not in (ClientStage.ADVERTISED, ClientStage.SHARED):
            raise SecAggRefusal(
                SecAggRefusalReason.OUT_OF_ORDER, "the input is set after setup, before masking"
            )
        quantized = quantize(
            update, self._params.quantization, self._params.modulus_bits, extras=extras
        )
        if quantized.size != self._params.input_length:
            raise SecAggRefusal(
                SecAggRefusalReason.MALFORMED,
                f"the update has {quantized.size - self._params.quantization.num_extra_channels}"
                f" coordinates, the group expects {self._params.vector_length}",
            )
        self._input = quantized

    def set_quantized_input(self, words: npt.NDArray[np.unsignedinteger]) -> None:
        """Take an input already quantized into the ring (d words, then the extra channels),
        for a member that quantizes elsewhere (e.g. on an accelerator). Nothing here checks
        that it came from an update of norm ≤ C — nothing can, which is why the coordinator
        refuses group means longer than C.

        Raises:
            SecAggRefusal: OUT_OF_ORDER as ``set_input``; MALFORMED for another word type,
                length, or a word outside [0, 2^b).
        """
        if self._params is None or self._stage not in (ClientStage.ADVERTISED, ClientStage.SHARED):
            raise SecAggRefusal(
                SecAggRefusalReason.OUT_OF_ORDER, "the input is set after setup, before masking"
            )
        dtype = masks.ring_dtype(self._params.modulus_bits)
        if (
            not isinstance(words, np.ndarray)
            or words.dtype != dtype
            or words.shape != (self._params.input_length,)
        ):
            raise SecAggRefusal(
                SecAggRefusalReason.MALFORMED,
                f"a quantized input is {self._params.input_length} {dtype} words",
            )
        if self._params.modulus_bits < 8 * dtype.itemsize and int(words.max()) >> (
            self._params.modulus_bits
        ):
            raise SecAggRefusal(SecAggRefusalReason.MALFORMED, "a word lies outside the ring")
        self._input = np.array(words, dtype=dtype, copy=True)

    def export_state(self) -> bytes:
        """The member's round state as bytes, to carry it between two stage messages (e.g. in
        Flower's ``context.state``, where a ClientApp finds it at the next stage).

        It holds the round's secrets (private keys, seed, peers' shares): keep it in the
        node's memory only, never in logs or files. Identity key and verifiers are not in it.
        """

        def raw(key: x25519.X25519PrivateKey | None) -> str | None:
            return None if key is None else key_agreement.private_bytes(key).hex()

        state = {
            "version": _STATE_VERSION,
            "member_id": self.member_id,
            "stage": str(self._stage),
            "params": None if self._params is None else self._params.as_record(),
            "encryption_key": raw(self._encryption_key),
            "masking_key": raw(self._masking_key),
            "encryption_public_keys": {m: k.hex() for m, k in self._encryption_public_keys.items()},
            "masking_public_keys": {m: k.hex() for m, k in self._masking_public_keys.items()},
            "advertised": list(self._advertised),
            "masked_with": list(self._masked_with),
            "seed": None if self._seed is None else self._seed.hex(),
            "held_shares": {m: [hex(a), hex(b)] for m, (a, b) in self._held_shares.items()},
            "input": None if self._input is None else _encode_words(self._input),
        }
        return json.dumps(state, separators=(",", ":")).encode()

    @classmethod
    def restore(
        cls,
        state: bytes,
        *,
        identity_key: ec.EllipticCurvePrivateKey,
        verify_identity: IdentityVerifier,
        verify_roster: RosterVerifier,
        policy: ClientPolicy | None = None,
    ) -> SecAggClient:
        """The member ``export_state`` saved, with its identity key and verifiers re-attached.

        Raises:
            SecAggRefusal: MALFORMED when the state cannot be read.
        """
        try:
            data = json.loads(state)
            if data["version"] != _STATE_VERSION:
                raise ValueError(f"state version {data['version']!r}")
            client = cls(
                str(data["member_id"]),
                identity_key=identity_key,
                verify_identity=verify_identity,
                verify_roster=verify_roster,
                policy=policy,
            )
            client._stage = ClientStage(data["stage"])
            if data["params"] is not None:
                client._params = GroupParams.from_record(data["params"])
            client._encryption_key = _private_key(data["encryption_key"])
            client._masking_key = _private_key(data["masking_key"])
            client._encryption_public_keys = {
                str(m): bytes.fromhex(k) for m, k in data["encryption_public_keys"].items()
            }
            client._masking_public_keys = {
                str(m): bytes.fromhex(k) for m, k in data["masking_public_keys"].items()
            }
            client._advertised = tuple(str(m) for m in data["advertised"])
            client._masked_with = tuple(str(m) for m in data["masked_with"])
            client._seed = None if data["seed"] is None else bytes.fromhex(data["seed"])
            client._held_shares = {
                str(m): (int(a, 16), int(b, 16)) for m, (a, b) in data["held_shares"].items()
            }
            if data["input"] is not None:
                if client._params is None:
                    raise ValueError("an input without parameters")
                dtype = masks.ring_dtype(client._params.modulus_bits).newbyteorder("<")
                words = np.frombuffer(base64.b64decode(data["input"], validate=True), dtype=dtype)
                if words.size != client._params.input_length:
                    raise ValueError("the stored input has the wrong length")
                client._input = words.astype(masks.ring_dtype(client._params.modulus_bits))
        except SecAggRefusal:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as error:
            raise SecAggRefusal(
                SecAggRefusalReason.MALFORMED, f"unreadable member state: {error}"
            ) from error
        return client

    def handle(self, message: ServerMessage) -> ClientReply:
        """Answer one stage message; any refusal aborts this member for the round.

        Raises:
            SecAggRefusal: why the message was refused (see ``SecAggRefusalReason``).
        """
        try:
            if self._stage in (ClientStage.DONE, ClientStage.ABORTED):
                reason = (
                    SecAggRefusalReason.DOUBLE_UNMASK_REQUEST
                    if isinstance(message, UnmaskRequest)
                    else SecAggRefusalReason.OUT_OF_ORDER
                )
                raise SecAggRefusal(reason, f"the member's round is {self._stage}")
            if isinstance(message, GroupSetup):
                self._expect(ClientStage.AWAITING_SETUP, message)
                return self._advertise_keys(message)
            if isinstance(message, ShareKeysRequest):
                self._expect(ClientStage.ADVERTISED, message)
                return self._share_keys(message)
            if isinstance(message, MaskedInputRequest):
                self._expect(ClientStage.SHARED, message)
                return self._mask_input(message)
            if isinstance(message, UnmaskRequest):
                self._expect(ClientStage.MASKED, message)
                return self._unmask(message)
            raise SecAggRefusal(
                SecAggRefusalReason.MALFORMED, f"not a SecAgg+ message: {type(message).__name__}"
            )
        except SecAggRefusal:
            if self._stage is not ClientStage.DONE:
                self._abort()
            raise

    # Stage 0 ---------------------------------------------------------------------------
    def _advertise_keys(self, setup: GroupSetup) -> KeyAdvertisement:
        params = setup.params
        if not isinstance(params, GroupParams):
            raise SecAggRefusal(SecAggRefusalReason.MALFORMED, "the setup carries no parameters")
        check_roster(params, setup.roster, RosterStage.SETUP, self._verify_roster)
        if setup.roster.members != params.members or setup.roster.dropped:
            raise SecAggRefusal(
                SecAggRefusalReason.ROSTER_MISMATCH, "the setup roster is not the group"
            )
        if self.member_id not in params.members:
            raise SecAggRefusal(SecAggRefusalReason.ROSTER_MISMATCH, "this member is not listed")
        if (
            len(params.members) < self._policy.min_group_size
            or params.threshold < self._policy.min_threshold
        ):
            raise SecAggRefusal(
                SecAggRefusalReason.WEAK_PARAMETERS,
                f"k = {len(params.members)}, t = {params.threshold} are below this member's "
                f"floor k ≥ {self._policy.min_group_size}, t ≥ {self._policy.min_threshold}",
            )
        self._params = params
        self._encryption_key = x25519.X25519PrivateKey.generate()
        self._masking_key = x25519.X25519PrivateKey.generate()
        encryption_key = key_agreement.public_bytes(self._encryption_key)
        masking_key = key_agreement.public_bytes(self._masking_key)
        message = key_advertisement_message(params, self.member_id, encryption_key, masking_key)
        self._stage = ClientStage.ADVERTISED
        return KeyAdvertisement(
            self.member_id,
            encryption_key,
            masking_key,
            sign_with_identity(self._identity_key, message),
        )

    # Stage 1 ---------------------------------------------------------------------------
    def _share_keys(self, request: ShareKeysRequest) -> EncryptedShares:
        params, encryption_key, masking_key = self._round_keys()
        check_roster(params, request.roster, RosterStage.KEYS, self._verify_roster)
        advertised = request.roster.members
        self._require_member_and_threshold(params, advertised, "advertised keys")
        by_member = {ad.member_id: ad for ad in request.advertisements}
        if len(by_member) != len(request.advertisements) or set(by_member) != set(advertised):
            raise SecAggRefusal(
                SecAggRefusalReason.ROSTER_MISMATCH,
                "the advertisements do not match the signed KEYS roster",
            )
        own = by_member[self.member_id]
        if (own.encryption_key, own.masking_key) != (
            key_agreement.public_bytes(encryption_key),
            key_agreement.public_bytes(masking_key),
        ):
            raise SecAggRefusal(
                SecAggRefusalReason.BAD_SIGNATURE, "this member's own keys were substituted"
            )
        for member in advertised:
            self._check_advertisement(params, by_member[member])
        self._encryption_public_keys = {m: by_member[m].encryption_key for m in advertised}
        self._masking_public_keys = {m: by_member[m].masking_key for m in advertised}
        self._advertised = advertised

        self._seed = secrets.token_bytes(masks.KEY_BYTES)
        points = [params.position(member) for member in advertised]
        seed_shares = shamir.split_secret(
            int.from_bytes(self._seed, "big"), threshold=params.threshold, xs=points
        )
        key_shares = shamir.split_secret(
            int.from_bytes(key_agreement.private_bytes(masking_key), "big"),
            threshold=params.threshold,
            xs=points,
        )
        ciphertexts: dict[str, bytes] = {}
        for member in advertised:
            x = params.position(member)
            if member == self.member_id:
                self._held_shares[member] = (seed_shares[x], key_shares[x])
                continue
            key = key_agreement.agreed_key(
                params,
                SHARE_ENCRYPTION,
                encryption_key,
                self._encryption_public_keys[member],
                self.member_id,
                member,
            )
            plaintext = shamir.encode_share(seed_shares[x]) + shamir.encode_share(key_shares[x])
            ciphertexts[member] = key_agreement.encrypt_shares(
                params, key, self.member_id, member, plaintext
            )
        self._stage = ClientStage.SHARED
        return EncryptedShares(self.member_id, ciphertexts)

    def _check_advertisement(self, params: GroupParams, ad: KeyAdvertisement) -> None:
        for key in (ad.encryption_key, ad.masking_key):
            key_agreement.load_public_key(key)
        message = key_advertisement_message(params, ad.member_id, ad.encryption_key, ad.masking_key)
        if not isinstance(ad.signature, bytes) or not self._verify_identity(
            ad.member_id, message, ad.signature
        ):
            raise SecAggRefusal(
                SecAggRefusalReason.BAD_SIGNATURE,
                f"the keys advertised for {ad.member_id} are not signed by its identity key",
            )

    # Stage 2 ---------------------------------------------------------------------------
    def _mask_input(self, request: MaskedInputRequest) -> MaskedInput:
        params, encryption_key, masking_key = self._round_keys()
        check_roster(params, request.roster, RosterStage.SHARES, self._verify_roster)
        shared = request.roster.members
        if not set(shared) <= set(self._advertised):
            raise SecAggRefusal(
                SecAggRefusalReason.ROSTER_MISMATCH,
                "the SHARES roster lists a member whose keys were never advertised",
            )
        self._require_member_and_threshold(params, shared, "distributed shares")
        peers = tuple(member for member in shared if member != self.member_id)
        if set(request.ciphertexts) != set(peers):
            raise SecAggRefusal(
                SecAggRefusalReason.ROSTER_MISMATCH,
                "the ciphertexts do not come from exactly the other members of the SHARES roster",
            )
        if self._input is None:
            raise SecAggRefusal(SecAggRefusalReason.OUT_OF_ORDER, "set_input was not called")
        for member in peers:
            key = key_agreement.agreed_key(
                params,
                SHARE_ENCRYPTION,
                encryption_key,
                self._encryption_public_keys[member],
                self.member_id,
                member,
            )
            seed_share, key_share = key_agreement.decrypt_shares(
                params, key, member, self.member_id, request.ciphertexts[member]
            )
            self._held_shares[member] = (
                shamir.decode_share(seed_share),
                shamir.decode_share(key_share),
            )
        assert self._seed is not None
        # Every mask in one pass over the input (it is not needed unmasked afterwards).
        masked = self._input
        keys = [(key_agreement.self_mask_key(params, self._seed, self.member_id), 1)]
        own_position = params.position(self.member_id)
        for member in peers:
            pairwise = key_agreement.agreed_key(
                params,
                PAIRWISE_MASK,
                masking_key,
                self._masking_public_keys[member],
                self.member_id,
                member,
            )
            keys.append((pairwise, 1 if own_position < params.position(member) else -1))
        masks.add_masks(masked, keys)
        masks.reduce(masked, params.modulus_bits)
        self._masked_with = shared
        self._input = None
        self._stage = ClientStage.MASKED
        return MaskedInput(self.member_id, masked)

    # Stage 3 ---------------------------------------------------------------------------
    def _unmask(self, request: UnmaskRequest) -> UnmaskShares:
        params, _, _ = self._round_keys()
        check_roster(params, request.roster, RosterStage.UNMASK, self._verify_roster)
        survivors, dropped = request.roster.members, request.roster.dropped
        both = set(survivors) & set(dropped)
        if both:
            raise SecAggRefusal(
                SecAggRefusalReason.DOUBLE_UNMASK_REQUEST,
                f"asked for both the seed and the mask-key share of {sorted(both)}",
            )
        if set(survivors) | set(dropped) != set(self._masked_with):
            raise SecAggRefusal(
                SecAggRefusalReason.ROSTER_MISMATCH,
                "the UNMASK roster does not partition the members this member masked with",
            )
        self._require_member_and_threshold(params, survivors, "masked inputs")
        reply = UnmaskShares(
            self.member_id,
            {m: shamir.encode_share(self._held_shares[m][0]) for m in survivors},
            {m: shamir.encode_share(self._held_shares[m][1]) for m in dropped},
        )
        self._erase_secrets()
        self._stage = ClientStage.DONE
        return reply

    # Helpers ---------------------------------------------------------------------------
    def _expect(self, stage: ClientStage, message: ServerMessage) -> None:
        if self._stage is not stage:
            raise SecAggRefusal(
                SecAggRefusalReason.OUT_OF_ORDER,
                f"{type(message).__name__} arrived while the member is {self._stage}",
            )

    def _round_keys(
        self,
    ) -> tuple[GroupParams, x25519.X25519PrivateKey, x25519.X25519PrivateKey]:
        if self._params is None or self._encryption_key is None or self._masking_key is None:
            raise SecAggRefusal(SecAggRefusalReason.OUT_OF_ORDER, "no round keys yet")
        return self._params, self._encryption_key, self._masking_key

    def _require_member_and_threshold(
        self, params: GroupParams, members: tuple[str, ...], what: str
    ) -> None:
        if self.member_id not in members:
            raise SecAggRefusal(
                SecAggRefusalReason.ROSTER_MISMATCH,
                f"the roster of members with {what} omits this member",
            )
        if len(members) < params.threshold:
            raise SecAggRefusal(
                SecAggRefusalReason.BELOW_THRESHOLD,
                f"only {len(members)} members with {what}, below t = {params.threshold}",
            )

    def _erase_secrets(self) -> None:
        self._encryption_key = None
        self._masking_key = None
        self._seed = None
        self._held_shares = {}
        self._input = None

    def _abort(self) -> None:
        self._erase_secrets()
        self._stage = ClientStage.ABORTED


_STATE_VERSION = 1


def _private_key(data: object) -> x25519.X25519PrivateKey | None:
    if data is None:
        return None
    if not isinstance(data, str):
        raise TypeError("a stored private key is a hex string")
    return x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(data))


def _encode_words(words: npt.NDArray[np.unsignedinteger]) -> str:
    little_endian = words.astype(words.dtype.newbyteorder("<"), copy=False)
    return base64.b64encode(little_endian.tobytes()).decode("ascii")
