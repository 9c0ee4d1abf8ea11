"""Quarantine in secure mode: group flags attributed to clients across random regroupings.

The policy tests drive a real ``QuarantinePolicy`` with seeded random groups of 3, in which
a group is flagged when it holds an attacker. The coordinator tests run secure rounds against
the production ClientApp in this process (real federation CA, real SecAgg+, digits training);
one node poisons its own input before masking, as a simulated attacker does.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from tests.support.in_process_grid import InProcessGrid
from ztfl.aggregation.group_attribution import GroupRound
from ztfl.aggregation.secagg import GroupParams, QuantizationParams, quantize
from ztfl.client.app import build_client_app
from ztfl.client.data import ClientData
from ztfl.client.models import build_model
from ztfl.client.secure_aggregation import MemberIdentity, RingInput, UpdateHook
from ztfl.client.trainer import model_weights
from ztfl.client.trust_anchor import write_trust_anchor
from ztfl.server.config import CoordinatorConfig
from ztfl.server.coordinator import Coordinator, open_ledger
from ztfl.server.ledger import PUBLIC_KEY_FILE, RunLedger
from ztfl.server.quarantine import (
    AttributionConfig,
    Decision,
    Incident,
    QuarantineConfig,
    QuarantinePolicy,
    Signal,
    round_observations,
)
from ztfl.simulations.datasets import load_digits_partition
from ztfl.trust.audit import AuditEventKind
from ztfl.trust.keys import generate_signing_key
from ztfl.trust.pki.provisioning import FederationPaths, provision_federation

CLIENTS = tuple(range(1, 21))
ATTACKERS = frozenset({3, 14})
SIGNING_KEY = generate_signing_key()
NODE_IDS = tuple(range(301, 311))
ATTACKER = 305


def regrouped(server_round: int, generator: random.Random) -> GroupRound:
    """Fresh random groups of 3 or 4 from ``CLIENTS``; flagged: the groups holding an attacker."""
    order = list(CLIENTS)
    generator.shuffle(order)
    groups = tuple(tuple(sorted(order[i::6])) for i in range(6))
    flagged = frozenset(i for i, group in enumerate(groups) if ATTACKERS & set(group))
    return GroupRound(groups, flagged, server_round)


def run_policy(policy: QuarantinePolicy, rounds: Iterable[int], seed: int = 0) -> list[Incident]:
    """Feed seeded secure rounds through the policy as the coordinator does; the incidents."""
    generator = random.Random(seed)
    incidents: list[Incident] = []
    for server_round in rounds:
        group_round = regrouped(server_round, generator)
        attributed = policy.attribute(group_round)
        observations = round_observations(
            server_round,
            sampled=CLIENTS,
            answered=CLIENTS,
            refused=(),
            verification_failures=(),
            scores=None,
            ramp=policy.config.ramp,
            attributed=attributed,
        )
        incidents.extend(policy.observe(observations, connected=CLIENTS))
    return incidents


def test_sharing_a_flagged_group_with_an_attacker_costs_an_honest_client_nothing() -> None:
    policy = QuarantinePolicy(QuarantineConfig())
    group_round = GroupRound(((3, 1, 2), (4, 5, 6)), frozenset({0}), 1)
    observations = policy.attribute(group_round, [9.5, 0.2])
    assert observations[1].signal is Signal.ATTRIBUTED
    assert observations[1].trust == 1.0
    assert observations[1].score == 9.5  # the group's score is quoted, not held against it
    policy.observe(observations, connected=range(1, 7))
    assert policy.reputations()[1] == 1.0


def test_a_client_in_a_flagged_group_every_round_is_suspected_and_quarantined() -> None:
    policy = QuarantinePolicy(QuarantineConfig(), minimum_population=15)
    incidents = run_policy(policy, range(1, 31))
    assert policy.quarantined == ATTACKERS
    assert set(policy.suspects()) == ATTACKERS
    record = policy.nodes[min(ATTACKERS)]
    assert record.evidence[-1].signal is Signal.SUSPECTED
    p_value = record.evidence[-1].p_value
    assert p_value is not None
    assert p_value < 0.01 / 20
    assert all(incident.decision is Decision.QUARANTINED for incident in incidents)


def test_the_incident_quotes_the_attribution_p_values() -> None:
    policy = QuarantinePolicy(QuarantineConfig())
    incidents = run_policy(policy, range(1, 31))
    details = [incident.details() for incident in incidents]
    assert details
    assert all("suspected" in item["signals"] for item in details)
    assert all(any(p is not None and p < 5e-4 for p in item["p_values"]) for item in details)


def test_no_honest_client_is_suspected_across_thirty_random_regroupings() -> None:
    for seed in range(5):
        policy = QuarantinePolicy(QuarantineConfig())
        run_policy(policy, range(1, 31), seed=seed)
        assert set(policy.suspects()) <= ATTACKERS
        honest = [node for node in CLIENTS if node not in ATTACKERS]
        assert all(policy.nodes[node].reputation == 1.0 for node in honest)


def test_the_group_history_survives_the_state_round_trip() -> None:
    policy = QuarantinePolicy(QuarantineConfig())
    run_policy(policy, range(1, 13))
    restored = QuarantinePolicy(QuarantineConfig())
    restored.restore(policy.to_state())
    assert restored.group_rounds == policy.group_rounds
    assert restored.suspects() == policy.suspects()
    assert restored.reputations() == policy.reputations()


def test_a_released_client_starts_a_fresh_attribution_history() -> None:
    policy = QuarantinePolicy(QuarantineConfig())
    run_policy(policy, range(1, 31))
    attacker = min(ATTACKERS)
    assert attacker in policy.quarantined
    assert policy.release(attacker, 31) is not None
    restored = QuarantinePolicy(QuarantineConfig())
    restored.restore(policy.to_state())
    assert attacker not in restored.suspects()
    observations = restored.attribute(GroupRound(((attacker, 1, 2),), frozenset(), 31))
    assert observations[attacker].signal is Signal.ATTRIBUTED


def test_attribution_keeps_only_the_configured_window_of_rounds() -> None:
    config = QuarantineConfig(attribution=AttributionConfig(window_rounds=8))
    policy = QuarantinePolicy(config)
    run_policy(policy, range(1, 21))
    assert [item.server_round for item in policy.group_rounds] == list(range(13, 21))


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"flag_score": 0.0}, "flag_score"),
        ({"flag_score": float("inf")}, "flag_score"),
        ({"significance": 1.0}, "significance"),
        ({"min_rounds": 0}, "min_rounds"),
        ({"window_rounds": 2}, "window_rounds"),
    ],
)
def test_unusable_attribution_settings_are_refused(settings: dict[str, float], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        AttributionConfig(**settings)  # type: ignore[arg-type]


# Through the coordinator ------------------------------------------------------------------
def loopback_grid(client_app: ClientApp, trust_anchor: Path) -> InProcessGrid:
    """Every node in this process, pinning ``trust_anchor``."""
    return InProcessGrid(
        client_app, {node: {"trust-anchor": str(trust_anchor)} for node in NODE_IDS}
    )


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> FederationPaths:
    """A real federation CA with one enrolled client per node."""
    root = tmp_path_factory.mktemp("federation")
    return provision_federation(root, "quarantine-secure", clients=[f"n{n}" for n in NODE_IDS])


@pytest.fixture(scope="module")
def node_data() -> dict[int, ClientData]:
    """An IID digits share per node."""
    return {
        node: load_digits_partition(index, len(NODE_IDS), alpha=None, seed=0)
        for index, node in enumerate(NODE_IDS)
    }


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Train tiny models on one thread, then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def flip_attacker(
    vector: np.ndarray, params: GroupParams, message: Message, context: Context
) -> np.ndarray:
    """The attacker sends its own update flipped and scaled ×5 (then clipped to C)."""
    return (-5.0 * vector).astype(np.float32) if context.node_id == ATTACKER else vector


def secure_coordinator(
    root: Path,
    federation: FederationPaths,
    node_data: Mapping[int, ClientData],
    *,
    num_rounds: int,
    resume: bool = False,
    hook: UpdateHook = flip_attacker,
    **settings: object,
) -> tuple[Coordinator, InProcessGrid]:
    """A secure coordinator (groups of 3, median over group means) and its nodes' grid."""
    initial = model_weights(build_model("mlp", seed=0))
    config = CoordinatorConfig(
        num_rounds=num_rounds,
        min_nodes=len(NODE_IDS),
        local_epochs=1,
        learning_rate=0.1,
        federated_evaluation=False,
        secure_aggregation=True,
        group_size=3,
        federation_ca=str(federation.ca_certificate),
        federation_crl=str(federation.crl),
        seed=5,
        **{"pipeline": "median", "num_byzantine": 1, **settings},  # type: ignore[arg-type]
    )
    ledger: RunLedger = open_ledger(
        config, initial, state_dir=root / "state", key=SIGNING_KEY, resume=resume
    )
    anchor = root / "trust-anchor.toml"
    write_trust_anchor(anchor, ledger.run_id, [root / "state" / PUBLIC_KEY_FILE])

    def load_identity(context: Context) -> MemberIdentity:
        return MemberIdentity.load(federation.clients[f"n{context.node_id}"].root, federation.crl)

    app = build_client_app(
        lambda context: node_data[context.node_id],
        load_identity=load_identity,
        prepare_update=hook,
    )
    grid = loopback_grid(app, anchor)
    coordinator = Coordinator(config, initial, ledger=ledger, roster_signer=SIGNING_KEY.sign)
    return coordinator, grid


