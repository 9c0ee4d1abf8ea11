"""Secure rounds through the coordinator's driver, against real ClientApps in this process.

Every node runs the production ClientApp with the secure stages registered
(``ztfl.client.secure_aggregation``), verifies a model signed by a real ledger, trains on
digits, and takes part in SecAgg+ with an identity issued by a real federation CA
(``provision_federation``). ``LoopbackGrid`` hands each message to the node's ClientApp with
the node's own ``Context`` (so member state really lives in ``Context.state`` between stages).
Tests that need a known update replace the trained one through the ``prepare_update`` hook, the
same hook the simulation's attackers use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from tests.support.in_process_grid import InProcessGrid, NodeConfig
from ztfl.aggregation import ModelSpec, RefusalReason, build_pipeline
from ztfl.aggregation.secagg import (
    GroupParams,
    QuantizationParams,
    SecAggRefusalReason,
    quantize,
    scale_for_modulus_bits,
)
from ztfl.client import protocol
from ztfl.client.app import build_client_app
from ztfl.client.data import ClientData
from ztfl.client.models import build_model
from ztfl.client.policy import RoundPrivacy
from ztfl.client.secure_aggregation import (
    STATE_KEY,
    MemberIdentity,
    RingInput,
    UpdateHook,
)
from ztfl.client.trainer import model_weights
from ztfl.client.trust_anchor import write_trust_anchor
from ztfl.server.arrays import vector_to_record, weights_to_vector
from ztfl.server.config import CoordinatorConfig
from ztfl.server.coordinator import Coordinator, open_ledger
from ztfl.server.ledger import PUBLIC_KEY_FILE, RunLedger
from ztfl.server.secure_round import (
    GroupStatus,
    SecureAggregator,
    SecureRoundError,
    SecureRoundResult,
    SecureRoundSettings,
    aggregate_group_means,
    fixed_denominator_sum,
    split_into_groups,
)
from ztfl.simulations.datasets import load_digits_partition
from ztfl.trust.audit import AuditEventKind
from ztfl.trust.keys import generate_signing_key
from ztfl.trust.pki import FederationTrust
from ztfl.trust.pki.provisioning import FederationPaths, provision_federation

NODE_IDS = tuple(range(201, 207))
SIGNING_KEY = generate_signing_key()
CLIP_NORM = 4.0
Hook = Callable[[int, np.ndarray, GroupParams], "np.ndarray | RingInput"]
IdentityFor = Callable[[int], MemberIdentity]


class LoopbackGrid(InProcessGrid):
    """Every node in this process; records each message's stage, and lets nodes go silent."""

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Mapping[int, NodeConfig],
        *,
        silent: Mapping[str, frozenset[int]] | None = None,
    ) -> None:
        super().__init__(client_app, node_configs)
        self._silent = silent or {}
        self.stages: list[str] = []

    def deliver(self, message: Message) -> Message | None:
        kind = message.metadata.message_type
        self.stages.append(kind)
        if message.metadata.dst_node_id in self._silent.get(kind, frozenset()):
            return None  # the node vanished: no reply before the timeout
        return super().deliver(message)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> FederationPaths:
    """A real federation CA with one enrolled client per node (and one spare)."""
    root = tmp_path_factory.mktemp("federation")
    names = [f"node-{node}" for node in NODE_IDS] + ["spare"]
    return provision_federation(root, "secure-tests", clients=names)


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


