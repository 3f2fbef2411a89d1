"""protocol.md §9: tensor dtypes, descriptors, payload layout and signature checks.

Payloads are built here with ``struct`` (little-endian, row-major) independently of the library.
"""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest

from ionn_net.config import Limits
from ionn_net.errors import TensorError
from ionn_net.tensors import decode_tensors, encode_tensors

WIRE = {  # §9.1: dtype string -> struct code (little-endian)
    "float32": "f",
    "float16": "e",
    "float64": "d",
    "int8": "b",
    "uint8": "B",
    "int16": "h",
    "int32": "i",
    "int64": "q",
    "bool": "?",
}


def desc(ref: str, dtype: str, shape: list[int], nbytes: int | None = None) -> dict[str, object]:
    count = 1
    for d in shape:
        count *= d
    size = struct.calcsize("<" + WIRE.get(dtype, "B")) * count
    return {
        "ref": ref,
        "dtype": dtype,
        "shape": shape,
        "nbytes": size if nbytes is None else nbytes,
    }


@pytest.mark.spec("9.1")
@pytest.mark.parametrize("dtype", list(WIRE))
def test_every_allowed_dtype_decodes_little_endian(dtype: str) -> None:
    values = [1, 0, 1, 1, 0, 1] if dtype == "bool" else [1, 2, 3, -4, 5, 6]
    if dtype == "uint8":
        values = [1, 2, 3, 250, 5, 6]
    code = WIRE[dtype]
    body = struct.pack("<" + code * 6, *values)
    out = decode_tensors([desc("x:0", dtype, [2, 3])], body)
    arr = out["x:0"]
    assert arr.shape == (2, 3) and arr.dtype.byteorder in ("<", "=", "|")
    assert arr.tolist() == np.array(values).reshape(2, 3).astype(arr.dtype).tolist()


@pytest.mark.spec("9.1")
@pytest.mark.parametrize(
    "dtype", [">f4", "<f4", "f4", "V4", "S1", "U1", "O", "Float32", "bfloat16", "complex64", "", 4]
)
def test_other_dtype_strings_are_refused(dtype: object) -> None:
    d = {"ref": "x:0", "dtype": dtype, "shape": [1], "nbytes": 4}
    with pytest.raises(TensorError):
        decode_tensors([d], b"\0\0\0\0")


@pytest.mark.spec("9.2")
def test_element_count_uses_arbitrary_precision() -> None:
    """8 dims of 2^31-1: a 64-bit product would wrap; the true nbytes is astronomically large."""
    shape = [2**31 - 1] * 8
    wrapped = (4 * (2**31 - 1) ** 8) % 2**64
    for nbytes in (wrapped, 0, 4, 2**63):
        with pytest.raises(TensorError):
            decode_tensors([desc("x:0", "float32", shape, nbytes)], b"")


@pytest.mark.spec("9.2")
@pytest.mark.parametrize(
    ("shape", "nbytes"),
    [([2, 3], 23), ([2, 3], 25), ([0], 0), ([], 4), ([1] * 9, 4), ([-1, 2], 8), ([2.0], 8)],
)
def test_nbytes_and_shape_rules(shape: list[int], nbytes: int) -> None:
    d = {"ref": "x:0", "dtype": "float32", "shape": shape, "nbytes": nbytes}
    with pytest.raises(TensorError):
        decode_tensors([d], b"\0" * max(nbytes, 0))


@pytest.mark.spec("9.2")
def test_nbytes_checked_against_limits_before_the_payload() -> None:
    limits = Limits(max_tensor_bytes=1 << 20)
    big = desc("x:0", "float32", [1, 1024, 1024])  # 4 MiB, above the 1 MiB limit
    tracemalloc.start()
    try:
        with pytest.raises(TensorError):
            decode_tensors([big], b"", limits=limits)  # no payload at all: limits come first
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    ok = desc("x:0", "float32", [1, 256, 1024])  # exactly 1 MiB
    assert decode_tensors([ok], bytes(1 << 20), limits=limits)["x:0"].shape == (1, 256, 1024)


@pytest.mark.spec("9.3")
@pytest.mark.parametrize("delta", [-1, 1, 100])
def test_body_length_must_equal_the_sum_of_nbytes(delta: int) -> None:
    descs = [desc("a:0", "float32", [2, 2]), desc("b:1", "int8", [3])]
    with pytest.raises(TensorError):
        decode_tensors(descs, b"\0" * (16 + 3 + delta))


@pytest.mark.spec("9.3")
def test_payloads_are_concatenated_in_order_row_major_without_padding() -> None:
    body = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0) + struct.pack("<3h", -1, 256, 7)
    out = decode_tensors([desc("a:0", "float32", [2, 2]), desc("b:1", "int16", [3])], body)
    assert out["a:0"].tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert out["b:1"].tolist() == [-1, 256, 7]
    descs, parts = encode_tensors(
        {"a:0": np.asfortranarray(np.array([[1, 2], [3, 4]], dtype=">f4")), "b:1": out["b:1"]}
    )
    assert b"".join(bytes(p) for p in parts) == body  # big-endian, Fortran order in; LE C out
    assert [d["dtype"] for d in descs] == ["float32", "int16"]


@pytest.mark.spec("9.3")
@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_refused(dtype: str, bad: float) -> None:
    code = WIRE[dtype]
    body = struct.pack("<" + code * 3, 1.0, bad, 2.0)
    with pytest.raises(TensorError):
        decode_tensors([desc("x:0", dtype, [3])], body)
    with pytest.raises(TensorError):  # the sender side refuses them as well
        encode_tensors({"x:0": np.array([1.0, bad], dtype=dtype)})


@pytest.mark.spec("9.3")
def test_bool_bytes_are_zero_or_one() -> None:
    assert decode_tensors([desc("x:0", "bool", [2])], b"\x00\x01")["x:0"].tolist() == [False, True]
    with pytest.raises(TensorError):
        decode_tensors([desc("x:0", "bool", [2])], b"\x00\x02")


@pytest.mark.spec("9.4")
def test_shapes_are_checked_against_the_expected_signature() -> None:
    body = bytes(4 * 8)
    expected = {"x:0": (None, 8)}
    assert decode_tensors([desc("x:0", "float32", [1, 8])], body, expected=expected)
    for wrong in ([1, 4, 2], [8], [1, 7]):
        d = desc("x:0", "float32", wrong)
        with pytest.raises(TensorError):
            decode_tensors([d], bytes(int(d["nbytes"])), expected=expected)  # type: ignore[call-overload]
    with pytest.raises(TensorError):  # a reference the receiver does not expect
        decode_tensors([desc("y:0", "float32", [1, 8])], body, expected=expected)


@pytest.mark.spec("9.4")
def test_batch_dimension_is_checked_against_the_batch_limit() -> None:
    expected = {"x:0": (None, 8)}
    two = desc("x:0", "float32", [2, 8])
    with pytest.raises(TensorError):
        decode_tensors([two], bytes(64), expected=expected)  # default max_batch 1
    out = decode_tensors([two], bytes(64), expected=expected, limits=Limits(max_batch=2))
    assert out["x:0"].shape == (2, 8)
