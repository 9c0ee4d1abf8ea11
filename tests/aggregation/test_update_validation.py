"""Update validation: layout checks before decoding, row checks before aggregating."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ztfl.aggregation import ModelSpec, Refusal, RefusalReason, TensorSpec, check_layout, check_row


@pytest.fixture
def spec() -> ModelSpec:
    return ModelSpec.from_arrays(
        {
            "fc1.weight": np.zeros((4, 3), dtype=np.float32),
            "fc1.bias": np.zeros(4, dtype=np.float32),
            "fc2.weight": np.zeros((2, 4), dtype=np.float32),
        }
    )


def layout(spec: ModelSpec) -> list[tuple[str, tuple[int, ...], str]]:
    return [(t.name, t.shape, str(t.dtype)) for t in spec.tensors]


def refusal_reason(refusal: Refusal | None) -> RefusalReason | None:
    return None if refusal is None else refusal.reason


# ------------------------------------------------------------------ check_row


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_check_row_refuses_a_non_finite_row_as_non_finite(dtype: torch.dtype, value: float) -> None:
    row = torch.ones(10, dtype=dtype)
    row[7] = value
    refusal, _ = check_row(row, max_norm=1e9)
    assert refusal_reason(refusal) is RefusalReason.NON_FINITE


def test_check_row_refuses_nan_next_to_a_huge_value_as_non_finite(dtype: torch.dtype) -> None:
    row = torch.ones(10, dtype=dtype)
    row[0] = torch.finfo(dtype).max
    row[1] = float("nan")
    refusal, _ = check_row(row, max_norm=1e9)
    assert refusal_reason(refusal) is RefusalReason.NON_FINITE


def test_check_row_refuses_a_finite_row_whose_squared_norm_overflows_as_above_the_cap(
    dtype: torch.dtype,
) -> None:
    # Every entry is finite, but Σx² overflows the dtype: the norm comes back inf.
    # That is a huge update (above any cap), not a NaN/Inf one.
    row = torch.full((10,), torch.finfo(dtype).max / 2, dtype=dtype)
    refusal, norm = check_row(row, max_norm=1e9)
    assert refusal_reason(refusal) is RefusalReason.NORM_ABOVE_CAP
    assert norm > 1e9


def test_check_row_accepts_a_norm_exactly_at_the_cap(dtype: torch.dtype) -> None:
    # ‖(3, 4)‖ = 5 exactly, in both dtypes
    refusal, norm = check_row(torch.tensor([3.0, 4.0], dtype=dtype), max_norm=5.0)
    assert refusal is None
    assert norm == 5.0


def test_check_row_refuses_a_norm_just_above_the_cap(dtype: torch.dtype) -> None:
    refusal, norm = check_row(torch.tensor([3.0, 4.0], dtype=dtype), max_norm=math.nextafter(5, 0))
    assert refusal_reason(refusal) is RefusalReason.NORM_ABOVE_CAP
    assert refusal is not None
    assert "exceeds cap" in refusal.detail
    assert norm == 5.0


def test_check_row_returns_the_norm_of_an_accepted_row(dtype: torch.dtype) -> None:
    refusal, norm = check_row(torch.tensor([1.0, 2.0, 2.0], dtype=dtype), max_norm=10.0)
    assert refusal is None
    assert norm == pytest.approx(3.0)


def test_check_row_accepts_a_zero_row() -> None:
    refusal, norm = check_row(torch.zeros(5), max_norm=0.0)
    assert refusal is None
    assert norm == 0.0


def test_refusal_reasons_are_stable_identifiers() -> None:
    # Values appear in audit logs and metrics; renaming one breaks dashboards.
    assert RefusalReason.NON_FINITE.value == "non_finite"
    assert RefusalReason.NORM_ABOVE_CAP.value == "norm_above_cap"
    assert RefusalReason.LAYOUT_MISMATCH.value == "layout_mismatch"
    assert RefusalReason.SHAPE_MISMATCH.value == "shape_mismatch"
    assert RefusalReason.DTYPE_MISMATCH.value == "dtype_mismatch"


# ------------------------------------------------------------------ check_layout


def test_check_layout_accepts_the_models_own_layout(spec: ModelSpec) -> None:
    assert check_layout(spec, layout(spec)) is None


def test_check_layout_accepts_equivalent_dtype_spellings(spec: ModelSpec) -> None:
    declared = [(name, shape, "<f4") for name, shape, _ in layout(spec)]
    assert check_layout(spec, declared) is None


def test_check_layout_accepts_shapes_given_as_lists(spec: ModelSpec) -> None:
    declared = [(name, list(shape), dtype) for name, shape, dtype in layout(spec)]
    assert check_layout(spec, declared) is None  # type: ignore[arg-type]


def test_check_layout_refuses_a_missing_tensor_and_names_it(spec: ModelSpec) -> None:
    refusal = check_layout(spec, layout(spec)[:2])
    assert refusal_reason(refusal) is RefusalReason.LAYOUT_MISMATCH
    assert refusal is not None
    assert "fc2.weight" in refusal.detail


def test_check_layout_refuses_an_extra_tensor_and_names_it(spec: ModelSpec) -> None:
    refusal = check_layout(spec, [*layout(spec), ("backdoor", (1,), "float32")])
    assert refusal_reason(refusal) is RefusalReason.LAYOUT_MISMATCH
    assert refusal is not None
    assert "backdoor" in refusal.detail


def test_check_layout_refuses_reordered_tensors(spec: ModelSpec) -> None:
    declared = layout(spec)
    refusal = check_layout(spec, [declared[1], declared[0], declared[2]])
    assert refusal_reason(refusal) is RefusalReason.LAYOUT_MISMATCH
    assert refusal is not None
    assert "order" in refusal.detail


@pytest.mark.parametrize("shape", [(3, 4), (4, 3, 1), (12,), (4, 4)])
def test_check_layout_refuses_a_wrong_shape(spec: ModelSpec, shape: tuple[int, ...]) -> None:
    declared = layout(spec)
    declared[0] = ("fc1.weight", shape, "float32")
    refusal = check_layout(spec, declared)
    assert refusal_reason(refusal) is RefusalReason.SHAPE_MISMATCH
    assert refusal is not None
    assert "fc1.weight" in refusal.detail


@pytest.mark.parametrize("dtype", ["float64", "float16", "int32", "uint8", "f4,f4"])
def test_check_layout_refuses_a_wrong_dtype(spec: ModelSpec, dtype: str) -> None:
    declared = layout(spec)
    declared[1] = ("fc1.bias", (4,), dtype)
    refusal = check_layout(spec, declared)
    assert refusal_reason(refusal) is RefusalReason.DTYPE_MISMATCH


@pytest.mark.parametrize("dtype", ["float33", "", "tensor", "float32 "])
def test_check_layout_refuses_an_unknown_dtype_string(spec: ModelSpec, dtype: str) -> None:
    declared = layout(spec)
    declared[2] = ("fc2.weight", (2, 4), dtype)
    refusal = check_layout(spec, declared)
    assert refusal_reason(refusal) is RefusalReason.DTYPE_MISMATCH
    assert refusal is not None
    assert "unknown dtype" in refusal.detail


# ------------------------------------------------------------------ ModelSpec


def test_model_spec_counts_parameters(spec: ModelSpec) -> None:
    # 4·3 + 4 + 2·4 = 24
    assert spec.num_parameters == 24
    assert spec.names == ("fc1.weight", "fc1.bias", "fc2.weight")
    assert spec.dtype == np.dtype(np.float32)


def test_model_spec_refuses_a_model_of_mixed_dtypes() -> None:
    spec = ModelSpec(
        (
            TensorSpec("a", (2,), np.dtype(np.float32)),
            TensorSpec("b", (2,), np.dtype(np.float64)),
        )
    )
    with pytest.raises(ValueError, match="one dtype"):
        _ = spec.dtype


def test_model_spec_refuses_a_non_float_model() -> None:
    spec = ModelSpec.from_arrays({"counts": np.zeros(3, dtype=np.int64)})
    with pytest.raises(ValueError, match="float32 or float64"):
        _ = spec.dtype