class Deployment:
    """A ledger, its signed broadcast, the nodes' ClientApp and grid, and the aggregator."""

    def __init__(
        self,
        root: Path,
        federation: FederationPaths,
        node_data: Mapping[int, ClientData],
        *,
        hook: Hook | None = None,
        node_settings: Mapping[int, Mapping[str, bool | float | int | str]] | None = None,
        silent: Mapping[str, frozenset[int]] | None = None,
        identity_for: IdentityFor | None = None,
        group_size: int = 3,
        server_trust: bool = True,
    ) -> None:
        initial = model_weights(build_model("mlp", seed=0))
        self.spec = ModelSpec.from_arrays(initial)
        self.vector = weights_to_vector(initial, self.spec)
        config = CoordinatorConfig(pipeline="mean", min_nodes=len(NODE_IDS))
        self.ledger: RunLedger = open_ledger(
            config, initial, state_dir=root / "state", key=SIGNING_KEY, resume=False
        )
        anchor = root / "trust-anchor.toml"
        write_trust_anchor(anchor, self.ledger.run_id, [root / "state" / PUBLIC_KEY_FILE])

        def own_identity(node: int) -> MemberIdentity:
            return MemberIdentity.load(federation.clients[f"node-{node}"].root, federation.crl)

        identity = identity_for or own_identity

        def load_identity(context: Context) -> MemberIdentity:
            return identity(context.node_id)

        update_hook: UpdateHook | None = None
        if hook is not None:

            def replace_update(
                vector: np.ndarray, params: GroupParams, message: Message, context: Context
            ) -> np.ndarray | RingInput:
                return hook(context.node_id, vector, params)

            update_hook = replace_update
        app = build_client_app(
            lambda context: node_data[context.node_id],
            load_identity=load_identity,
            prepare_update=update_hook,
        )
        configs = {
            node: {"trust-anchor": str(anchor), **dict((node_settings or {}).get(node, {}))}
            for node in NODE_IDS
        }
        self.grid = LoopbackGrid(app, configs, silent=silent)
        trust = FederationTrust.load(federation.ca_certificate, federation.crl)
        self.aggregator = SecureAggregator(
            SecureRoundSettings(group_size=group_size, trust=trust if server_trust else None),
            run_id=self.ledger.run_id,
            sign_roster=SIGNING_KEY.sign,
            audit=self.ledger.audit,
            seed=7,
        )

    def broadcasts(self, server_round: int = 1) -> dict[int, Message]:
        """The signed training broadcast for every node, as the coordinator sends it."""
        model = vector_to_record(self.vector, self.spec)
        manifest = ConfigRecord(
            {
                protocol.SIGNED_MANIFEST: self.ledger.signed_manifest(
                    self.ledger.model_digest
                ).to_bytes()
            }
        )
        config = ConfigRecord(
            {
                protocol.ROUND: server_round,
                protocol.MODEL: "mlp",
                protocol.LOCAL_EPOCHS: 1,
                protocol.LEARNING_RATE: 0.05,
                protocol.BATCH_SIZE: 16,
                protocol.SEED: 3,
            }
        )
        return {
            node: Message(
                RecordDict(
                    {
                        protocol.GLOBAL_MODEL_KEY: model,
                        protocol.CONFIG_KEY: config,
                        protocol.MANIFEST_KEY: manifest,
                        protocol.PRIVACY_KEY: RoundPrivacy(dp=False).to_record(),
                    }
                ),
                dst_node_id=node,
                message_type="train",
                group_id=str(server_round),
            )
            for node in NODE_IDS
        }

    def run(self, *, extra_channel: bool = False) -> SecureRoundResult:
        return self.aggregator.run(
            self.grid,
            server_round=1,
            broadcasts=self.broadcasts(),
            clip_norm=CLIP_NORM,
            vector_length=self.spec.num_parameters,
            extra_channel=extra_channel,
        )

    def audit_kinds(self) -> list[AuditEventKind]:
        return [record.kind for record in self.ledger.audit.records(1)]

    def audit_reasons(self, kind: AuditEventKind) -> list[str | None]:
        return [record.reason for record in self.ledger.audit.records(1) if record.kind is kind]


