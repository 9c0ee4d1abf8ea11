"""Secure Gaussian noise: cipher-keyed generator, replay, moments, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from randomgen import ChaCha  # type: ignore[import-untyped]

from ztfl.aggregation.privacy.noise import gaussian_noise, secure_generator

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


def test_generator_is_built_on_the_chacha_cipher() -> None:
    assert isinstance(secure_generator().bit_generator, ChaCha)


def test_keyed_replay_is_deterministic() -> None:
    first = gaussian_noise((1000,), 1.0, generator=secure_generator(KEY_A))
    second = gaussian_noise((1000,), 1.0, generator=secure_generator(KEY_A))
    assert torch.equal(first, second)


def test_distinct_keys_give_different_noise() -> None:
    first = gaussian_noise((1000,), 1.0, generator=secure_generator(KEY_A))
    second = gaussian_noise((1000,), 1.0, generator=secure_generator(KEY_B))
    assert not torch.equal(first, second)


def test_unkeyed_generators_are_freshly_keyed() -> None:
    first = gaussian_noise((1000,), 1.0, generator=secure_generator())
    second = gaussian_noise((1000,), 1.0, generator=secure_generator())
    assert not torch.equal(first, second)


def test_moments_match_the_requested_std_on_a_million_samples() -> None:
    std = 2.5
    noise = gaussian_noise(
        (1_000_000,), std, generator=secure_generator(KEY_A), dtype=torch.float64
    )
    # Standard errors: std / sqrt(n) = 0.0025 for the mean, std / sqrt(2n) ≈ 0.0018 for the std.
    assert abs(noise.mean().item()) < 5 * std / math.sqrt(1_000_000)
    assert abs(noise.std().item() - std) < 5 * std / math.sqrt(2_000_000)


def test_noise_has_the_requested_shape_and_dtype() -> None:
    noise = gaussian_noise((3, 4), 1.0, generator=secure_generator(KEY_A))
    assert noise.shape == (3, 4)
    assert noise.dtype == torch.float32


def test_float32_noise_is_the_float64_sample_rounded() -> None:
    wide = gaussian_noise((100,), 1.0, generator=secure_generator(KEY_A), dtype=torch.float64)
    narrow = gaussian_noise((100,), 1.0, generator=secure_generator(KEY_A), dtype=torch.float32)
    assert torch.equal(narrow, wide.to(torch.float32))


def test_zero_std_gives_zero_noise() -> None:
    noise = gaussian_noise((10,), 0.0, generator=secure_generator(KEY_A))
    assert torch.count_nonzero(noise) == 0


@pytest.mark.parametrize("std", [-1.0, math.nan, math.inf])
def test_refuses_negative_or_non_finite_std(std: float) -> None:
    with pytest.raises(ValueError, match="std"):
        gaussian_noise((10,), std, generator=secure_generator(KEY_A))


def test_refuses_a_generator_not_built_on_the_cipher() -> None:
    with pytest.raises(TypeError, match="ChaCha"):
        gaussian_noise((10,), 1.0, generator=np.random.default_rng(0))


@pytest.mark.parametrize("seed", [b"short", bytes(33), "x" * 32])
def test_refuses_a_key_that_is_not_32_bytes(seed: object) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        secure_generator(seed)  # type: ignore[arg-type]
