"""L2 sensitivity of a configured aggregation pipeline, for the Gaussian mechanism.

Neighbouring relation: two rounds differ by adding or removing one client's update (the
relation of DP-FedAvg, McMahan et al., 2018, for Poisson sampling), or by replacing one
(fixed-size sampling; the accountant's ``neighboring_relation``). Every update reaching the
pipeline has L2 norm ≤ C (``clip_updates``); the mean is estimated with a fixed,
data-independent denominator m = expected clients per round (``fixed_denominator_mean``),
never the realised count.

What each step does to the sensitivity (derivations in docs/privacy.md, "Sensitivity"):

* mean: one client adds or removes one row of norm ≤ C from the sum, so Σ xᵢ / m moves by
  ≤ C/m (2C/m when it replaces one). Any pre-aggregation step other than fixed clipping makes
  one client move several rows (ARC rescales others, NNM and bucketing mix them), and client
  weights are reported by the clients; with the mean these are refused
  (``DPConfigurationError``).
* robust rules: the output of every input set of rows in the r-ball lies in a ball of radius
  ρ·r (ρ per rule below), so adding or removing a client moves it by ≤ 2ρr — a crude,
  triangle-inequality bound of order C, not C/m. Every pre-aggregation step keeps rows in the
  r-ball (clipping and ARC only shrink rows, NNM and bucketing average them), so it is allowed.
  The argument compares any two input sets, so it holds for both relations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from ..errors import PipelineConfigError
from ..matrix import check_update_matrix
from ..pipeline import Pipeline
from ..steps import (
    Bulyan,
    CenteredClipping,
    Clip,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    Mean,
    TrimmedMean,
)

NeighbouringRelation = Literal["add_or_remove_one", "replace_one"]
"""Names as in dp-accounting's ``NeighboringRelation``: Poisson sampling is add-or-remove-one,
fixed-size sampling replace-one."""


class DPConfigurationError(PipelineConfigError):
    """A pipeline step (or option) has no usable DP sensitivity bound; ``step`` names it."""

    def __init__(self, step: str, reason: str) -> None:
        self.step = step
        super().__init__(f"differential privacy cannot use {step}: {reason}")


@dataclass(frozen=True)
class Sensitivity:
    """L2 sensitivity of one round's aggregate and how it was derived."""

    l2: float
    derivation: str
    relation: NeighbouringRelation


def fixed_denominator_mean(updates: torch.Tensor, *, expected_clients: int) -> torch.Tensor:
    """Σᵢ xᵢ / m with m = ``expected_clients``, the mean estimate whose sensitivity is C/m.

    Dividing by the realised number of clients instead would make the denominator depend on
    who took part (McMahan et al., 2018, the fixed-denominator estimator).
    """
    check_update_matrix(updates)
    _require_expected_clients(expected_clients)
    return updates.sum(dim=0) / expected_clients


def pipeline_sensitivity(
    pipeline: Pipeline,
    *,
    clip_norm: float,
    expected_clients: int,
    client_weights: bool = False,
    relation: NeighbouringRelation = "add_or_remove_one",
) -> Sensitivity:
    """The L2 sensitivity of ``pipeline`` over updates clipped to ``clip_norm``.

    Raises DPConfigurationError naming the step when no data-independent bound holds.

    Args:
        pipeline: the configured aggregation pipeline.
        clip_norm: the clip norm C every update is clipped to before the pipeline.
        expected_clients: the fixed denominator m of the mean (expected clients per round).
        client_weights: whether rows are weighted by client-reported weights.
        relation: the neighbouring relation the accountant uses.
    """
    if relation not in get_args(NeighbouringRelation):
        raise PipelineConfigError(f"unknown neighbouring relation {relation!r}")
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise PipelineConfigError(f"clip_norm must be finite and > 0, got {clip_norm}")
    _require_expected_clients(expected_clients)
    radius = clip_norm
    steps = [f"every update is clipped to C = {clip_norm:g}"]
    for step in pipeline.pre_steps:
        if isinstance(step, Clip) and step.max_norm < radius:
            radius = step.max_norm
            steps.append(
                f"clip(max_norm={step.max_norm:g}) shrinks the row bound to r = {radius:g}"
            )
    rule = pipeline.rule
    if isinstance(rule, Mean):
        return _mean_sensitivity(
            pipeline, radius, expected_clients, client_weights, relation, steps
        )
    if client_weights and not rule.supports_weights:
        raise DPConfigurationError(f"client weights with {rule.name}", "the rule ignores weights")
    factor, why = _radius_factor(rule, pipeline.num_byzantine)
    for step in pipeline.pre_steps:
        if not isinstance(step, Clip):
            steps.append(f"{step.name} keeps every row in the r-ball ({_KEEPS_BALL[step.name]})")
    if client_weights:
        steps.append("client weights only change which convex combination of rows is taken")
    steps.append(f"{rule.name}: {why}, so its output has norm ≤ ρ·r with ρ = {factor:.6g}")
    l2 = 2.0 * factor * radius
    steps.append(
        f"{_CHANGE[relation]} moves the output by ≤ 2ρr = {l2:.6g} (triangle "
        "inequality; a crude worst-case bound, of order C rather than C/m)"
    )
    return Sensitivity(l2, "; ".join(steps), relation)


