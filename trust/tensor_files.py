"""One tensor, one canonical safetensors file: the unit that is hashed, signed and stored.

A tensor's SHA-256 is the SHA-256 of its canonical single-tensor safetensors
encoding: an 8-byte little-endian header length, the JSON header
``{"<name>":{"dtype":"F32","shape":[…],"data_offsets":[0,<nbytes>]}}`` (ASCII,
no spaces, padded with spaces to a multiple of 8 bytes) and the tensor's
little-endian C-order bytes. So one hash covers name, dtype, shape and bytes,
a client computes it from the arrays it received without writing a file, and
the model store's file ``tensors/000003.safetensors`` hashes to exactly the
manifest's value — OpenSSF model-signing's per-file digests and ztfl's
per-tensor digests are the same numbers, and no extra pass over the weights is
needed for either (docs/decisions/0007).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "SAFETENSORS_DTYPES",
    "TensorFileError",
    "canonical_tensor",
    "read_tensor_file",
    "tensor_file_name",
    "tensor_header",
    "tensor_nbytes",
    "tensor_sha256",
    "write_tensor_file",
]

# numpy dtype name -> safetensors dtype code (numpy has no bfloat16 or float8).
SAFETENSORS_DTYPES: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "uint16": "U16",
    "int16": "I16",
    "uint32": "U32",
    "int32": "I32",
    "uint64": "U64",
    "int64": "I64",
    "float16": "F16",
    "float32": "F32",
    "float64": "F64",
}
MAX_TENSOR_NAME_LENGTH = 1024
MAX_TENSOR_DIMENSIONS = 32
# Below this many bytes in total, hashing in threads costs more than it saves.
_PARALLEL_MIN_BYTES = 1 << 20

_T = TypeVar("_T")
_R = TypeVar("_R")


class TensorFileError(ValueError):
    """A tensor file that is missing, truncated, corrupted or not in canonical form."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def tensor_file_name(index: int) -> str:
    """The stored file of the ``index``-th tensor, e.g. ``tensors/000003.safetensors``."""
    return f"tensors/{index:06d}.safetensors"


def require_tensor_name(name: object) -> str:
    """A tensor name: a non-empty string without control characters, not ``__metadata__``."""
    if not isinstance(name, str):
        raise TypeError(f"tensor name: expected a string, got {type(name).__name__}")
    if not name or len(name) > MAX_TENSOR_NAME_LENGTH:
        raise ValueError(f"tensor name {name[:40]!r}: must be 1 to {MAX_TENSOR_NAME_LENGTH} long")
    if any(ord(character) < 0x20 or ord(character) == 0x7F for character in name):
        raise ValueError(f"tensor name {name[:40]!r}: contains control characters")
    if name == "__metadata__":
        raise ValueError("tensor name '__metadata__' is reserved by safetensors")
    return name


def require_dtype(dtype: object) -> str:
    """A dtype name ztfl signs (see SAFETENSORS_DTYPES)."""
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise ValueError(f"dtype {str(dtype)[:40]!r} is not one of {', '.join(SAFETENSORS_DTYPES)}")
    return dtype


def require_shape(shape: object) -> tuple[int, ...]:
    """A shape: at most 32 non-negative integer dimensions."""
    if not isinstance(shape, list | tuple):
        raise TypeError(f"shape: expected a list of integers, got {type(shape).__name__}")
    if len(shape) > MAX_TENSOR_DIMENSIONS:
        raise ValueError(f"shape: more than {MAX_TENSOR_DIMENSIONS} dimensions")
    for dimension in shape:
        if isinstance(dimension, bool) or not isinstance(dimension, int):
            raise TypeError(f"shape: dimension {dimension!r} is not an integer")
        if not 0 <= dimension < 2**48:
            raise ValueError(f"shape: dimension {dimension} is out of range")
    return tuple(shape)


def tensor_nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor's data."""
    count = 1
    for dimension in shape:
        count *= dimension
    return count * np.dtype(dtype).itemsize