def test_a_secure_round_scores_group_means_and_flags_the_attackers_group(
    tmp_path: Path, federation: FederationPaths, node_data: dict[int, ClientData]
) -> None:
    coordinator, grid = secure_coordinator(tmp_path, federation, node_data, num_rounds=2)
    try:
        history = coordinator.run(grid)
    finally:
        coordinator.ledger.close()
    for record in history.rounds:
        assert record.anomaly_scores is None  # no member's update is ever seen
        assert record.group_scores is not None
        assert record.groups is not None
        assert set(record.group_scores) == set(record.groups)
        assert sorted(node for group in record.groups.values() for node in group) == list(NODE_IDS)
        attackers_group = next(g for g, members in record.groups.items() if ATTACKER in members)
        assert record.flagged_groups == (attackers_group,)
        assert record.suspected == ()
    # One flagged round is no evidence against the attacker's honest group mates.
    reputations = history.rounds[-1].reputation
    assert reputations is not None
    assert set(reputations.values()) == {1.0}


def test_a_group_whose_mean_was_refused_is_flagged_without_a_score(
    tmp_path: Path, federation: FederationPaths, node_data: dict[int, ClientData]
) -> None:
    def unclipped(
        vector: np.ndarray, params: GroupParams, message: Message, context: Context
    ) -> np.ndarray | RingInput:
        """The attacker runs its own code: an input longer than C, quantized unclipped."""
        if context.node_id != ATTACKER:
            return vector
        q = params.quantization
        longer = QuantizationParams(2 * q.clip_norm * len(params.members), q.scale)
        poison = np.full(params.vector_length, 1.0)
        poison *= 0.99 * longer.clip_norm / np.linalg.norm(poison)
        return RingInput(quantize(poison, longer, params.modulus_bits))

    coordinator, grid = secure_coordinator(
        tmp_path,
        federation,
        node_data,
        num_rounds=1,
        hook=unclipped,
        pipeline="mean",
        num_byzantine=0,
    )
    try:
        record = coordinator.run(grid).rounds[0]
    finally:
        coordinator.ledger.close()
    assert record.groups is not None
    assert record.group_scores is not None
    refused = next(g for g, members in record.groups.items() if ATTACKER in members)
    assert refused not in record.group_scores
    assert refused in record.flagged_groups
    assert ATTACKER not in record.accepted_nodes