@pytest.fixture
def make_deployment(
    tmp_path: Path, federation: FederationPaths, node_data: dict[int, ClientData]
) -> Iterator[Callable[..., Deployment]]:
    """Build a deployment in this test's folder; its audit log is closed afterwards."""
    made: list[Deployment] = []

    def build(**options: object) -> Deployment:
        deployment = Deployment(tmp_path / f"d{len(made)}", federation, node_data, **options)  # type: ignore[arg-type]
        made.append(deployment)
        return deployment

    yield build
    for deployment in made:
        deployment.ledger.close()


def known_updates(dimension: int) -> dict[int, np.ndarray]:
    """One fixed float32 update per node, norm 1 to 3 (below C)."""
    rng = np.random.default_rng(11)
    updates = {}
    for index, node in enumerate(NODE_IDS):
        vector = rng.standard_normal(dimension)
        updates[node] = (vector * (1 + index % 3) / np.linalg.norm(vector)).astype(np.float32)
    return updates


# Grouping -----------------------------------------------------------------------------------
def test_groups_partition_the_nodes_into_groups_of_at_least_k() -> None:
    nodes = list(range(23))
    groups = split_into_groups(nodes, 5, np.random.default_rng(0))
    assert len(groups) == 4
    assert sorted(node for group in groups for node in group) == nodes
    assert {len(group) for group in groups} <= {5, 6}


def test_grouping_is_random() -> None:
    nodes = list(range(30))
    first = split_into_groups(nodes, 3, np.random.default_rng(1))
    second = split_into_groups(nodes, 3, np.random.default_rng(2))
    assert set(first) != set(second)


def test_fewer_nodes_than_k_form_no_group() -> None:
    assert split_into_groups([1, 2], 3, np.random.default_rng(0)) == ()


def test_group_size_below_three_is_refused() -> None:
    with pytest.raises(SecureRoundError, match="at least 3"):
        SecureRoundSettings(group_size=2)


def test_threshold_must_be_a_majority_of_k() -> None:
    with pytest.raises(SecureRoundError, match="k/2 < t"):
        SecureRoundSettings(group_size=5, threshold=2)


def test_larger_groups_keep_a_majority_threshold() -> None:
    assert SecureRoundSettings(group_size=3, threshold=2).threshold_for(5) == 3


# The round ----------------------------------------------------------------------------------
def test_group_means_equal_the_members_mean_within_the_quantization_bound(
    make_deployment: Callable[..., Deployment],
) -> None:
    dimension = build_model_dimension()
    updates = known_updates(dimension)
    deployment = make_deployment(hook=lambda node, vector, params: updates[node])
    result = deployment.run()
    assert len(result.accepted) == 2
    for group in result.accepted:
        assert group.mean is not None
        expected = np.mean([updates[node] for node in group.survivors], axis=0)
        bound = 1 / scale_for_modulus_bits(CLIP_NORM, len(group.members))
        assert np.max(np.abs(group.mean.numpy() - expected)) < bound + 1e-6
    assert result.participants == NODE_IDS


def test_every_round_runs_four_message_stages_for_all_groups_together(
    make_deployment: Callable[..., Deployment],
) -> None:
    deployment = make_deployment()
    deployment.run()
    stages = deployment.grid.stages
    assert [stages.count(kind) for kind in protocol.SECAGG_MESSAGE_TYPES] == [len(NODE_IDS)] * 4


def test_member_state_lives_in_the_node_context_only_until_the_round_ends(
    make_deployment: Callable[..., Deployment],
) -> None:
    deployment = make_deployment(silent={protocol.SECAGG_UNMASK: frozenset(NODE_IDS)})
    deployment.run()
    assert all(STATE_KEY in c.state.config_records for c in deployment.grid.contexts.values())
    done = make_deployment()
    done.run()
    assert not any(STATE_KEY in c.state.config_records for c in done.grid.contexts.values())


def test_trained_updates_are_clipped_to_c_and_their_group_means_accepted(
    make_deployment: Callable[..., Deployment],
) -> None:
    deployment = make_deployment(hook=lambda node, vector, params: vector * 1000)
    result = deployment.run()
    assert len(result.accepted) == 2
    for group in result.accepted:
        assert group.mean is not None
        assert float(torch.linalg.vector_norm(group.mean.double())) <= CLIP_NORM * (1 + 1e-5)


