"""Fixed-point quantization of a clipped update into the ring Z/2^b, and back.

Each coordinate x (|x| ≤ C once the update is clipped to L2 norm C) becomes the integer
q = round_stochastic(x · scale), so |q| ≤ M = ⌈C · scale⌉. A group of k members sums to at
most k · M in absolute value; with two's complement in Z/2^b that sum cannot wrap when
k · M ≤ 2^(b−1) − 1, i.e. ``b = bit_length(k · max(M, E)) + 1`` (E bounds the extra integer
channels). Stochastic rounding is unbiased, and each member's rounding error is < 1 unit, so
the dequantized group sum is within k / scale of the true sum per coordinate (the mean within
1 / scale).

The rounding randomness is an AES-256-CTR keystream keyed from the OS (``secrets``), never a
seeded generator: the rounding must not be predictable to anyone who could then strip it.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import numpy.typing as npt
import torch

from .masks import CHUNK_WORDS, from_ring, keystream_chunks, reduce, ring_dtype
from .refusal import SecAggRefusal, SecAggRefusalReason

MAX_MODULUS_BITS = 62
"""Largest ring: sums stay exact in int64 and dequantize without float overflow surprises."""

_ROUNDING_UNITS = 4294967296.0  # 2^32: the rounding draw's resolution (bias < 2^-32 per coordinate)


@dataclass(frozen=True)
class QuantizationParams:
    """How a member turns its clipped update (and extra integer channels) into ring elements.

    Attributes:
        clip_norm: C > 0; every update must already have L2 norm ≤ C.
        scale: fixed-point units per 1.0 (the sum's error is < k / scale per coordinate).
        num_extra_channels: integers appended after the vector (e.g. 1 for the adaptive
            clipping "not clipped" bit), summed exactly.
        extra_channel_bound: E ≥ 0; every extra integer must satisfy |value| ≤ E.
        norm_tolerance: relative excess of ‖x‖ over C accepted (float32 clipping rounds up);
            coordinates are clamped to [−C, C] so the no-wrap bound holds regardless.
    """

    clip_norm: float
    scale: float
    num_extra_channels: int = 0
    extra_channel_bound: int = 1
    norm_tolerance: float = 1e-5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            _malformed(f"clip_norm must be finite and > 0, got {self.clip_norm}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            _malformed(f"scale must be finite and > 0, got {self.scale}")
        if self.num_extra_channels < 0 or self.extra_channel_bound < 0:
            _malformed("num_extra_channels and extra_channel_bound must be ≥ 0")
        if not (math.isfinite(self.norm_tolerance) and 0 <= self.norm_tolerance < 0.01):
            _malformed(f"norm_tolerance must lie in [0, 0.01), got {self.norm_tolerance}")

    @property
    def coordinate_bound(self) -> int:
        """M = ⌈C · scale⌉, the largest |q| of one member's quantized coordinate."""
        return math.ceil(self.clip_norm * self.scale)

    def required_modulus_bits(self, num_members: int) -> int:
        """b = bit_length(k · max(M, E)) + 1: the smallest ring in which k members cannot wrap."""
        if num_members < 1:
            _malformed(f"num_members must be ≥ 1, got {num_members}")
        largest_sum = num_members * max(self.coordinate_bound, self.extra_channel_bound, 1)
        return largest_sum.bit_length() + 1

    def sum_error_bound(self, num_members: int) -> float:
        """Per-coordinate bound on |dequantized sum − true sum| for ``num_members`` members."""
        return num_members / self.scale


def scale_for_modulus_bits(
    clip_norm: float, num_members: int, *, modulus_bits: int = 32, extra_channel_bound: int = 1
) -> float:
    """The largest scale whose group sum of ``num_members`` fits ``modulus_bits`` (default 32,
    so a masked coordinate travels in 4 bytes)."""
    if not 2 <= modulus_bits <= MAX_MODULUS_BITS:
        _malformed(f"modulus_bits must lie in [2, {MAX_MODULUS_BITS}], got {modulus_bits}")
    largest_coordinate = ((1 << (modulus_bits - 1)) - 1) // max(num_members, 1)
    if largest_coordinate < max(extra_channel_bound, 2):
        _weak(f"{modulus_bits} bits cannot hold the sum of {num_members} members")
    scale = (largest_coordinate - 1) / clip_norm
    params = QuantizationParams(clip_norm, scale, extra_channel_bound=extra_channel_bound)
    while params.required_modulus_bits(num_members) > modulus_bits:  # float rounding of C·scale
        scale *= 1 - 1e-12
        params = QuantizationParams(clip_norm, scale, extra_channel_bound=extra_channel_bound)
    return scale


def quantize(
    update: npt.ArrayLike | torch.Tensor,
    params: QuantizationParams,
    modulus_bits: int,
    *,
    extras: Sequence[int] = (),
    rounding_key: bytes | None = None,
) -> npt.NDArray[np.unsignedinteger]:
    """Stochastically round ``update · scale`` and append ``extras``, as ring elements mod 2^b.

    Args:
        update: the clipped 1-D update (numpy or torch, any float dtype), ‖update‖ ≤ C.
        params: the group's quantization parameters.
        modulus_bits: the group's b.
        extras: exactly ``params.num_extra_channels`` integers, each |value| ≤ E.
        rounding_key: 32-byte key of the rounding keystream; fresh from the OS when None
            (pass one only to reproduce a result in a test).

    Raises:
        SecAggRefusal: MALFORMED for a non-finite, non-1-D or too long update, or bad extras.
    """
    values = _as_float_vector(update)
    norm = float(np.linalg.norm(values))  # NaN or inf for any non-finite coordinate
    if not norm <= params.clip_norm * (1 + params.norm_tolerance):
        _malformed(
            f"update norm {norm:.6g} is not finite or exceeds clip norm {params.clip_norm:.6g}"
        )
    extra_values = _check_extras(extras, params)
    key = secrets.token_bytes(32) if rounding_key is None else rounding_key
    dtype = ring_dtype(modulus_bits)
    words = np.empty(values.size + len(extra_values), dtype=dtype)
    # Within the tolerance: clamp, so that |q| ≤ M still holds.
    limit = params.clip_norm * params.scale if norm > params.clip_norm else None
    _round_stochastically(values, params.scale, limit, key, words[: values.size])
    words[values.size :] = np.asarray(extra_values, dtype=np.int64).astype(dtype)
    if modulus_bits < 8 * dtype.itemsize:
        reduce(words, modulus_bits)
    return words


def _round_stochastically(
    values: npt.NDArray[np.floating],
    scale: float,
    limit: float | None,
    key: bytes,
    out: npt.NDArray[np.unsignedinteger],
) -> None:
    """out = ⌊values · scale⌋ + [u < frac] as words mod 2^w, u from the keystream of ``key``.

    One cache-sized chunk at a time through reused float64 buffers (the products need 53 bits:
    |x · scale| reaches 2^31 and its fraction must stay exact), so the whole update is read
    once and written once. The rounded integer is written through a signed view of the
    output words: for |q| < 2^(w−1) its two's complement bits are q mod 2^w, as ``to_ring``.
    """
    chunk = min(CHUNK_WORDS, values.size)
    scaled = np.empty(chunk, dtype=np.float64)
    floored = np.empty(chunk, dtype=np.float64)
    round_up = np.empty(chunk, dtype=np.bool_)
    signed = out.view(np.int32 if out.dtype.itemsize == 4 else np.int64)
    draws = keystream_chunks(key, values.size, np.dtype(np.uint32))
    for start in range(0, values.size, chunk):
        stop = min(start + chunk, values.size)
        count = stop - start
        s, f, r, q = scaled[:count], floored[:count], round_up[:count], signed[start:stop]
        np.copyto(s, values[start:stop])
        s *= scale
        if limit is not None:
            np.clip(s, -limit, limit, out=s)
        np.floor(s, out=f)
        np.subtract(s, f, out=s)  # the fractional part, in [0, 1)
        s *= _ROUNDING_UNITS
        np.less(next(draws), s, out=r)  # up with probability ⌈frac · 2^32⌉ / 2^32
        np.copyto(q, f, casting="unsafe")  # an integer-valued float below 2^53: exact
        np.add(q, r, out=q, casting="unsafe")


def dequantize_sum(
    ring_sum: npt.NDArray[np.unsignedinteger], params: QuantizationParams, modulus_bits: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """The group sum as floats (vector part, divided by scale) and exact integers (extras)."""
    split = ring_sum.size - params.num_extra_channels
    if ring_sum.dtype == np.uint32 and modulus_bits <= 32:
        # One pass for the usual b ≤ 32: sign-extend from bit b − 1 in 32-bit words, then
        # convert and divide together.
        shift = 32 - modulus_bits
        shifted = ring_sum << np.uint32(shift) if shift else ring_sum
        signed32 = shifted.view(np.int32) >> np.int32(shift) if shift else shifted.view(np.int32)
        vector = np.divide(signed32[:split], params.scale, dtype=np.float64)
        return vector, signed32[split:].astype(np.int64)
    signed = from_ring(ring_sum, modulus_bits)
    return signed[:split].astype(np.float64) / params.scale, signed[split:].copy()


def _as_float_vector(update: npt.ArrayLike | torch.Tensor) -> npt.NDArray[np.floating]:
    if isinstance(update, torch.Tensor):
        update = update.detach().to("cpu").numpy()
    try:
        values = np.asarray(update)
    except (TypeError, ValueError) as error:
        _malformed(f"update is not a numeric array: {error}")
    if values.dtype.kind not in "fiu" or values.ndim != 1 or values.size == 0:
        _malformed(f"update must be a non-empty 1-D real vector, got {values.dtype} {values.shape}")
    if values.dtype.kind != "f":
        values = values.astype(np.float64)
    return values


def _check_extras(extras: Sequence[int], params: QuantizationParams) -> list[int]:
    if len(extras) != params.num_extra_channels:
        _malformed(f"expected {params.num_extra_channels} extra integers, got {len(extras)}")
    checked = []
    for value in extras:
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            _malformed(f"extra channel values must be integers, got {value!r}")
        if abs(int(value)) > params.extra_channel_bound:
            _malformed(f"extra value {value} exceeds the bound {params.extra_channel_bound}")
        checked.append(int(value))
    return checked


def _malformed(message: str) -> NoReturn:
    raise SecAggRefusal(SecAggRefusalReason.MALFORMED, message)


def _weak(message: str) -> NoReturn:
    raise SecAggRefusal(SecAggRefusalReason.WEAK_PARAMETERS, message)
