"""A group's round parameters: who is in it, the threshold, the ring and the quantization."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
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

    def as_record(self) -> dict[str, str | int | float | list[str]]:
        """The parameters as plain JSON-able values (for a Flower ConfigRecord or a state blob)."""
        q = self.quantization
        return {
            "run_id": self.run_id,
            "round": self.round,
            "group_id": self.group_id,
            "members": list(self.members),
            "threshold": self.threshold,
            "modulus_bits": self.modulus_bits,
            "vector_length": self.vector_length,
            "clip_norm": float(q.clip_norm),
            "scale": float(q.scale),
            "num_extra_channels": q.num_extra_channels,
            "extra_channel_bound": q.extra_channel_bound,
            "norm_tolerance": float(q.norm_tolerance),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> GroupParams:
        """Parameters from ``as_record``'s values, validated (MALFORMED on a wrong field)."""
        try:
            quantization = QuantizationParams(
                clip_norm=_number(record["clip_norm"]),
                scale=_number(record["scale"]),
                num_extra_channels=_integer(record["num_extra_channels"]),
                extra_channel_bound=_integer(record["extra_channel_bound"]),
                norm_tolerance=_number(record["norm_tolerance"]),
            )
            members = record["members"]
            if not isinstance(members, list | tuple):
                raise TypeError("members must be a list")
            run_id, group_id = record["run_id"], record["group_id"]
            if not isinstance(run_id, str) or not isinstance(group_id, str):
                raise TypeError("run_id and group_id must be strings")
            return cls(
                run_id=run_id,
                round=_integer(record["round"]),
                group_id=group_id,
                members=tuple(members),
                threshold=_integer(record["threshold"]),
                quantization=quantization,
                modulus_bits=_integer(record["modulus_bits"]),
                vector_length=_integer(record["vector_length"]),
            )
        except (KeyError, TypeError) as error:
            raise SecAggRefusal(
                SecAggRefusalReason.MALFORMED, f"group parameters: {error}"
            ) from error

    def fingerprint(self) -> bytes:
        """SHA-256 of every parameter: the context bound into each key, share and signature."""
        return self._fingerprint

    @functools.cached_property
    def _fingerprint(self) -> bytes:
        # Computed once per (immutable) parameter set: every key derivation, share and
        # signature of the round binds it.
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


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _refuse(reason: SecAggRefusalReason, message: str) -> NoReturn:
    raise SecAggRefusal(reason, message)