_CHANGE = {
    "add_or_remove_one": "adding or removing one client",
    "replace_one": "replacing one client",
}


_KEEPS_BALL = {
    "clip": "it only shrinks rows",
    "arc": "it only shrinks rows",
    "nnm": "each mixed row is an average of rows",
    "bucketing": "each bucket is an average of rows",
}

_REFUSED_BEFORE_MEAN = {
    "arc": (
        "its threshold is the round's (k+1)-th largest norm, so adding or removing one client "
        "rescales up to k other clients' rows and the sum moves by more than C"
    ),
    "nnm": (
        "each mixed row averages n − f clients, so adding or removing one client changes every "
        "row and the sum moves by up to about 2nC/m instead of C/m"
    ),
    "bucketing": (
        "adding or removing one client re-draws every bucket, and the mean of bucket means "
        "weighs clients by their bucket's random size instead of dividing by the fixed m"
    ),
}


def _mean_sensitivity(
    pipeline: Pipeline,
    radius: float,
    expected_clients: int,
    client_weights: bool,
    relation: NeighbouringRelation,
    steps: list[str],
) -> Sensitivity:
    for step in pipeline.pre_steps:
        if not isinstance(step, Clip):
            raise DPConfigurationError(
                f"{step.name} before the mean", _REFUSED_BEFORE_MEAN.get(step.name, "no bound")
            )
    if client_weights:
        raise DPConfigurationError(
            "client weights with the mean",
            "the weights are reported by the clients, so one client can scale its own row "
            "and every other row's share; use uniform weighting",
        )
    if relation == "add_or_remove_one":
        l2 = radius / expected_clients
        change = (
            "one client adds or removes one row of norm ≤ r from Σ xᵢ, "
            f"so Σ xᵢ / m moves by ≤ r/m = {l2:.6g}"
        )
    else:
        l2 = 2 * radius / expected_clients
        change = (
            "replacing one client swaps one row of norm ≤ r for another, "
            f"so Σ xᵢ / m moves by ≤ 2r/m = {l2:.6g}"
        )
    steps.append(f"mean with the fixed denominator m = {expected_clients}: {change}")
    return Sensitivity(l2, "; ".join(steps), relation)


def _radius_factor(rule: object, num_byzantine: int) -> tuple[float, str]:
    """ρ such that the rule's output over rows of norm ≤ r has norm ≤ ρ·r, and why."""
    if isinstance(rule, CoordinateMedian):
        return math.sqrt(2.0), (
            "at least n/2 rows have |xᵢⱼ| ≥ |medianⱼ| in each coordinate j, so "
            "‖median‖² ≤ Σᵢ‖xᵢ‖² / (n/2) ≤ 2r²"
        )
    if isinstance(rule, TrimmedMean):
        if rule.beta == 0.0 or (rule.beta is None and num_byzantine == 0):
            return 1.0, "trimming nothing, it is the mean of the rows"
        return math.sqrt(3.0), (
            "with t trimmed per side, Jensen gives ‖T‖² ≤ n r²/(n − 2t) and each |Tⱼ| is "
            "exceeded by t + 1 rows, giving ‖T‖² ≤ n r²/(t + 1); the smaller of the two is "
            "< 3r² for every n > 2t"
        )
    if isinstance(rule, Krum):
        return 1.0, "it returns one row or an average of rows"
    if isinstance(rule, Bulyan):
        f = num_byzantine
        return math.sqrt((2 * f + 3) / 3), (
            f"it averages β = θ − 2f of θ = n − 2f selected rows per coordinate, so Jensen "
            f"gives ‖T‖² ≤ θ r²/β, largest at the smallest n = 4f + 3: (2f + 3)/3 with f = {f}"
        )
    if isinstance(rule, GeometricMedian):
        return 1.0, (
            "its result is a Weiszfeld iterate (at least one runs), a convex combination of rows"
        )
    if isinstance(rule, CenteredClipping):
        return 1.0, (
            "from the zero centre each iteration returns a convex combination of the previous "
            "centre and the rows"
        )
    name = getattr(rule, "name", type(rule).__name__)
    raise DPConfigurationError(str(name), "no sensitivity bound is derived for this rule")


def _require_expected_clients(expected_clients: int) -> None:
    if expected_clients < 1:
        raise PipelineConfigError(f"expected_clients must be ≥ 1, got {expected_clients}")
