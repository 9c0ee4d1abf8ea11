"""Per-round anomaly scores of client updates, relative to the round's robust centre.

Non-IID clients are legitimately far from the centre, so no feature is judged
against a fixed scale: each becomes a robust z-score against the *same round's*
clients (median and 1.4826·MAD, Iglewicz & Hoaglin, 1993), and a client is
anomalous only when it is an outlier among its peers. For client i with update
u_i and centre c (the pipeline's aggregate):

==========  ==============================  =================================
feature     value                           z-score (σ = max(1.4826·MAD, floor))
==========  ==============================  =================================
distance    d_i = ‖u_i − c‖                 (d_i − med d) / σ_d, one-sided (far)
cosine      s_i = cos(u_i, c)               (med s − s_i) / σ_s, one-sided (misaligned)
norm        l_i = ln ‖u_i‖                  |l_i − med l| / σ_l, two-sided
discarded   row i not kept by the rule      adds ``discard_penalty`` to the score
==========  ==============================  =================================

``score_i = max(z_cosine, max(z_distance, z_norm) − magnitude_margin, 0)
+ discard_penalty · discarded_i``.

Direction is the signal that survives non-IID data best: on honest Dirichlet(0.5)
digits the cosine z-scores of honest clients stay small on average, while
sign-flipped or label-flipped updates point away from the centre round after
round. Distance and norm catch magnitude attacks (scaling, noise, large-ε IPM),
whose z-scores are far above the honest ones; ``magnitude_margin`` keeps their
round-to-round noise on honest clients from adding false alarms.

The floors keep a round of near-identical updates (an IID federation, where the
MAD is tiny) from turning small differences into large z-scores. Being discarded
by a selection rule (Krum, Multi-Krum, Bulyan) is weak evidence — such rules drop
honest non-IID clients every round — so it only adds a fixed amount that tips a
client already near the cut-off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .distances import inner_products_with, row_norms
from .errors import InvalidUpdatesError

MAD_TO_SIGMA = 1.4826
"""1 / Φ⁻¹(3/4): makes the MAD a consistent estimator of σ for normal data."""


@dataclass(frozen=True)
class AnomalyConfig:
    """The scoring rule's constants; the defaults are calibrated on honest Dirichlet(0.5) digits
    (docs/monitoring.md)."""

    min_cosine_spread: float = 0.05
    """Floor of σ_s, the cosine similarity's robust spread (cosine is in [−1, 1])."""
    min_relative_distance_spread: float = 0.05
    """Floor of σ_d as a fraction of the median distance."""
    min_log_norm_spread: float = 0.05
    """Floor of σ_l, in natural-log units (0.05 ≈ a 5 % difference in norm)."""
    magnitude_margin: float = 1.0
    """Subtracted from the distance and norm z-scores before they compete with the cosine's."""
    discard_penalty: float = 1.0
    """Added to the score of a client the robust rule left out."""

    def __post_init__(self) -> None:
        for name in ("min_cosine_spread", "min_relative_distance_spread", "min_log_norm_spread"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("magnitude_margin", "discard_penalty"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number ≥ 0, got {value!r}")


@dataclass(frozen=True)
class UpdateFeatures:
    """The raw features of one round's updates, row i belonging to client i."""

    distance: torch.Tensor
    cosine: torch.Tensor
    log_norm: torch.Tensor
    discarded: torch.Tensor
    """Boolean: the robust rule did not keep row i (all False when the rule keeps every row)."""


@dataclass(frozen=True)
class AnomalyScores:
    """Each client's robust z-scores and the combined score (float64, one entry per row)."""

    z_distance: torch.Tensor
    z_cosine: torch.Tensor
    z_norm: torch.Tensor
    discarded: torch.Tensor
    score: torch.Tensor


def update_features(
    updates: torch.Tensor, centre: torch.Tensor, selected_rows: Sequence[int] | None = None
) -> UpdateFeatures:
    """Distance, cosine similarity and log-norm of each row of ``updates`` against ``centre``.

    ``selected_rows``: the rows a selection rule kept (None: every row counts as kept).
    Raises InvalidUpdatesError for a malformed matrix, centre or row index.
    """
    if updates.ndim != 2 or updates.shape[0] == 0:
        raise InvalidUpdatesError(
            f"updates must be a non-empty (n, d) matrix, got {tuple(updates.shape)}"
        )
    if centre.shape != updates.shape[1:]:
        raise InvalidUpdatesError(
            f"centre must have shape ({updates.shape[1]},), got {tuple(centre.shape)}"
        )
    if not bool(torch.isfinite(centre).all()):
        raise InvalidUpdatesError("updates and centre must be finite")
    middle = centre.to(device=updates.device)
    # One pass for the norms and one matrix-vector product, in the matrix's own dtype with
    # float64 results: never a widened copy of the (n, d) matrix, nor of xᵢ − centre.
    try:
        norms = row_norms(updates)
        inner = inner_products_with(updates, middle)
    except InvalidUpdatesError:
        raise InvalidUpdatesError(
            "updates and centre must be finite, with norms within float64"
        ) from None
    centre_64 = middle.to(torch.float64)
    centre_norm = torch.linalg.vector_norm(centre_64)
    tiny = torch.finfo(torch.float64).tiny
    cosine = inner / (norms * centre_norm).clamp_min(tiny)
    squared_distance = (norms.square() - 2.0 * inner + torch.dot(centre_64, centre_64)).clamp_(
        min=0.0
    )
    discarded = torch.zeros(updates.shape[0], dtype=torch.bool, device=norms.device)
    if selected_rows is not None:
        discarded[:] = True
        for row in selected_rows:
            if not 0 <= row < updates.shape[0]:
                raise InvalidUpdatesError(
                    f"selected row {row} is outside 0..{updates.shape[0] - 1}"
                )
            discarded[row] = False
    return UpdateFeatures(
        distance=squared_distance.sqrt(),
        cosine=cosine.clamp(-1.0, 1.0),
        log_norm=torch.log(norms.clamp_min(tiny)),
        discarded=discarded,
    )


def robust_spread(values: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The median of ``values`` and σ = max(1.4826·MAD, ``floor``)."""
    median = values.median()
    mad = (values - median).abs().median()
    return median, (MAD_TO_SIGMA * mad).clamp_min(floor)


def score_features(features: UpdateFeatures, config: AnomalyConfig | None = None) -> AnomalyScores:
    """Combine the features into robust z-scores and one score per client (module docstring)."""
    config = config or AnomalyConfig()
    median_distance = features.distance.median()
    _, distance_sigma = robust_spread(
        features.distance,
        max(config.min_relative_distance_spread * float(median_distance), 1e-12),
    )
    z_distance = ((features.distance - median_distance) / distance_sigma).clamp_min(0.0)
    median_cosine, cosine_sigma = robust_spread(features.cosine, config.min_cosine_spread)
    z_cosine = ((median_cosine - features.cosine) / cosine_sigma).clamp_min(0.0)
    median_log_norm, norm_sigma = robust_spread(features.log_norm, config.min_log_norm_spread)
    z_norm = (features.log_norm - median_log_norm).abs() / norm_sigma
    magnitude = torch.maximum(z_distance, z_norm) - config.magnitude_margin
    combined = torch.maximum(z_cosine, magnitude).clamp_min(0.0)
    score = combined + config.discard_penalty * features.discarded.to(torch.float64)
    return AnomalyScores(z_distance, z_cosine, z_norm, features.discarded, score)


def anomaly_scores(
    updates: torch.Tensor,
    centre: torch.Tensor,
    selected_rows: Sequence[int] | None = None,
    config: AnomalyConfig | None = None,
) -> AnomalyScores:
    """Score every row of ``updates`` against the round's robust ``centre`` (module docstring)."""
    return score_features(update_features(updates, centre, selected_rows), config)