def tensor_header(name: str, dtype: str, shape: tuple[int, ...]) -> bytes:
    """The canonical safetensors prefix (length + padded JSON header) of one tensor."""
    nbytes = tensor_nbytes(dtype, shape)
    header = json.dumps(
        {
            name: {
                "dtype": SAFETENSORS_DTYPES[dtype],
                "shape": list(shape),
                "data_offsets": [0, nbytes],
            }
        },
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode("ascii")
    header += b" " * (-(8 + len(header)) % 8)  # data starts 8-byte aligned
    return len(header).to_bytes(8, "little") + header


def canonical_tensor(name: str, array: np.ndarray) -> tuple[str, tuple[int, ...], memoryview]:
    """(dtype name, shape, little-endian C-order bytes) of ``array``; copies only if it must."""
    require_tensor_name(name)
    if not isinstance(array, np.ndarray):
        raise TypeError(f"tensor {name!r}: expected a numpy array, got {type(array).__name__}")
    dtype = array.dtype
    if dtype.name not in SAFETENSORS_DTYPES or dtype.fields is not None:
        raise ValueError(
            f"tensor {name!r}: dtype {dtype} is not one of {', '.join(SAFETENSORS_DTYPES)}"
        )
    if dtype.byteorder == ">":
        array = array.astype(dtype.newbyteorder("<"))
    contiguous = np.ascontiguousarray(array)
    flat: npt.NDArray[np.uint8] = contiguous.reshape(-1).view(np.uint8)
    return dtype.name, tuple(int(d) for d in array.shape), flat.data


def tensor_sha256(name: str, array: np.ndarray) -> tuple[str, tuple[int, ...], str]:
    """(dtype name, shape, SHA-256 hex of the canonical safetensors encoding)."""
    dtype, shape, data = canonical_tensor(name, array)
    digest = hashlib.sha256(tensor_header(name, dtype, shape))
    digest.update(data)  # hashlib releases the GIL for large buffers
    return dtype, shape, digest.hexdigest()


def parallel_map(
    function: Callable[[_T], _R], items: Sequence[_T], sizes: Sequence[int]
) -> list[_R]:
    """``[function(item) for item in items]``, in threads when the work is large.

    The largest items start first so that two cores finish together; results
    keep the input order. Exceptions propagate from the first failing item.
    """
    workers = min(len(items), os.cpu_count() or 1)
    if workers <= 1 or sum(sizes) < _PARALLEL_MIN_BYTES:
        return [function(item) for item in items]
    order = sorted(range(len(items)), key=lambda index: -sizes[index])
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ztfl-hash") as pool:
        futures = {index: pool.submit(function, items[index]) for index in order}
        return [futures[index].result() for index in range(len(items))]


def write_tensor_file(path: Path, name: str, array: np.ndarray) -> str:
    """Write one tensor's canonical file, fsync it; returns the SHA-256 of what was written."""
    dtype, shape, data = canonical_tensor(name, array)
    header = tensor_header(name, dtype, shape)
    digest = hashlib.sha256(header)
    with open(path, "xb") as handle:
        handle.write(header)
        step = 64 << 20  # write and hash in 64 MiB pieces: each piece is hot in cache twice
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            handle.write(piece)
            digest.update(piece)
        handle.flush()
        os.fsync(handle.fileno())
    return digest.hexdigest()


def read_tensor_file(
    path: Path, name: str, dtype: str, shape: tuple[int, ...], sha256: str
) -> np.ndarray:
    """Read one tensor file, refusing any byte that differs from the expected record.

    The file is read once into the array's own buffer and hashed there; the
    returned array is a view of that buffer (no second copy).
    """
    header = tensor_header(name, dtype, shape)
    expected_size = len(header) + tensor_nbytes(dtype, shape)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < expected_size:
                raise TensorFileError(
                    path, f"truncated: {size} bytes, expected {expected_size} (tensor {name!r})"
                )
            if size > expected_size:
                raise TensorFileError(
                    path, f"{size - expected_size} unexpected trailing bytes (tensor {name!r})"
                )
            buffer = np.empty(expected_size, dtype=np.uint8)
            if handle.readinto(buffer.data) != expected_size:
                raise TensorFileError(path, f"short read (tensor {name!r}); file changed?")
    except FileNotFoundError as error:
        raise TensorFileError(path, f"missing (tensor {name!r})") from error
    except OSError as error:
        raise TensorFileError(path, f"cannot read: {error.strerror or error}") from error
    if hashlib.sha256(buffer.data).hexdigest() != sha256:
        raise TensorFileError(
            path, f"corrupted: SHA-256 differs from the manifest (tensor {name!r})"
        )
    if bytes(buffer[: len(header)]) != header:
        raise TensorFileError(path, f"header is not the canonical header of tensor {name!r}")
    view: np.ndarray = buffer[len(header) :].view(np.dtype(dtype).newbyteorder("<"))
    return view.reshape(shape)