def test_a_robust_rule_runs_across_the_group_means(
    make_deployment: Callable[..., Deployment],
) -> None:
    dimension = build_model_dimension()
    updates = known_updates(dimension)
    deployment = make_deployment(hook=lambda node, vector, params: updates[node])
    result = deployment.run()
    aggregate = aggregate_group_means(result, build_pipeline("median", num_byzantine=0))
    expected = np.median(result.group_means().numpy(), axis=0)  # middle two averaged
    np.testing.assert_allclose(aggregate.numpy(), expected, rtol=0, atol=1e-6)


def test_the_fixed_denominator_sum_counts_every_survivor(
    make_deployment: Callable[..., Deployment],
) -> None:
    dimension = build_model_dimension()
    updates = known_updates(dimension)
    deployment = make_deployment(hook=lambda node, vector, params: updates[node])
    result = deployment.run()
    total = fixed_denominator_sum(result, expected_clients=10)
    expected = np.sum([updates[node] for node in NODE_IDS], axis=0) / 10
    assert np.max(np.abs(total.numpy() - expected)) < 1e-5


def test_a_member_that_vanishes_after_masking_is_unmasked_and_the_group_sums_the_rest(
    make_deployment: Callable[..., Deployment],
) -> None:
    dimension = build_model_dimension()
    updates = known_updates(dimension)
    gone = NODE_IDS[0]
    deployment = make_deployment(
        hook=lambda node, vector, params: updates[node],
        silent={protocol.SECAGG_MASKED_INPUT: frozenset({gone})},
    )
    result = deployment.run()
    group = next(g for g in result.groups if gone in g.members)
    assert group.status is GroupStatus.ACCEPTED
    assert gone not in group.survivors
    assert group.mean is not None
    expected = np.mean([updates[node] for node in group.survivors], axis=0)
    assert np.max(np.abs(group.mean.numpy() - expected)) < 1e-5


def test_a_group_below_threshold_is_aborted_and_audited(
    make_deployment: Callable[..., Deployment],
) -> None:
    deployment = make_deployment()
    groups = deployment.aggregator.groups_for(1, NODE_IDS)
    victims = frozenset(groups[0][:2])
    deployment.grid._silent = {protocol.SECAGG_SHARE_KEYS: victims}
    result = deployment.run()
    aborted = [g for g in result.groups if g.status is GroupStatus.ABORTED]
    assert [g.members for g in aborted] == [groups[0]]
    assert aborted[0].abort_reason is SecAggRefusalReason.BELOW_THRESHOLD
    assert deployment.audit_reasons(AuditEventKind.SECAGG_GROUP_ABORTED) == ["below_threshold"]
    assert NODE_IDS[0] not in result.participants or groups[0][0] != NODE_IDS[0]


def test_a_member_whose_floor_is_above_k_refuses_and_the_refusal_is_audited(
    make_deployment: Callable[..., Deployment],
) -> None:
    strict = NODE_IDS[1]
    deployment = make_deployment(node_settings={strict: {"secagg-min-group-size": 5}})
    result = deployment.run()
    assert strict not in result.participants
    assert (strict, "weak_parameters") in [(n, r) for n, r, _ in result.member_refusals]
    assert deployment.audit_reasons(AuditEventKind.SECAGG_MEMBER_REFUSED) == ["weak_parameters"]
    assert len(result.accepted) == 2


def test_a_certificate_from_outside_the_federation_drops_only_its_member(
    make_deployment: Callable[..., Deployment], federation: FederationPaths, tmp_path: Path
) -> None:
    outsider = NODE_IDS[2]
    foreign = provision_federation(tmp_path / "foreign", "other-federation", clients=["x"])
    deployment = make_deployment(identity_for=identities_with(federation, outsider, foreign))
    result = deployment.run()
    assert outsider not in result.participants
    assert deployment.audit_reasons(AuditEventKind.SECAGG_REPLY_REFUSED) == ["bad_signature"]
    assert len(result.accepted) == 2


