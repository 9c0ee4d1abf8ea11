"""ztfl.aggregation — robust aggregation primitives (pure torch; no Flower, no I/O).

Rules and pre-aggregation steps are functions over an (n, d) update matrix
(CPU or CUDA, float32 or float64); ``build_pipeline`` composes them from a
configuration string such as ``"arc -> nnm -> trimmed_mean"`` and checks the
tolerated number of Byzantine clients against every step's requirement.
"""

from .errors import (
    AggregationError,
    InvalidUpdatesError,
    PipelineConfigError,
    ToleranceError,
)
from .pipeline import Pipeline, StepSpec, build_pipeline, parse_steps
from .preaggregation import (
    adaptive_robust_clip,
    bucketing,
    clip_to_norm,
    nearest_neighbour_mixing,
)
from .rules import (
    bulyan,
    centered_clipping,
    coordinate_median,
    geometric_median,
    krum,
    multi_krum,
    trimmed_mean,
    weighted_mean,
)
from .steps import FINAL_RULES, PRE_AGGREGATION_STEPS, AggregationResult
from .validation import (
    ModelSpec,
    Refusal,
    RefusalReason,
    TensorSpec,
    check_layout,
    check_row,
)

__all__ = [
    "FINAL_RULES",
    "PRE_AGGREGATION_STEPS",
    "AggregationError",
    "AggregationResult",
    "InvalidUpdatesError",
    "ModelSpec",
    "Pipeline",
    "PipelineConfigError",
    "Refusal",
    "RefusalReason",
    "StepSpec",
    "TensorSpec",
    "ToleranceError",
    "adaptive_robust_clip",
    "bucketing",
    "build_pipeline",
    "bulyan",
    "centered_clipping",
    "check_layout",
    "check_row",
    "clip_to_norm",
    "coordinate_median",
    "geometric_median",
    "krum",
    "multi_krum",
    "nearest_neighbour_mixing",
    "parse_steps",
    "trimmed_mean",
    "weighted_mean",
]
