"""Tensors on the wire (protocol.md §9, §14.2): JSON descriptors + raw little-endian bytes.

This module owns :class:`TensorDesc` and the two directions of the tensor codec:
:func:`encode_tensors` turns named numpy arrays into descriptors and zero-copy body parts;
:func:`decode_tensors` validates untrusted descriptors and a body and returns read-only
numpy views on it. Validation follows §9 and §14.2: an exact dtype allowlist, 1-8
dimensions of 1..2^31-1, element counts in Python integers, ``nbytes`` exact and within
limits *before* the payload is touched, body length equal to the sum, finite floats, bools
0/1, shapes checked against the expected signature (batch dimension against
``max_batch``). Every refusal raises :class:`~ionn_net.errors.TensorError`. No pickle.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ionn_net.config import Limits
from ionn_net.errors import TensorError

__all__ = ["DTYPES", "MAX_DIM", "MAX_NDIM", "TensorDesc", "decode_tensors", "encode_tensors"]

#: The §9.1 allowlist: wire name -> little-endian numpy dtype.
DTYPES: Mapping[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "float64": np.dtype("<f8"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "bool": np.dtype("?"),
}
_FLOATS = frozenset({"float32", "float16", "float64"})
MAX_NDIM = 8
MAX_DIM = 2**31 - 1
_REF = re.compile(r"^[A-Za-z0-9_.\-]{1,64}:(0|[1-9][0-9]{0,5})$")  # §10.1.4
_DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorDesc:
    """One tensor's descriptor (§9.2): reference, dtype name, shape and byte length."""

    ref: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "nbytes": self.nbytes,
        }

    @classmethod
    def from_json(cls, obj: object, *, max_tensor_bytes: int) -> TensorDesc:
        """Validate one untrusted descriptor object (§9.2, §14.2)."""
        if not isinstance(obj, dict):
            raise TensorError(f"tensor descriptor: expected an object, got {type(obj).__name__}")
        ref = obj.get("ref")
        if not isinstance(ref, str) or not _REF.match(ref):
            raise TensorError(f"tensor descriptor: expected ref '<layer>:<index>', got {ref!r:.80}")
        dtype = obj.get("dtype")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise TensorError(
                f"tensor {ref}: expected dtype in {sorted(DTYPES)}, got {dtype!r:.40}"
            )
        shape = _check_shape(ref, obj.get("shape"))
        nbytes = obj.get("nbytes")
        count = 1
        for dim in shape:
            count *= dim  # Python ints: no overflow (§9.2)
        expected = DTYPES[dtype].itemsize * count
        if type(nbytes) is not int or nbytes != expected:
            raise TensorError(
                f"tensor {ref}: expected nbytes {expected} for {dtype}{list(shape)}, got {nbytes!r}"
            )
        if nbytes > max_tensor_bytes:
            raise TensorError(
                f"tensor {ref}: expected at most {max_tensor_bytes} bytes, got {nbytes}"
            )
        return cls(ref=ref, dtype=dtype, shape=shape, nbytes=nbytes)


def _check_shape(ref: str, shape: object) -> tuple[int, ...]:
    if not isinstance(shape, list) or not 1 <= len(shape) <= MAX_NDIM:
        raise TensorError(
            f"tensor {ref}: expected a shape list of 1-{MAX_NDIM} dims, got {shape!r:.80}"
        )
    for dim in shape:
        if type(dim) is not int or not 1 <= dim <= MAX_DIM:
            raise TensorError(
                f"tensor {ref}: expected dims in 1..{MAX_DIM}, got {dim!r:.40} in shape"
            )
    return tuple(shape)


def _wire_dtype(ref: str, arr: np.ndarray[Any, Any]) -> tuple[str, np.dtype[Any]]:
    kind = arr.dtype
    name = "bool" if kind == np.bool_ else kind.name
    wire = DTYPES.get(name)
    if wire is None or kind.kind not in "fiub":
        raise TensorError(f"tensor {ref}: expected a dtype in {sorted(DTYPES)}, got {kind}")
    return name, wire


