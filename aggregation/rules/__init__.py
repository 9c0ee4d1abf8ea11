"""Robust aggregation rules: each a function over an (n, d) update matrix."""

from .bulyan import bulyan
from .centered_clipping import centered_clipping
from .geometric_median import geometric_median
from .krum import krum, multi_krum
from .mean import weighted_mean
from .median import coordinate_median
from .trimmed_mean import trimmed_mean

__all__ = [
    "bulyan",
    "centered_clipping",
    "coordinate_median",
    "geometric_median",
    "krum",
    "multi_krum",
    "trimmed_mean",
    "weighted_mean",
]
