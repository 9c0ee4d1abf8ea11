"""Why a SecAgg+ participant refused a message: one exception, one enum of reasons."""

from __future__ import annotations

import enum


class SecAggRefusalReason(enum.StrEnum):
    """Every reason a client or the server refuses a secure-aggregation message or round."""

    BAD_SIGNATURE = "bad_signature"
    """A member's key advertisement is not signed by its identity key (a substituted key)."""
    BAD_ROSTER_SIGNATURE = "bad_roster_signature"
    """A roster is not signed by the coordinator's roster key."""
    ROSTER_MISMATCH = "roster_mismatch"
    """A roster or request contradicts an earlier signed roster or what this client saw."""
    DOUBLE_UNMASK_REQUEST = "double_unmask_request"
    """An unmask request asks for both the self-mask and the pairwise-key share of one member,
    or a second unmask request arrives in the same round."""
    BELOW_THRESHOLD = "below_threshold"
    """Fewer than t members remain: the group is aborted and no unmasking share is released."""
    BAD_SHARE = "bad_share"
    """An encrypted share fails authentication, or shares do not reconstruct a consistent secret."""
    WEAK_PARAMETERS = "weak_parameters"
    """The group's parameters are unsafe (t ≤ k/2, or a modulus too small for k members)."""
    OUT_OF_ORDER = "out_of_order"
    """A message for another stage, round, run or group than the one this participant is in."""
    MALFORMED = "malformed"
    """A message, key, share or input with the wrong type, size, range or member set."""


class SecAggRefusal(Exception):  # noqa: N818 - a refusal is an outcome, not an error
    """A secure-aggregation message was refused; ``reason`` says why, the message says what."""

    def __init__(self, reason: SecAggRefusalReason, message: str) -> None:
        super().__init__(f"{reason.name}: {message}")
        self.reason = reason
        self.message = message
