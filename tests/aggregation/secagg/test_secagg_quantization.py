"""Fixed-point quantization: the group sum's error bound, no wrap at the worst case, unbiased
stochastic rounding, and the choice of b."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ztfl.aggregation.secagg import (
    QuantizationParams,
    SecAggRefusal,
    SecAggRefusalReason,
    dequantize_sum,
    quantize,
    scale_for_modulus_bits,
)
from ztfl.aggregation.secagg.masks import from_ring, ring_dtype


def _group_sum(
    updates: list[np.ndarray], params: QuantizationParams, modulus_bits: int
) -> np.ndarray:
    total = np.zeros(updates[0].size, dtype=ring_dtype(modulus_bits))
    for update in updates:
        total += quantize(update, params, modulus_bits)
    total &= np.array((1 << modulus_bits) - 1, dtype=total.dtype)
    return dequantize_sum(total, params, modulus_bits)[0]


@pytest.mark.parametrize("k", [3, 5, 10])
@pytest.mark.parametrize("scale", [10.0, 1000.0, 2.0**20])
def test_group_sum_error_stays_below_k_over_scale(k: int, scale: float) -> None:
    params = QuantizationParams(clip_norm=2.0, scale=scale)
    bits = params.required_modulus_bits(k)
    rng = np.random.default_rng(k)
    updates = []
    for _ in range(k):
        update = rng.standard_normal(4096)
        updates.append(update * rng.uniform(0, 2.0) / np.linalg.norm(update))

    error = np.abs(_group_sum(updates, params, bits) - np.sum(updates, axis=0))

    assert error.max() < params.sum_error_bound(k) == k / scale


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_k_members_at_norm_c_on_one_coordinate_do_not_wrap(k: int, sign: float) -> None:
    params = QuantizationParams(clip_norm=1.5, scale=scale_for_modulus_bits(1.5, k))
    bits = params.required_modulus_bits(k)
    worst = np.zeros(8)
    worst[0] = sign * 1.5  # all of the norm on one coordinate: the largest |x_i|

    total = _group_sum([worst] * k, params, bits)

    assert bits <= 32
    assert total[0] == pytest.approx(sign * 1.5 * k, abs=k / params.scale)


def test_one_bit_fewer_than_the_formula_wraps() -> None:
    k = 5
    params = QuantizationParams(clip_norm=1.0, scale=1000.0)
    bits = params.required_modulus_bits(k)
    worst = np.zeros(4)
    worst[0] = 1.0

    total = _group_sum([worst] * k, params, bits - 1)

    assert total[0] < 0  # k · M spilled into the sign bit


def test_modulus_bits_follow_the_formula() -> None:
    params = QuantizationParams(clip_norm=1.0, scale=1000.0, extra_channel_bound=1)

    assert params.coordinate_bound == 1000
    assert params.required_modulus_bits(5) == (5 * 1000).bit_length() + 1 == 14


@pytest.mark.parametrize("k", [3, 5, 10, 50])
def test_scale_for_32_bits_fits_32_bits(k: int) -> None:
    scale = scale_for_modulus_bits(1.0, k)

    assert QuantizationParams(1.0, scale).required_modulus_bits(k) == 32


def test_stochastic_rounding_is_unbiased() -> None:
    # Fixed test inputs; the rounding draws come from the OS. Each coordinate's error has
    # mean 0 and standard deviation ≤ 1/2 unit, so the mean over n coordinates lies within
    # 6 · 0.5 / √n of 0 except with probability ≈ 2e-9.
    n = 400_000
    params = QuantizationParams(clip_norm=1.0, scale=1000.0)
    rng = np.random.default_rng(7)
    update = rng.uniform(-1, 1, n) / math.sqrt(n)
    rounded = from_ring(quantize(update, params, 32), 32).astype(np.float64)

    errors = rounded - update * params.scale

    assert np.abs(errors).max() < 1
    assert abs(errors.mean()) < 6 * 0.5 / math.sqrt(n)


def test_rounding_up_happens_as_often_as_the_fraction() -> None:
    n = 200_000
    update = np.full(n, 0.3 / math.sqrt(n))  # norm 0.3 ≤ C
    params = QuantizationParams(clip_norm=1.0, scale=math.sqrt(n))  # x · scale = 0.3

    rounded = quantize(update, params, 16).astype(np.float64)

    assert set(np.unique(rounded)) <= {0.0, 1.0}
    assert abs(rounded.mean() - 0.3) < 6 * math.sqrt(0.3 * 0.7 / n)


def test_two_quantizations_of_one_update_draw_fresh_randomness() -> None:
    params = QuantizationParams(clip_norm=1.0, scale=10.0)
    update = np.full(10_000, 0.005)  # x · scale = 0.05: rounding is random

    assert not np.array_equal(quantize(update, params, 16), quantize(update, params, 16))


def test_torch_and_numpy_updates_quantize_alike() -> None:
    params = QuantizationParams(clip_norm=1.0, scale=100.0)
    update = torch.tensor([0.5, -0.25, 0.0], dtype=torch.float32)
    key = bytes(32)

    from_torch = quantize(update, params, 16, rounding_key=key)
    from_numpy = quantize(update.numpy(), params, 16, rounding_key=key)

    assert np.array_equal(from_torch, from_numpy)
    assert dequantize_sum(from_torch, params, 16)[0].tolist() == [0.5, -0.25, 0.0]


def test_extra_channels_are_appended_and_summed_exactly() -> None:
    params = QuantizationParams(
        clip_norm=1.0, scale=100.0, num_extra_channels=2, extra_channel_bound=3
    )
    bits = params.required_modulus_bits(3)
    total = np.zeros(4, dtype=ring_dtype(bits))
    for extras in ([1, -3], [0, 2], [1, 3]):
        total += quantize(np.array([0.1, 0.2]), params, bits, extras=extras)
    total &= np.array((1 << bits) - 1, dtype=total.dtype)

    vector, extra_sums = dequantize_sum(total, params, bits)

    assert extra_sums.tolist() == [2, 2]
    assert vector == pytest.approx([0.3, 0.6], abs=3 / 100)


@pytest.mark.parametrize(
    ("update", "extras"),
    [
        (np.array([0.8, 0.8]), [1]),  # norm 1.13 > C
        (np.array([np.nan, 0.0]), [1]),
        (np.array([np.inf, 0.0]), [1]),
        (np.zeros((2, 2)), [1]),
        (np.array([0.1, 0.1]), [2]),  # above the extra bound
        (np.array([0.1, 0.1]), []),  # missing the extra channel
        (np.array([0.1, 0.1]), [True]),
    ],
)
def test_bad_inputs_are_refused_as_malformed(update: np.ndarray, extras: list[int]) -> None:
    params = QuantizationParams(clip_norm=1.0, scale=100.0, num_extra_channels=1)

    with pytest.raises(SecAggRefusal) as refused:
        quantize(update, params, 16, extras=extras)

    assert refused.value.reason is SecAggRefusalReason.MALFORMED


def test_update_clipped_in_float32_just_above_c_is_accepted_and_clamped() -> None:
    params = QuantizationParams(clip_norm=1.0, scale=1000.0)
    update = np.array([1.0 + 1e-7, 0.0])

    rounded = from_ring(quantize(update, params, 16), 16)

    assert rounded[0] == params.coordinate_bound
