"""Gaussian noise for the aggregate, drawn from a cryptographically secure generator.

The noise is what makes the aggregate differentially private, so an attacker who can
predict it can subtract it. It therefore never comes from the global numpy RNG or
torch's default generator (Mersenne Twister / Philox, seedable and guessable), but from
a numpy ``Generator`` over randomgen's ChaCha20 bit generator (Bernstein 2008) keyed
with 256 fresh bits from the operating system (``secrets.token_bytes``).

Floating-point caveat (Mironov 2012, "On significance of the least significant bits
for differential privacy"): a textbook floating-point Gaussian sample does not cover
the reals evenly; which low-order bits are reachable depends on the value the noise
was added to, so an exact release of ``value + noise`` can leak ``value``. What we do:
sample in float64 and round the noise to the model's dtype (float32 as a rule), which
discards most of the low bits the attack reads. What we do not do: snapping or a
discrete Gaussian mechanism (Canonne et al. 2020) with exact rounding guarantees; that
is future work, and until then the guarantee is the accountant's ε for idealised real
arithmetic.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence

import numpy as np
import torch
from randomgen import ChaCha  # type: ignore[import-untyped]

KEY_BYTES = 32
"""Length of a ChaCha20 key: 256 bits."""

CHACHA_ROUNDS = 20
"""Full-strength ChaCha20; fewer rounds trade security for speed, which we do not want."""


def secure_generator(seed: bytes | None = None) -> np.random.Generator:
    """Return a numpy ``Generator`` over a ChaCha20 bit generator.

    Args:
        seed: a 32-byte key, for tests and for replaying a recorded run only; with
            a fixed key the noise is predictable to anyone who holds it, which voids
            the privacy guarantee. ``None`` (the default and the only production
            value) draws a fresh 256-bit key from ``secrets.token_bytes``.

    Returns:
        A generator whose ``bit_generator`` is ``randomgen.ChaCha`` with 20 rounds.
    """
    if seed is None:
        key_bytes = secrets.token_bytes(KEY_BYTES)
    elif isinstance(seed, bytes) and len(seed) == KEY_BYTES:
        key_bytes = seed
    else:
        raise ValueError(f"seed must be None or exactly {KEY_BYTES} bytes")
    key = int.from_bytes(key_bytes, "big")
    return np.random.Generator(ChaCha(key=key, rounds=CHACHA_ROUNDS))


def gaussian_noise(
    shape: Sequence[int],
    std: float,
    *,
    generator: np.random.Generator,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw i.i.d. N(0, std²) noise of ``shape``, sampled in float64, then cast.

    Args:
        shape: the tensor shape, e.g. ``(d,)`` for a flattened model update.
        std: the standard deviation, ``noise_multiplier × sensitivity``; finite, ≥ 0.
        generator: from :func:`secure_generator`; required so that no call can fall
            back to a default (insecure) generator.
        dtype: the model's floating dtype; the float64 sample is rounded to it.
        device: where the returned tensor lives (sampling itself is on the CPU).

    Returns:
        A new tensor of ``shape``, ``dtype`` on ``device``.
    """
    if not isinstance(generator, np.random.Generator):
        raise TypeError("generator must be a numpy Generator from secure_generator()")
    if not isinstance(generator.bit_generator, ChaCha):
        raise TypeError("generator must be built on ChaCha; use secure_generator()")
    std = float(std)
    if not math.isfinite(std) or std < 0.0:
        raise ValueError(f"std must be finite and >= 0, got {std}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    size = tuple(int(n) for n in shape)
    sample = generator.standard_normal(size=size, dtype=np.float64) * std
    return torch.from_numpy(sample).to(device=device, dtype=dtype)
