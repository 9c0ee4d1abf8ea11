"""Shamir t-of-n secret sharing (Shamir, 1979) over the prime field of p = 2^521 − 1.

The secrets are 256-bit keys (X25519 private keys and self-mask seeds), so they need a field
larger than 2^256; the Mersenne prime 2^521 − 1 is one. Coefficients come from ``secrets``.
A share is the pair (x, y) with x ≥ 1 the holder's position in the group roster plus one.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from .refusal import SecAggRefusal, SecAggRefusalReason

PRIME = (1 << 521) - 1
SHARE_BYTES = 66
"""A share's y value, big-endian (⌈521 / 8⌉ bytes)."""


def split_secret(secret: int, *, threshold: int, xs: list[int]) -> dict[int, int]:
    """Shares y = f(x) of a random polynomial f of degree t − 1 with f(0) = ``secret``.

    Any ``threshold`` shares reconstruct the secret; fewer reveal nothing about it.
    """
    if not 0 <= secret < PRIME:
        raise ValueError("secret must lie in [0, p)")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must lie in [1, {len(xs)}], got {threshold}")
    if len(set(xs)) != len(xs) or not all(0 < x < PRIME for x in xs):
        raise ValueError("share points must be distinct and non-zero")
    coefficients = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _evaluate(coefficients, x) for x in xs}


def reconstruct_secret(shares: Mapping[int, int], *, threshold: int) -> int:
    """f(0) from at least ``threshold`` shares; every share beyond the first t must agree.

    Raises:
        SecAggRefusal: BELOW_THRESHOLD with fewer than t shares, BAD_SHARE when the shares do
            not lie on one polynomial of degree t − 1 (a member sent a wrong share).
    """
    if len(shares) < threshold:
        raise SecAggRefusal(
            SecAggRefusalReason.BELOW_THRESHOLD,
            f"{len(shares)} shares cannot reconstruct a {threshold}-of-n secret",
        )
    points = sorted(shares.items())
    for x, y in points:
        if not (0 < x < PRIME and 0 <= y < PRIME):
            raise SecAggRefusal(SecAggRefusalReason.BAD_SHARE, "a share lies outside the field")
    basis, rest = points[:threshold], points[threshold:]
    for x, y in rest:
        if _interpolate(basis, x) != y:
            raise SecAggRefusal(
                SecAggRefusalReason.BAD_SHARE, "the shares do not lie on one polynomial"
            )
    return _interpolate(basis, 0)


def encode_share(y: int) -> bytes:
    """The share value as ``SHARE_BYTES`` big-endian bytes."""
    return y.to_bytes(SHARE_BYTES, "big")


def decode_share(data: bytes) -> int:
    """The share value from ``encode_share``'s bytes (MALFORMED otherwise)."""
    if len(data) != SHARE_BYTES:
        raise SecAggRefusal(SecAggRefusalReason.MALFORMED, f"a share has {SHARE_BYTES} bytes")
    y = int.from_bytes(data, "big")
    if y >= PRIME:
        raise SecAggRefusal(SecAggRefusalReason.MALFORMED, "a share lies outside the field")
    return y


def _evaluate(coefficients: list[int], x: int) -> int:
    result = 0
    for coefficient in reversed(coefficients):  # Horner
        result = (result * x + coefficient) % PRIME
    return result


def _interpolate(points: list[tuple[int, int]], at: int) -> int:
    """The Lagrange interpolation of ``points`` evaluated at ``at``."""
    total = 0
    for i, (x_i, y_i) in enumerate(points):
        numerator, denominator = 1, 1
        for j, (x_j, _) in enumerate(points):
            if i != j:
                numerator = numerator * (at - x_j) % PRIME
                denominator = denominator * (x_i - x_j) % PRIME
        total = (total + y_i * numerator * pow(denominator, -1, PRIME)) % PRIME
    return total
