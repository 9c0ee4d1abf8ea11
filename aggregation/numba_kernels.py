"""numba kernels behind ``kernels.py``: tiled sorting networks over matrix columns.

Imported only by ``kernels._compiled_kernels`` (so a process that never
aggregates on CPU never imports numba). Each kernel reduces the columns
``[start, stop)`` of the rows of ``mixing @ values`` — of ``values`` itself
when ``mixing`` has no rows — into ``out`` and returns whether ``values`` held
NaN or ±Inf; ``values`` is a C-contiguous (n, d) matrix, ``mixing`` (m, n).
The mixed rows are formed one tile at a time, so a pre-aggregation map
(NNM, bucketing, Bulyan's selection) never materialises an (m, d) matrix.
A tile of columns is copied into a buffer that stays in cache, and each
compare-exchange of the network is a loop across the tile that LLVM compiles
to vector min/max, so no column ever branches on its data. The kernels
release the GIL; ``kernels.py`` runs chunks of columns on a thread pool.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

LOGGER = logging.getLogger(__name__)


def jit_kernel(function: Callable[..., Any]) -> Callable[..., Any]:
    """``numba.njit`` with the on-disk cache when a cache directory is writable.

    numba refuses ``cache=True`` at decoration time when neither the
    package's ``__pycache__``, NUMBA_CACHE_DIR nor the user cache directory is
    writable (a read-only install); the kernels then compile once per process
    instead of breaking the import. ``error_model="numpy"`` drops the
    division-by-zero checks that would stop the loops from vectorising.
    """
    options: dict[str, Any] = {"nogil": True, "error_model": "numpy"}
    try:
        return numba.njit(cache=True, **options)(function)  # type: ignore[no-any-return]
    except RuntimeError as error:
        LOGGER.info("numba cache unavailable (%s); kernels compile once per process", error)
        return numba.njit(**options)(function)  # type: ignore[no-any-return]


@jit_kernel
def load_tile(values: Any, buffer: Any, guard: Any, start: int, width: int) -> None:
    """Copy columns [start, start + width) into the buffer; mark NaN/±Inf in ``guard``."""
    for row in range(values.shape[0]):
        source = values[row, start : start + width]
        target = buffer[row]
        for column in range(width):
            target[column] = source[column]
        # x·0 is 0 for finite x and NaN for NaN or ±Inf, and a NaN sticks.
        for column in range(width):
            guard[column] += target[column] * 0


@jit_kernel
def mix_tile(mixing: Any, source: Any, target: Any, width: int) -> None:
    """target = mixing @ source over the tile, skipping zero weights (NNM, buckets).

    Accumulates in the input dtype, as the matrix product it replaces does.
    """
    for out_row in range(mixing.shape[0]):
        accumulator = target[out_row]
        for column in range(width):
            accumulator[column] = 0
        for in_row in range(mixing.shape[1]):
            weight = mixing[out_row, in_row]
            if weight != 0:
                row = source[in_row]
                for column in range(width):
                    accumulator[column] += weight * row[column]


@jit_kernel
def fill_tile(
    values: Any, mixing: Any, source: Any, buffer: Any, guard: Any, start: int, width: int
) -> None:
    """Load a tile of ``values``; then mix it into ``buffer`` if ``mixing`` has rows."""
    load_tile(values, source, guard, start, width)
    if mixing.shape[0] > 0:
        mix_tile(mixing, source, buffer, width)


@jit_kernel
def tile_buffers(values: Any, mixing: Any, tile: int) -> tuple[Any, Any, Any]:
    """The tile of ``values``, the tile of rows to reduce (the same array unless mixed), a guard."""
    source = np.empty((values.shape[0], tile), dtype=values.dtype)
    buffer = np.empty((mixing.shape[0], tile), dtype=values.dtype)
    if mixing.shape[0] == 0:
        buffer = source
    return source, buffer, np.zeros(tile, dtype=values.dtype)


@jit_kernel
def apply_network(buffer: Any, low: Any, high: Any, width: int) -> None:
    """Compare-exchange rows low[i] and high[i], element-wise across the tile, for each i."""
    for index in range(low.shape[0]):
        low_row = buffer[low[index]]
        high_row = buffer[high[index]]
        for column in range(width):
            a = low_row[column]
            b = high_row[column]
            low_row[column] = a if a < b else b
            high_row[column] = b if a < b else a


@jit_kernel
def any_flagged(guard: Any) -> bool:
    """Whether ``load_tile`` met a non-finite value."""
    flagged = False
    for column in range(guard.shape[0]):
        if guard[column] != 0:
            flagged = True
    return flagged


@jit_kernel
def median_kernel(
    values: Any,
    mixing: Any,
    out: Any,
    low: Any,
    high: Any,
    start: int,
    stop: int,
    tile: int,
    unused: int,
) -> bool:
    """Column medians; for even n the two middle values are summed in the input dtype
    and halved (exact), as torch and ``np.median`` do."""
    source, buffer, guard = tile_buffers(values, mixing, tile)
    n = buffer.shape[0]
    lower_row = (n - 1) // 2
    upper_row = n // 2
    for first in range(start, stop, tile):
        width = min(tile, stop - first)
        fill_tile(values, mixing, source, buffer, guard, first, width)
        apply_network(buffer, low, high, width)
        target = out[first : first + width]
        lower = buffer[lower_row]
        upper = buffer[upper_row]
        if lower_row == upper_row:
            for column in range(width):
                target[column] = lower[column]
        else:
            for column in range(width):
                pair_sum = lower[column] + upper[column]
                target[column] = pair_sum / 2
    return any_flagged(guard)  # type: ignore[no-any-return]


@jit_kernel
def trimmed_mean_kernel(
    values: Any,
    mixing: Any,
    out: Any,
    low: Any,
    high: Any,
    start: int,
    stop: int,
    tile: int,
    trim: int,
) -> bool:
    """Column means of the sorted rows [trim, n − trim), summed in float64."""
    source, buffer, guard = tile_buffers(values, mixing, tile)
    n = buffer.shape[0]
    total = np.empty(tile, dtype=np.float64)
    count = n - 2 * trim
    for first in range(start, stop, tile):
        width = min(tile, stop - first)
        fill_tile(values, mixing, source, buffer, guard, first, width)
        apply_network(buffer, low, high, width)
        total[:] = 0.0
        for row in range(trim, n - trim):
            kept = buffer[row]
            for column in range(width):
                total[column] += kept[column]
        target = out[first : first + width]
        for column in range(width):
            target[column] = total[column] / count
    return any_flagged(guard)  # type: ignore[no-any-return]


@jit_kernel
def mean_around_median_kernel(
    values: Any,
    mixing: Any,
    out: Any,
    low: Any,
    high: Any,
    start: int,
    stop: int,
    tile: int,
    keep: int,
) -> bool:
    """Per column, the float64 mean of the window of ``keep`` sorted values whose spread
    around the median is smallest (first such window on ties, like ``torch.argmin``)."""
    source, buffer, guard = tile_buffers(values, mixing, tile)
    n = buffer.shape[0]
    # The median and the spreads stay in the input dtype, rounded as torch
    # rounds them, so both back ends choose the same window.
    median = np.empty(tile, dtype=values.dtype)
    best_spread = np.empty(tile, dtype=values.dtype)
    best_start = np.zeros(tile, dtype=np.int64)
    lower_row = (n - 1) // 2
    upper_row = n // 2
    for first in range(start, stop, tile):
        width = min(tile, stop - first)
        fill_tile(values, mixing, source, buffer, guard, first, width)
        apply_network(buffer, low, high, width)
        lower = buffer[lower_row]
        upper = buffer[upper_row]
        if lower_row == upper_row:
            for column in range(width):
                median[column] = lower[column]
        else:
            for column in range(width):
                pair_sum = lower[column] + upper[column]
                median[column] = pair_sum / 2
        for window in range(n - keep + 1):
            bottom = buffer[window]
            top = buffer[window + keep - 1]
            for column in range(width):
                below = median[column] - bottom[column]
                above = top[column] - median[column]
                spread = below if below > above else above
                if window == 0 or spread < best_spread[column]:
                    best_spread[column] = spread
                    best_start[column] = window
        target = out[first : first + width]
        for column in range(width):
            total = 0.0
            for offset in range(keep):
                total += buffer[best_start[column] + offset, column]
            target[column] = total / keep
    return any_flagged(guard)  # type: ignore[no-any-return]


def disable_disk_cache() -> None:
    """Compile in memory from now on: neither read nor write numba's on-disk cache.

    For when a cache write failed (read-only or full disk). A failed write
    while compiling a helper aborts the whole kernel's compilation, so without
    this every call would compile again and fail again. numba has no public
    switch for an existing dispatcher; its cache is the ``_cache`` attribute.
    """
    from numba.core.caching import NullCache

    for dispatcher in (
        load_tile,
        mix_tile,
        fill_tile,
        tile_buffers,
        apply_network,
        any_flagged,
        median_kernel,
        trimmed_mean_kernel,
        mean_around_median_kernel,
    ):
        dispatcher._cache = NullCache()  # type: ignore[attr-defined]
