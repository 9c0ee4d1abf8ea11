"""Shamir t-of-n sharing over 2^521 − 1: any t shares reconstruct, fewer are refused, and
shares off the polynomial are caught."""

from __future__ import annotations

import itertools
import secrets

import pytest

from ztfl.aggregation.secagg import SecAggRefusal, SecAggRefusalReason
from ztfl.aggregation.secagg.shamir import (
    PRIME,
    decode_share,
    encode_share,
    reconstruct_secret,
    split_secret,
)


@pytest.mark.parametrize(("threshold", "num_shares"), [(2, 3), (3, 5), (6, 10)])
def test_every_subset_of_t_shares_reconstructs_a_256_bit_secret(
    threshold: int, num_shares: int
) -> None:
    secret = secrets.randbits(256) | 1 << 255
    shares = split_secret(secret, threshold=threshold, xs=list(range(1, num_shares + 1)))

    for subset in itertools.combinations(shares.items(), threshold):
        assert reconstruct_secret(dict(subset), threshold=threshold) == secret


def test_fewer_than_t_shares_are_refused() -> None:
    shares = split_secret(12345, threshold=3, xs=[1, 2, 3, 4])

    with pytest.raises(SecAggRefusal) as refused:
        reconstruct_secret({1: shares[1], 2: shares[2]}, threshold=3)

    assert refused.value.reason is SecAggRefusalReason.BELOW_THRESHOLD


def test_a_share_off_the_polynomial_is_caught_when_more_than_t_arrive() -> None:
    shares = split_secret(secrets.randbits(256), threshold=3, xs=[1, 2, 3, 4, 5])
    shares[5] = (shares[5] + 1) % PRIME

    with pytest.raises(SecAggRefusal) as refused:
        reconstruct_secret(shares, threshold=3)

    assert refused.value.reason is SecAggRefusalReason.BAD_SHARE


def test_share_encoding_round_trips_and_refuses_out_of_field_values() -> None:
    assert decode_share(encode_share(PRIME - 1)) == PRIME - 1

    with pytest.raises(SecAggRefusal) as refused:
        decode_share((PRIME).to_bytes(66, "big"))

    assert refused.value.reason is SecAggRefusalReason.MALFORMED
