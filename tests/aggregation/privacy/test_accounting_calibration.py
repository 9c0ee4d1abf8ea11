"""Calibration returns the smallest noise multiplier that meets the target ε."""

from __future__ import annotations

import pytest

from ztfl.aggregation.privacy.accounting import AccountantConfig, PrivacyAccountant
from ztfl.aggregation.privacy.calibration import CalibrationError, calibrate_noise_multiplier


@pytest.mark.parametrize(
    "config",
    [
        AccountantConfig("rdp", "poisson", 1.0, 1e-5, sampling_rate=0.01),
        AccountantConfig("pld", "poisson", 1.0, 1e-5, sampling_rate=0.05),
        AccountantConfig("rdp", "fixed_size", 1.0, 1e-5, sample_size=20, population=1000),
    ],
    ids=["rdp-poisson", "pld-poisson", "rdp-fixed-size"],
)
def test_calibrated_noise_meets_the_target_and_one_percent_less_does_not(
    config: AccountantConfig,
) -> None:
    target, rounds = 3.0, 200
    z = calibrate_noise_multiplier(target, rounds, config)

    def epsilon(noise_multiplier: float) -> float:
        settings = {**config.to_dict(), "noise_multiplier": noise_multiplier}
        return PrivacyAccountant(AccountantConfig(**settings)).epsilon_after(rounds)

    assert epsilon(z) <= target
    assert epsilon(z * 0.99) > target


def test_unreachable_target_is_refused() -> None:
    config = AccountantConfig("rdp", "poisson", 1.0, 1e-5, sampling_rate=1.0)
    with pytest.raises(CalibrationError, match="unreachable"):
        calibrate_noise_multiplier(0.01, 1000, config, max_noise_multiplier=10.0)
