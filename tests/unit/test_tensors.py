"""ionn_net.tensors: descriptors + little-endian payloads (§9), validation per §14.2."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ionn_net.config import Limits
from ionn_net.errors import TensorError
from ionn_net.tensors import (
    DTYPES,
    SignatureError,
    TensorDesc,
    TensorSpec,
    decode_tensors,
    encode_tensors,
)


def _round_trip(arrays: dict[str, np.ndarray[Any, Any]], **kw: Any) -> dict[str, np.ndarray]:
    descs, parts = encode_tensors(arrays)
    return decode_tensors(descs, b"".join(parts), **kw)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_every_allowed_dtype_round_trips(dtype: str) -> None:
    arr = (np.arange(24) % 2 if dtype == "bool" else np.arange(24)).astype(dtype).reshape(2, 3, 4)
    out = _round_trip({"layer_1:0": arr})
    np.testing.assert_array_equal(out["layer_1:0"], arr)
    assert out["layer_1:0"].dtype == arr.dtype and out["layer_1:0"].shape == (2, 3, 4)


def test_wire_bytes_are_little_endian_row_major() -> None:
    big_endian = np.array([[1.0, 2.0]], dtype=">f4")
    descs, parts = encode_tensors({"x:0": big_endian, "y:1": np.array([[1, 2]], dtype=np.int16)})
    assert descs == [
        {"ref": "x:0", "dtype": "float32", "shape": [1, 2], "nbytes": 8},
        {"ref": "y:1", "dtype": "int16", "shape": [1, 2], "nbytes": 4},
    ]
    assert b"".join(parts) == np.array([1.0, 2.0], "<f4").tobytes() + b"\x01\x00\x02\x00"


def test_encoding_is_zero_copy_for_contiguous_little_endian_arrays() -> None:
    arr = np.zeros((1, 1000), dtype=np.float32)
    _, parts = encode_tensors({"a:0": arr})
    arr[0, 0] = 5.0
    assert np.frombuffer(parts[0], np.float32)[0] == 5.0


def test_decoded_arrays_are_read_only_views() -> None:
    out = _round_trip({"a:0": np.ones((1, 4), np.float32)})
    assert not out["a:0"].flags.writeable


def _desc(**over: object) -> dict[str, object]:
    base: dict[str, object] = {"ref": "conv1:0", "dtype": "float32", "shape": [1, 2], "nbytes": 8}
    base.update(over)
    return base


@pytest.mark.parametrize(
    ("desc", "text"),
    [
        (_desc(dtype=">f4"), "dtype"),
        (_desc(dtype="V4"), "dtype"),
        (_desc(dtype="S1"), "dtype"),
        (_desc(dtype="complex64"), "dtype"),
        (_desc(shape=[]), "1-8 dims"),
        (_desc(shape=[1] * 9, nbytes=4), "1-8 dims"),
        (_desc(shape=[1, 0], nbytes=0), "dims in 1.."),
        (_desc(shape=[1, -2]), "dims in 1.."),
        (_desc(shape=[1, 2.0]), "dims in 1.."),
        (_desc(shape=[1, True]), "dims in 1.."),
        (_desc(shape=[2**31, 2**31], nbytes=4 * 2**62), "dims in 1.."),
        (_desc(nbytes=9), "expected nbytes 8"),
        (_desc(nbytes=8.0), "expected nbytes 8"),
        (_desc(ref="no_index"), "ref"),
        (_desc(ref="bad name:0"), "ref"),
        (_desc(ref="x" * 65 + ":0"), "ref"),
        ("not an object", "object"),
    ],
)
def test_bad_descriptors_are_refused(desc: object, text: str) -> None:
    with pytest.raises(TensorError, match=text):
        decode_tensors([desc], bytes(8))


def test_sizes_are_checked_with_python_ints_before_reading() -> None:
    huge = _desc(shape=[65536, 65536, 65536], nbytes=4 * 65536**3)
    with pytest.raises(TensorError, match="at most"):
        decode_tensors([huge], b"")  # refused on nbytes, the body is never touched
    with pytest.raises(TensorError, match="at most 16 bytes"):
        decode_tensors(
            [_desc(shape=[1, 8], nbytes=32)], bytes(32), limits=Limits(max_tensor_bytes=16)
        )


def test_body_length_and_list_shape() -> None:
    with pytest.raises(TensorError, match="expected 8 bytes"):
        decode_tensors([_desc()], bytes(9))
    with pytest.raises(TensorError, match="list"):
        decode_tensors({"ref": "a:0"}, b"")
    with pytest.raises(TensorError, match="distinct"):
        decode_tensors([_desc(), _desc()], bytes(16))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_floats_are_refused_both_ways(bad: float) -> None:
    arr = np.array([[1.0, bad]], dtype=np.float32)
    with pytest.raises(TensorError, match="finite"):
        encode_tensors({"a:0": arr})
    with pytest.raises(TensorError, match="finite"):
        decode_tensors([_desc()], arr.tobytes())


def test_bool_bytes_must_be_zero_or_one() -> None:
    desc = _desc(dtype="bool", shape=[1, 2], nbytes=2)
    assert decode_tensors([desc], b"\x00\x01")["conv1:0"].tolist() == [[False, True]]
    with pytest.raises(TensorError, match="0 or 1"):
        decode_tensors([desc], b"\x00\x02")


def test_signature_and_batch_limit() -> None:
    descs = [_desc(shape=[1, 2])]
    out = decode_tensors(descs, bytes(8), expected={"conv1:0": (None, 2)})
    assert out["conv1:0"].shape == (1, 2)
    with pytest.raises(TensorError, match="expected shape"):
        decode_tensors(descs, bytes(8), expected={"conv1:0": (None, 3)})
    with pytest.raises(TensorError, match="expected refs"):
        decode_tensors(descs, bytes(8), expected={"other:0": (None, 2)})
    batch2 = [_desc(shape=[2, 2], nbytes=16)]
    with pytest.raises(TensorError, match="batch <= 1"):
        decode_tensors(batch2, bytes(16), expected={"conv1:0": (None, 2)})
    ok = decode_tensors(
        batch2, bytes(16), expected={"conv1:0": (None, 2)}, limits=Limits(max_batch=4)
    )
    assert ok["conv1:0"].shape == (2, 2)


def test_one_signature_check_serves_server_and_client() -> None:
    """References, shape beyond the batch, dtype and batch limit, against TensorSpecs; a
    mismatch is a SignatureError (bad_request at the server), a malformed or non-finite
    tensor a plain TensorError (bad_tensor)."""
    sig = [TensorSpec("conv1:0", (2,), "float32")]
    assert decode_tensors([_desc(shape=[1, 2])], bytes(8), expected=sig)["conv1:0"].shape == (1, 2)
    f64 = _desc(dtype="float64", shape=[1, 2], nbytes=16)
    with pytest.raises(SignatureError, match=r"conv1:0: expected float32, got float64"):
        decode_tensors([f64], bytes(16), expected=sig)
    assert decode_tensors([f64], bytes(16), expected=[TensorSpec("conv1:0", (2,))])
    with pytest.raises(SignatureError, match=r"expected shape \[1\.\.1, 2\], got \[1, 3\]"):
        decode_tensors([_desc(shape=[1, 3], nbytes=12)], bytes(12), expected=sig)
    with pytest.raises(SignatureError, match=r"expected batch <= 1 \(shape \[1\.\.1, 2\]\)"):
        decode_tensors([_desc(shape=[2, 2], nbytes=16)], bytes(16), expected=sig)
    with pytest.raises(SignatureError, match="expected refs"):
        decode_tensors([_desc(ref="x:0", shape=[1, 2])], bytes(8), expected=sig)
    nan = np.full((1, 2), np.nan, np.float32).tobytes()
    with pytest.raises(TensorError, match="finite") as caught:
        decode_tensors([_desc(shape=[1, 2])], nan, expected=sig)
    assert not isinstance(caught.value, SignatureError)


def test_encode_refuses_what_a_receiver_would_refuse() -> None:
    with pytest.raises(TensorError, match="dtype"):
        encode_tensors({"a:0": np.zeros((1, 2), np.uint16)})
    with pytest.raises(TensorError, match="dims"):
        encode_tensors({"a:0": np.float32(1.0)})  # type: ignore[dict-item]
    with pytest.raises(TensorError, match="ref"):
        encode_tensors({"a": np.zeros((1, 2), np.float32)})
    with pytest.raises(TensorError, match="in total"):
        encode_tensors(
            {"a:0": np.zeros((1, 2 << 20), np.float32)}, limits=Limits(max_message_size=1 << 20)
        )


def test_descriptor_json_round_trip() -> None:
    desc = TensorDesc(ref="a.b-c_d:12", dtype="int8", shape=(1, 3), nbytes=3)
    assert TensorDesc.from_json(desc.to_json(), max_tensor_bytes=10) == desc
