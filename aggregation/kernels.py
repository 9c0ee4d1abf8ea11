"""Column-wise order statistics over an (n, d) update matrix.

Median, trimmed mean and Bulyan's "mean around the median" all reduce each
column of the matrix through its sorted values. This module is the one place
that does it, behind three functions with two interchangeable back ends:

* **compiled** (CPU tensors, numba importable): the columns are cut into tiles
  of a few hundred; each tile is copied into a small buffer that stays in
  cache, and a sorting network runs across the tile's columns at once, so
  every compare-exchange is a branch-free vector min/max over the whole tile
  (Batcher, 1968). The network is pruned to the comparators the statistic
  needs (a median of 50 needs 330 of Batcher's 403). Tiles run on a thread
  pool; the kernels release the GIL.
* **triton** (CUDA tensors, Triton installed — CUDA builds of torch ship it):
  one program per tile of columns loads the tile once, sorts its columns in
  registers and writes the statistic (``triton_kernels.py``). Median and
  trimmed mean only; Bulyan's window stays on the torch path.
* **torch** (anything else: no numba — the lean client install — or no
  Triton): a full ``torch.sort`` along the rows.

Both refuse NaN and ±Inf with ``InvalidUpdatesError``: validation refuses
such updates earlier, and an order statistic over NaN has no meaning.

Agreement between the back ends: both select the same values — the median
(bit-exact), the kept rows of the trimmed mean, Bulyan's window — and differ
only in how they add k selected values up: the compiled kernels sum in
float64, torch's trimmed mean in the input dtype. Results agree within
``k·ε·max|x|`` for dtype epsilon ε, and exactly when the sums are exact
(tests use integer-valued data to check the selections bit for bit).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from .errors import InvalidUpdatesError

LOGGER = logging.getLogger(__name__)

# Whether CPU tensors go to the compiled kernels. Found once without importing
# numba (an import costs ~0.3 s that a client which never aggregates should not pay);
# set it to False to force the torch path.
NUMBA_AVAILABLE: bool = importlib.util.find_spec("numba") is not None
# Whether CUDA tensors go to the Triton kernels; found the same way.
TRITON_AVAILABLE: bool = importlib.util.find_spec("triton") is not None
# Rows a Triton tile holds in registers (padded to a power of two); beyond it
# the register file spills and the torch path is faster.
TRITON_MAX_ROWS = 256

Backend = Literal["compiled", "triton", "torch"]

# Below this many elements a single kernel call on the caller's thread beats
# handing tiles to the pool.
PARALLEL_MIN_ELEMENTS = 1 << 18
# Chunks handed to the pool per thread: more than one evens out a thread that
# the OS (or another process) slows down.
CHUNKS_PER_THREAD = 4
# Bytes of one row of a tile. 1 KiB keeps a tile of n ≤ 50 rows in L2 and the
# per-comparator loop long enough to amortise its set-up.
TILE_ROW_BYTES = 1024
NONFINITE_MESSAGE = "updates contain NaN or Inf; validate updates before aggregating"


# ---------------------------------------------------------------- public API


def column_median(updates: torch.Tensor, mixing: torch.Tensor | None = None) -> torch.Tensor:
    """Coordinate-wise median; for even n the mean of the two middle values (as ``np.median``).

    With ``mixing`` (an (m, n) matrix A), the median of the m rows of A @ updates;
    the compiled path forms those rows one tile at a time and never the whole
    (m, d) matrix, so a linear pre-aggregation step (``composition.py``) costs
    no extra memory.
    """
    rows = _mixed_rows(updates, mixing)
    backend = kernel_backend(updates, rows)
    if backend == "compiled":
        return _run_compiled("median", updates, mixing, _median_network(rows), 0)
    if backend == "triton":
        return _run_triton(_mixed(updates, mixing), (rows - 1) // 2, rows // 2 + 1)
    return _torch_column_median(_mixed(updates, mixing))


def column_trimmed_mean(
    updates: torch.Tensor, trim: int, mixing: torch.Tensor | None = None
) -> torch.Tensor:
    """Coordinate-wise mean after dropping the ``trim`` smallest and largest values.

    ``mixing`` as for ``column_median``; ``trim`` then counts rows of A @ updates.
    """
    rows = _mixed_rows(updates, mixing)
    if not 0 <= 2 * trim < rows:
        raise ValueError(f"trim must satisfy 0 ≤ 2·trim < n, got trim={trim}, n={rows}")
    backend = kernel_backend(updates, rows)
    if backend == "compiled":
        return _run_compiled("trimmed_mean", updates, mixing, _trimmed_network(rows, trim), trim)
    if backend == "triton":
        return _run_triton(_mixed(updates, mixing), trim, rows - trim)
    return _torch_column_trimmed_mean(_mixed(updates, mixing), trim)


def column_mean_around_median(
    updates: torch.Tensor, keep: int, mixing: torch.Tensor | None = None
) -> torch.Tensor:
    """Per coordinate, the mean of the ``keep`` values closest to the median.

    Bulyan's second stage (El Mhamdi et al., 2018). The ``keep`` closest values
    form a contiguous window of the sorted column; the window with the smallest
    spread around the median is the first one (lowest start) minimising
    ``max(median − first, last − median)``, both differences taken in the
    input dtype, so both back ends pick the same window. ``mixing`` as for
    ``column_median`` (Bulyan's selection is such a map).
    """
    rows = _mixed_rows(updates, mixing)
    if not 1 <= keep <= rows:
        raise ValueError(f"keep must satisfy 1 ≤ keep ≤ n, got keep={keep}, n={rows}")
    if kernel_backend(updates, rows) == "compiled":
        return _run_compiled("mean_around_median", updates, mixing, _full_network(rows), keep)
    return _torch_column_mean_around_median(_mixed(updates, mixing), keep)


def column_median_sorted(ordered: torch.Tensor) -> torch.Tensor:
    """Median of each column of an already column-sorted matrix."""
    n = ordered.shape[0]
    if n % 2 == 1:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def kernel_backend(updates: torch.Tensor, rows: int | None = None) -> Backend:
    """The back end the median and trimmed mean use for ``updates``.

    Compiled for float32/float64 CPU tensors outside autograd when numba is
    installed; Triton for such CUDA tensors of at most ``TRITON_MAX_ROWS``
    rows (``rows``: after mixing, default ``updates``' own) when Triton is;
    torch otherwise (a lean install, or a tensor that needs gradients, which
    the kernels would silently detach).
    """
    if updates.dtype not in (torch.float32, torch.float64) or updates.requires_grad:
        return "torch"
    if NUMBA_AVAILABLE and updates.device.type == "cpu":
        return "compiled"
    rows = int(updates.shape[0]) if rows is None else rows
    if TRITON_AVAILABLE and updates.device.type == "cuda" and rows <= TRITON_MAX_ROWS:
        return "triton"
    return "torch"


def _mixed_rows(updates: torch.Tensor, mixing: torch.Tensor | None) -> int:
    """Rows the statistic runs over: m for an (m, n) mixing matrix, else n."""
    if mixing is None:
        return int(updates.shape[0])
    if mixing.ndim != 2 or mixing.shape[1] != updates.shape[0] or mixing.shape[0] < 1:
        raise ValueError(
            f"mixing must be an (m, {updates.shape[0]}) matrix with m ≥ 1, "
            f"got shape {tuple(mixing.shape)}"
        )
    return int(mixing.shape[0])


def _mixed(updates: torch.Tensor, mixing: torch.Tensor | None) -> torch.Tensor:
    if mixing is None:
        return updates
    return mixing.to(dtype=updates.dtype, device=updates.device) @ updates


# ---------------------------------------------------------------- triton path


def _run_triton(updates: torch.Tensor, first_rank: int, end_rank: int) -> torch.Tensor:
    """Mean of the column ranks [first_rank, end_rank) on the GPU; refuses NaN/Inf."""
    from . import triton_kernels  # imported on first CUDA use: Triton's import is slow

    result, nonfinite = triton_kernels.window_mean(updates, first_rank, end_rank)
    if nonfinite:
        raise InvalidUpdatesError(NONFINITE_MESSAGE)
    return result


# ---------------------------------------------------------------- torch path


def _torch_column_median(updates: torch.Tensor) -> torch.Tensor:
    ordered = _torch_sorted_finite(updates)
    return column_median_sorted(ordered).clone()


def _torch_column_trimmed_mean(updates: torch.Tensor, trim: int) -> torch.Tensor:
    n = updates.shape[0]
    if trim == 0:
        _require_finite(updates)
        return updates.mean(dim=0)
    ordered = _torch_sorted_finite(updates)
    return ordered[trim : n - trim].mean(dim=0)


def _torch_column_mean_around_median(updates: torch.Tensor, keep: int) -> torch.Tensor:
    n = updates.shape[0]
    ordered = _torch_sorted_finite(updates)
    median = column_median_sorted(ordered)
    # Window w covers ordered[w : w + keep]; its spread around the median is
    # max(median - ordered[w], ordered[w + keep - 1] - median).
    lows = median - ordered[: n - keep + 1]
    highs = ordered[keep - 1 :] - median
    best = torch.maximum(lows, highs).argmin(dim=0, keepdim=True)
    # Sum the window value by value (keep ≤ n gathers of one row each) in
    # float64. Differences of running sums would be cheaper but cancel: a
    # large value below the window wipes out the small ones inside it.
    total = torch.zeros(updates.shape[1], dtype=torch.float64, device=updates.device)
    for offset in range(keep):
        total += ordered.gather(0, best + offset)[0].to(torch.float64)
    return (total / keep).to(updates.dtype)


def _torch_sorted_finite(updates: torch.Tensor) -> torch.Tensor:
    """Column-sorted copy; refuses NaN/Inf by looking at the extreme rows only.

    ``torch.sort`` places NaN last and ±Inf at the ends, so the first and last
    sorted rows reveal any non-finite value without another pass.
    """
    ordered = torch.sort(updates, dim=0).values
    if not bool(torch.isfinite(ordered[0]).all() & torch.isfinite(ordered[-1]).all()):
        raise InvalidUpdatesError(NONFINITE_MESSAGE)
    return ordered


def _require_finite(updates: torch.Tensor) -> None:
    if not bool(torch.isfinite(updates).all()):
        raise InvalidUpdatesError(NONFINITE_MESSAGE)


# ---------------------------------------------------------------- sorting networks


Network = tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]


def batcher_comparators(n: int) -> list[tuple[int, int]]:
    """Batcher's odd–even merge sort for n wires as (low, high) compare-exchange pairs.

    Built for the next power of two with every comparator that touches a wire
    ≥ n dropped: those wires act as +∞ padding, which such a comparator never
    moves, so the result still sorts n wires (Knuth, TAOCP 5.3.4).
    """
    pairs: list[tuple[int, int]] = []
    merge_size = 1
    while merge_size < n:
        gap = merge_size
        while gap >= 1:
            for base in range(gap % merge_size, n - gap, 2 * gap):
                for offset in range(min(gap, n - base - gap)):
                    low = base + offset
                    # Only compare wires inside the same pair of merged blocks.
                    if low // (2 * merge_size) == (low + gap) // (2 * merge_size):
                        pairs.append((low, low + gap))
            gap //= 2
        merge_size *= 2
    return pairs


def prune_comparators(
    pairs: list[tuple[int, int]], n: int, outputs: list[frozenset[int]]
) -> list[tuple[int, int]]:
    """Drop the comparators that cannot change the multisets read from ``outputs``.

    Walking backwards, each wire carries a class: wires whose final values are
    never read are dead, and the statistic is symmetric under swapping two
    wires of the same class (the median's middle pair, the trimmed mean's kept
    rows are summed). A comparator between two dead wires, or two wires of one
    class, is a no-op for the statistic. A kept comparator makes its two input
    wires a class of their own: its output is symmetric in its inputs.
    """
    dead = -1
    label = [dead] * n
    for index, wires in enumerate(outputs):
        for wire in wires:
            label[wire] = index
    next_label = len(outputs)
    kept: list[tuple[int, int]] = []
    for low, high in reversed(pairs):
        if label[low] == label[high]:
            continue
        kept.append((low, high))
        label[low] = label[high] = next_label
        next_label += 1
    kept.reverse()
    return kept


def _as_network(pairs: list[tuple[int, int]]) -> Network:
    array = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return np.ascontiguousarray(array[:, 0]), np.ascontiguousarray(array[:, 1])


@functools.lru_cache(maxsize=256)
def _median_network(n: int) -> Network:
    middle = frozenset({(n - 1) // 2, n // 2})
    return _as_network(prune_comparators(batcher_comparators(n), n, [middle]))


@functools.lru_cache(maxsize=256)
def _trimmed_network(n: int, trim: int) -> Network:
    kept_rows = frozenset(range(trim, n - trim))
    return _as_network(prune_comparators(batcher_comparators(n), n, [kept_rows]))


@functools.lru_cache(maxsize=256)
def _full_network(n: int) -> Network:
    return _as_network(batcher_comparators(n))


# ---------------------------------------------------------------- compiled path


def _run_compiled(
    statistic: str,
    updates: torch.Tensor,
    mixing: torch.Tensor | None,
    network: Network,
    parameter: int,
) -> torch.Tensor:
    """Run one compiled kernel over column chunks on the thread pool."""
    kernels = _compiled_kernels()
    if kernels is None:  # numba failed to import after all
        return _torch_fallback(statistic, _mixed(updates, mixing), parameter)
    kernel = kernels[statistic]
    matrix = updates.detach().contiguous()
    d = matrix.shape[1]
    values = matrix.numpy()
    if mixing is None:
        mixing_values = np.empty((0, 0), dtype=values.dtype)
    else:
        mixing_values = mixing.detach().to(device="cpu", dtype=matrix.dtype).contiguous().numpy()
    result = torch.empty(d, dtype=matrix.dtype)
    out = result.numpy()
    tile = max(16, TILE_ROW_BYTES // values.itemsize)
    low, high = network
    try:
        nonfinite = _execute(kernel, values, mixing_values, out, low, high, tile, parameter)
    except OSError as error:
        # numba writes its on-disk cache after compiling; a failed write (read-only
        # or full disk) must not fail aggregation: compile in memory and retry.
        LOGGER.warning("numba could not write its cache (%s); compiling in memory", error)
        _disable_disk_cache()
        try:
            nonfinite = _execute(kernel, values, mixing_values, out, low, high, tile, parameter)
        except OSError:
            LOGGER.exception("compiled kernels unavailable; using torch for this call")
            return _torch_fallback(statistic, _mixed(updates, mixing), parameter)
    if nonfinite:
        raise InvalidUpdatesError(NONFINITE_MESSAGE)
    return result


def _execute(
    kernel: Callable[..., Any],
    values: npt.NDArray[Any],
    mixing: npt.NDArray[Any],
    out: npt.NDArray[Any],
    low: npt.NDArray[np.int64],
    high: npt.NDArray[np.int64],
    tile: int,
    parameter: int,
) -> bool:
    """Run ``kernel`` over all columns, in chunks on the pool when worth it; True on NaN/Inf."""
    n, d = values.shape
    threads = worker_count()
    if threads == 1 or n * d < PARALLEL_MIN_ELEMENTS:
        return bool(kernel(values, mixing, out, low, high, 0, d, tile, parameter))
    chunk = -(-d // (threads * CHUNKS_PER_THREAD))
    chunk = -(-chunk // tile) * tile
    pool = _thread_pool(threads)
    futures = [
        pool.submit(
            kernel, values, mixing, out, low, high, start, min(d, start + chunk), tile, parameter
        )
        for start in range(0, d, chunk)
    ]
    return any([bool(future.result()) for future in futures])


def _disable_disk_cache() -> None:
    from . import numba_kernels

    numba_kernels.disable_disk_cache()


def worker_count() -> int:
    """Threads for the kernels: torch's intra-op setting, so one knob sizes both."""
    return max(1, torch.get_num_threads())


def _torch_fallback(statistic: str, updates: torch.Tensor, parameter: int) -> torch.Tensor:
    if statistic == "median":
        return _torch_column_median(updates)
    if statistic == "trimmed_mean":
        return _torch_column_trimmed_mean(updates, parameter)
    return _torch_column_mean_around_median(updates, parameter)


_POOL_LOCK = threading.Lock()
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _thread_pool(threads: int) -> ThreadPoolExecutor:
    """One pool per process and thread count (torch.set_num_threads may change).

    Keyed by process id too: a forked child inherits the pool object but not
    its threads, and work submitted to it would never run.
    """
    key = (os.getpid(), threads)
    with _POOL_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = ThreadPoolExecutor(threads, thread_name_prefix="ztfl-kernels")
            _POOLS[key] = pool
        return pool


@functools.cache
def _compiled_kernels() -> dict[str, Callable[..., Any]] | None:
    """The compiled kernels by statistic (numba compiles each per dtype on first call).

    Imported lazily: importing numba costs ~0.3 s that a process which never
    aggregates on CPU should not pay.
    """
    try:
        from . import numba_kernels
    except ImportError as error:  # numba present but broken (e.g. a NumPy it does not support)
        LOGGER.warning("numba does not import (%s); using the torch kernels", error)
        return None
    return {
        "median": numba_kernels.median_kernel,
        "trimmed_mean": numba_kernels.trimmed_mean_kernel,
        "mean_around_median": numba_kernels.mean_around_median_kernel,
    }