def test_a_resumed_secure_run_keeps_the_group_history(
    tmp_path: Path, federation: FederationPaths, node_data: dict[int, ClientData]
) -> None:
    coordinator, grid = secure_coordinator(tmp_path, federation, node_data, num_rounds=1)
    try:
        coordinator.run(grid)
    finally:
        coordinator.ledger.close()
    resumed, grid = secure_coordinator(tmp_path, federation, node_data, num_rounds=2, resume=True)
    try:
        assert [item.server_round for item in resumed.quarantine.group_rounds] == [1]
        history = resumed.run(grid)
    finally:
        resumed.ledger.close()
    assert [item.server_round for item in resumed.quarantine.group_rounds] == [1, 2]
    assert history.rounds[0].groups is not None  # the first round's groups, from the state


def test_a_private_secure_round_computes_no_group_score(
    tmp_path: Path, federation: FederationPaths, node_data: dict[int, ClientData]
) -> None:
    coordinator, grid = secure_coordinator(
        tmp_path,
        federation,
        node_data,
        num_rounds=1,
        dp=True,
        dp_noise_multiplier=0.5,
        dp_clip_norm=1.0,
        pipeline="mean",
        num_byzantine=0,
    )
    try:
        history = coordinator.run(grid)
    finally:
        coordinator.ledger.close()
    record = history.rounds[0]
    assert record.committed
    assert (record.group_scores, record.groups, record.flagged_groups) == (None, None, ())
    assert coordinator.quarantine.group_rounds == []


def test_a_secure_coordinator_quarantines_the_client_its_flagged_groups_share(
    tmp_path: Path, federation: FederationPaths, node_data: dict[int, ClientData]
) -> None:
    coordinator, grid = secure_coordinator(tmp_path, federation, node_data, num_rounds=12)
    try:
        history = coordinator.run(grid)
        events = [
            record
            for record in coordinator.ledger.audit.records(1)
            if record.kind is AuditEventKind.QUARANTINE
        ]
    finally:
        coordinator.ledger.close()
    quarantined = {node for record in history.rounds for node in record.quarantined}
    assert quarantined == {ATTACKER}
    assert [event.node_id for event in events] == [ATTACKER]
    signals = events[0].details["signals"]
    assert isinstance(signals, list)
    assert "suspected" in signals
