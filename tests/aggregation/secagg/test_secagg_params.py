"""Group parameters are validated when built: unsafe thresholds and rings are refused."""

from __future__ import annotations

import dataclasses

import pytest

from ztfl.aggregation.secagg import (
    GroupParams,
    QuantizationParams,
    SecAggRefusal,
    SecAggRefusalReason,
)

QUANTIZATION = QuantizationParams(clip_norm=1.0, scale=1000.0, num_extra_channels=1)


def _params(members: tuple[str, ...], threshold: int | None = None) -> GroupParams:
    return GroupParams.create(
        run_id="run",
        round=1,
        group_id="g",
        members=members,
        quantization=QUANTIZATION,
        vector_length=10,
        threshold=threshold,
    )


@pytest.mark.parametrize(("k", "threshold"), [(3, 2), (4, 3), (5, 3), (10, 6)])
def test_default_threshold_is_a_strict_majority(k: int, threshold: int) -> None:
    params = _params(tuple(f"m{i}" for i in range(k)))

    assert params.threshold == threshold
    assert params.max_dropouts == k - threshold
    assert params.modulus_bits == QUANTIZATION.required_modulus_bits(k)


@pytest.mark.parametrize(("k", "threshold"), [(4, 2), (5, 2), (3, 1), (3, 4)])
def test_threshold_outside_half_k_to_k_is_refused(k: int, threshold: int) -> None:
    with pytest.raises(SecAggRefusal) as refused:
        _params(tuple(f"m{i}" for i in range(k)), threshold)

    assert refused.value.reason is SecAggRefusalReason.WEAK_PARAMETERS


def test_group_of_two_is_refused() -> None:
    with pytest.raises(SecAggRefusal) as refused:
        _params(("m0", "m1"), 2)

    assert refused.value.reason is SecAggRefusalReason.WEAK_PARAMETERS


def test_ring_too_small_for_the_group_is_refused() -> None:
    params = _params(("m0", "m1", "m2"))

    with pytest.raises(SecAggRefusal) as refused:
        dataclasses.replace(params, modulus_bits=params.modulus_bits - 1)

    assert refused.value.reason is SecAggRefusalReason.WEAK_PARAMETERS


def test_duplicate_members_are_refused() -> None:
    with pytest.raises(SecAggRefusal) as refused:
        _params(("m0", "m1", "m0"))

    assert refused.value.reason is SecAggRefusalReason.MALFORMED


def test_fingerprint_changes_with_every_parameter() -> None:
    params = _params(("m0", "m1", "m2"))
    variants = [
        dataclasses.replace(params, run_id="other"),
        dataclasses.replace(params, round=2),
        dataclasses.replace(params, group_id="h"),
        dataclasses.replace(params, members=("m0", "m2", "m1")),
        dataclasses.replace(params, threshold=3),
        dataclasses.replace(params, modulus_bits=params.modulus_bits + 1),
        dataclasses.replace(params, vector_length=11),
        dataclasses.replace(params, quantization=dataclasses.replace(QUANTIZATION, scale=999.0)),
    ]

    fingerprints = {params.fingerprint()} | {variant.fingerprint() for variant in variants}

    assert len(fingerprints) == len(variants) + 1
