"""The named steps a pipeline is built from, each with its tolerance requirement.

A pre-aggregation step turns the current rows into new rows (a linear map on a
``RowComposition``); the final rule turns rows into one aggregate. Every step
states the bound it needs on (n, f) so a pipeline is checked before it runs.
The registry at the bottom is what configuration strings name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

from .composition import RowComposition
from .errors import InvalidUpdatesError, PipelineConfigError, ToleranceError
from .kernels import column_mean_around_median, column_median, column_trimmed_mean
from .preaggregation.bucketing import bucket_matrix
from .preaggregation.clipping import arc_factors, clip_factors
from .preaggregation.nnm import nnm_mixing_matrix
from .rules.bulyan import check_bulyan_tolerance, select_bulyan_rows
from .rules.centered_clipping import centered_clipping
from .rules.geometric_median import geometric_median
from .rules.krum import check_krum_tolerance, krum_scores

ParamValue = int | float | str | bool


@dataclass(frozen=True)
class AggregationResult:
    """The aggregate and what the rule did, for the audit trail and monitoring.

    ``num_inputs`` counts the updates aggregated. ``selected_rows`` lists the rows a
    selection rule (Krum, Multi-Krum, Bulyan) kept — rows of the rule's input,
    which are the clients' rows unless bucketing regrouped them
    (``Pipeline.preserves_rows``); None for rules that use every row.
    """

    aggregate: torch.Tensor
    num_inputs: int
    selected_rows: tuple[int, ...] | None = None


class PreAggregationStep(Protocol):
    """A step that maps n rows to ``output_rows(n)`` rows."""

    @property
    def name(self) -> str:
        """Registry name."""

    def check(self, num_rows: int, num_byzantine: int) -> None:
        """Raise ToleranceError when the step cannot run on (n, f)."""

    def output_rows(self, num_rows: int) -> int:
        """How many rows the step hands on."""

    def apply(
        self, rows: RowComposition, num_byzantine: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Compose the step's linear map onto ``rows`` and return that map."""

    def propagate_weights(
        self, step_map: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor | None:
        """Client weights of the output rows: unchanged for row-preserving steps."""


class FinalRule(Protocol):
    """A rule that turns rows into one aggregate."""

    @property
    def name(self) -> str:
        """Registry name."""

    @property
    def supports_weights(self) -> bool:
        """Whether the rule uses client weights."""

    def check(self, num_rows: int, num_byzantine: int) -> None:
        """Raise ToleranceError when the rule cannot run on (n, f)."""

    def aggregate(
        self, rows: RowComposition, weights: torch.Tensor | None, num_byzantine: int
    ) -> AggregationResult:
        """Aggregate the current rows."""


def _require_less_than_half(name: str, num_rows: int, num_byzantine: int) -> None:
    if num_byzantine < 0 or 2 * num_byzantine >= num_rows:
        raise ToleranceError(f"{name} needs n > 2f, got n={num_rows}, f={num_byzantine}")


# ------------------------------------------------------------------ pre-aggregation


@dataclass(frozen=True)
class Clip:
    """Fixed L2 clipping to ``max_norm``."""

    max_norm: float
    name: str = "clip"

    def __post_init__(self) -> None:
        if not self.max_norm > 0:
            raise PipelineConfigError(f"clip needs max_norm > 0, got {self.max_norm}")

    def check(self, num_rows: int, num_byzantine: int) -> None:
        """Clipping bounds every row; it needs nothing of (n, f)."""

    def output_rows(self, num_rows: int) -> int:
        return num_rows

    def apply(
        self, rows: RowComposition, num_byzantine: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        step_map = torch.diag(clip_factors(rows.norms(), self.max_norm))
        rows.apply(step_map, diagonal=True)
        return step_map

    def propagate_weights(
        self, step_map: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor | None:
        return weights


@dataclass(frozen=True)
class AdaptiveRobustClip:
    """ARC (Allouah et al., 2024)."""

    name: str = "arc"

    def check(self, num_rows: int, num_byzantine: int) -> None:
        _require_less_than_half(self.name, num_rows, num_byzantine)

    def output_rows(self, num_rows: int) -> int:
        return num_rows

    def apply(
        self, rows: RowComposition, num_byzantine: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        step_map = torch.diag(arc_factors(rows.norms(), num_byzantine=num_byzantine))
        rows.apply(step_map, diagonal=True)
        return step_map

    def propagate_weights(
        self, step_map: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor | None:
        return weights


@dataclass(frozen=True)
class NearestNeighbourMixing:
    """NNM (Allouah et al., 2023)."""

    name: str = "nnm"

    def check(self, num_rows: int, num_byzantine: int) -> None:
        _require_less_than_half(self.name, num_rows, num_byzantine)

    def output_rows(self, num_rows: int) -> int:
        return num_rows

    def apply(
        self, rows: RowComposition, num_byzantine: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        step_map = nnm_mixing_matrix(rows.squared_distances(), num_byzantine=num_byzantine)
        rows.apply(step_map)
        return step_map

    def propagate_weights(
        self, step_map: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor | None:
        return weights


@dataclass(frozen=True)
class Bucketing:
    """Bucketing (Karimireddy et al., 2022) with buckets of ``bucket_size`` rows."""

    bucket_size: int = 2
    name: str = "bucketing"

    def __post_init__(self) -> None:
        if self.bucket_size < 1:
            raise PipelineConfigError(f"bucketing needs bucket_size ≥ 1, got {self.bucket_size}")

    def check(self, num_rows: int, num_byzantine: int) -> None:
        """Each Byzantine row can taint its own bucket; the next step checks (⌈n/s⌉, f)."""

    def output_rows(self, num_rows: int) -> int:
        return math.ceil(num_rows / self.bucket_size)

    def apply(
        self, rows: RowComposition, num_byzantine: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        averaging = bucket_matrix(rows.num_rows, self.bucket_size, generator=generator)
        rows.apply(averaging)
        return averaging

    def propagate_weights(
        self, step_map: torch.Tensor, weights: torch.Tensor | None
    ) -> torch.Tensor | None:
        """A bucket weighs the sum of its members' weights."""
        if weights is None:
            return None
        return (step_map > 0).to(weights.dtype) @ weights


# ------------------------------------------------------------------ final rules


def _uniform(num_rows: int, device: torch.device) -> torch.Tensor:
    return torch.full((num_rows,), 1.0 / num_rows, dtype=torch.float64, device=device)


def _refuse_weights(name: str, weights: torch.Tensor | None) -> None:
    if weights is not None:
        raise InvalidUpdatesError(
            f"{name} does not use client weights; configure uniform weighting for it"
        )


@dataclass(frozen=True)
class Mean:
    """Weighted mean: no robustness (the undefended baseline)."""

    name: str = "mean"
    supports_weights: bool = True

    def check(self, num_rows: int, num_byzantine: int) -> None:
        if num_byzantine != 0:
            raise ToleranceError(
                f"mean tolerates no Byzantine clients, got f={num_byzantine}; "
                "put a robust rule last or declare f=0 for an undefended baseline"
            )

    def aggregate(
        self, rows: RowComposition, weights: torch.Tensor | None, num_byzantine: int
    ) -> AggregationResult:
        device = rows.updates.device
        row_weights = _uniform(rows.num_rows, device) if weights is None else weights
        return AggregationResult(rows.combine(row_weights / row_weights.sum()), rows.num_rows)


@dataclass(frozen=True)
class CoordinateMedian:
    """Coordinate-wise median."""

    name: str = "median"
    supports_weights: bool = False

    def check(self, num_rows: int, num_byzantine: int) -> None:
        _require_less_than_half(self.name, num_rows, num_byzantine)

    def aggregate(
        self, rows: RowComposition, weights: torch.Tensor | None, num_byzantine: int
    ) -> AggregationResult:
        _refuse_weights(self.name, weights)
        aggregate = column_median(rows.updates, mixing=rows.pending_map())
        return AggregationResult(aggregate, rows.num_rows)


@dataclass(frozen=True)
class TrimmedMean:
    """Coordinate-wise trimmed mean; trims ``beta``·n per side, or f when ``beta`` is unset."""

    beta: float | None = None
    name: str = "trimmed_mean"
    supports_weights: bool = False

    def __post_init__(self) -> None:
        if self.beta is not None and not 0.0 <= self.beta < 0.5:
            raise PipelineConfigError(f"trimmed_mean needs 0 ≤ beta < 0.5, got {self.beta}")

    def trim(self, num_rows: int, num_byzantine: int) -> int:
        """Values dropped per side."""
        return num_byzantine if self.beta is None else int(self.beta * num_rows)

    def check(self, num_rows: int, num_byzantine: int) -> None:
        _require_less_than_half(self.name, num_rows, num_byzantine)
        trim = self.trim(num_rows, num_byzantine)
        if trim < num_byzantine:
            raise ToleranceError(
                f"trimmed_mean with beta={self.beta} trims {trim} per side of n={num_rows}, "
                f"fewer than f={num_byzantine}"
            )
        if 2 * trim >= num_rows:
            raise ToleranceError(f"trimmed_mean trims {trim} per side, needs n > {2 * trim}")

    def aggregate(
        self, rows: RowComposition, weights: torch.Tensor | None, num_byzantine: int
    ) -> AggregationResult:
        _refuse_weights(self.name, weights)
        trim = self.trim(rows.num_rows, num_byzantine)
        aggregate = column_trimmed_mean(rows.updates, trim, mixing=rows.pending_map())
        return AggregationResult(aggregate, rows.num_rows)


@dataclass(frozen=True)
class Krum:
    """Krum (m = 1) or Multi-Krum (m rows averaged; default n − f)."""

    num_selected: int | None = 1
    name: str = "krum"
    supports_weights: bool = True

    def selected_count(self, num_rows: int, num_byzantine: int) -> int:
        """m for this round."""
        return num_rows - num_byzantine if self.num_selected is None else self.num_selected

    def check(self, num_rows: int, num_byzantine: int) -> None:
        check_krum_tolerance(num_rows, num_byzantine)
        m = self.selected_count(num_rows, num_byzantine)
        if not 1 <= m <= num_rows - num_byzantine:
            raise ToleranceError(
                f"{self.name} needs 1 ≤ m ≤ n − f, got m={m}, n={num_rows}, f={num_byzantine}"
            )

    def aggregate(
        self, rows: RowComposition, weights: torch.Tensor | None, num_byzantine: int
    ) -> AggregationResult:
        scores = krum_scores(rows.squared_distances(), num_byzantine)
        m = self.selected_count(rows.num_rows, num_byzantine)
        chosen = torch.sort(scores, stable=True).indices[:m]
        mixing = torch.zeros(rows.num_rows, dtype=torch.float64, device=scores.device)
        mixing[chosen] = 1.0 if weights is None else weights[chosen].to(torch.float64)
        if mixing.sum() <= 0:
            raise InvalidUpdatesError(f"{self.name} selected only rows of zero weight")
        aggregate = rows.combine(mixing / mixing.sum())
        return AggregationResult(aggregate, rows.num_rows, tuple(int(i) for i in chosen))


@dataclass(frozen=True)
class Bulyan:
    """Bulyan: iterated Krum selection, then the mean around the coordinate median."""

    name: str = "bulyan"
    supports_weights: bool = False

    def check(self, num_rows: int, num_byzantine: int) -> None:
        check_bulyan_tolerance(num_rows, num_byzantine)

    def aggregate(
        self, rows: RowComposition, weights: torch.Tensor | None, num_byzantine: int
    ) -> AggregationResult:
        _refuse_weights(self.name, weights)
        num_inputs = rows.num_rows
        chosen = select_bulyan_rows(rows.squared_distances(), num_byzantine)
        selection_map = torch.zeros(
            (len(chosen), rows.num_rows), dtype=torch.float64, device=rows.updates.device
        )
        selection_map[torch.arange(len(chosen)), torch.tensor(chosen)] = 1.0
        rows.apply(selection_map)
        keep = len(chosen) - 2 * num_byzantine
        aggregate = column_mean_around_median(rows.updates, keep, mixing=rows.pending_map())
        return AggregationResult(aggregate, num_inputs, tuple(chosen))


@dataclass(frozen=True)
class GeometricMedian:
    """Geometric median (smoothed Weiszfeld)."""

    smoothing: float = 1e-6
    max_iterations: int = 100
    tolerance: float = 1e-6
    name: str = "geometric_median"
    supports_weights: bool = True

    def check(self, num_rows: int, num_byzantine: int) -> None:
        _require_less_than_half(self.name, num_rows, num_byzantine)

    def aggregate(
        self, rows: RowComposition, weights: torch.Tensor | None, num_byzantine: int
    ) -> AggregationResult:
        aggregate = geometric_median(
            rows.materialise(),
            weights,
            smoothing=self.smoothing,
            max_iterations=self.max_iterations,
            tolerance=self.tolerance,
            validated=True,
        )
        return AggregationResult(aggregate, rows.num_rows)


@dataclass(frozen=True)
class CenteredClipping:
    """Centered clipping with radius τ and a number of iterations."""

    radius: float = 1.0
    iterations: int = 3
    name: str = "centered_clipping"
    supports_weights: bool = True

    def __post_init__(self) -> None:
        if not self.radius > 0 or self.iterations < 1:
            raise PipelineConfigError("centered_clipping needs radius > 0 and iterations ≥ 1")

    def check(self, num_rows: int, num_byzantine: int) -> None:
        _require_less_than_half(self.name, num_rows, num_byzantine)

    def aggregate(
        self, rows: RowComposition, weights: torch.Tensor | None, num_byzantine: int
    ) -> AggregationResult:
        aggregate = centered_clipping(
            rows.materialise(),
            weights,
            radius=self.radius,
            iterations=self.iterations,
            validated=True,
        )
        return AggregationResult(aggregate, rows.num_rows)


# ------------------------------------------------------------------ registry

PRE_AGGREGATION_STEPS: Mapping[str, Callable[..., PreAggregationStep]] = {
    "clip": Clip,
    "arc": AdaptiveRobustClip,
    "nnm": NearestNeighbourMixing,
    "bucketing": Bucketing,
}


def _krum() -> Krum:
    return Krum(num_selected=1)


def _multi_krum(num_selected: int | None = None) -> Krum:
    return Krum(num_selected=num_selected, name="multi_krum")


FINAL_RULES: Mapping[str, Callable[..., FinalRule]] = {
    "mean": Mean,
    "median": CoordinateMedian,
    "trimmed_mean": TrimmedMean,
    "krum": _krum,
    "multi_krum": _multi_krum,
    "bulyan": Bulyan,
    "geometric_median": GeometricMedian,
    "centered_clipping": CenteredClipping,
}
