"""Hypothesis fuzz of the tensor decoder (protocol.md §9, §14.2): random descriptors and
bodies raise only :class:`TensorError`, never allocate beyond the declared limits, and
anything accepted is exactly what the descriptors said (dtype, shape, finite values).

The unit tests in tests/unit/test_tensors.py check named cases; this module throws
arbitrary JSON-shaped values and byte strings at ``decode_tensors``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ionn_net.config import Limits
from ionn_net.errors import TensorError
from ionn_net.tensors import DTYPES, decode_tensors, encode_tensors

LIMITS = Limits(max_tensor_bytes=1 << 16, max_message_size=1 << 20, max_batch=4)

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=12)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=True, allow_infinity=True),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
dims = st.integers(-3, 2**63) | st.sampled_from([0, 1, 2, 3, 2**31 - 1, 2**31, 2**62])
dtype_names = st.sampled_from([*DTYPES, "<f4", ">f4", "V4", "U1", "S2", "object", "float128"])


@st.composite
def descriptors(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-formed descriptors with one or two fields perturbed."""
    shape = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    count = int(np.prod(shape))
    desc: dict[str, Any] = {
        "ref": draw(st.sampled_from(["x:0", "conv1:0", "a.b-c:12"])),
        "dtype": dtype,
        "shape": shape,
        "nbytes": DTYPES[dtype].itemsize * count,
    }
    for key in draw(st.lists(st.sampled_from(["ref", "dtype", "shape", "nbytes", "extra"]))):
        desc[key] = draw(
            {
                "ref": st.text(max_size=70) | json_values,
                "dtype": dtype_names | json_values,
                "shape": st.lists(dims, max_size=10) | json_values,
                "nbytes": st.integers(-1, 2**64) | json_values,
                "extra": json_values,
            }[key]
        )
    return desc


def _check_accepted(descs: Any, out: dict[str, np.ndarray], body: bytes) -> None:
    assert isinstance(descs, list) and len(out) == len(descs)
    total = 0
    for d in descs:
        arr = out[d["ref"]]
        assert arr.dtype == DTYPES[d["dtype"]]
        assert list(arr.shape) == d["shape"] and arr.nbytes == d["nbytes"] <= (1 << 16)
        assert not arr.flags.writeable
        if arr.dtype.kind == "f":
            assert np.isfinite(arr).all()
        total += arr.nbytes
    assert total == len(body)


@settings(max_examples=250, deadline=None)
@given(
    descs=st.lists(descriptors(), max_size=3) | json_values,
    body=st.binary(max_size=512),
)
def test_random_descriptors_and_bodies_raise_only_tensor_error(descs: Any, body: bytes) -> None:
    try:
        out = decode_tensors(descs, body, limits=LIMITS)
    except TensorError:
        return
    _check_accepted(descs, out, body)


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    dtype=st.sampled_from(sorted(DTYPES)),
    data=st.data(),
)
def test_valid_encodings_with_random_bodies(shape: list[int], dtype: str, data: Any) -> None:
    """Correct descriptors with arbitrary bytes of the right length: only NaN/Inf (or bool
    bytes other than 0/1) may be refused, and accepted values round-trip through encode."""
    nbytes = DTYPES[dtype].itemsize * int(np.prod(shape))
    body = data.draw(st.binary(min_size=nbytes, max_size=nbytes))
    desc = {"ref": "x:0", "dtype": dtype, "shape": shape, "nbytes": nbytes}
    try:
        out = decode_tensors([desc], body, limits=LIMITS)
    except TensorError as exc:
        assert "finite" in str(exc) or "bool" in str(exc), exc
        return
    _check_accepted([desc], out, body)
    descs, parts = encode_tensors(out)
    assert b"".join(parts) == body and descs[0]["shape"] == shape
