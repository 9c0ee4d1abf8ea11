"""The SecAgg+ tests' fixtures and round driver: real P-384 identity keys, a real Ed25519 roster
key, and ``Group.run``, which runs one group's round between real ``SecAggServer`` and
``SecAggClient`` objects with chosen members falling silent at chosen stages.

Imported by this folder's conftest (fixtures) and tests (types and helpers), by its path from
the repository root, the one name both pytest and mypy resolve.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from ztfl.aggregation.secagg import (
    ClientReply,
    GroupOutcome,
    GroupParams,
    MaskedInputRequest,
    QuantizationParams,
    SecAggClient,
    SecAggServer,
    ServerMessage,
    identity_verifier,
    roster_signer,
    roster_verifier,
)

MEMBERS = tuple(f"node-{index}" for index in range(6))
CLIP_NORM = 1.0
SCALE = 2.0**16  # error bound k / scale stays visible next to float noise


@dataclass
class Group:
    """One group's real server and clients, plus what the driver observed."""

    params: GroupParams
    server: SecAggServer
    clients: dict[str, SecAggClient]
    sent: list[ServerMessage] = field(default_factory=list)

    def run(
        self,
        inputs: Mapping[str, tuple[np.ndarray, list[int]]],
        *,
        silent: Mapping[type, frozenset[str]] | None = None,
    ) -> GroupOutcome:
        """Run the round; a member in ``silent[T]`` answers no message of type T or later."""
        silent = silent or {}
        gone: set[str] = set()
        messages: Mapping[str, ServerMessage] = self.server.start()
        while messages:
            replies: list[ClientReply] = []
            for member, message in messages.items():
                self.sent.append(message)
                gone |= silent.get(type(message), frozenset()) & {member}
                if member in gone:
                    continue
                client = self.clients[member]
                if isinstance(message, MaskedInputRequest):
                    vector, extras = inputs[member]
                    client.set_input(vector, extras=extras)
                replies.append(client.handle(message))
            messages = self.server.collect(replies)
        assert self.server.outcome is not None
        return self.server.outcome


MakeGroup = Callable[..., Group]


@pytest.fixture(scope="session")
def identity_keys() -> dict[str, ec.EllipticCurvePrivateKey]:
    """Each member's identity key, as its federation certificate would hold it."""
    return {member: ec.generate_private_key(ec.SECP384R1()) for member in MEMBERS}


@pytest.fixture(scope="session")
def roster_key() -> ed25519.Ed25519PrivateKey:
    """The coordinator's roster-signing key."""
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture
def make_group(
    identity_keys: dict[str, ec.EllipticCurvePrivateKey], roster_key: ed25519.Ed25519PrivateKey
) -> MakeGroup:
    """Build a group of ``k`` members (threshold default ⌊k/2⌋ + 1) with real keys."""

    def build(
        k: int,
        *,
        threshold: int | None = None,
        vector_length: int = 32,
        scale: float = SCALE,
        num_extra_channels: int = 1,
    ) -> Group:
        members = MEMBERS[:k]
        verify = identity_verifier({m: identity_keys[m].public_key() for m in members})
        params = GroupParams.create(
            run_id="run-1",
            round=3,
            group_id="group-a",
            members=members,
            quantization=QuantizationParams(
                CLIP_NORM, scale, num_extra_channels=num_extra_channels
            ),
            vector_length=vector_length,
            threshold=threshold,
        )
        server = SecAggServer(params, sign_roster=roster_signer(roster_key), verify_identity=verify)
        clients = {
            m: SecAggClient(
                m,
                identity_key=identity_keys[m],
                verify_identity=verify,
                verify_roster=roster_verifier(roster_key.public_key()),
            )
            for m in members
        }
        return Group(params, server, clients)

    return build


def clipped_inputs(
    members: tuple[str, ...], vector_length: int, *, seed: int = 0
) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Float32 updates of norm ≤ C (some clipped to exactly C) and their "not clipped" bits."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for index, member in enumerate(members):
        update = rng.standard_normal(vector_length)
        norm = np.linalg.norm(update)
        target = CLIP_NORM if index % 2 == 0 else 0.5 * CLIP_NORM
        inputs[member] = (
            (update * target / norm).astype(np.float32),
            [int(target < CLIP_NORM)],
        )
    return inputs


def answer(
    group: Group,
    messages: Mapping[str, ServerMessage],
    inputs: Mapping[str, tuple[np.ndarray, list[int]]] | None = None,
) -> list[ClientReply]:
    """Every addressed member's reply (setting its input first for the masked-input stage)."""
    replies = []
    for member, message in messages.items():
        if isinstance(message, MaskedInputRequest):
            assert inputs is not None
            vector, extras = inputs[member]
            group.clients[member].set_input(vector, extras=extras)
        replies.append(group.clients[member].handle(message))
    return replies
