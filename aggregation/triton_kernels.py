# Kernel arguments carry no Python annotations (Triton reads them as
# specialisation hints), and Triton ships no type information.
# mypy: disable-error-code="untyped-decorator,no-untyped-def"
"""Column order statistics on CUDA, one Triton program per tile of columns.

A CUDA ``torch.sort`` along the rows of an (n, d) matrix reads and writes the
whole matrix several times (a transposed copy, the segmented sort, the sorted
output) before the median or the trimmed sum is taken. Here each program loads
a tile of columns once — consecutive threads read consecutive columns, so the
loads coalesce — and keeps it in registers while it selects.

Selection is a radix select on order-preserving integer keys (a float's bits
with the sign bit flipped, and every other bit too for negatives): the value
of rank r is the largest key K with #{keys < K} ≤ r, found one bit at a time
from the top, each bit one count over the tile (Alabi et al., 2012, "Fast
k-selection algorithms for graphics processing units"). A window of ranks
[lo, hi) is then summed without sorting: every value strictly between the two
boundary values, plus the boundary values as many times as their ties fall
inside the window. The statistic therefore selects exactly the values a sort
would, and a median is bit-identical to ``np.median``.

Imported only when a CUDA tensor meets the kernels and Triton is installed
(CUDA builds of torch ship it); everything else goes through ``kernels.py``'s
torch path. The interpreter (``TRITON_INTERPRET=1``) runs the same code on the
CPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Columns per program and warps per program; measured on an H200 by
# benchmarks/aggregation_cuda.py --sweep.
TILE_COLUMNS = 16
NUM_WARPS = 2


@triton.jit
def _order_keys(values, key_dtype: tl.constexpr, top_bit: tl.constexpr):
    """Integer keys whose unsigned order is the floats' order."""
    bits = values.to(key_dtype, bitcast=True)
    sign = bits >> top_bit
    top = tl.full(bits.shape, 1, key_dtype) << top_bit
    every_bit = top | (top - 1)
    return tl.where(sign != 0, bits ^ every_bit, bits | top)


@triton.jit
def _select(keys, valid, rank, key_dtype: tl.constexpr, top_bit: tl.constexpr):
    """Per column, the key of the given rank (0-based) among the valid rows."""
    prefix = tl.zeros((keys.shape[1],), key_dtype)
    one = tl.full((keys.shape[1],), 1, key_dtype)
    for step in tl.static_range(top_bit + 1):
        candidate = prefix | (one << (top_bit - step))
        below = tl.sum((valid & (keys < candidate[None, :])).to(tl.int32), axis=0)
        prefix = tl.where(below <= rank, candidate, prefix)
    return prefix


@triton.jit
def _key_value(key, float_dtype: tl.constexpr, top_bit: tl.constexpr):
    """The float a key came from (inverse of _order_keys)."""
    top = tl.full(key.shape, 1, key.dtype) << top_bit
    every_bit = top | (top - 1)
    bits = tl.where((key >> top_bit) != 0, key ^ top, key ^ every_bit)
    return bits.to(float_dtype, bitcast=True)


@triton.jit
def _window_mean_kernel(
    updates_ptr,
    out_ptr,
    nonfinite_ptr,
    num_rows,
    num_columns,
    first_rank,
    end_rank,
    padded_rows: tl.constexpr,
    tile_columns: tl.constexpr,
    key_dtype: tl.constexpr,
    top_bit: tl.constexpr,
    single_rank: tl.constexpr,
):
    """out[j] = mean of the ranks [first_rank, end_rank) of column j."""
    program = tl.program_id(0)
    columns = program * tile_columns + tl.arange(0, tile_columns)
    rows = tl.arange(0, padded_rows)
    valid = (rows[:, None] < num_rows) & (columns[None, :] < num_columns)
    offsets = rows[:, None].to(tl.int64) * num_columns + columns[None, :]
    values = tl.load(updates_ptr + offsets, mask=valid, other=0.0)
    float_dtype = values.dtype
    # NaN compares unequal to itself; |x| = Inf marks ±Inf.
    nonfinite = valid & ((values != values) | (tl.abs(values) == float("inf")))
    tl.store(nonfinite_ptr + program, tl.sum(tl.sum(nonfinite.to(tl.int32), axis=1), axis=0))

    keys = _order_keys(values, key_dtype, top_bit)
    low_key = _select(keys, valid, first_rank, key_dtype, top_bit)
    if single_rank:  # noqa: SIM108 (a constexpr branch: Triton compiles only one side)
        high_key = low_key
    else:
        high_key = _select(keys, valid, end_rank - 1, key_dtype, top_bit)
    low = _key_value(low_key, float_dtype, top_bit)
    high = _key_value(high_key, float_dtype, top_bit)
    inside = valid & (keys > low_key[None, :]) & (keys < high_key[None, :])
    between = tl.sum(tl.where(inside, values, 0.0), axis=0)
    # Ties at the boundaries: the window holds the low value from first_rank up
    # to its last rank, the high value from its first rank up to end_rank - 1.
    at_or_below_low = tl.sum((valid & (keys <= low_key[None, :])).to(tl.int32), axis=0)
    below_high = tl.sum((valid & (keys < high_key[None, :])).to(tl.int32), axis=0)
    same = low_key == high_key
    low_count = tl.where(
        same, end_rank - first_rank, tl.minimum(at_or_below_low, end_rank) - first_rank
    )
    high_count = tl.where(same, 0, end_rank - below_high)
    total = between + low * low_count.to(float_dtype) + high * high_count.to(float_dtype)
    tl.store(out_ptr + columns, total / (end_rank - first_rank), mask=columns < num_columns)


def window_mean(
    updates: torch.Tensor,
    first_rank: int,
    end_rank: int,
    *,
    tile_columns: int = TILE_COLUMNS,
    num_warps: int = NUM_WARPS,
) -> tuple[torch.Tensor, bool]:
    """Per column, the mean of the sorted values ranked [first_rank, end_rank).

    Returns the (d,) result and whether any entry was NaN or ±Inf (the caller
    refuses such input; the result is then meaningless). ``tile_columns`` and
    ``num_warps`` are tuning knobs for the benchmark.
    """
    num_rows, num_columns = updates.shape
    if not 0 <= first_rank < end_rank <= num_rows:
        raise ValueError(f"rank window [{first_rank}, {end_rank}) outside 0..{num_rows}")
    if updates.dtype == torch.float32:
        key_dtype, top_bit = tl.uint32, 31
    elif updates.dtype == torch.float64:
        key_dtype, top_bit = tl.uint64, 63
    else:
        raise TypeError(f"expected float32 or float64 updates, got {updates.dtype}")
    contiguous = updates.contiguous()
    programs = triton.cdiv(num_columns, tile_columns)
    result = torch.empty(num_columns, dtype=updates.dtype, device=updates.device)
    nonfinite = torch.zeros(max(programs, 1), dtype=torch.int32, device=updates.device)
    if num_columns:
        _window_mean_kernel[(programs,)](
            contiguous,
            result,
            nonfinite,
            num_rows,
            num_columns,
            first_rank,
            end_rank,
            padded_rows=triton.next_power_of_2(num_rows),
            tile_columns=tile_columns,
            key_dtype=key_dtype,
            top_bit=top_bit,
            single_rank=end_rank - first_rank == 1,
            num_warps=num_warps,
        )
    return result, bool(nonfinite.any().item())
