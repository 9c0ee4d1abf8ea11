"""One group's round end to end: the unmasked sum equals the plaintext sum within the
quantization bound with up to k − t dropouts at any stage; beyond that the group aborts
before any unmask request goes out."""

from __future__ import annotations

import numpy as np
import pytest

from tests.aggregation.secagg.secagg_round_driver import MakeGroup, clipped_inputs
from ztfl.aggregation.secagg import (
    ClientStage,
    GroupSetup,
    MaskedInputRequest,
    SecAggRefusalReason,
    ShareKeysRequest,
    UnmaskRequest,
)

# A member silent for one of these messages dropped: before advertising keys, after
# advertising them, after distributing shares, after sending its masked input.
STAGES = {
    "before_key_advertisement": GroupSetup,
    "after_key_advertisement": ShareKeysRequest,
    "after_share_distribution": MaskedInputRequest,
    "after_masked_input": UnmaskRequest,
}


def _dropout_cases() -> list[tuple[int, str, int]]:
    cases: list[tuple[int, str, int]] = []
    for k in (3, 5):
        max_dropouts = k - (k // 2 + 1)
        for stage in STAGES:
            cases.extend((k, stage, dropped) for dropped in sorted({0, 1, max_dropouts}))
    return cases


@pytest.mark.parametrize(("k", "stage", "num_dropped"), _dropout_cases())
def test_unmasked_sum_matches_plaintext_sum_within_quantization_bound(
    make_group: MakeGroup, k: int, stage: str, num_dropped: int
) -> None:
    group = make_group(k)
    members = group.params.members
    inputs = clipped_inputs(members, group.params.vector_length, seed=k)
    dropped = frozenset(members[1 : 1 + num_dropped])  # the middle of the roster order

    outcome = group.run(inputs, silent={STAGES[stage]: dropped})

    assert outcome.aborted is None
    # Members silent only at the unmask stage already sent their masked input: they count.
    expected = (
        members if stage == "after_masked_input" else tuple(m for m in members if m not in dropped)
    )
    assert outcome.survivors == expected
    assert outcome.vector_sum is not None
    assert outcome.extra_sums is not None
    plaintext = np.sum([inputs[m][0].astype(np.float64) for m in expected], axis=0)
    bound = group.params.quantization.sum_error_bound(len(expected))
    assert np.abs(outcome.vector_sum - plaintext).max() < bound
    assert outcome.extra_sums.tolist() == [sum(inputs[m][1][0] for m in expected)]


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stage", list(STAGES)[:3])
def test_more_than_k_minus_t_dropouts_abort_before_any_unmask_request(
    make_group: MakeGroup, k: int, stage: str
) -> None:
    group = make_group(k)
    members = group.params.members
    dropped = frozenset(members[: group.params.max_dropouts + 1])

    outcome = group.run(
        clipped_inputs(members, group.params.vector_length), silent={STAGES[stage]: dropped}
    )

    assert outcome.aborted is SecAggRefusalReason.BELOW_THRESHOLD
    assert outcome.vector_sum is None
    assert outcome.survivors == ()
    assert not any(isinstance(message, UnmaskRequest) for message in group.sent)
    assert not any(client.stage is ClientStage.DONE for client in group.clients.values())


@pytest.mark.parametrize("k", [3, 5])
def test_fewer_than_t_unmask_replies_abort_the_group(make_group: MakeGroup, k: int) -> None:
    group = make_group(k)
    members = group.params.members
    dropped = frozenset(members[: group.params.max_dropouts + 1])

    outcome = group.run(
        clipped_inputs(members, group.params.vector_length),
        silent={UnmaskRequest: dropped},
    )

    assert outcome.aborted is SecAggRefusalReason.BELOW_THRESHOLD
    assert outcome.vector_sum is None


def test_group_mean_divides_the_sum_by_the_survivors(make_group: MakeGroup) -> None:
    group = make_group(5)
    members = group.params.members
    inputs = clipped_inputs(members, group.params.vector_length)

    outcome = group.run(inputs, silent={MaskedInputRequest: frozenset(members[:1])})

    assert outcome.vector_sum is not None
    np.testing.assert_allclose(outcome.vector_mean, outcome.vector_sum / 4)


def test_aborted_group_has_no_mean(make_group: MakeGroup) -> None:
    group = make_group(3)
    members = group.params.members

    outcome = group.run(
        clipped_inputs(members, group.params.vector_length),
        silent={GroupSetup: frozenset(members[:2])},
    )

    with pytest.raises(ValueError, match="aborted"):
        _ = outcome.vector_mean
