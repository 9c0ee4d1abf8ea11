"""Each built-in attack forges (or poisons) exactly what its paper's formula says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ztfl.client.data import ClientData
from ztfl.simulations.attacks import (
    ALittleIsEnough,
    GaussianNoise,
    InnerProductManipulation,
    LabelFlip,
    Scaling,
    SignFlip,
    alie_z_max,
)

# Φ⁻¹(0.65), the standard normal quantile (e.g. scipy.stats.norm.ppf(0.65)).
PHI_INVERSE_0_65 = 0.38532046640756773


@pytest.fixture
def own() -> torch.Tensor:
    """The honestly trained updates of 3 Byzantine clients, d = 8."""
    return torch.randn(3, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def honest() -> torch.Tensor:
    """The updates of 16 honest clients of the same round."""
    return torch.randn(16, 8, generator=torch.Generator().manual_seed(2)) + 0.5


def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# ------------------------------------------------------------------ own-update attacks


def test_sign_flip_sends_minus_scale_times_the_own_update(
    own: torch.Tensor, honest: torch.Tensor
) -> None:
    forged = SignFlip(scale=5.0).forge(own, honest, generator())
    np.testing.assert_allclose(forged.numpy(), -5.0 * own.numpy(), rtol=1e-6)


def test_sign_flip_defaults_to_the_plain_opposite(own: torch.Tensor, honest: torch.Tensor) -> None:
    np.testing.assert_array_equal(SignFlip().forge(own, honest, generator()).numpy(), -own.numpy())


def test_scaling_sends_factor_times_the_own_update(own: torch.Tensor, honest: torch.Tensor) -> None:
    forged = Scaling(factor=10.0).forge(own, honest, generator())
    np.testing.assert_allclose(forged.numpy(), 10.0 * own.numpy(), rtol=1e-6)


def test_gaussian_noise_has_zero_mean_and_the_configured_std() -> None:
    own = torch.zeros(4, 50_000)
    forged = GaussianNoise(std=0.5).forge(own, own[:0], generator())
    assert forged.dtype == own.dtype
    assert tuple(forged.shape) == (4, 50_000)
    assert abs(float(forged.mean())) < 0.01
    assert float(forged.std()) == pytest.approx(0.5, rel=0.01)


def test_gaussian_noise_is_independent_across_byzantine_clients() -> None:
    forged = GaussianNoise(std=1.0).forge(
        torch.zeros(2, 50_000), torch.zeros(0, 50_000), generator()
    )
    correlation = np.corrcoef(forged.numpy())[0, 1]
    assert abs(correlation) < 0.03


def test_gaussian_noise_ignores_the_honest_update_it_replaces(own: torch.Tensor) -> None:
    from_zeros = GaussianNoise().forge(torch.zeros_like(own), own[:0], generator())
    from_own = GaussianNoise().forge(own, own[:0], generator())
    np.testing.assert_array_equal(from_zeros.numpy(), from_own.numpy())


def test_gaussian_noise_is_reproducible_for_a_generator_seed(own: torch.Tensor) -> None:
    first = GaussianNoise().forge(own, own[:0], generator())
    second = GaussianNoise().forge(own, own[:0], generator())
    np.testing.assert_array_equal(first.numpy(), second.numpy())


def test_update_attacks_on_own_updates_do_not_ask_for_honest_updates() -> None:
    assert not SignFlip().needs_honest_updates
    assert not Scaling().needs_honest_updates
    assert not GaussianNoise().needs_honest_updates


# ------------------------------------------------------------------ label flipping


def test_label_flip_maps_each_training_label_y_to_nine_minus_y() -> None:
    features = torch.rand(10, 64, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(10, dtype=torch.int64)
    data = ClientData(features, labels, features[:3], labels[:3])
    poisoned = LabelFlip().poison(data)
    assert poisoned.train_labels.tolist() == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert poisoned.train_labels.dtype == torch.int64


def test_label_flip_leaves_features_and_the_local_test_split_alone() -> None:
    features = torch.rand(10, 64, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(10, dtype=torch.int64)
    data = ClientData(features, labels, features[:3], labels[:3])
    poisoned = LabelFlip().poison(data)
    assert poisoned.train_features is data.train_features
    assert poisoned.test_labels.tolist() == [0, 1, 2]


def test_label_flip_uses_the_configured_number_of_classes() -> None:
    labels = torch.tensor([0, 1, 2], dtype=torch.int64)
    data = ClientData(torch.zeros(3, 64), labels, torch.zeros(0, 64), labels[:0])
    assert LabelFlip(num_classes=3).poison(data).train_labels.tolist() == [2, 1, 0]


# ------------------------------------------------------------------ omniscient attacks


def test_alie_z_max_for_twenty_clients_and_four_byzantine_is_the_0_65_quantile() -> None:
    # Baruch et al. (2019): s = ⌊20/2 + 1⌋ − 4 = 7, z = Φ⁻¹((20 − 7)/20) = Φ⁻¹(0.65).
    assert alie_z_max(20, 4) == pytest.approx(PHI_INVERSE_0_65, abs=1e-12)


def test_alie_z_max_is_zero_when_the_supporters_are_half_the_clients() -> None:
    # n = 10, f = 1: s = 6 − 1 = 5, z = Φ⁻¹(5/10) = 0.
    assert alie_z_max(10, 1) == pytest.approx(0.0, abs=1e-12)


def test_alie_sends_mean_minus_z_times_std_of_the_honest_updates(
    own: torch.Tensor, honest: torch.Tensor
) -> None:
    forged = ALittleIsEnough(z=1.5).forge(own, honest, generator())
    values = honest.numpy().astype(np.float64)
    expected = values.mean(axis=0) - 1.5 * values.std(axis=0, ddof=1)
    for row in forged.numpy():
        np.testing.assert_allclose(row, expected, rtol=1e-5, atol=1e-6)


def test_alie_defaults_to_baruchs_z_max_for_the_rounds_clients(honest: torch.Tensor) -> None:
    # 4 Byzantine + 16 honest = 20 clients: z = Φ⁻¹(0.65), no extra scaling.
    own = torch.zeros(4, 8)
    forged = ALittleIsEnough().forge(own, honest, generator())
    values = honest.numpy().astype(np.float64)
    expected = values.mean(axis=0) - PHI_INVERSE_0_65 * values.std(axis=0, ddof=1)
    np.testing.assert_allclose(forged[0].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_alie_sends_one_update_for_every_byzantine_client(
    own: torch.Tensor, honest: torch.Tensor
) -> None:
    forged = ALittleIsEnough().forge(own, honest, generator())
    assert tuple(forged.shape) == tuple(own.shape)
    assert torch.equal(forged[0], forged[2])


def test_ipm_sends_minus_epsilon_times_the_honest_mean(
    own: torch.Tensor, honest: torch.Tensor
) -> None:
    forged = InnerProductManipulation(epsilon=10.0).forge(own, honest, generator())
    expected = -10.0 * honest.numpy().astype(np.float64).mean(axis=0)
    assert tuple(forged.shape) == tuple(own.shape)
    for row in forged.numpy():
        np.testing.assert_allclose(row, expected, rtol=1e-5, atol=1e-6)


def test_ipm_with_small_epsilon_points_against_the_honest_mean(
    own: torch.Tensor, honest: torch.Tensor
) -> None:
    forged = InnerProductManipulation(epsilon=0.1).forge(own, honest, generator())
    assert float(forged[0] @ honest.mean(dim=0)) < 0


def test_omniscient_attacks_ask_for_the_honest_updates() -> None:
    assert ALittleIsEnough().needs_honest_updates
    assert InnerProductManipulation().needs_honest_updates
