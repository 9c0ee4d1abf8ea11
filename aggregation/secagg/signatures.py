"""Who signs what: members sign their round keys, the coordinator signs the group roster.

Members sign with their identity key (the ECDSA key of their federation certificate), so the
coordinator cannot substitute a key without the substitution being refused by every honest
peer; peers check the signature through ``IdentityVerifier``, which the caller backs with the
federation CA. The coordinator signs each stage's roster, so a client can hold it to what it
said and refuse requests that contradict it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from .params import GroupParams
from .refusal import SecAggRefusal, SecAggRefusalReason
from .transcript import labelled

IdentityVerifier = Callable[[str, bytes, bytes], bool]
"""(member_id, message, signature) → whether the member's certified identity key signed it."""
RosterSigner = Callable[[bytes], bytes]
"""message → the coordinator's signature."""
RosterVerifier = Callable[[bytes, bytes], bool]
"""(message, signature) → whether the coordinator's roster key signed it."""

RosterPrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
RosterPublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


class RosterStage(enum.StrEnum):
    """The stage a signed roster belongs to (the member list means something else in each)."""

    SETUP = "setup"
    """members: the whole group."""
    KEYS = "keys"
    """members: those whose signed keys were advertised (U1)."""
    SHARES = "shares"
    """members: those who distributed their encrypted shares (U2), masked with each other."""
    UNMASK = "unmask"
    """members: masked inputs received (U3, self masks unmasked); dropped: U2 − U3 (pairwise
    keys unmasked)."""


@dataclass(frozen=True)
class Roster:
    """A member list for one stage, signed by the coordinator."""

    stage: RosterStage
    members: tuple[str, ...]
    dropped: tuple[str, ...]
    signature: bytes


def roster_message(
    params: GroupParams, stage: RosterStage, members: tuple[str, ...], dropped: tuple[str, ...]
) -> bytes:
    """What the coordinator signs for a roster: the group fingerprint, stage and both lists."""
    return labelled("roster", params.fingerprint(), str(stage), members, dropped)


def sign_roster(
    params: GroupParams,
    stage: RosterStage,
    members: tuple[str, ...],
    signer: RosterSigner,
    *,
    dropped: tuple[str, ...] = (),
) -> Roster:
    """The coordinator's signed roster for ``stage``."""
    return Roster(stage, members, dropped, signer(roster_message(params, stage, members, dropped)))


def check_roster(
    params: GroupParams, roster: Roster, stage: RosterStage, verifier: RosterVerifier
) -> None:
    """Refuse a roster for another stage, not signed by the coordinator, or not a subset of the
    group in roster order."""
    if not isinstance(roster, Roster) or roster.stage is not stage:
        raise SecAggRefusal(SecAggRefusalReason.OUT_OF_ORDER, f"expected a {stage} roster")
    for names in (roster.members, roster.dropped):
        if not isinstance(names, tuple) or not all(isinstance(name, str) for name in names):
            raise SecAggRefusal(SecAggRefusalReason.MALFORMED, "roster lists must be tuples")
    message = roster_message(params, stage, roster.members, roster.dropped)
    if not isinstance(roster.signature, bytes) or not verifier(message, roster.signature):
        raise SecAggRefusal(
            SecAggRefusalReason.BAD_ROSTER_SIGNATURE,
            f"the {stage} roster is not signed by the coordinator",
        )
    if roster.dropped and stage is not RosterStage.UNMASK:
        raise SecAggRefusal(
            SecAggRefusalReason.MALFORMED, f"a {stage} roster lists no dropped members"
        )
    for names in (roster.members, roster.dropped):
        if not in_roster_order(params, names):
            raise SecAggRefusal(
                SecAggRefusalReason.ROSTER_MISMATCH,
                f"the {stage} roster lists members outside the group, twice or out of order",
            )


def in_roster_order(params: GroupParams, names: tuple[str, ...]) -> bool:
    """Whether ``names`` are distinct group members listed in the group's order."""
    order = {member: index for index, member in enumerate(params.members)}
    positions = [order.get(name, -1) for name in names]
    return all(p >= 0 for p in positions) and positions == sorted(set(positions))


def key_advertisement_message(
    params: GroupParams, member_id: str, encryption_key: bytes, masking_key: bytes
) -> bytes:
    """What a member signs for its round keys: label, run, round, group, purpose, member, keys."""
    return labelled(
        "key-advertisement",
        params.run_id,
        params.round,
        params.group_id,
        params.fingerprint(),
        member_id,
        encryption_key,
        masking_key,
    )


def sign_with_identity(identity_key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """ECDSA signature by a member's identity key (hash sized to its curve)."""
    return identity_key.sign(message, ec.ECDSA(_hash_for(identity_key.curve)))


def identity_verifier(public_keys: Mapping[str, ec.EllipticCurvePublicKey]) -> IdentityVerifier:
    """An ``IdentityVerifier`` over known identity public keys (e.g. taken from certificates
    already checked against the federation CA)."""

    def verify(member_id: str, message: bytes, signature: bytes) -> bool:
        key = public_keys.get(member_id)
        if key is None:
            return False
        try:
            key.verify(signature, message, ec.ECDSA(_hash_for(key.curve)))
        except InvalidSignature:
            return False
        return True

    return verify


def roster_signer(private_key: RosterPrivateKey) -> RosterSigner:
    """A ``RosterSigner`` over an Ed25519 or ECDSA private key of the coordinator."""
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        algorithm = ec.ECDSA(_hash_for(private_key.curve))
        return lambda message: private_key.sign(message, algorithm)
    raise TypeError("the roster key must be an Ed25519 or ECDSA private key")


def roster_verifier(public_key: RosterPublicKey) -> RosterVerifier:
    """A ``RosterVerifier`` over the coordinator's pinned Ed25519 or ECDSA public key."""
    if not isinstance(public_key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise TypeError("the roster key must be an Ed25519 or ECDSA public key")

    def verify(message: bytes, signature: bytes) -> bool:
        try:
            if isinstance(public_key, ed25519.Ed25519PublicKey):
                public_key.verify(signature, message)
            else:
                public_key.verify(signature, message, ec.ECDSA(_hash_for(public_key.curve)))
        except InvalidSignature:
            return False
        return True

    return verify


def _hash_for(curve: ec.EllipticCurve) -> hashes.HashAlgorithm:
    if curve.key_size <= 256:
        return hashes.SHA256()
    if curve.key_size <= 384:
        return hashes.SHA384()
    return hashes.SHA512()
