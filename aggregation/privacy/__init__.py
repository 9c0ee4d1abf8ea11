"""Differential privacy for the aggregate: clipping, calibrated noise, sensitivity, accounting.

The names below need only torch and numpy, so a client (which clips its own update) can
import them. The accountant (``.accounting``, ``.calibration``, on Google's dp-accounting)
and the noise (``.noise``, on randomgen's ChaCha) come with the coordinator's ``server``
extra: import them from their modules.
"""

from .adaptive_clipping import (
    AdaptiveClipNorm,
    AdaptiveClippingConfig,
    next_clip_norm,
    noisy_unclipped_fraction,
    update_noise_multiplier,
)
from .clipping import (
    ClippedUpdates,
    UnclippedCount,
    check_group_mean,
    check_unclipped_count,
    clip_updates,
)
from .sensitivity import (
    DPConfigurationError,
    Sensitivity,
    fixed_denominator_mean,
    pipeline_sensitivity,
)

__all__ = [
    "AdaptiveClipNorm",
    "AdaptiveClippingConfig",
    "ClippedUpdates",
    "DPConfigurationError",
    "Sensitivity",
    "UnclippedCount",
    "check_group_mean",
    "check_unclipped_count",
    "clip_updates",
    "fixed_denominator_mean",
    "next_clip_norm",
    "noisy_unclipped_fraction",
    "pipeline_sensitivity",
    "update_noise_multiplier",
]
