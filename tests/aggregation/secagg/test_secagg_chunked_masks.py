"""Masking and quantization walk the update in cache-sized chunks: the result must not depend
on where the chunk boundaries fall."""

from __future__ import annotations

import secrets

import numpy as np

from ztfl.aggregation.secagg import QuantizationParams, quantize
from ztfl.aggregation.secagg.masks import CHUNK_WORDS, add_masks, expand_mask, from_ring

LENGTH = 2 * CHUNK_WORDS + 17  # two full chunks and a short tail


def test_add_masks_across_chunks_equals_each_whole_mask_added_or_subtracted() -> None:
    keys = [(secrets.token_bytes(32), sign) for sign in (1, -1, 1)]
    start = np.arange(LENGTH, dtype=np.uint32)
    accumulator = start.copy()
    add_masks(accumulator, keys)
    expected = start.copy()
    for key, sign in keys:
        mask = expand_mask(key, LENGTH, 32)
        expected = expected + mask if sign == 1 else expected - mask
    np.testing.assert_array_equal(accumulator, expected)


def test_add_masks_of_opposite_signs_cancel_in_a_64_bit_ring() -> None:
    key = secrets.token_bytes(32)
    values = np.arange(LENGTH, dtype=np.uint64)
    masked = values.copy()
    add_masks(masked, [(key, 1), (key, -1)])
    np.testing.assert_array_equal(masked, values)


def test_quantize_across_chunks_rounds_every_coordinate_to_a_neighbouring_integer() -> None:
    rng = np.random.default_rng(3)
    update = rng.standard_normal(LENGTH).astype(np.float32)
    update *= 0.9 / np.linalg.norm(update)
    params = QuantizationParams(1.0, 2.0**20)
    rounded = from_ring(quantize(update, params, 32), 32).astype(np.float64)
    exact = update.astype(np.float64) * params.scale
    assert np.all(rounded >= np.floor(exact))
    assert np.all(rounded <= np.floor(exact) + 1)
    # Both neighbours occur in every chunk: each chunk draws fresh rounding randomness.
    for start in range(0, LENGTH, CHUNK_WORDS):
        piece = slice(start, min(start + CHUNK_WORDS, LENGTH))
        rounded_up = rounded[piece] > np.floor(exact[piece])
        assert rounded_up.any()
        assert not rounded_up.all()
