"""The Triton back end of the column order statistics (CUDA only).

Checked against ``np.median`` (bit for bit) and the torch path; skipped where
no GPU or no Triton is present, as in CI.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ztfl.aggregation import InvalidUpdatesError, kernels
from ztfl.aggregation.kernels import column_median, column_trimmed_mean, kernel_backend

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and kernels.TRITON_AVAILABLE),
    reason="needs a CUDA device and Triton",
)

WIDTH = 5003  # several tiles and a ragged tail


def gaussian_cuda(n: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, WIDTH, generator=generator, dtype=torch.float64).to(dtype).cuda()


def torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "TRITON_AVAILABLE", False)


def test_cuda_float_tensors_use_the_triton_kernels() -> None:
    assert kernel_backend(gaussian_cuda(3)) == "triton"


def test_more_rows_than_a_tile_holds_use_the_torch_path() -> None:
    assert kernel_backend(gaussian_cuda(kernels.TRITON_MAX_ROWS + 1)) == "torch"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 50, 100, 129, 256])
def test_median_matches_numpy_exactly(n: int, dtype: torch.dtype) -> None:
    updates = gaussian_cuda(n, dtype)
    expected = torch.from_numpy(np.median(updates.cpu().numpy(), axis=0))
    assert torch.equal(column_median(updates).cpu(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("n", "trim"), [(5, 1), (50, 10), (100, 20), (101, 0)])
def test_trimmed_mean_matches_the_torch_path(
    n: int, trim: int, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    updates = gaussian_cuda(n, dtype)
    result = column_trimmed_mean(updates, trim)
    torch_path(monkeypatch)
    expected = column_trimmed_mean(updates, trim)
    tolerance = n * torch.finfo(dtype).eps * float(updates.abs().max())
    torch.testing.assert_close(result, expected, rtol=0, atol=tolerance)


def test_median_of_mixed_rows_matches_the_materialised_product() -> None:
    updates = gaussian_cuda(20)
    mixing = torch.rand(12, 20, generator=torch.Generator().manual_seed(3))
    expected = column_median(mixing.cuda() @ updates)
    assert torch.equal(column_median(updates, mixing), expected)


def test_median_of_a_transposed_view_equals_the_contiguous_result() -> None:
    updates = gaussian_cuda(9)
    view = updates.T.contiguous().T
    assert torch.equal(column_median(view), column_median(updates))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_refused(bad: float) -> None:
    updates = gaussian_cuda(11)
    updates[4, WIDTH - 1] = bad
    with pytest.raises(InvalidUpdatesError):
        column_median(updates)
    with pytest.raises(InvalidUpdatesError):
        column_trimmed_mean(updates, 2)
