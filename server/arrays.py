"""Conversion between Flower ``ArrayRecord``s and the flat vectors and (n, d) matrix the
aggregation engine works on.

Updates are decoded straight into their row of one preallocated matrix: each
array's bytes are viewed in place (``np.frombuffer`` after a checked ``.npy``
header) and copied once into the matrix, so the only copy of an update is the
stacked matrix itself. The header is parsed and compared with what the message
declares and with the global model before a byte is copied, so a lying or
malformed update is refused, never half-loaded.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from ztfl.aggregation import ModelSpec, Refusal, RefusalReason, check_layout

NUMPY_STYPE = "numpy.ndarray"


def declared_layout(record: ArrayRecord) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every array as the sender declared it, in record order."""
    return [(name, tuple(array.shape), array.dtype) for name, array in record.items()]


def decode_into(name: str, array: Array, out: np.ndarray) -> Refusal | None:
    """Decode one serialised array into ``out`` (a 1-D slice of a matrix row).

    Refuses, with a reason, anything whose ``.npy`` header disagrees with the
    declared dtype and shape or with ``out``: Fortran order, object dtypes, a
    payload of the wrong length.
    """
    if array.stype != NUMPY_STYPE:
        return Refusal(RefusalReason.UNDECODABLE, f"{name}: serialisation {array.stype!r}")
    data = array.data
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            return Refusal(RefusalReason.UNDECODABLE, f"{name}: .npy version {version}")
    except Exception as error:
        # The header is untrusted text parsed by numpy (tokenize + ast.literal_eval),
        # which fails with more than ValueError: an unterminated literal raises
        # tokenize.TokenError, deep nesting RecursionError. Any of them is a refusal,
        # never an exception that ends the round.
        return Refusal(RefusalReason.UNDECODABLE, f"{name}: bad .npy header ({error})")
    if fortran_order:
        return Refusal(RefusalReason.UNDECODABLE, f"{name}: Fortran-ordered array")
    if (
        np.dtype(dtype) != out.dtype
        or not _same_dtype(dtype, array.dtype)
        or tuple(shape) != tuple(array.shape)
    ):
        return Refusal(
            RefusalReason.UNDECODABLE,
            f"{name}: payload is {np.dtype(dtype)}{tuple(shape)}, "
            f"declared {array.dtype}{tuple(array.shape)}",
        )
    count = int(np.prod(shape, dtype=np.int64))
    offset = stream.tell()
    if count != out.size or len(data) - offset != count * out.dtype.itemsize:
        return Refusal(
            RefusalReason.UNDECODABLE,
            f"{name}: payload holds {len(data) - offset} bytes, "
            f"expected {count * out.dtype.itemsize}",
        )
    out[:] = np.frombuffer(data, dtype=out.dtype, count=count, offset=offset)
    return None


def _same_dtype(payload: np.dtype, declared: str) -> bool:
    """Whether the payload's dtype is the one the sender declared (any spelling of it)."""
    try:
        return bool(np.dtype(declared) == payload)
    except (TypeError, ValueError, SyntaxError):
        return False


def decode_record_into(record: ArrayRecord, spec: ModelSpec, row: np.ndarray) -> Refusal | None:
    """Check a whole update record against the model and decode it into ``row``."""
    refusal = check_layout(spec, declared_layout(record))
    if refusal is not None:
        return refusal
    for (name, array), segment in zip(record.items(), _segments(spec, row), strict=True):
        refusal = decode_into(name, array, segment)
        if refusal is not None:
            return refusal
    return None


def vector_to_record(vector: torch.Tensor, spec: ModelSpec) -> ArrayRecord:
    """Split a flat model vector into the named, shaped arrays of ``spec``."""
    flat = vector.detach().to("cpu").numpy()
    arrays = {
        tensor.name: Array(segment.reshape(tensor.shape))
        for tensor, segment in zip(spec.tensors, _segments(spec, flat), strict=True)
    }
    return ArrayRecord(arrays)


def weights_to_vector(weights: dict[str, np.ndarray], spec: ModelSpec) -> torch.Tensor:
    """Flatten named arrays, in ``spec`` order, into one vector of the model dtype."""
    vector = np.empty(spec.num_parameters, dtype=spec.dtype)
    for tensor, segment in zip(spec.tensors, _segments(spec, vector), strict=True):
        segment[:] = np.asarray(weights[tensor.name], dtype=spec.dtype).reshape(-1)
    return torch.from_numpy(vector)


def vector_to_weights(vector: torch.Tensor, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Named, shaped copies of a flat model vector's segments."""
    flat = vector.detach().to("cpu").numpy()
    return {
        tensor.name: segment.reshape(tensor.shape).copy()
        for tensor, segment in zip(spec.tensors, _segments(spec, flat), strict=True)
    }


def _segments(spec: ModelSpec, flat: np.ndarray) -> Iterator[np.ndarray]:
    """Consecutive views of ``flat``, one per tensor of ``spec``."""
    offset = 0
    for tensor in spec.tensors:
        yield flat[offset : offset + tensor.num_parameters]
        offset += tensor.num_parameters
