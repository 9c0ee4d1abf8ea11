"""Fixtures shared by the aggregation tests.

Every rule must work on CPU and CUDA, in float32 and float64; the ``device``
and ``dtype`` fixtures parametrize a test over both (CUDA is skipped where no
GPU is present). The ``rule`` and ``pre_step`` fixtures run one test over every
rule or pre-aggregation step, each configured for ``CATALOGUE_BYZANTINE``
Byzantine rows out of ``CATALOGUE_ROWS`` (enough for Bulyan's n ≥ 4f + 3).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from ztfl.aggregation import (
    adaptive_robust_clip,
    bucketing,
    bulyan,
    centered_clipping,
    clip_to_norm,
    coordinate_median,
    geometric_median,
    krum,
    multi_krum,
    nearest_neighbour_mixing,
    trimmed_mean,
    weighted_mean,
)

Aggregator = Callable[..., torch.Tensor]

CATALOGUE_ROWS = 11
CATALOGUE_BYZANTINE = 2

RULES: dict[str, Aggregator] = {
    "weighted_mean": lambda x, **kw: weighted_mean(x, **kw),
    "coordinate_median": lambda x, **kw: coordinate_median(x, **kw),
    "trimmed_mean": lambda x, **kw: trimmed_mean(x, trim=CATALOGUE_BYZANTINE, **kw),
    "krum": lambda x, **kw: krum(x, num_byzantine=CATALOGUE_BYZANTINE, **kw),
    "multi_krum": lambda x, **kw: multi_krum(x, num_byzantine=CATALOGUE_BYZANTINE, **kw),
    "bulyan": lambda x, **kw: bulyan(x, num_byzantine=CATALOGUE_BYZANTINE, **kw),
    "geometric_median": lambda x, **kw: geometric_median(x, **kw),
    "centered_clipping": lambda x, **kw: centered_clipping(x, radius=0.5, **kw),
}

PRE_STEPS: dict[str, Aggregator] = {
    "clip_to_norm": lambda x, **kw: clip_to_norm(x, 1.0, **kw),
    "adaptive_robust_clip": lambda x, **kw: adaptive_robust_clip(
        x, num_byzantine=CATALOGUE_BYZANTINE, **kw
    ),
    "nearest_neighbour_mixing": lambda x, **kw: nearest_neighbour_mixing(
        x, num_byzantine=CATALOGUE_BYZANTINE, **kw
    ),
    "bucketing": lambda x, **kw: bucketing(
        x, bucket_size=2, generator=torch.Generator().manual_seed(0), **kw
    ),
}

# A pipeline of every kind of step, for the tests that must cover "the pipeline".
CATALOGUE_PIPELINES = (
    "arc -> nnm -> trimmed_mean",
    "clip(max_norm=1.0) -> median",
    "nnm -> krum",
    "arc -> multi_krum(num_selected=4)",
    "bulyan",
    "arc -> geometric_median",
    "clip(max_norm=2.0) -> centered_clipping(radius=0.5)",
    "bucketing(bucket_size=2) -> median",
)


@pytest.fixture(params=["cpu", "cuda"])
def device(request: pytest.FixtureRequest) -> torch.device:
    """Run on CPU, and on CUDA where a GPU is present."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    """Both floating dtypes the rules support."""
    value: torch.dtype = request.param
    return value


@pytest.fixture(params=sorted(RULES))
def rule(request: pytest.FixtureRequest) -> Aggregator:
    """Each rule, configured for f = CATALOGUE_BYZANTINE."""
    return RULES[request.param]


@pytest.fixture(params=sorted(PRE_STEPS))
def pre_step(request: pytest.FixtureRequest) -> Aggregator:
    """Each pre-aggregation step, configured for f = CATALOGUE_BYZANTINE."""
    return PRE_STEPS[request.param]


@pytest.fixture
def catalogue_updates(dtype: torch.dtype) -> torch.Tensor:
    """A seeded (CATALOGUE_ROWS, 6) matrix of honest-looking updates."""
    generator = torch.Generator().manual_seed(1234)
    return torch.randn(CATALOGUE_ROWS, 6, generator=generator, dtype=torch.float64).to(dtype)


@pytest.fixture(params=CATALOGUE_PIPELINES)
def catalogue_pipeline(request: pytest.FixtureRequest) -> str:
    """Each catalogue pipeline description (f = CATALOGUE_BYZANTINE)."""
    description: str = request.param
    return description
