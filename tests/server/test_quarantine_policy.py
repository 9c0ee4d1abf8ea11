"""The quarantine policy: observations from each round's evidence, reputations, decisions, hooks."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from ztfl.aggregation import RefusalReason
from ztfl.aggregation.reputation import TrustRamp
from ztfl.server.config import ConfigError, CoordinatorConfig
from ztfl.server.history import RefusedUpdate, VerificationFailure
from ztfl.server.quarantine import (
    CertificateRevocationHook,
    Decision,
    Incident,
    NodeUnregistrationHook,
    Observation,
    QuarantineConfig,
    QuarantinePolicy,
    Signal,
    round_observations,
)
from ztfl.trust.pki import (
    CertificateRefusalReason,
    CertificateRefused,
    FederationTrust,
    verify_certificate,
)
from ztfl.trust.pki.provisioning import provision_federation
from ztfl.trust.refusal import ModelRefusalReason

NODES = (1, 2, 3, 4, 5, 6)


def bad(server_round: int, trust: float = 0.0) -> Observation:
    return Observation(server_round, Signal.SCORED, trust, 9.0)


def good(server_round: int) -> Observation:
    return Observation(server_round, Signal.SCORED, 1.0, 0.5)


def policy(**settings: object) -> QuarantinePolicy:
    values: dict[str, object] = {"decay": 0.5, "threshold": 0.3, "min_rounds": 3}
    values.update(settings)
    return QuarantinePolicy(QuarantineConfig(**values))  # type: ignore[arg-type]


def run_rounds(policy_: QuarantinePolicy, rounds: int, node: int = 1) -> list[Incident]:
    incidents = []
    for server_round in range(1, rounds + 1):
        incidents += policy_.observe(
            {node: bad(server_round), 2: good(server_round)}, connected=NODES
        )
    return incidents


# ------------------------------------------------------------------ observations


def test_each_kind_of_evidence_becomes_its_signal() -> None:
    observations = round_observations(
        7,
        sampled=(1, 2, 3, 4, 5),
        answered=(1, 2, 3, 4),
        refused=(
            RefusedUpdate(2, RefusalReason.NON_FINITE, "nan"),
            RefusedUpdate(3, RefusalReason.REPLY_ERROR, "client error"),
            RefusedUpdate(4, RefusalReason.REPLY_ERROR, "refused the model"),
        ),
        verification_failures=(
            VerificationFailure(4, ModelRefusalReason.BAD_SIGNATURE, "bad", "train"),
        ),
        scores={1: 3.0},
        ramp=TrustRamp(2.0, 4.0),
    )
    assert {node: item.signal for node, item in observations.items()} == {
        1: Signal.SCORED,
        2: Signal.MALFORMED_UPDATE,
        3: Signal.CLIENT_ERROR,
        4: Signal.REFUSED_MODEL,
        5: Signal.DROPOUT,
    }
    assert observations[1].trust == pytest.approx(0.5)
    assert observations[2].trust == 0.0


def test_an_accepted_update_without_a_score_gives_no_observation() -> None:
    observations = round_observations(
        1,
        sampled=(1, 2),
        answered=(1, 2),
        refused=(),
        verification_failures=(),
        scores=None,
        ramp=TrustRamp(),
    )
    assert observations == {}


def test_replies_from_nodes_that_were_not_sampled_are_no_evidence() -> None:
    observations = round_observations(
        1,
        sampled=(1,),
        answered=(1, 9),
        refused=(RefusedUpdate(9, RefusalReason.UNEXPECTED_SENDER, "not sampled"),),
        verification_failures=(),
        scores={1: 0.0},
        ramp=TrustRamp(),
    )
    assert set(observations) == {1}


# ------------------------------------------------------------------ decisions


def test_a_node_that_keeps_misbehaving_is_quarantined_once_observed_min_rounds() -> None:
    quarantine = policy()
    incidents = run_rounds(quarantine, 3)
    assert [(item.node_id, item.server_round, item.decision) for item in incidents] == [
        (1, 3, Decision.QUARANTINED)
    ]
    assert quarantine.quarantined == {1}
    assert quarantine.eligible(NODES) == [2, 3, 4, 5, 6]


def test_no_node_is_quarantined_before_min_rounds_observations() -> None:
    quarantine = policy(min_rounds=5)
    assert run_rounds(quarantine, 4) == []
    assert quarantine.nodes[1].reputation < 0.3


def test_one_bad_round_among_good_ones_does_not_quarantine() -> None:
    quarantine = policy(decay=0.8, threshold=0.5)
    incidents = []
    for server_round in range(1, 31):
        observation = bad(server_round) if server_round % 5 == 0 else good(server_round)
        incidents += quarantine.observe({1: observation}, connected=NODES)
    assert incidents == []
    assert quarantine.nodes[1].reputation > 0.5


def test_repeated_dropouts_quarantine_a_node() -> None:
    quarantine = QuarantinePolicy(QuarantineConfig())
    decided = []
    for server_round in range(1, 11):
        observations = round_observations(
            server_round,
            sampled=(1, 2),
            answered=(2,),
            refused=(),
            verification_failures=(),
            scores={2: 0.0},
            ramp=quarantine.config.ramp,
        )
        decided += quarantine.observe(observations, connected=NODES)
    assert [(item.node_id, item.server_round) for item in decided] == [(1, 5)]


def test_the_incident_quotes_rounds_scores_and_signals() -> None:
    incident = run_rounds(policy(), 3)[0]
    details = incident.details()
    assert details["node"] == "1"
    assert details["decision"] == "quarantined"
    assert details["rounds"] == [1, 2, 3]
    assert details["scores"] == [9.0, 9.0, 9.0]
    assert details["signals"] == ["scored"] * 3


def test_a_decision_that_would_leave_too_few_nodes_is_deferred() -> None:
    quarantine = QuarantinePolicy(
        QuarantineConfig(decay=0.5, threshold=0.3, min_rounds=3), minimum_population=6
    )
    incidents = run_rounds(quarantine, 3)
    assert [item.decision for item in incidents] == [Decision.DEFERRED]
    assert quarantine.quarantined == frozenset()


def test_with_quarantine_off_reputations_are_kept_but_nobody_is_excluded() -> None:
    quarantine = policy(enabled=False)
    assert run_rounds(quarantine, 6) == []
    assert quarantine.eligible(NODES) == list(NODES)
    assert quarantine.reputations()[1] < 0.3


def test_a_released_node_starts_again_from_full_reputation() -> None:
    quarantine = policy()
    run_rounds(quarantine, 3)
    released = quarantine.release(1, 4)
    assert released is not None
    assert released.decision is Decision.RELEASED
    assert quarantine.quarantined == frozenset()
    assert quarantine.reputations()[1] == 1.0
    assert quarantine.release(1, 4) is None


def test_the_policy_state_survives_a_round_trip() -> None:
    quarantine = policy()
    run_rounds(quarantine, 3)
    quarantine.audit_seen = 17
    restored = policy()
    restored.restore(quarantine.to_state())
    assert restored.quarantined == {1}
    assert restored.reputations() == quarantine.reputations()
    assert restored.nodes[1].evidence == quarantine.nodes[1].evidence
    assert restored.audit_seen == 17


# ------------------------------------------------------------------ hooks


class FailingHook:
    name = "failing"

    def respond(self, incident: Incident) -> str:
        raise RuntimeError("the CA is offline")


def test_a_failing_hook_is_recorded_and_the_node_still_quarantined() -> None:
    quarantine = QuarantinePolicy(
        QuarantineConfig(decay=0.5, threshold=0.3, min_rounds=3), hooks=[FailingHook()]
    )
    incident = run_rounds(quarantine, 3)[0]
    assert incident.decision is Decision.QUARANTINED
    assert [(item.hook, item.ok) for item in incident.hooks] == [("failing", False)]
    assert "the CA is offline" in incident.hooks[0].detail


def test_the_unregistration_hook_unregisters_the_quarantined_node() -> None:
    unregistered: list[int] = []
    quarantine = QuarantinePolicy(
        QuarantineConfig(decay=0.5, threshold=0.3, min_rounds=3),
        hooks=[NodeUnregistrationHook(unregistered.append)],
    )
    run_rounds(quarantine, 3, node=5)
    assert unregistered == [5]


def test_the_revocation_hook_revokes_the_nodes_certificate_in_the_federation_ca(
    tmp_path: Path,
) -> None:
    federation = provision_federation(tmp_path, "monitoring-tests", clients=["alice", "bob"])
    hook = CertificateRevocationHook(federation.authority.root, {1: "alice", 2: "bob"}.get)
    quarantine = QuarantinePolicy(
        QuarantineConfig(decay=0.5, threshold=0.3, min_rounds=3), hooks=[hook]
    )
    incident = run_rounds(quarantine, 3, node=1)[0]
    assert incident.hooks[0].ok, incident.hooks[0].detail
    trust = FederationTrust(
        "monitoring-tests",
        x509.load_pem_x509_certificate(federation.ca_certificate.read_bytes()),
        x509.load_pem_x509_crl(federation.crl.read_bytes()),
    )
    alice = x509.load_pem_x509_certificate(federation.clients["alice"].certificate.read_bytes())
    bob = x509.load_pem_x509_certificate(federation.clients["bob"].certificate.read_bytes())
    with pytest.raises(CertificateRefused) as refused:
        verify_certificate(alice, trust)
    assert refused.value.reason is CertificateRefusalReason.REVOKED
    assert verify_certificate(bob, trust).name == "bob"


def test_the_revocation_hook_fails_for_a_node_without_a_known_certificate(tmp_path: Path) -> None:
    federation = provision_federation(tmp_path, "monitoring-tests", clients=["alice"])
    quarantine = QuarantinePolicy(
        QuarantineConfig(decay=0.5, threshold=0.3, min_rounds=3),
        hooks=[CertificateRevocationHook(federation.authority.root, lambda node: None)],
    )
    incident = run_rounds(quarantine, 3, node=3)[0]
    assert not incident.hooks[0].ok
    assert "no certificate identity" in incident.hooks[0].detail


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("reputation-decay", 1.0),
        ("reputation-decay", -0.1),
        ("quarantine-threshold", 0.0),
        ("quarantine-threshold", 1.0),
        ("quarantine-min-rounds", 0),
    ],
)
def test_quarantine_settings_out_of_range_are_refused_naming_the_key(
    key: str, value: float
) -> None:
    with pytest.raises(ConfigError, match=key):
        CoordinatorConfig.from_run_config({key: value})


def test_quarantine_settings_parse_from_the_run_config() -> None:
    config = CoordinatorConfig.from_run_config(
        {
            "quarantine": False,
            "reputation-decay": 0.9,
            "quarantine-threshold": 0.4,
            "quarantine-min-rounds": 5,
        }
    )
    assert config.quarantine_config() == QuarantineConfig(
        enabled=False, decay=0.9, threshold=0.4, min_rounds=5
    )
