"""A group's round parameters: who is in it, the threshold, the ring and the quantization."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import NoReturn

from .quantization import MAX_MODULUS_BITS, QuantizationParams
from .refusal import SecAggRefusal, SecAggRefusalReason
from .transcript import labelled

MIN_GROUP_SIZE = 3


@dataclass(frozen=True)
class GroupParams:
    """One group's SecAgg+ round, fixed by the coordinator and signed in the setup roster.

    Attributes:
        run_id, round, group_id: where this group runs (bound into every key and signature).
        members: the k member ids; the order fixes each member's Shamir point (index + 1)
            and the sign of each pairwise mask.
        threshold: t, with k/2 < t ≤ k: t shares reconstruct a secret, and two disjoint sets
            of survivors can never both reach t (so no member's two secrets can both be
            unmasked). Up to k − t members may drop out.
        quantization: how updates become ring elements.
        modulus_bits: b, at least ``quantization.required_modulus_bits(k)``.
        vector_length: d, the length of the flattened update (extra channels come after it).
    """

    run_id: str
    round: int
    group_id: str
    members: tuple[str, ...]
    threshold: int
    quantization: QuantizationParams
    modulus_bits: int
    vector_length: int

    def __post_init__(self) -> None:
        if not isinstance(self.members, tuple) or not all(
            isinstance(member, str) and member for member in self.members
        ):
            _refuse(SecAggRefusalReason.MALFORMED, "members must be a tuple of non-empty strings")
        if len(set(self.members)) != len(self.members):
            _refuse(SecAggRefusalReason.MALFORMED, "members must be distinct")
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0:
            _refuse(SecAggRefusalReason.MALFORMED, f"round must be an int ≥ 0, got {self.round}")
        if isinstance(self.vector_length, bool) or not (
            isinstance(self.vector_length, int) and self.vector_length >= 1
        ):
            _refuse(SecAggRefusalReason.MALFORMED, "vector_length must be an int ≥ 1")
        k = len(self.members)
        if k < MIN_GROUP_SIZE:
            _refuse(SecAggRefusalReason.WEAK_PARAMETERS, f"a group needs ≥ 3 members, got {k}")
        if not (2 * self.threshold > k and self.threshold <= k):
            _refuse(
                SecAggRefusalReason.WEAK_PARAMETERS,
                f"threshold t must satisfy k/2 < t ≤ k, got t = {self.threshold} for k = {k}",
            )
        required = self.quantization.required_modulus_bits(k)
        if not required <= self.modulus_bits <= MAX_MODULUS_BITS:
            _refuse(
                SecAggRefusalReason.WEAK_PARAMETERS,
                f"modulus_bits must lie in [{required}, {MAX_MODULUS_BITS}] for {k} members, "
                f"got {self.modulus_bits}",
            )

    @classmethod
    def create(
        cls,
        *,
        run_id: str,
        round: int,
        group_id: str,
        members: tuple[str, ...],
        quantization: QuantizationParams,
        vector_length: int,
        threshold: int | None = None,
    ) -> GroupParams:
        """Parameters with the secure defaults: t = ⌊k/2⌋ + 1 and the smallest safe b."""
        k = len(members)
        return cls(
            run_id=run_id,
            round=round,
            group_id=group_id,
            members=members,
            threshold=k // 2 + 1 if threshold is None else threshold,
            quantization=quantization,
            modulus_bits=quantization.required_modulus_bits(k),
            vector_length=vector_length,
        )

    @property
    def input_length(self) -> int:
        """d plus the extra channels: the length of every masked input."""
        return self.vector_length + self.quantization.num_extra_channels

    @property
    def max_dropouts(self) -> int:
        """k − t, the members that may vanish without aborting the group."""
        return len(self.members) - self.threshold

    def position(self, member: str) -> int:
        """The member's Shamir point x (roster index + 1)."""
        return self.members.index(member) + 1

    def fingerprint(self) -> bytes:
        """SHA-256 of every parameter: the context bound into each key, share and signature."""
        q = self.quantization
        encoded = labelled(
            "group-parameters",
            self.run_id,
            self.round,
            self.group_id,
            self.members,
            self.threshold,
            self.modulus_bits,
            self.vector_length,
            repr(float(q.clip_norm)),
            repr(float(q.scale)),
            q.num_extra_channels,
            q.extra_channel_bound,
            repr(float(q.norm_tolerance)),
        )
        return hashlib.sha256(encoded).digest()


def _refuse(reason: SecAggRefusalReason, message: str) -> NoReturn:
    raise SecAggRefusal(reason, message)
