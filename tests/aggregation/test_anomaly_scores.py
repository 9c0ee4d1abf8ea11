"""Anomaly scores: outliers among the round's own clients score high, honest spread does not."""

from __future__ import annotations

import pytest
import torch

from ztfl.aggregation import InvalidUpdatesError, build_pipeline
from ztfl.aggregation.anomaly import AnomalyConfig, anomaly_scores, update_features

DIMENSION = 200


def honest_round(num_clients: int = 16, *, seed: int = 0, spread: float = 0.6) -> torch.Tensor:
    """Non-IID-like honest updates: a shared direction plus large client-specific parts."""
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn(DIMENSION, generator=generator, dtype=torch.float64)
    own = torch.randn(num_clients, DIMENSION, generator=generator, dtype=torch.float64)
    sizes = 1.0 + 0.3 * torch.rand(num_clients, 1, generator=generator, dtype=torch.float64)
    return sizes * (shared + spread * own)


def robust_centre(updates: torch.Tensor, num_byzantine: int) -> torch.Tensor:
    return build_pipeline("nnm -> trimmed_mean", num_byzantine=num_byzantine)(updates).aggregate


def test_a_sign_flipped_update_scores_far_above_every_honest_one() -> None:
    updates = honest_round()
    updates[3] = -updates[3]
    scores = anomaly_scores(updates, robust_centre(updates, 2)).score
    honest = torch.cat([scores[:3], scores[4:]])
    assert float(scores[3]) > 4.0
    assert float(honest.max()) < 2.0


def test_a_scaled_update_is_an_outlier_by_its_norm() -> None:
    updates = honest_round()
    updates[5] = 10 * updates[5]
    result = anomaly_scores(updates, robust_centre(updates, 2))
    assert float(result.z_norm[5]) > 10.0
    assert int(result.score.argmax()) == 5


def test_honest_clients_of_a_heterogeneous_round_all_score_low() -> None:
    for seed in range(5):
        updates = honest_round(seed=seed, spread=1.5)
        assert float(anomaly_scores(updates, robust_centre(updates, 2)).score.max()) < 4.0


def test_nearly_identical_updates_are_not_turned_into_outliers_by_a_tiny_spread() -> None:
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(DIMENSION, dtype=torch.float64, generator=generator)
    updates = base + 1e-4 * torch.randn(12, DIMENSION, dtype=torch.float64, generator=generator)
    scores = anomaly_scores(updates, updates.mean(dim=0)).score
    assert float(scores.max()) < 1.0


def test_scores_follow_their_rows_when_the_clients_are_reordered() -> None:
    updates = honest_round()
    updates[2] = -3 * updates[2]
    centre = robust_centre(updates, 2)
    order = torch.randperm(updates.shape[0], generator=torch.Generator().manual_seed(4))
    direct = anomaly_scores(updates, centre).score
    permuted = anomaly_scores(updates[order], centre).score
    torch.testing.assert_close(permuted, direct[order])


def test_a_row_the_rule_discarded_gets_the_discard_penalty() -> None:
    updates = honest_round(8)
    centre = updates.mean(dim=0)
    kept = anomaly_scores(updates, centre).score
    discarded = anomaly_scores(updates, centre, selected_rows=[0, 1, 2, 3, 4, 5, 6]).score
    assert float(discarded[7] - kept[7]) == pytest.approx(AnomalyConfig().discard_penalty)
    torch.testing.assert_close(discarded[:7], kept[:7])


def test_features_are_distance_cosine_and_log_norm_against_the_centre() -> None:
    updates = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float64)
    centre = torch.tensor([0.0, 1.0], dtype=torch.float64)
    features = update_features(updates, centre)
    torch.testing.assert_close(
        features.distance, torch.tensor([18.0**0.5, 1.0], dtype=torch.float64)
    )
    torch.testing.assert_close(features.cosine, torch.tensor([0.8, 1.0], dtype=torch.float64))
    torch.testing.assert_close(
        features.log_norm, torch.log(torch.tensor([5.0, 2.0], dtype=torch.float64))
    )


def test_a_centre_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(InvalidUpdatesError, match="centre"):
        anomaly_scores(torch.ones(3, 4), torch.ones(5))


def test_non_finite_updates_are_refused() -> None:
    updates = torch.ones(3, 4)
    updates[1, 2] = float("nan")
    with pytest.raises(InvalidUpdatesError, match="finite"):
        anomaly_scores(updates, torch.ones(4))


def test_a_selected_row_outside_the_matrix_is_refused() -> None:
    with pytest.raises(InvalidUpdatesError, match="selected row"):
        anomaly_scores(torch.ones(3, 4), torch.ones(4), selected_rows=[3])


@pytest.mark.parametrize(
    "settings",
    [
        {"min_cosine_spread": 0.0},
        {"min_relative_distance_spread": -1.0},
        {"min_log_norm_spread": float("nan")},
        {"magnitude_margin": -0.5},
        {"discard_penalty": float("inf")},
    ],
)
def test_scoring_constants_out_of_range_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        AnomalyConfig(**settings)