def encode_tensors(
    tensors: Mapping[str, np.ndarray[Any, Any]], *, limits: Limits = _DEFAULT_LIMITS
) -> tuple[list[dict[str, Any]], list[memoryview]]:
    """Descriptors (JSON-ready, in mapping order) and body parts for ``tensors``.

    The parts are zero-copy views when an array already is C-contiguous little-endian;
    the body is their concatenation (send each part with ``send_data``). Refuses what a
    receiver would refuse (dtype, rank, size, non-finite floats) with :class:`TensorError`.
    """
    descs: list[dict[str, Any]] = []
    parts: list[memoryview] = []
    total = 0
    for ref, value in tensors.items():
        if not isinstance(ref, str) or not _REF.match(ref):
            raise TensorError(f"tensor ref: expected '<layer>:<index>', got {ref!r:.80}")
        arr = np.asarray(value)
        name, wire = _wire_dtype(ref, arr)
        if not 1 <= arr.ndim <= MAX_NDIM or 0 in arr.shape:
            raise TensorError(f"tensor {ref}: expected 1-8 non-empty dims, got shape {arr.shape}")
        if name in _FLOATS and not np.isfinite(arr).all():
            raise TensorError(f"tensor {ref}: expected finite values, got NaN or infinity")
        data = np.ascontiguousarray(arr, dtype=wire)
        if data.nbytes > limits.max_tensor_bytes:
            raise TensorError(
                f"tensor {ref}: expected at most {limits.max_tensor_bytes} bytes, got {data.nbytes}"
            )
        total += data.nbytes
        descs.append(
            TensorDesc(ref=ref, dtype=name, shape=tuple(data.shape), nbytes=data.nbytes).to_json()
        )
        parts.append(data.data.cast("B"))
    if total > limits.max_message_size:
        raise TensorError(
            f"tensors: expected at most {limits.max_message_size} bytes in total, got {total}"
        )
    return descs, parts


def decode_tensors(
    descs: object,
    body: bytes | bytearray | memoryview,
    *,
    limits: Limits = _DEFAULT_LIMITS,
    expected: Mapping[str, Sequence[int | None]] | None = None,
) -> dict[str, np.ndarray[Any, Any]]:
    """Validate ``descs`` (untrusted JSON) and ``body``; return read-only arrays by ref.

    ``expected`` maps each reference the receiver expects to its full shape, batch
    dimension first (its value is ignored: the batch is checked against
    ``limits.max_batch``). When given, the references must be exactly its keys (§9.4).
    """
    parsed = _parse_descs(descs, limits)
    if expected is not None:
        _check_signature(parsed, expected, limits.max_batch)
    total = sum(d.nbytes for d in parsed)
    if len(body) != total:
        raise TensorError(f"tensor body: expected {total} bytes (sum of nbytes), got {len(body)}")
    out: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    for d in parsed:
        arr = np.frombuffer(
            body, dtype=DTYPES[d.dtype], count=d.nbytes // DTYPES[d.dtype].itemsize, offset=offset
        ).reshape(d.shape)
        offset += d.nbytes
        _check_values(d, arr)
        out[d.ref] = arr
    return out


def _parse_descs(descs: object, limits: Limits) -> list[TensorDesc]:
    if not isinstance(descs, list):
        raise TensorError(f"tensors: expected a list of descriptors, got {type(descs).__name__}")
    parsed = [TensorDesc.from_json(d, max_tensor_bytes=limits.max_tensor_bytes) for d in descs]
    refs = [d.ref for d in parsed]
    if len(set(refs)) != len(refs):
        raise TensorError(f"tensors: expected distinct refs, got duplicates in {refs!r:.200}")
    total = sum(d.nbytes for d in parsed)
    if total > limits.max_message_size:
        raise TensorError(
            f"tensors: expected at most {limits.max_message_size} bytes in total, got {total}"
        )
    return parsed


def _check_signature(
    parsed: list[TensorDesc], expected: Mapping[str, Sequence[int | None]], max_batch: int
) -> None:
    got = {d.ref for d in parsed}
    if got != set(expected):
        raise TensorError(
            f"tensors: expected refs {sorted(expected)!r:.200}, got {sorted(got)!r:.200}"
        )
    for d in parsed:
        want = tuple(expected[d.ref])
        if len(want) != len(d.shape) or tuple(want[1:]) != d.shape[1:]:
            raise TensorError(
                f"tensor {d.ref}: expected shape {list(want)} (batch first), got {list(d.shape)}"
            )
        if d.shape[0] > max_batch:
            raise TensorError(f"tensor {d.ref}: expected batch <= {max_batch}, got {d.shape[0]}")


def _check_values(d: TensorDesc, arr: np.ndarray[Any, Any]) -> None:
    if d.dtype in _FLOATS:
        if not np.isfinite(arr).all():
            raise TensorError(f"tensor {d.ref}: expected finite values, got NaN or infinity")
    elif d.dtype == "bool" and (arr.view(np.uint8) > 1).any():
        raise TensorError(f"tensor {d.ref}: expected bool bytes 0 or 1, got other values")
