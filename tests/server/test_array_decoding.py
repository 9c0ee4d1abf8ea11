"""Decoding Flower ``Array``s straight into a matrix row, and the vector ↔ record conversions."""

from __future__ import annotations

import io
import struct
import tracemalloc

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from ztfl.aggregation import ModelSpec, RefusalReason
from ztfl.server.arrays import (
    NUMPY_STYPE,
    declared_layout,
    decode_into,
    decode_record_into,
    vector_to_record,
    vector_to_weights,
    weights_to_vector,
)


def npy_bytes(array: np.ndarray) -> bytes:
    """What ``np.save`` writes for ``array`` (the payload Flower sends)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_with_header(header: str, payload: bytes = b"\0" * 24) -> bytes:
    """A version 1.0 ``.npy`` file with a hand-written header."""
    encoded = header.encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(encoded)) + encoded + payload


def raw_array(data: bytes, *, dtype: str = "float32", shape: tuple[int, ...] = (2, 3)) -> Array:
    """An Array whose declared dtype and shape are given independently of its bytes."""
    return Array(dtype=dtype, shape=shape, stype=NUMPY_STYPE, data=data)


def decode_reason(array: Array, out: np.ndarray | None = None) -> RefusalReason | None:
    refusal = decode_into("w", array, np.empty(6, dtype=np.float32) if out is None else out)
    return None if refusal is None else refusal.reason


VALUES = np.arange(6, dtype=np.float32).reshape(2, 3)


# ------------------------------------------------------------------ happy path


def test_decode_into_writes_the_values_into_the_destination_row() -> None:
    matrix = np.zeros((2, 6), dtype=np.float32)
    refusal = decode_into("w", Array(VALUES), matrix[1])
    assert refusal is None
    np.testing.assert_array_equal(matrix[1], VALUES.reshape(-1))
    np.testing.assert_array_equal(matrix[0], np.zeros(6, dtype=np.float32))


def test_decode_into_reads_the_payload_in_place_without_replacing_it() -> None:
    array = Array(VALUES)
    payload = array.data
    decode_into("w", array, np.empty(6, dtype=np.float32))
    assert array.data is payload


def test_decode_into_allocates_no_copy_of_the_payload() -> None:
    # One million float32 values (4 MB): an intermediate array would show up
    # in numpy's traced allocations; a view of the payload does not.
    values = np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32)
    array = Array(values)
    out = np.empty(values.size, dtype=np.float32)
    tracemalloc.start()
    try:
        refusal = decode_into("w", array, out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refusal is None
    np.testing.assert_array_equal(out, values)
    assert peak < values.nbytes // 10


def test_decode_into_accepts_a_version_2_header() -> None:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, VALUES, version=(2, 0))
    out = np.empty(6, dtype=np.float32)
    assert decode_into("w", raw_array(buffer.getvalue()), out) is None
    np.testing.assert_array_equal(out, VALUES.reshape(-1))


# ------------------------------------------------------------------ refusals


def test_decode_into_refuses_a_non_numpy_serialisation() -> None:
    array = Array(dtype="float32", shape=(2, 3), stype="torch.Tensor", data=npy_bytes(VALUES))
    refusal = decode_into("w", array, np.empty(6, dtype=np.float32))
    assert refusal is not None
    assert refusal.reason is RefusalReason.UNDECODABLE
    assert "torch.Tensor" in refusal.detail


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage bytes", b"\x93NUMPY", b"\x93NUMPY\x01\x00\xff\x00{'descr'"],
    ids=["empty", "no-magic", "magic-only", "header-shorter-than-declared"],
)
def test_decode_into_refuses_a_garbage_header(data: bytes) -> None:
    assert decode_reason(raw_array(data)) is RefusalReason.UNDECODABLE


@pytest.mark.parametrize(
    "header",
    [
        "[1, 2]",
        "{'descr': '<f4'}",
        "{'descr': 'zz', 'fortran_order': False, 'shape': (2, 3)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2.0, 3)}",
        "__import__('os')",
    ],
    ids=["not-a-dict", "missing-keys", "bad-descr", "float-shape", "code"],
)
def test_decode_into_refuses_a_malformed_header_dictionary(header: str) -> None:
    assert decode_reason(raw_array(npy_with_header(header))) is RefusalReason.UNDECODABLE


@pytest.mark.parametrize(
    "header",
    ["{'descr': '<f4'", "{'descr': '<f4\\", "-" * 5000 + "1"],
    ids=["unterminated-brace", "unterminated-string", "deeply-nested"],
)
def test_decode_into_refuses_a_header_that_makes_numpys_parser_raise_other_errors(
    header: str,
) -> None:
    # Regression: numpy's header parser raised tokenize.TokenError and
    # RecursionError here, which escaped and ended the coordinator's round.
    assert decode_reason(raw_array(npy_with_header(header))) is RefusalReason.UNDECODABLE


def test_decode_into_refuses_an_unknown_npy_version() -> None:
    data = b"\x93NUMPY\x03\x00" + npy_bytes(VALUES)[8:]
    refusal = decode_into("w", raw_array(data), np.empty(6, dtype=np.float32))
    assert refusal is not None
    assert refusal.reason is RefusalReason.UNDECODABLE
    assert "version" in refusal.detail


def test_decode_into_refuses_a_fortran_ordered_payload() -> None:
    refusal = decode_into(
        "w", raw_array(npy_bytes(np.asfortranarray(VALUES))), np.empty(6, dtype=np.float32)
    )
    assert refusal is not None
    assert refusal.reason is RefusalReason.UNDECODABLE
    assert "Fortran" in refusal.detail


def test_decode_into_refuses_a_payload_dtype_other_than_the_declared_one() -> None:
    array = raw_array(npy_bytes(VALUES.astype(np.float64)), dtype="float32")
    assert decode_reason(array) is RefusalReason.UNDECODABLE


def test_decode_into_refuses_a_declared_dtype_other_than_the_payloads() -> None:
    # Regression: the payload was compared with the destination only, so a
    # float32 payload declared as float64 was accepted.
    array = raw_array(npy_bytes(VALUES), dtype="float64")
    assert decode_reason(array) is RefusalReason.UNDECODABLE


@pytest.mark.parametrize("declared", [",", "(99999999999,)f4", "no-such-dtype"])
def test_decode_into_refuses_an_unparseable_declared_dtype(declared: str) -> None:
    assert decode_reason(raw_array(npy_bytes(VALUES), dtype=declared)) is RefusalReason.UNDECODABLE


def test_decode_into_accepts_another_spelling_of_the_declared_dtype() -> None:
    assert decode_reason(raw_array(npy_bytes(VALUES), dtype="<f4")) is None


def test_decode_into_refuses_a_payload_shape_other_than_the_declared_one() -> None:
    array = raw_array(npy_bytes(VALUES.reshape(3, 2)), shape=(2, 3))
    refusal = decode_into("w", array, np.empty(6, dtype=np.float32))
    assert refusal is not None
    assert refusal.reason is RefusalReason.UNDECODABLE
    assert "(3, 2)" in refusal.detail
    assert "(2, 3)" in refusal.detail


def test_decode_into_refuses_a_big_endian_payload() -> None:
    array = raw_array(npy_bytes(VALUES.astype(">f4")), dtype="float32")
    assert decode_reason(array) is RefusalReason.UNDECODABLE


def test_decode_into_refuses_a_payload_for_a_destination_of_another_dtype() -> None:
    out = np.empty(6, dtype=np.float64)
    assert decode_reason(Array(VALUES), out) is RefusalReason.UNDECODABLE


def test_decode_into_refuses_a_payload_for_a_destination_of_another_size() -> None:
    out = np.empty(7, dtype=np.float32)
    assert decode_reason(Array(VALUES), out) is RefusalReason.UNDECODABLE


def test_decode_into_refuses_a_truncated_payload() -> None:
    refusal = decode_into("w", raw_array(npy_bytes(VALUES)[:-4]), np.empty(6, dtype=np.float32))
    assert refusal is not None
    assert refusal.reason is RefusalReason.UNDECODABLE
    assert "20 bytes, expected 24" in refusal.detail


def test_decode_into_refuses_an_over_long_payload() -> None:
    refusal = decode_into(
        "w", raw_array(npy_bytes(VALUES) + b"\0" * 4), np.empty(6, dtype=np.float32)
    )
    assert refusal is not None
    assert refusal.reason is RefusalReason.UNDECODABLE
    assert "28 bytes, expected 24" in refusal.detail


def test_decode_into_leaves_the_destination_untouched_when_it_refuses() -> None:
    out = np.full(6, 7.0, dtype=np.float32)
    decode_into("w", raw_array(npy_bytes(VALUES)[:-4]), out)
    np.testing.assert_array_equal(out, np.full(6, 7.0, dtype=np.float32))


# ------------------------------------------------------------------ whole records


def test_decode_record_into_fills_the_row_in_model_order(spec: ModelSpec) -> None:
    weight = np.arange(6, dtype=np.float32).reshape(3, 2)
    bias = np.array([10, 11, 12], dtype=np.float32)
    record = ArrayRecord({"fc.weight": Array(weight), "fc.bias": Array(bias)})
    row = np.empty(spec.num_parameters, dtype=np.float32)
    assert decode_record_into(record, spec, row) is None
    np.testing.assert_array_equal(row, np.concatenate([weight.reshape(-1), bias]))


def test_decode_record_into_refuses_a_lying_layout_before_copying_a_byte(spec: ModelSpec) -> None:
    record = ArrayRecord(
        {
            "fc.weight": Array(np.ones((3, 2), dtype=np.float32)),
            "fc.bias": Array(np.ones(4, dtype=np.float32)),
        }
    )
    row = np.full(spec.num_parameters, 7.0, dtype=np.float32)
    refusal = decode_record_into(record, spec, row)
    assert refusal is not None
    assert refusal.reason is RefusalReason.SHAPE_MISMATCH
    np.testing.assert_array_equal(row, np.full(spec.num_parameters, 7.0, dtype=np.float32))


def test_declared_layout_lists_names_shapes_and_dtypes_in_record_order() -> None:
    record = ArrayRecord(
        {"b": Array(np.zeros(2, dtype=np.float64)), "a": Array(np.zeros((1, 3), np.float32))}
    )
    assert declared_layout(record) == [("b", (2,), "float64"), ("a", (1, 3), "float32")]


# ------------------------------------------------------------------ vector ↔ record


def test_vector_to_record_splits_the_vector_into_the_named_shaped_arrays(spec: ModelSpec) -> None:
    vector = torch.arange(9, dtype=torch.float32)
    record = vector_to_record(vector, spec)
    assert list(record) == ["fc.weight", "fc.bias"]
    np.testing.assert_array_equal(
        record["fc.weight"].numpy(), np.arange(6, dtype=np.float32).reshape(3, 2)
    )
    np.testing.assert_array_equal(record["fc.bias"].numpy(), np.array([6, 7, 8], np.float32))


def test_weights_to_vector_follows_the_spec_order_not_the_dict_order(spec: ModelSpec) -> None:
    weights = {
        "fc.bias": np.array([6, 7, 8], dtype=np.float32),
        "fc.weight": np.arange(6, dtype=np.float32).reshape(3, 2),
    }
    vector = weights_to_vector(weights, spec)
    assert vector.dtype == torch.float32
    np.testing.assert_array_equal(vector.numpy(), np.arange(9, dtype=np.float32))


def test_weights_survive_a_round_trip_through_a_vector_and_a_record(spec: ModelSpec) -> None:
    rng = np.random.default_rng(3)
    weights = {
        "fc.weight": rng.standard_normal((3, 2)).astype(np.float32),
        "fc.bias": rng.standard_normal(3).astype(np.float32),
    }
    vector = weights_to_vector(weights, spec)
    row = np.empty(spec.num_parameters, dtype=np.float32)
    assert decode_record_into(vector_to_record(vector, spec), spec, row) is None
    back = vector_to_weights(torch.from_numpy(row), spec)
    assert list(back) == ["fc.weight", "fc.bias"]
    for name, values in weights.items():
        np.testing.assert_array_equal(back[name], values)


def test_vector_to_weights_returns_copies_independent_of_the_vector(spec: ModelSpec) -> None:
    vector = torch.zeros(9, dtype=torch.float32)
    weights = vector_to_weights(vector, spec)
    vector += 1
    np.testing.assert_array_equal(weights["fc.bias"], np.zeros(3, dtype=np.float32))
