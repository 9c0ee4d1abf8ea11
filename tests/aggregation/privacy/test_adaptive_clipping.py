"""Adaptive clip norm (Andrew et al., 2021): the rule, the noise split, state, convergence."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch

from ztfl.aggregation.privacy.adaptive_clipping import (
    AdaptiveClipNorm,
    AdaptiveClippingConfig,
    next_clip_norm,
    noisy_unclipped_fraction,
    update_noise_multiplier,
)
from ztfl.aggregation.privacy.clipping import UnclippedCount, clip_updates
from ztfl.aggregation.privacy.sensitivity import DPConfigurationError

CLIENTS = 100


def _config(**overrides: Any) -> AdaptiveClippingConfig:
    values: dict[str, Any] = {
        "initial_clip_norm": 1.0,
        "count_noise_stddev": CLIENTS / 20,
        "expected_clients": CLIENTS,
        "learning_rate": 0.2,
        "target_unclipped_quantile": 0.5,
    }
    values.update(overrides)
    return AdaptiveClippingConfig(**values)


def _run(config: AdaptiveClippingConfig, seed: int, rounds: int = 80) -> list[float]:
    """Clip norms of each round, for clients with lognormal update norms (median 1, σ = 1)."""
    rng = np.random.default_rng(seed)
    clip_norm = AdaptiveClipNorm(config)
    history = []
    for _ in range(rounds):
        history.append(clip_norm.clip_norm)
        norms = rng.lognormal(mean=0.0, sigma=1.0, size=CLIENTS)
        directions = rng.normal(size=(CLIENTS, 4))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        updates = torch.from_numpy(directions * norms[:, None])
        clipped = clip_updates(updates, clip_norm.clip_norm)
        clip_norm.advance(clipped.unclipped_count(), rng)
    return history


@pytest.mark.parametrize("initial_clip_norm", [0.1, 10.0])
@pytest.mark.parametrize("seed", range(5))
def test_clip_norm_settles_within_ten_percent_of_the_median_norm(
    initial_clip_norm: float, seed: int
) -> None:
    history = _run(_config(initial_clip_norm=initial_clip_norm), seed)
    assert abs(float(np.median(history[-10:])) - 1.0) <= 0.1


@pytest.mark.parametrize("seed", range(3))
def test_clip_norm_tracks_the_target_quantile_of_unclipped_norms(seed: int) -> None:
    # γ = 0.8 leaves 80 % unclipped: the lognormal's 0.8-quantile exp(0.8416) ≈ 2.32. Steering
    # with the clipped fraction instead would settle at the 0.2-quantile, exp(−0.8416) ≈ 0.43.
    history = _run(_config(target_unclipped_quantile=0.8), seed, rounds=120)
    assert abs(float(np.median(history[-10:])) / math.exp(0.8416) - 1.0) <= 0.1


def test_too_many_unclipped_updates_shrink_the_clip_norm() -> None:
    shrunk = next_clip_norm(2.0, 0.9, learning_rate=0.2, target_unclipped_quantile=0.5)
    assert math.isclose(shrunk, 2.0 * math.exp(-0.2 * 0.4))


def test_too_few_unclipped_updates_grow_the_clip_norm() -> None:
    grown = next_clip_norm(2.0, 0.1, learning_rate=0.2, target_unclipped_quantile=0.5)
    assert math.isclose(grown, 2.0 * math.exp(0.2 * 0.4))


def test_the_target_fraction_keeps_the_clip_norm() -> None:
    assert next_clip_norm(2.0, 0.5, learning_rate=0.2, target_unclipped_quantile=0.5) == 2.0


def test_noiseless_fraction_is_the_count_over_the_expected_clients() -> None:
    fraction = noisy_unclipped_fraction(
        UnclippedCount(70, 100),
        count_noise_stddev=0.0,
        expected_clients=100,
        generator=np.random.default_rng(0),
    )
    assert math.isclose(fraction, 0.7)


def test_fraction_centres_the_bits_on_the_fixed_denominator() -> None:
    # (Σ (bᵢ − ½)) / m + ½ with 40 of 40 clients unclipped and m = 100: 20/100 + ½.
    fraction = noisy_unclipped_fraction(
        UnclippedCount(40, 40),
        count_noise_stddev=0.0,
        expected_clients=100,
        generator=np.random.default_rng(0),
    )
    assert math.isclose(fraction, 0.7)


def test_count_noise_comes_from_the_given_generator() -> None:
    def draw(seed: int) -> float:
        return noisy_unclipped_fraction(
            UnclippedCount(50, 100),
            count_noise_stddev=5.0,
            expected_clients=100,
            generator=np.random.default_rng(seed),
        )

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)
    expected_noise = np.random.default_rng(7).normal(0.0, 5.0)
    assert math.isclose(draw(7), 0.5 + expected_noise / 100)


def test_update_noise_multiplier_splits_the_total() -> None:
    z_update = update_noise_multiplier(1.0, 5.0)
    assert math.isclose(z_update, (1.0 - 1.0 / 100) ** -0.5)
    assert math.isclose(z_update**-2 + (2 * 5.0) ** -2, 1.0)


@pytest.mark.parametrize("count_noise_stddev", [0.0, 0.25, 0.5])
def test_count_noise_too_small_for_the_multiplier_is_refused(count_noise_stddev: float) -> None:
    with pytest.raises(DPConfigurationError, match="count_noise_stddev") as raised:
        update_noise_multiplier(1.0, count_noise_stddev)
    assert raised.value.step == "adaptive clipping"


def test_replace_one_doubles_the_count_sensitivity_in_the_split() -> None:
    z_update = update_noise_multiplier(1.0, 5.0, relation="replace_one")
    assert math.isclose(z_update**-2 + 5.0**-2, 1.0)
    with pytest.raises(DPConfigurationError, match="replace_one"):
        update_noise_multiplier(1.0, 1.0, relation="replace_one")


def test_a_non_positive_total_noise_multiplier_is_refused() -> None:
    with pytest.raises(DPConfigurationError, match="noise_multiplier"):
        update_noise_multiplier(0.0, 5.0)


@pytest.mark.parametrize(
    "override",
    [
        {"initial_clip_norm": 0.0},
        {"initial_clip_norm": math.inf},
        {"count_noise_stddev": -1.0},
        {"expected_clients": 0},
        {"learning_rate": 0.0},
        {"target_unclipped_quantile": 0.0},
        {"target_unclipped_quantile": 1.0},
    ],
)
def test_invalid_config_is_refused_when_built(override: dict[str, Any]) -> None:
    (name,) = override
    with pytest.raises(DPConfigurationError, match=name):
        _config(**override)


def test_the_current_round_uses_the_clip_norm_before_advancing() -> None:
    clip_norm = AdaptiveClipNorm(_config(initial_clip_norm=3.0, count_noise_stddev=0.0))
    assert clip_norm.clip_norm == 3.0
    after = clip_norm.advance(UnclippedCount(100, 100), np.random.default_rng(0))
    assert math.isclose(after, 3.0 * math.exp(-0.2 * 0.5))
    assert clip_norm.clip_norm == after
    assert clip_norm.rounds == 1


def test_state_survives_a_json_round_trip() -> None:
    config = _config()
    clip_norm = AdaptiveClipNorm(config)
    rng = np.random.default_rng(1)
    for count in (10, 90, 40):
        clip_norm.advance(UnclippedCount(count, 100), rng)
    resumed = AdaptiveClipNorm.from_state(config, json.loads(json.dumps(clip_norm.state())))
    assert resumed.clip_norm == clip_norm.clip_norm
    assert resumed.rounds == 3
    assert resumed.advance(UnclippedCount(60, 100), np.random.default_rng(2)) == (
        clip_norm.advance(UnclippedCount(60, 100), np.random.default_rng(2))
    )


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"clip_norm": "1.0", "rounds": 0},
        {"clip_norm": 1.0, "rounds": 1.5},
        {"clip_norm": -1.0, "rounds": 0},
        {"clip_norm": 1.0, "rounds": -1},
    ],
)
def test_malformed_state_is_refused(state: dict[str, Any]) -> None:
    with pytest.raises(DPConfigurationError):
        AdaptiveClipNorm.from_state(_config(), state)
