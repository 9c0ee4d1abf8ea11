"""Masks expanded from 256-bit keys with AES-256-CTR, and the ring Z/2^b they live in.

Flower's SecAgg+ seeds a Mersenne Twister with 32 bits folded from the shared secret, so its
masks can be found by trying 2^32 seeds. Here every mask is the AES-256-CTR keystream of a
256-bit key (a fresh key per round and purpose, so the all-zero counter block is never reused
under one key), read as little-endian words: uniform modulo 2^w for the word width w, hence
uniform modulo any 2^b ≤ 2^w. Arithmetic runs in unsigned numpy words, which wrap modulo 2^w;
reducing to 2^b once at the end is exact because 2^b divides 2^w.

Keystreams are produced and consumed in cache-sized chunks (``CHUNK_WORDS``) into reused
buffers: a member's masking touches its update once per key instead of allocating and
streaming a fresh array per mask, which is what makes masking run at memory speed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

KEY_BYTES = 32
_ZERO_COUNTER = bytes(16)
CHUNK_WORDS = 1 << 15
"""Coordinates per chunk: 256 KiB of uint64 scratch, so a chunk stays in the L2 cache."""
_BLOCK_BYTES = 16


def keystream(key: bytes, num_bytes: int) -> bytes:
    """``num_bytes`` of the AES-256-CTR keystream of ``key`` (a 32-byte secret)."""
    encryptor = _encryptor(key)
    return encryptor.update(bytes(num_bytes)) + encryptor.finalize()


def keystream_chunks(
    key: bytes, num_words: int, dtype: np.dtype[Any]
) -> Iterator[npt.NDArray[Any]]:
    """The keystream of ``key`` as ``num_words`` little-endian words of ``dtype``, in chunks of
    at most ``CHUNK_WORDS``. Each chunk is a view of one reused buffer: use it before the next."""
    encryptor = _encryptor(key)
    word = np.dtype(dtype).itemsize
    chunk = min(CHUNK_WORDS, max(num_words, 1))
    zeros = bytes(chunk * word)
    scratch = bytearray(chunk * word + _BLOCK_BYTES - 1)
    little_endian = np.dtype(dtype).newbyteorder("<")
    for start in range(0, num_words, chunk):
        count = min(chunk, num_words - start)
        encryptor.update_into(memoryview(zeros)[: count * word], scratch)
        yield np.frombuffer(scratch, dtype=little_endian, count=count)


def _encryptor(key: bytes) -> CipherContext:
    if len(key) != KEY_BYTES:
        raise ValueError(f"a mask key has {KEY_BYTES} bytes, got {len(key)}")
    return Cipher(algorithms.AES(key), modes.CTR(_ZERO_COUNTER)).encryptor()


def ring_dtype(modulus_bits: int) -> np.dtype[np.unsignedinteger]:
    """The word a ring element is stored in: uint32 up to b = 32, else uint64."""
    if not 1 <= modulus_bits <= 64:
        raise ValueError(f"modulus_bits must lie in [1, 64], got {modulus_bits}")
    return np.dtype(np.uint32) if modulus_bits <= 32 else np.dtype(np.uint64)


def ring_mask(modulus_bits: int) -> int:
    """2^b − 1, the bit mask that reduces a word modulo 2^b."""
    return (1 << modulus_bits) - 1


def expand_mask(key: bytes, length: int, modulus_bits: int) -> npt.NDArray[np.unsignedinteger]:
    """The mask of ``key``: ``length`` integers uniform modulo 2^b (a fresh array)."""
    words = _words(key, length, ring_dtype(modulus_bits)).copy()
    reduce(words, modulus_bits)
    return words


def add_mask(accumulator: npt.NDArray[np.unsignedinteger], key: bytes, *, sign: int = 1) -> None:
    """Add (``sign`` = +1) or subtract (−1) the mask of ``key`` in place, modulo 2^w."""
    add_masks(accumulator, [(key, sign)])


def add_masks(
    accumulator: npt.NDArray[np.unsignedinteger], keys: Sequence[tuple[bytes, int]]
) -> None:
    """Add or subtract the mask of every ``(key, sign)`` in place, modulo 2^w, in one pass.

    The accumulator is walked chunk by chunk and every key's keystream is applied to a chunk
    while it is in cache; the result equals one ``add_mask`` per key.
    """
    if accumulator.ndim != 1 or not accumulator.flags.c_contiguous:
        raise ValueError("the accumulator must be a contiguous 1-D array")
    for _, sign in keys:
        if sign not in (1, -1):
            raise ValueError(f"sign must be +1 or -1, got {sign}")
    if not keys:
        return
    dtype = accumulator.dtype
    little_endian = dtype.newbyteorder("<")
    word = dtype.itemsize
    streams = [(_encryptor(key), sign) for key, sign in keys]
    chunk = min(CHUNK_WORDS, accumulator.size)
    zeros = bytes(chunk * word)
    scratch = bytearray(chunk * word + _BLOCK_BYTES - 1)
    for start in range(0, accumulator.size, chunk):
        stop = min(start + chunk, accumulator.size)
        count = stop - start
        target = accumulator[start:stop]
        source = memoryview(zeros)[: count * word]
        for encryptor, sign in streams:
            encryptor.update_into(source, scratch)
            words = np.frombuffer(scratch, dtype=little_endian, count=count)
            if sign == 1:
                np.add(target, words, out=target)
            else:
                np.subtract(target, words, out=target)


def reduce(accumulator: npt.NDArray[np.unsignedinteger], modulus_bits: int) -> None:
    """Reduce every word modulo 2^b in place (nothing to do when b is the word's width)."""
    if modulus_bits >= 8 * accumulator.dtype.itemsize:
        return
    np.bitwise_and(accumulator, ring_mask(modulus_bits), out=accumulator, dtype=accumulator.dtype)


def to_ring(signed: npt.NDArray[np.int64], modulus_bits: int) -> npt.NDArray[np.unsignedinteger]:
    """Two's complement of signed integers modulo 2^b (|value| < 2^(b−1) is the caller's job)."""
    dtype = ring_dtype(modulus_bits)
    words = signed.astype(dtype)  # wraps modulo 2^w
    reduce(words, modulus_bits)
    return words


def from_ring(words: npt.NDArray[np.unsignedinteger], modulus_bits: int) -> npt.NDArray[np.int64]:
    """Signed integers in [−2^(b−1), 2^(b−1)) from ring elements (sign extension from bit b−1)."""
    shift = 64 - modulus_bits
    as_int = words.astype(np.uint64) << np.uint64(shift)
    return as_int.view(np.int64) >> np.int64(shift)


def _words(
    key: bytes, length: int, dtype: np.dtype[np.unsignedinteger]
) -> npt.NDArray[np.unsignedinteger]:
    little_endian = dtype.newbyteorder("<")
    words = np.frombuffer(keystream(key, length * dtype.itemsize), dtype=little_endian)
    return words.astype(dtype, copy=False)
