"""A client refuses a round weaker than its local privacy policy, and clips its own update."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Message

from ztfl.client import protocol
from ztfl.client.app import ClientRefusal, clip_update, handle_train
from ztfl.client.data import ClientData
from ztfl.client.policy import PolicyError, PrivacyPolicy, RoundPrivacy

RoundMessage = Callable[..., Message]

DP_ROUND = RoundPrivacy(
    dp=True,
    clip_norm=1.0,
    noise_multiplier=1.0,
    delta=1e-5,
    epsilon_spent=0.5,
    epsilon_budget=4.0,
    sampling_rate=0.5,
    accountant="rdp",
)


def with_privacy(message: Message, privacy: RoundPrivacy) -> Message:
    message.content[protocol.PRIVACY_KEY] = privacy.to_record()
    return message


def refusal(message: Message, data: ClientData, policy: PrivacyPolicy) -> ClientRefusal:
    with pytest.raises(ClientRefusal) as caught:
        handle_train(message, data, policy=policy)
    return caught.value


def test_a_node_that_requires_dp_refuses_a_round_without_it_and_says_why(
    round_message: RoundMessage, client_data: ClientData
) -> None:
    refused = refusal(round_message(), client_data, PrivacyPolicy(require_dp=True))
    assert refused.code is protocol.ClientErrorCode.POLICY_FLOOR
    assert "no differential privacy" in refused.reason


def test_a_limit_on_a_dp_setting_implies_that_dp_is_required(
    round_message: RoundMessage, client_data: ClientData
) -> None:
    refused = refusal(
        with_privacy(round_message(), RoundPrivacy(dp=False)),
        client_data,
        PrivacyPolicy(max_clip_norm=2.0),
    )
    assert refused.code is protocol.ClientErrorCode.POLICY_FLOOR


@pytest.mark.parametrize(
    ("policy", "round_privacy", "why"),
    [
        (PrivacyPolicy(max_clip_norm=0.5), DP_ROUND, "clip norm 1 is above"),
        (PrivacyPolicy(min_noise_multiplier=1.5), DP_ROUND, "noise multiplier 1 is below"),
        (PrivacyPolicy(max_delta=1e-6), DP_ROUND, "δ 1e-05 is above"),
        (PrivacyPolicy(max_epsilon=2.0), DP_ROUND, "ε budget 4 is above"),
        (
            PrivacyPolicy(max_epsilon=8.0),
            RoundPrivacy(**{**DP_ROUND.__dict__, "epsilon_budget": None}),
            "no ε budget",
        ),
        (
            PrivacyPolicy(max_epsilon=8.0),
            RoundPrivacy(**{**DP_ROUND.__dict__, "epsilon_budget": 10.0, "epsilon_spent": 9.0}),
            "ε budget 10 is above",
        ),
    ],
    ids=["clip-norm", "noise", "delta", "budget", "no-budget", "spent"],
)
def test_a_dp_round_weaker_than_the_policy_is_refused_naming_the_setting(
    round_message: RoundMessage,
    client_data: ClientData,
    policy: PrivacyPolicy,
    round_privacy: RoundPrivacy,
    why: str,
) -> None:
    refused = refusal(with_privacy(round_message(), round_privacy), client_data, policy)
    assert refused.code is protocol.ClientErrorCode.POLICY_FLOOR
    assert why in refused.reason


def test_a_round_that_meets_the_policy_trains(
    round_message: RoundMessage, client_data: ClientData
) -> None:
    policy = PrivacyPolicy(
        require_dp=True, max_clip_norm=1.0, max_epsilon=4.0, min_noise_multiplier=1.0
    )
    reply = handle_train(with_privacy(round_message(), DP_ROUND), client_data, policy=policy)
    assert protocol.UPDATE_KEY in reply.content.array_records


def test_a_dp_round_with_an_unreadable_setting_is_refused(
    round_message: RoundMessage, client_data: ClientData
) -> None:
    message = with_privacy(round_message(), DP_ROUND)
    message.content[protocol.PRIVACY_KEY][protocol.NOISE_MULTIPLIER] = "lots"  # type: ignore[assignment]
    refused = refusal(message, client_data, PrivacyPolicy())
    assert refused.code is protocol.ClientErrorCode.POLICY_FLOOR
    assert "not a finite number" in refused.reason


def test_a_malformed_policy_in_the_node_config_is_an_error_naming_the_key() -> None:
    with pytest.raises(PolicyError, match="max-clip-norm"):
        PrivacyPolicy.from_node_config({"max-clip-norm": "one"})
    with pytest.raises(PolicyError, match="require-dp"):
        PrivacyPolicy.from_node_config({"require-dp": "yes"})
    with pytest.raises(PolicyError, match="max-epsilon"):
        PrivacyPolicy.from_node_config({"max-epsilon": -1.0})


def test_the_node_config_policy_reads_every_limit() -> None:
    policy = PrivacyPolicy.from_node_config(
        {
            "require-dp": True,
            "max-clip-norm": 2,
            "max-epsilon": 8.0,
            "min-noise-multiplier": 0.8,
            "max-delta": 1e-5,
        }
    )
    assert policy == PrivacyPolicy(True, 2.0, 8.0, 0.8, 1e-5)


def test_in_a_dp_round_the_client_clips_its_update_and_reports_the_unclipped_bit(
    round_message: RoundMessage, client_data: ClientData
) -> None:
    tiny = RoundPrivacy(**{**DP_ROUND.__dict__, "clip_norm": 1e-3})
    reply = handle_train(with_privacy(round_message(), tiny), client_data)
    update = reply.content.array_records[protocol.UPDATE_KEY]
    norm = np.sqrt(sum(float(np.sum(a.numpy().astype(np.float64) ** 2)) for a in update.values()))
    assert norm == pytest.approx(1e-3, rel=1e-5)
    metrics = reply.content.metric_records[protocol.METRICS_KEY]
    assert metrics[protocol.UNCLIPPED] == 0
    # Per-client figures computed from private data are not released in a DP round.
    assert protocol.TRAIN_LOSS not in metrics
    assert protocol.TRAIN_ACCURACY not in metrics


def test_an_update_within_the_clip_norm_is_left_unchanged_and_marked_unclipped() -> None:
    update = {"w": np.array([0.3, 0.4], dtype=np.float32)}
    clipped, unclipped = clip_update(update, 1.0)
    assert unclipped
    np.testing.assert_array_equal(clipped["w"], update["w"])
    clipped, unclipped = clip_update(update, 0.25)
    assert not unclipped
    np.testing.assert_allclose(clipped["w"], [0.15, 0.2], rtol=1e-6)
    assert clipped["w"].dtype == np.float32
