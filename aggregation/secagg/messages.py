"""The messages of one SecAgg+ group round: plain values (str, bytes, int, numpy arrays).

Stage by stage (Bonawitz et al., 2017; Bell et al., 2020), server → client, then the reply:

0. ``GroupSetup``          → ``KeyAdvertisement``   (two fresh X25519 public keys, signed)
1. ``ShareKeysRequest``    → ``EncryptedShares``    (Shamir shares of the mask key and seed)
2. ``MaskedInputRequest``  → ``MaskedInput``        (the quantized update plus masks mod 2^b)
3. ``UnmaskRequest``       → ``UnmaskShares``       (seed shares of survivors, key shares of
                                                     the dropped)

Mappings are keyed by member id. Each message maps field by field onto a Flower record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .params import GroupParams
from .signatures import Roster


@dataclass(frozen=True)
class GroupSetup:
    """Stage 0: the group's parameters, with the coordinator's signed SETUP roster."""

    params: GroupParams
    roster: Roster


@dataclass(frozen=True)
class KeyAdvertisement:
    """A member's round public keys, signed with its identity key."""

    member_id: str
    encryption_key: bytes
    masking_key: bytes
    signature: bytes


@dataclass(frozen=True)
class ShareKeysRequest:
    """Stage 1: every advertisement the coordinator received, with the signed KEYS roster (U1)."""

    roster: Roster
    advertisements: tuple[KeyAdvertisement, ...]


@dataclass(frozen=True)
class EncryptedShares:
    """A member's shares for each peer in U1: receiver → nonce ‖ AEAD ciphertext."""

    member_id: str
    ciphertexts: Mapping[str, bytes]


@dataclass(frozen=True)
class MaskedInputRequest:
    """Stage 2: the signed SHARES roster (U2) and the ciphertexts addressed to this member
    (sender → ciphertext, one per other member of U2)."""

    roster: Roster
    ciphertexts: Mapping[str, bytes]


@dataclass(frozen=True)
class MaskedInput:
    """A member's masked, quantized input: ring elements mod 2^b (uint32 up to b = 32)."""

    member_id: str
    values: npt.NDArray[np.unsignedinteger]


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 3: the signed UNMASK roster: ``members`` sent masked inputs (U3), ``dropped``
    did not (U2 − U3)."""

    roster: Roster


@dataclass(frozen=True)
class UnmaskShares:
    """A member's shares: seed shares of each survivor, mask-key shares of each dropped member."""

    member_id: str
    self_mask_shares: Mapping[str, bytes]
    pairwise_key_shares: Mapping[str, bytes]


ServerMessage = GroupSetup | ShareKeysRequest | MaskedInputRequest | UnmaskRequest
ClientReply = KeyAdvertisement | EncryptedShares | MaskedInput | UnmaskShares
