"""The column order statistics: compiled (numba) kernels against the torch path and numpy.

Every test uses a small d so that numba's one-off compilation (cached on disk
after the first run) keeps each test well under two seconds.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest
import torch

from ztfl.aggregation import InvalidUpdatesError, kernels
from ztfl.aggregation.kernels import (
    batcher_comparators,
    column_mean_around_median,
    column_median,
    column_trimmed_mean,
    kernel_backend,
    prune_comparators,
)

pytest.importorskip("numba")

WIDTH = 301  # columns: more than one tile's worth is not needed, a ragged tail is


def gaussian(
    n: int, d: int = WIDTH, dtype: torch.dtype = torch.float32, seed: int = 0
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=generator, dtype=torch.float64).to(dtype)


def small_integers(n: int, d: int = WIDTH, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer-valued floats: every sum is exact, so equal results mean equal selections."""
    generator = torch.Generator().manual_seed(7)
    return torch.randint(-50, 50, (n, d), generator=generator).to(dtype)


def mean_tolerance(updates: torch.Tensor, count: int) -> float:
    """The documented agreement between back ends for a mean of ``count`` values."""
    return count * torch.finfo(updates.dtype).eps * float(updates.abs().max())


@pytest.fixture
def torch_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dispatch as on a lean install without numba."""
    monkeypatch.setattr(kernels, "NUMBA_AVAILABLE", False)


# ---------------------------------------------------------------- dispatch


def test_cpu_float_tensors_use_the_compiled_kernels() -> None:
    assert kernel_backend(gaussian(3)) == "compiled"


@pytest.mark.usefixtures("torch_only")
def test_torch_path_is_used_when_numba_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    def compiled_kernels_must_not_run() -> None:
        pytest.fail("the compiled kernels ran although numba is unavailable")

    monkeypatch.setattr(kernels, "_compiled_kernels", compiled_kernels_must_not_run)
    updates = gaussian(5)
    assert kernel_backend(updates) == "torch"
    expected = torch.from_numpy(np.median(updates.numpy(), axis=0))
    assert torch.equal(column_median(updates), expected)


def test_tensors_that_need_gradients_use_the_torch_path() -> None:
    assert kernel_backend(gaussian(3).requires_grad_()) == "torch"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_use_the_torch_path_without_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "TRITON_AVAILABLE", False)
    assert kernel_backend(gaussian(3).cuda()) == "torch"


# ---------------------------------------------------------------- median


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10, 11, 50])
def test_median_matches_numpy_exactly(n: int, dtype: torch.dtype) -> None:
    updates = gaussian(n, dtype=dtype)
    expected = torch.from_numpy(np.median(updates.numpy(), axis=0))
    assert torch.equal(column_median(updates), expected)


@pytest.mark.parametrize("n", [1, 2, 5, 6, 31, 32])
def test_median_matches_the_torch_path_exactly(n: int, dtype: torch.dtype) -> None:
    updates = gaussian(n, dtype=dtype, seed=n)
    assert torch.equal(column_median(updates), kernels._torch_column_median(updates))


def test_median_of_one_row_is_that_row() -> None:
    updates = gaussian(1)
    assert torch.equal(column_median(updates), updates[0])


def test_median_of_two_rows_is_their_mean() -> None:
    updates = gaussian(2)
    assert torch.equal(column_median(updates), (updates[0] + updates[1]) / 2)


def test_median_with_ties_matches_numpy() -> None:
    updates = torch.randint(0, 3, (9, WIDTH), generator=torch.Generator().manual_seed(1)).float()
    expected = torch.from_numpy(np.median(updates.numpy(), axis=0))
    assert torch.equal(column_median(updates), expected)


def test_median_ignores_rows_of_any_magnitude_below_half() -> None:
    honest = gaussian(7)
    poisoned = torch.cat([honest, torch.full((6, WIDTH), 3e38)])
    assert torch.equal(column_median(poisoned), honest.sort(dim=0).values[6])


def test_median_of_a_transposed_view_equals_the_contiguous_result() -> None:
    layout = gaussian(WIDTH, 9).T  # (9, WIDTH), column-major
    assert not layout.is_contiguous()
    assert torch.equal(column_median(layout), column_median(layout.contiguous()))


def test_median_of_a_column_slice_equals_the_contiguous_result() -> None:
    updates = gaussian(9, 2 * WIDTH)[:, 1::2]
    assert torch.equal(column_median(updates), column_median(updates.contiguous()))


def test_median_leaves_its_input_unchanged() -> None:
    updates = gaussian(11)
    before = updates.clone()
    column_median(updates)
    assert torch.equal(updates, before)


def test_median_split_across_threads_equals_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    updates = gaussian(5, 60_001)
    single = column_median(updates)
    monkeypatch.setattr(kernels, "PARALLEL_MIN_ELEMENTS", 1)
    monkeypatch.setattr(kernels, "worker_count", lambda: 3)
    assert torch.equal(column_median(updates), single)


def test_a_forked_process_gets_its_own_thread_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    parent_pool = kernels._thread_pool(2)
    monkeypatch.setattr(os, "getpid", lambda: -1)
    assert kernels._thread_pool(2) is not parent_pool


# ---------------------------------------------------------------- trimmed mean


@pytest.mark.parametrize(
    ("n", "trim"), [(1, 0), (2, 0), (3, 1), (4, 1), (10, 2), (11, 5), (50, 10)]
)
def test_trimmed_mean_matches_the_torch_path(n: int, trim: int, dtype: torch.dtype) -> None:
    updates = gaussian(n, dtype=dtype, seed=n)
    expected = kernels._torch_column_trimmed_mean(updates, trim)
    tolerance = mean_tolerance(updates, n - 2 * trim)
    torch.testing.assert_close(
        column_trimmed_mean(updates, trim), expected, rtol=0.0, atol=tolerance
    )


@pytest.mark.parametrize(("n", "trim"), [(3, 1), (8, 3), (12, 4)])
def test_trimmed_mean_keeps_the_same_values_as_the_torch_path(
    n: int, trim: int, dtype: torch.dtype
) -> None:
    updates = small_integers(n, dtype=dtype)
    assert torch.equal(
        column_trimmed_mean(updates, trim), kernels._torch_column_trimmed_mean(updates, trim)
    )


def test_trimmed_mean_without_trimming_is_the_mean() -> None:
    updates = gaussian(6, dtype=torch.float64)
    torch.testing.assert_close(column_trimmed_mean(updates, 0), updates.mean(dim=0))


def test_trimmed_mean_with_the_largest_trim_is_the_median() -> None:
    updates = gaussian(9)
    assert torch.equal(column_trimmed_mean(updates, 4), column_median(updates))


def test_trimmed_mean_of_a_transposed_view_equals_the_contiguous_result() -> None:
    layout = gaussian(WIDTH, 10).T
    assert torch.equal(column_trimmed_mean(layout, 2), column_trimmed_mean(layout.contiguous(), 2))


def test_trimmed_mean_drops_extreme_rows_without_losing_precision() -> None:
    honest = gaussian(8)
    extremes = torch.cat([torch.full((2, WIDTH), -3e38), torch.full((2, WIDTH), 3e38)])
    expected = honest.sort(dim=0).values[2:6].double().mean(dim=0).float()
    result = column_trimmed_mean(torch.cat([extremes, honest]), 4)
    assert torch.equal(result, expected)


@pytest.mark.parametrize("trim", [-1, 3])
def test_trimmed_mean_refuses_a_trim_that_leaves_nothing(trim: int) -> None:
    with pytest.raises(ValueError, match="trim"):
        column_trimmed_mean(gaussian(6), trim)


# ---------------------------------------------------------------- mean around the median


@pytest.mark.parametrize(("n", "keep"), [(1, 1), (2, 1), (5, 1), (7, 3), (8, 4), (11, 11)])
def test_mean_around_median_selects_the_same_window_as_the_torch_path(
    n: int, keep: int, dtype: torch.dtype
) -> None:
    updates = small_integers(n, dtype=dtype)
    expected = kernels._torch_column_mean_around_median(updates, keep)
    assert torch.equal(column_mean_around_median(updates, keep), expected)


@pytest.mark.parametrize(("n", "keep"), [(7, 3), (12, 5), (23, 15)])
def test_mean_around_median_matches_the_torch_path(n: int, keep: int, dtype: torch.dtype) -> None:
    updates = gaussian(n, dtype=dtype, seed=n)
    torch.testing.assert_close(
        column_mean_around_median(updates, keep),
        kernels._torch_column_mean_around_median(updates, keep),
        rtol=0.0,
        atol=mean_tolerance(updates, keep),
    )


def test_mean_around_median_of_one_value_is_the_median_for_odd_n() -> None:
    updates = gaussian(9)
    assert torch.equal(column_mean_around_median(updates, 1), column_median(updates))


@pytest.mark.usefixtures("torch_only")
def test_torch_mean_around_median_is_not_swamped_by_a_large_value_below_the_window() -> None:
    # Differences of running sums would lose the window's values next to 3e7 in float32.
    column = torch.tensor([-3e7, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25], dtype=torch.float32)
    result = column_mean_around_median(column[:, None], 3)
    assert torch.equal(result, torch.tensor([1.5]))


# ---------------------------------------------------------------- mixed rows


def neighbour_averaging(n: int, kept: int) -> torch.Tensor:
    """An NNM-like map: row i averages rows i, i+1, …, i+kept−1 (mod n)."""
    mixing = torch.zeros(n, n, dtype=torch.float64)
    for row in range(n):
        for offset in range(kept):
            mixing[row, (row + offset) % n] = 1.0 / kept
    return mixing


def test_median_of_selected_rows_equals_the_median_of_those_rows() -> None:
    updates = gaussian(9)
    chosen = torch.tensor([0, 2, 3, 7])
    selection = torch.zeros(4, 9, dtype=torch.float64)
    selection[torch.arange(4), chosen] = 1.0
    assert torch.equal(column_median(updates, selection), column_median(updates[chosen]))


def test_trimmed_mean_of_mixed_rows_matches_the_materialised_product(dtype: torch.dtype) -> None:
    updates = gaussian(11, dtype=dtype)
    mixing = neighbour_averaging(11, 8)
    expected = kernels._torch_column_trimmed_mean(mixing.to(dtype) @ updates, 2)
    torch.testing.assert_close(
        column_trimmed_mean(updates, 2, mixing),
        expected,
        rtol=0.0,
        atol=mean_tolerance(updates, 11),
    )


def test_mean_around_median_of_mixed_rows_matches_the_materialised_product() -> None:
    updates = small_integers(8, dtype=torch.float64)
    mixing = neighbour_averaging(8, 2)  # halves of integer sums: exact
    expected = kernels._torch_column_mean_around_median(mixing @ updates, 4)
    assert torch.equal(column_mean_around_median(updates, 4, mixing), expected)


def test_trim_counts_the_rows_of_the_mixed_matrix() -> None:
    updates = gaussian(10)
    with pytest.raises(ValueError, match="trim"):
        column_trimmed_mean(updates, 2, torch.ones(4, 10) / 10)


def test_mixing_of_the_wrong_width_is_refused() -> None:
    with pytest.raises(ValueError, match="mixing"):
        column_median(gaussian(5), torch.ones(3, 4))


def test_non_finite_rows_are_refused_even_with_zero_mixing_weight() -> None:
    updates = gaussian(5)
    updates[4, 0] = float("nan")
    selection = torch.eye(5, dtype=torch.float64)[:3]
    with pytest.raises(InvalidUpdatesError, match="NaN or Inf"):
        column_median(updates, selection)


# ---------------------------------------------------------------- non-finite values


@pytest.fixture(params=["compiled", "torch"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on each back end."""
    monkeypatch.setattr(kernels, "NUMBA_AVAILABLE", request.param == "compiled")
    name: str = request.param
    return name


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize(
    "statistic",
    [
        column_median,
        lambda x: column_trimmed_mean(x, 1),
        lambda x: column_trimmed_mean(x, 0),
        lambda x: column_mean_around_median(x, 2),
    ],
    ids=["median", "trimmed_mean", "mean", "mean_around_median"],
)
def test_non_finite_values_are_refused(
    backend: str, value: float, statistic: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    updates = gaussian(5)
    updates[3, WIDTH - 1] = value
    assert kernel_backend(updates) == backend
    with pytest.raises(InvalidUpdatesError, match="NaN or Inf"):
        statistic(updates)


# ---------------------------------------------------------------- networks and caching


@pytest.mark.parametrize("n", range(1, 17))
def test_batcher_network_sorts_every_zero_one_input(n: int) -> None:
    # The 0-1 principle (Knuth, TAOCP 5.3.4): sorting all 2^n binary inputs proves the network.
    inputs = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    for low, high in batcher_comparators(n):
        lows = np.minimum(inputs[:, low], inputs[:, high])
        inputs[:, high] = np.maximum(inputs[:, low], inputs[:, high])
        inputs[:, low] = lows
    assert (np.diff(inputs, axis=1) >= 0).all()


@pytest.mark.parametrize("n", [9, 10, 16])
def test_pruned_median_network_still_finds_the_median_of_every_zero_one_input(n: int) -> None:
    middle = frozenset({(n - 1) // 2, n // 2})
    inputs = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    expected = np.sort(inputs, axis=1)[:, sorted(middle)]
    for low, high in prune_comparators(batcher_comparators(n), n, [middle]):
        lows = np.minimum(inputs[:, low], inputs[:, high])
        inputs[:, high] = np.maximum(inputs[:, low], inputs[:, high])
        inputs[:, low] = lows
    assert np.array_equal(np.sort(inputs[:, sorted(middle)], axis=1), expected)


def test_pruning_for_a_plain_sum_keeps_no_comparator() -> None:
    assert prune_comparators(batcher_comparators(10), 10, [frozenset(range(10))]) == []


def doubled(values: np.ndarray) -> np.ndarray:
    return values * 2


def test_kernels_compile_without_a_writable_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    from numba.core import config

    from ztfl.aggregation.numba_kernels import jit_kernel

    # The only cache location numba may use is one it cannot create.
    monkeypatch.setattr(config, "CACHE_LOCATOR_CLASSES", "UserProvidedCacheLocator")
    monkeypatch.setattr(config, "CACHE_DIR", "/dev/null/numba-cache")
    compiled = jit_kernel(doubled)
    assert np.array_equal(compiled(np.arange(3.0)), np.array([0.0, 2.0, 4.0]))


def test_a_failed_cache_write_compiles_in_memory_and_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compiled = kernels._compiled_kernels()
    assert compiled is not None
    real_kernel = compiled["median"]
    failures = [PermissionError(13, "Permission denied", "__pycache__/numba_kernels.nbi")]
    disabled: list[bool] = []

    def cache_write_fails_once(*args: object) -> object:
        if failures:
            raise failures.pop()
        return real_kernel(*args)

    monkeypatch.setitem(compiled, "median", cache_write_fails_once)
    monkeypatch.setattr(kernels, "_disable_disk_cache", lambda: disabled.append(True))
    updates = gaussian(6)
    assert torch.equal(column_median(updates), kernels._torch_column_median(updates))
    assert disabled == [True]


def test_a_cache_failure_that_persists_falls_back_to_the_torch_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def cache_write_fails(*args: object) -> bool:
        raise PermissionError(13, "Permission denied", "__pycache__/numba_kernels.nbi")

    compiled = kernels._compiled_kernels()
    assert compiled is not None
    monkeypatch.setitem(compiled, "median", cache_write_fails)
    monkeypatch.setattr(kernels, "_disable_disk_cache", lambda: None)
    updates = gaussian(6)
    assert torch.equal(column_median(updates), kernels._torch_column_median(updates))
