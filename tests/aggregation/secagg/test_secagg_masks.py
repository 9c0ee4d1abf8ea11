"""Masks come from a cryptographic keystream of the whole 256-bit key (no 32-bit seed), and
masked inputs look uniform modulo 2^b."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

from tests.aggregation.secagg.secagg_round_driver import Group, MakeGroup, answer
from ztfl.aggregation.secagg import MaskedInput, MaskedInputRequest, ShareKeysRequest
from ztfl.aggregation.secagg.masks import expand_mask, from_ring, ring_dtype


def _xor_fold(key: bytes) -> int:
    fold = 0
    for offset in range(0, len(key), 4):
        fold ^= int.from_bytes(key[offset : offset + 4], "little")
    return fold


def _keys_agreeing_on_32_bit_folds() -> tuple[bytes, bytes]:
    """Two different keys with the same low 32 bits and the same XOR fold of their words."""
    first = np.random.default_rng(11).bytes(32)
    delta = 0x9E3779B9
    words = [int.from_bytes(first[i : i + 4], "little") for i in range(0, 32, 4)]
    words[1] ^= delta  # changing two words by the same delta keeps the XOR fold
    words[2] ^= delta
    second = b"".join(word.to_bytes(4, "little") for word in words)
    return first, second


def test_keys_agreeing_on_32_bit_folds_give_different_masks() -> None:
    first, second = _keys_agreeing_on_32_bit_folds()
    assert first != second
    assert first[:4] == second[:4]
    assert _xor_fold(first) == _xor_fold(second)

    mask_a = expand_mask(first, 10_000, 32)
    mask_b = expand_mask(second, 10_000, 32)

    # Independent uniform 32-bit words agree with probability 2^-32 each.
    assert np.count_nonzero(mask_a == mask_b) <= 1


def test_flower_masks_collide_on_the_same_keys() -> None:
    # The contrast that motivates the keystream: Flower's SecAgg+ seeds its generator with the
    # XOR fold, so the same two keys give Flower identical masks.
    first, second = _keys_agreeing_on_32_bit_folds()

    flower_a = pseudo_rand_gen(first, 1 << 31, [(1000,)])[0]
    flower_b = pseudo_rand_gen(second, 1 << 31, [(1000,)])[0]

    assert np.array_equal(flower_a, flower_b)
    assert not np.array_equal(expand_mask(first, 1000, 31), expand_mask(second, 1000, 31))


@pytest.mark.parametrize("bits", [7, 16, 31, 32, 33, 62])
def test_masks_lie_in_the_ring(bits: int) -> None:
    mask = expand_mask(bytes(range(32)), 4096, bits)

    assert mask.dtype == ring_dtype(bits)
    assert int(mask.max()) < 1 << bits
    assert int(mask.max()) >= 1 << (bits - 1)  # the top bit is used (fails with p ≈ 2^-4096)


def _chi_square_threshold(degrees_of_freedom: int) -> float:
    """Wilson–Hilferty upper quantile of χ² at p = 1e-6 (z = 4.753).

    The masks are drawn from the OS, not seeded, so a correct implementation fails each use
    of this threshold with probability 1e-6; a wrong one (an unmasked or biased vector) lands
    far above it (see ``test_the_uniformity_test_rejects_an_unmasked_input``).
    """
    k = degrees_of_freedom
    return k * (1 - 2 / (9 * k) + 4.753 * math.sqrt(2 / (9 * k))) ** 3


def _chi_square_byte(values: np.ndarray, shift: int) -> float:
    counts = np.bincount(((values >> shift) & 0xFF).astype(np.int64), minlength=256)
    expected = values.size / 256
    return float(((counts - expected) ** 2 / expected).sum())


def _masked_inputs(group: Group, update: np.ndarray) -> list[np.ndarray]:
    share_requests = group.server.collect(answer(group, group.server.start()))
    assert all(isinstance(r, ShareKeysRequest) for r in share_requests.values())
    mask_requests = group.server.collect(answer(group, share_requests))
    assert all(isinstance(r, MaskedInputRequest) for r in mask_requests.values())
    inputs = {m: (update, [1]) for m in group.params.members}
    return [r.values for r in answer(group, mask_requests, inputs) if isinstance(r, MaskedInput)]


def test_masked_inputs_pass_a_chi_square_uniformity_test(make_group: MakeGroup) -> None:
    group = make_group(3, vector_length=1 << 16)
    bits = group.params.modulus_bits
    update = np.zeros(group.params.vector_length)  # the least random input there is

    for masked in _masked_inputs(group, update):
        for shift in (0, bits - 8):  # lowest and highest byte of each ring element
            assert _chi_square_byte(masked, shift) < _chi_square_threshold(255)


def test_the_uniformity_test_rejects_an_unmasked_input() -> None:
    quantized = np.zeros(1 << 16, dtype=np.uint32)
    quantized[::3] = 5  # what a small quantized update looks like without masks

    assert _chi_square_byte(quantized, 0) > 100 * _chi_square_threshold(255)


def test_masked_input_reveals_nothing_by_its_sign(make_group: MakeGroup) -> None:
    # A large positive update masked: the signed reading is negative about half the time.
    group = make_group(3, vector_length=1 << 14)
    update = np.full(group.params.vector_length, 1.0 / math.sqrt(1 << 14))

    masked = _masked_inputs(group, update)[0]
    negative = np.count_nonzero(from_ring(masked, group.params.modulus_bits) < 0) / masked.size

    assert abs(negative - 0.5) < 6 * 0.5 / math.sqrt(masked.size)
