"""Pre-aggregation: steps that transform the update matrix before the robust rule."""

from .bucketing import bucketing
from .clipping import adaptive_robust_clip, clip_to_norm
from .nnm import nearest_neighbour_mixing

__all__ = ["adaptive_robust_clip", "bucketing", "clip_to_norm", "nearest_neighbour_mixing"]