def test_without_the_federation_trust_honest_peers_refuse_a_foreign_certificate(
    make_deployment: Callable[..., Deployment], federation: FederationPaths, tmp_path: Path
) -> None:
    """The coordinator forwards what it cannot check; every honest peer checks the chain
    itself and refuses the round (the group aborts rather than mask with an unknown key)."""
    outsider = NODE_IDS[2]
    foreign = provision_federation(tmp_path / "foreign", "other-federation", clients=["x"])
    deployment = make_deployment(
        identity_for=identities_with(federation, outsider, foreign), server_trust=False
    )
    result = deployment.run()
    group = next(g for g in result.groups if outsider in g.members)
    assert group.status is GroupStatus.ABORTED
    refusals = {(node, reason) for node, reason, _ in result.member_refusals}
    assert refusals == {(member, "bad_signature") for member in group.members}


def test_two_members_with_one_identity_are_refused_by_the_coordinator(
    make_deployment: Callable[..., Deployment], federation: FederationPaths
) -> None:
    deployment = make_deployment()
    first, second = deployment.aggregator.groups_for(1, NODE_IDS)[0][:2]
    twin = MemberIdentity.load(federation.clients[f"node-{first}"].root, federation.crl)
    deployment = make_deployment(
        identity_for=lambda node: (
            twin
            if node == second
            else MemberIdentity.load(federation.clients[f"node-{node}"].root, federation.crl)
        )
    )
    result = deployment.run()
    assert deployment.audit_reasons(AuditEventKind.SECAGG_REPLY_REFUSED) == ["roster_mismatch"]
    assert second not in result.participants


def test_a_group_mean_longer_than_c_is_refused_and_audited(
    make_deployment: Callable[..., Deployment],
) -> None:
    """A member running its own code quantizes an unclipped input; its group's mean then
    exceeds C and the coordinator refuses the whole group."""
    probe = make_deployment()
    group = probe.aggregator.groups_for(1, NODE_IDS)[0]
    poisoner = group[0]

    def hook(node: int, vector: np.ndarray, params: GroupParams) -> np.ndarray | RingInput:
        if node != poisoner:
            return vector
        q = params.quantization
        longer = QuantizationParams(2 * q.clip_norm * len(params.members), q.scale)
        poison = np.full(params.vector_length, 1.0)
        poison *= 0.99 * longer.clip_norm / np.linalg.norm(poison)
        return RingInput(quantize(poison, longer, params.modulus_bits))

    deployment = make_deployment(hook=hook)
    result = deployment.run()
    refused = [g for g in result.groups if g.status is GroupStatus.MEAN_REFUSED]
    assert [g.members for g in refused] == [group]
    assert refused[0].mean_refusal is RefusalReason.GROUP_MEAN_ABOVE_CLIP
    assert deployment.audit_reasons(AuditEventKind.GROUP_MEAN_REFUSED) == ["group_mean_above_clip"]
    assert poisoner not in result.participants


def test_the_adaptive_clipping_bits_are_summed_through_the_protocol(
    make_deployment: Callable[..., Deployment],
) -> None:
    short = {NODE_IDS[0], NODE_IDS[3]}

    def hook(node: int, vector: np.ndarray, params: GroupParams) -> np.ndarray:
        scale = CLIP_NORM * (0.5 if node in short else 10.0) / float(np.linalg.norm(vector))
        scaled: np.ndarray = np.multiply(vector, scale, dtype=np.float32)
        return scaled

    deployment = make_deployment(hook=hook)
    result = deployment.run(extra_channel=True)
    count = result.unclipped_count()
    assert (count.count, count.num_clients) == (2, len(NODE_IDS))


