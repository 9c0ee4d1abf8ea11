"""Update validation: what the coordinator checks before any rule sees an update.

Refusals are values (a reason from a closed enum plus a human detail), shared
by validation, the audit log, metrics and reports, so every refused update is
counted and explained the same way everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch


class RefusalReason(StrEnum):
    """Why an update was not aggregated. Values are stable identifiers for logs and metrics."""

    REPLY_ERROR = "reply_error"
    """The client answered with an error instead of an update."""
    MISSING_UPDATE = "missing_update"
    """The reply holds no update record, or more than one."""
    UNDECODABLE = "undecodable"
    """An array's bytes cannot be decoded as the declared dtype and shape."""
    LAYOUT_MISMATCH = "layout_mismatch"
    """Tensor names differ from the global model's."""
    SHAPE_MISMATCH = "shape_mismatch"
    """A tensor's shape differs from the global model's."""
    DTYPE_MISMATCH = "dtype_mismatch"
    """A tensor's dtype differs from the global model's."""
    NON_FINITE = "non_finite"
    """The update contains NaN or Inf."""
    NORM_ABOVE_CAP = "norm_above_cap"
    """The update's L2 norm exceeds the hard cap."""
    INVALID_METRICS = "invalid_metrics"
    """Reported metrics are malformed (for example a negative example count)."""
    DUPLICATE_SENDER = "duplicate_sender"
    """A second reply from a node that already answered this round."""
    UNEXPECTED_SENDER = "unexpected_sender"
    """A reply from a node that was not asked this round."""
    GROUP_MEAN_ABOVE_CLIP = "group_mean_above_clip"
    """Secure aggregation: a group's mean update is longer than the DP clip norm, so at least
    one member did not clip its update."""
    UNCLIPPED_COUNT_OUT_OF_RANGE = "unclipped_count_out_of_range"
    """Secure aggregation: a group's summed "not clipped" bits fall outside [0, group size],
    so at least one member sent something other than a 0/1 bit."""


@dataclass(frozen=True)
class Refusal:
    """A refused update: the machine-readable reason and a detail for people."""

    reason: RefusalReason
    detail: str


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one tensor of the global model."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def num_parameters(self) -> int:
        """Elements in the tensor."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class ModelSpec:
    """The layout every update must match: the global model's tensors, in order."""

    tensors: tuple[TensorSpec, ...]

    @classmethod
    def from_arrays(cls, named_arrays: Mapping[str, np.ndarray]) -> ModelSpec:
        """Describe a model given as name → array (e.g. a state dict as numpy)."""
        return cls(
            tuple(
                TensorSpec(name, tuple(int(s) for s in array.shape), np.dtype(array.dtype))
                for name, array in named_arrays.items()
            )
        )

    @property
    def names(self) -> tuple[str, ...]:
        """Tensor names in order."""
        return tuple(tensor.name for tensor in self.tensors)

    @property
    def num_parameters(self) -> int:
        """Length d of the flattened update."""
        return sum(tensor.num_parameters for tensor in self.tensors)

    @property
    def dtype(self) -> np.dtype:
        """The single floating dtype of the flattened update."""
        kinds = {tensor.dtype for tensor in self.tensors}
        if len(kinds) != 1:
            raise ValueError(f"updates must use one dtype, the model has {sorted(map(str, kinds))}")
        (kind,) = kinds
        if kind not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"updates must be float32 or float64, the model uses {kind}")
        return kind


def check_layout(
    spec: ModelSpec, declared: Sequence[tuple[str, tuple[int, ...], str]]
) -> Refusal | None:
    """Check an update's declared (name, shape, dtype) triples against the model.

    Done before any byte is decoded, so a malformed update costs nothing.
    """
    names = tuple(name for name, _, _ in declared)
    if names != spec.names:
        missing = sorted(set(spec.names) - set(names))
        extra = sorted(set(names) - set(spec.names))
        detail = (
            f"missing {missing}, unexpected {extra}" if missing or extra else "tensor order differs"
        )
        return Refusal(RefusalReason.LAYOUT_MISMATCH, detail)
    for expected, (name, shape, dtype) in zip(spec.tensors, declared, strict=True):
        if tuple(shape) != expected.shape:
            return Refusal(
                RefusalReason.SHAPE_MISMATCH,
                f"{name}: shape {tuple(shape)}, expected {expected.shape}",
            )
        try:
            actual = np.dtype(dtype)
        except (TypeError, ValueError, SyntaxError):
            # np.dtype parses its argument; a client controls that string.
            return Refusal(RefusalReason.DTYPE_MISMATCH, f"{name}: unknown dtype {dtype!r}")
        if actual != expected.dtype:
            return Refusal(
                RefusalReason.DTYPE_MISMATCH, f"{name}: dtype {actual}, expected {expected.dtype}"
            )
    return None


def check_row(row: torch.Tensor, max_norm: float) -> tuple[Refusal | None, float]:
    """Check one flattened update: finite, and L2 norm at most ``max_norm``.

    Returns the refusal (or None) and the norm. A non-finite row has an
    infinite or NaN norm, so one norm computation checks both in the common
    case; only an infinite norm needs a second look (finite values so large
    that their squares overflow).
    """
    norm = float(torch.linalg.vector_norm(row))
    if not math.isfinite(norm) and (math.isnan(norm) or not bool(torch.isfinite(row).all())):
        return Refusal(RefusalReason.NON_FINITE, "update contains NaN or Inf"), norm
    if norm > max_norm:
        return Refusal(
            RefusalReason.NORM_ABOVE_CAP, f"L2 norm {norm:.4g} exceeds cap {max_norm:.4g}"
        ), norm
    return None, norm
