"""Tensors on the wire (protocol.md §9, §14.2): JSON descriptors + raw little-endian bytes.

This module owns :class:`TensorDesc` and the two directions of the tensor codec:
:func:`encode_tensors` turns named numpy arrays into descriptors and zero-copy body parts;
:func:`decode_tensors` validates untrusted descriptors and a body and returns read-only
numpy views on it. Validation follows §9 and §14.2: an exact dtype allowlist, 1-8
dimensions of 1..2^31-1, element counts in Python integers, ``nbytes`` exact and within
limits *before* the payload is touched, body length equal to the sum, finite floats, bools
0/1. Every refusal raises :class:`~ionn_net.errors.TensorError`. No pickle.

It also owns the one check of a message's tensors against the boundary its receiver
expects (§9.4, §10.7): :func:`boundary_signature` lists what a set of layers reads or
writes (from the receiver's own graph) and :func:`check_signature` compares descriptors
with it (names, shapes beyond the batch, dtypes, the batch against ``max_batch``),
raising :class:`SignatureError`. The server checks a query's inputs with it, the client
a result's outputs, both through ``decode_tensors(..., expected=...)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ionn_net.config import Limits
from ionn_net.errors import TensorError
from ionn_net.model.graph import LayerGraph, TensorRef

__all__ = [
    "DTYPES",
    "MAX_DIM",
    "MAX_NDIM",
    "SignatureError",
    "TensorDesc",
    "TensorSpec",
    "boundary_signature",
    "check_signature",
    "decode_tensors",
    "encode_tensors",
]

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


class SignatureError(TensorError):
    """Well-formed tensors that are not the ones the receiver expects (§9.4): another set
    of references, another shape beyond the batch, another dtype, or a batch above the
    limit. A server answers it ``bad_request`` (§10.7), unlike a malformed or non-finite
    tensor (``bad_tensor``, §9)."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One tensor a receiver expects: its reference, its shape without the batch
    dimension and its dtype (None: any §9.1 dtype)."""

    ref: str
    shape: tuple[int | None, ...]
    dtype: str | None = None


def boundary_signature(graph: LayerGraph, refs: Sequence[TensorRef]) -> tuple[TensorSpec, ...]:
    """What ``refs`` (boundary tensors of a layer set, :meth:`LayerGraph.boundary`) look
    like on the wire according to ``graph``."""
    return tuple(
        TensorSpec(
            str(r), tuple(graph[r.layer].output_shapes[r.index]), graph[r.layer].output_dtype
        )
        for r in refs
    )


def check_signature(
    descs: Sequence[TensorDesc], signature: Sequence[TensorSpec], *, max_batch: int
) -> None:
    """§9.4: ``descs`` are exactly the tensors of ``signature`` (any order), each of its
    shape beyond the batch dimension and of its dtype, the batch at most ``max_batch``;
    else :class:`SignatureError` naming the tensor, what was expected and what arrived."""
    want = {s.ref: s for s in signature}
    got = {d.ref for d in descs}
    if got != set(want):
        raise SignatureError(
            f"tensors: expected refs {sorted(want)!r:.200}, got {sorted(got)!r:.200}"
        )
    for d in descs:
        spec = want[d.ref]
        shown = f"[1..{max_batch}{''.join(f', {n}' for n in spec.shape)}]"
        if len(spec.shape) + 1 != len(d.shape) or spec.shape != d.shape[1:]:
            raise SignatureError(f"tensor {d.ref}: expected shape {shown}, got {list(d.shape)}")
        if d.shape[0] > max_batch:
            raise SignatureError(
                f"tensor {d.ref}: expected batch <= {max_batch} (shape {shown}), "
                f"got {list(d.shape)}"
            )
        if spec.dtype is not None and d.dtype != spec.dtype:
            raise SignatureError(f"tensor {d.ref}: expected {spec.dtype}, got {d.dtype}")


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
    expected: Sequence[TensorSpec] | Mapping[str, Sequence[int | None]] | None = None,
) -> dict[str, np.ndarray[Any, Any]]:
    """Validate ``descs`` (untrusted JSON) and ``body``; return read-only arrays by ref.

    ``expected`` is the signature the receiver expects (:func:`check_signature`, before
    the payload is touched): :class:`TensorSpec` s, or a mapping of each reference to its
    full shape, batch dimension first (the batch value is ignored: it is checked against
    ``limits.max_batch``) when any dtype will do.
    """
    parsed = _parse_descs(descs, limits)
    if expected is not None:
        check_signature(parsed, _as_signature(expected), max_batch=limits.max_batch)
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


def _as_signature(
    expected: Sequence[TensorSpec] | Mapping[str, Sequence[int | None]],
) -> Sequence[TensorSpec]:
    if isinstance(expected, Mapping):
        return [TensorSpec(ref, tuple(shape[1:])) for ref, shape in expected.items()]
    return expected


def _check_values(d: TensorDesc, arr: np.ndarray[Any, Any]) -> None:
    if d.dtype in _FLOATS:
        if not np.isfinite(arr).all():
            raise TensorError(f"tensor {d.ref}: expected finite values, got NaN or infinity")
    elif d.dtype == "bool" and (arr.view(np.uint8) > 1).any():
        raise TensorError(f"tensor {d.ref}: expected bool bytes 0 or 1, got other values")