def build_model_dimension() -> int:
    """d of the digits MLP."""
    return ModelSpec.from_arrays(model_weights(build_model("mlp", seed=0))).num_parameters


def identities_with(
    federation: FederationPaths, outsider: int, foreign: FederationPaths
) -> IdentityFor:
    """Every node's own identity, but ``outsider`` holds one from another federation."""

    def identity(node: int) -> MemberIdentity:
        if node == outsider:
            return MemberIdentity.load(foreign.clients["x"].root, foreign.crl)
        return MemberIdentity.load(federation.clients[f"node-{node}"].root, federation.crl)

    return identity


# Through the coordinator --------------------------------------------------------------------
def secure_coordinator(
    root: Path,
    federation: FederationPaths,
    node_data: Mapping[int, ClientData],
    **settings: object,
) -> tuple[Coordinator, LoopbackGrid]:
    """A coordinator in secure mode (groups of 3) and the nodes' grid, pinning its run."""
    initial = model_weights(build_model("mlp", seed=0))
    config = CoordinatorConfig(
        num_rounds=2,
        min_nodes=len(NODE_IDS),
        local_epochs=1,
        federated_evaluation=False,
        secure_aggregation=True,
        group_size=3,
        federation_ca=str(federation.ca_certificate),
        federation_crl=str(federation.crl),
        seed=5,
        **settings,  # type: ignore[arg-type]
    )
    ledger = open_ledger(config, initial, state_dir=root / "state", key=SIGNING_KEY, resume=False)
    anchor = root / "trust-anchor.toml"
    write_trust_anchor(anchor, ledger.run_id, [root / "state" / PUBLIC_KEY_FILE])

    def load_identity(context: Context) -> MemberIdentity:
        return MemberIdentity.load(
            federation.clients[f"node-{context.node_id}"].root, federation.crl
        )

    app = build_client_app(lambda context: node_data[context.node_id], load_identity=load_identity)
    grid = LoopbackGrid(app, {node: {"trust-anchor": str(anchor)} for node in NODE_IDS})
    coordinator = Coordinator(config, initial, ledger=ledger, roster_signer=SIGNING_KEY.sign)
    return coordinator, grid


def test_a_secure_coordinator_commits_rounds_from_group_means(
    tmp_path: Path, federation: FederationPaths, node_data: dict[int, ClientData]
) -> None:
    coordinator, grid = secure_coordinator(
        tmp_path, federation, node_data, pipeline="median", num_byzantine=0
    )
    try:
        history = coordinator.run(grid)
        kinds = [record.kind for record in coordinator.ledger.audit.records(1)]
    finally:
        coordinator.ledger.close()
    assert [record.committed for record in history.rounds] == [True, True]
    assert all(record.accepted_nodes == NODE_IDS for record in history.rounds)
    assert kinds.count(AuditEventKind.ROUND_COMPLETED) == 2
    assert AuditEventKind.UPDATE_REFUSED not in kinds
    assert "train" not in grid.stages  # no plaintext training message was ever sent


def test_a_private_secure_coordinator_noises_the_sum_and_steers_c_with_the_summed_bits(
    tmp_path: Path, federation: FederationPaths, node_data: dict[int, ClientData]
) -> None:
    coordinator, grid = secure_coordinator(
        tmp_path,
        federation,
        node_data,
        pipeline="mean",
        num_byzantine=0,
        dp=True,
        dp_noise_multiplier=0.5,
        dp_adaptive_clipping=True,
        dp_clip_norm=0.5,
    )
    try:
        history = coordinator.run(grid)
    finally:
        coordinator.ledger.close()
    assert [record.committed for record in history.rounds] == [True, True]
    privacy = [record.privacy for record in history.rounds]
    assert all(p is not None and p["adaptive_clipping"] == "andrew2021" for p in privacy)
    clip_norms = [p["clip_norm"] for p in privacy if p is not None]
    assert clip_norms[0] != clip_norms[1]  # the summed "unclipped" bits moved C
