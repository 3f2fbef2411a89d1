"""Weight stages (ionn_net.model.stages): a blob as a base plus refinements, rebuilt bit for
bit; bases of bounded error; every malformed stage refused with a typed error."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.helpers.manifests import tiny_cnn

from ionn_net.errors import SpecError, StageDigestError, StageError, StageOrderError
from ionn_net.model.graph import TensorRef
from ionn_net.model.spec import LayerSpec, WeightSpec, parse_manifest
from ionn_net.model.stages import (
    RESIDUAL_BLOCK,
    STAGE_ENCODINGS,
    STAGED_PRECISIONS,
    StageDecoder,
    StageSpec,
    decode_base,
    encode_layer,
    output_channel_axes,
    reconstruct,
    stage_encodings,
    stage_sizes,
)

F32 = np.finfo(np.float32)


def _spec(cls: str, arrays: list[np.ndarray], name: str = "layer") -> tuple[LayerSpec, bytes]:
    parts = [a.astype(a.dtype.newbyteorder("<"), order="C").tobytes() for a in arrays]
    weights = tuple(
        WeightSpec(a.dtype.name, tuple(a.shape), hashlib.sha256(p).hexdigest())
        for a, p in zip(arrays, parts, strict=True)
    )
    blob = b"".join(parts)
    spec = LayerSpec(
        name, cls, {}, (TensorRef("x", 0),), weights, hashlib.sha256(blob).hexdigest(), len(blob)
    )
    return spec, blob


def _rand(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _layers(rng: np.random.Generator) -> list[tuple[str, list[np.ndarray]]]:
    """One layer of every class whose weights the stages treat differently."""
    return [
        ("Conv2D", [_rand(rng, 3, 3, 5, 7), _rand(rng, 7)]),
        ("Conv2DTranspose", [_rand(rng, 3, 3, 6, 4), _rand(rng, 6)]),
        ("DepthwiseConv2D", [_rand(rng, 3, 3, 5, 2)]),
        ("SeparableConv2D", [_rand(rng, 3, 3, 4, 2), _rand(rng, 1, 1, 8, 6), _rand(rng, 6)]),
        ("Dense", [_rand(rng, 600, 500, scale=0.05), _rand(rng, 500)]),  # > one residual block
        ("BatchNormalization", [_rand(rng, 9), _rand(rng, 9), _rand(rng, 9), _rand(rng, 9) ** 2]),
        ("LayerNormalization", [_rand(rng, 4, 5), _rand(rng, 4, 5)]),
        ("Normalization", [_rand(rng, 3), _rand(rng, 3) ** 2, np.array(17, dtype=np.int64)]),
    ]


def _round_trip(spec: LayerSpec, blob: bytes, precision: str) -> list[np.ndarray]:
    enc = encode_layer(spec, blob, precision)
    assert tuple(s.encoding for s in enc.specs) == stage_encodings(spec, precision)
    assert tuple(map(len, enc.stages)) == stage_sizes(spec, precision)
    assert reconstruct(spec, precision, enc.stages) == blob
    decoder = StageDecoder(spec, enc.specs)
    base = decoder.accept(0, enc.stages[0])
    if len(enc.stages) == 1:  # no kernel: the base is the blob
        assert enc.stages[0] == blob and decoder.exact
        exact = base
    else:
        assert not decoder.exact and decoder.next_stage == 1
        exact = decoder.accept(1, enc.stages[1])
    assert decoder.exact and decoder.blob == blob
    assert b"".join(a.astype(a.dtype.newbyteorder("<")).tobytes() for a in exact) == blob
    for got, want in zip(decode_base(spec, precision, enc.stages[0]), base, strict=True):
        assert np.array_equal(got, want)
    return base


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("precision", STAGED_PRECISIONS)
def test_every_layer_kind_round_trips_bit_exactly(precision: str) -> None:
    rng = np.random.default_rng(1)
    for cls, arrays in _layers(rng):
        spec, blob = _spec(cls, arrays)
        base = _round_trip(spec, blob, precision)
        assert [a.shape for a in base] == [a.shape for a in arrays]
        assert [a.dtype for a in base] == [a.dtype for a in arrays]
        assert all(np.isfinite(a).all() for a in base if a.dtype.kind == "f")


def _awkward_values(rng: np.random.Generator) -> np.ndarray:
    """Denormals, signed zeros, the largest and smallest magnitudes, values that round up
    to the bfloat16 overflow pattern, and ordinary ones, in one kernel."""
    big = [0.0, -0.0, F32.max, -F32.max, np.nextafter(F32.max, 0), 3.3961e38, -3.3961e38]
    tiny = [F32.tiny, -F32.tiny, F32.smallest_subnormal, -F32.smallest_subnormal]
    other = [np.float32(1e-41), np.float32(-3e-39), 1.0, -1.0, 65504.0, 1e-30, -1e30]
    special = np.array([*big, *tiny, *other], dtype=np.float32)
    x = _rand(rng, 4, 4, 3, 6)
    flat = x.reshape(-1)
    flat[: special.size] = special
    x[..., 1] = np.float32(1e-42) * np.sign(x[..., 1])  # a channel of denormals only
    x[..., 2] = 0.0  # an all-zero channel
    x[..., 3] = -0.0
    x[..., 4] = _rand(rng, 4, 4, 3) * np.float32(1e30)
    return x


@pytest.mark.parametrize("precision", STAGED_PRECISIONS)
def test_awkward_values_round_trip_and_bases_stay_finite(precision: str) -> None:
    rng = np.random.default_rng(2)
    kernel = _awkward_values(rng)
    bias = np.array([0.0, -0.0, F32.max, -F32.max, 1e-45, 3.3961e38], dtype=np.float32)
    spec, blob = _spec("Conv2D", [kernel, bias])
    base = _round_trip(spec, blob, precision)
    assert all(np.isfinite(a).all() for a in base)
    assert base[1].tobytes() == bias.tobytes()  # vectors travel whole
    if precision == "16bit-first":  # the rounded-up maximum: largest finite bfloat16
        assert base[0].reshape(-1)[5] == np.float32(3.3895314e38)
        assert base[0].reshape(-1)[6] == -np.float32(3.3895314e38)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=300), st.integers(1, 4))
def test_any_finite_bit_pattern_round_trips(patterns: list[int], channels: int) -> None:
    bits = np.array(patterns, dtype=np.uint32)
    values = bits.view(np.float32)
    values = np.where(np.isfinite(values), values, np.float32(0.5))
    values = np.resize(values, (len(patterns), channels)).astype(np.float32)
    for precision in STAGED_PRECISIONS:
        spec, blob = _spec("Dense", [values])
        _round_trip(spec, blob, precision)


def test_a_parsed_manifest_round_trips() -> None:
    obj, builder = tiny_cnn(seed=3)
    for spec in parse_manifest(obj).layers:
        if spec.weights:
            for precision in STAGED_PRECISIONS:
                _round_trip(spec, builder.blobs[str(spec.blob_sha256)], precision)


# -- what a base is ------------------------------------------------------------------------


def test_bf16_base_error_is_half_a_bfloat16_step() -> None:
    rng = np.random.default_rng(4)
    kernel = _rand(rng, 3, 3, 8, 16) * np.exp(_rand(rng, 3, 3, 8, 16) * 5)
    spec, blob = _spec("Conv2D", [kernel])
    (base,) = decode_base(spec, "16bit-first", encode_layer(spec, blob, "16bit-first").stages[0])
    rel = np.abs(base.astype(np.float64) - kernel) / np.abs(kernel)
    assert rel.max() <= 2.0**-8 * (1 + 1e-6)
    assert (base.view(np.uint32) & 0xFFFF == 0).all()


def test_int8_base_is_per_output_channel_and_within_half_a_step() -> None:
    rng = np.random.default_rng(5)
    kernel = _rand(rng, 3, 3, 8, 16)
    kernel[..., 3] *= 1000.0  # one loud output channel must not coarsen the others
    spec, blob = _spec("Conv2D", [kernel])
    (base,) = decode_base(spec, "8bit-first", encode_layer(spec, blob, "8bit-first").stages[0])
    peak = np.abs(kernel).max(axis=(0, 1, 2))
    err = np.abs(base - kernel).max(axis=(0, 1, 2))
    assert (err <= peak / 254 * (1 + 1e-5)).all()
    assert len(np.unique(base[..., 0])) > 50  # the quiet channels keep their resolution


def test_output_channel_axes_follow_the_class_and_weight_index() -> None:
    assert output_channel_axes("Conv2D", 0, (3, 3, 4, 8)) == (3, 4)
    assert output_channel_axes("Conv2DTranspose", 0, (3, 3, 8, 4)) == (2, 3)
    assert output_channel_axes("DepthwiseConv2D", 0, (3, 3, 4, 2)) == (2, 4)
    assert output_channel_axes("SeparableConv2D", 1, (1, 1, 8, 6)) == (3, 4)
    assert output_channel_axes("Dense", 0, (10, 5)) == (1, 2)
    assert output_channel_axes("Dense", 1, (5,)) is None  # bias
    assert output_channel_axes("BatchNormalization", 0, (5,)) is None
    assert output_channel_axes("Conv2D", 0, (3, 3)) is None  # not the rank the table knows


def test_stage_sizes_are_a_half_and_about_a_quarter_of_the_blob() -> None:
    rng = np.random.default_rng(6)
    n = 3 * 3 * 32 * 64
    spec, blob = _spec("Conv2D", [_rand(rng, 3, 3, 32, 64), _rand(rng, 64)])
    assert len(blob) == 4 * n + 4 * 64
    assert stage_sizes(spec, "16bit-first") == (2 * n + 4 * 64, 2 * n)
    assert stage_sizes(spec, "8bit-first") == (n + 4 * 64 + 4 * 64, 4 * n)
    assert stage_encodings(spec, "8bit-first") == STAGE_ENCODINGS["8bit-first"]
    bn, bn_blob = _spec("BatchNormalization", [_rand(rng, 8) for _ in range(4)])
    for precision in STAGED_PRECISIONS:
        assert stage_sizes(bn, precision) == (len(bn_blob),)
        assert stage_encodings(bn, precision) == STAGE_ENCODINGS[precision][:1]


def test_the_module_is_pure() -> None:
    code = (
        "import sys, ionn_net.model.stages\n"
        "bad = [m for m in ('keras', 'tensorflow') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- refusals --------------------------------------------------------------------------------


def _staged(precision: str = "8bit-first") -> tuple[LayerSpec, bytes, tuple[bytes, ...]]:
    rng = np.random.default_rng(7)
    spec, blob = _spec("Dense", [_rand(rng, 40, 30), _rand(rng, 30)])
    enc = encode_layer(spec, blob, precision)
    return spec, blob, enc.stages


def _declare(stages: tuple[bytes, ...], precision: str) -> list[StageSpec]:
    return [
        StageSpec(enc, len(s), hashlib.sha256(s).hexdigest())
        for enc, s in zip(STAGE_ENCODINGS[precision], stages, strict=True)
    ]


def test_non_finite_weights_are_refused_as_today() -> None:
    for bad in (np.nan, np.inf, -np.inf):
        kernel = np.ones((4, 3), np.float32)
        kernel[1, 2] = bad
        spec, blob = _spec("Dense", [kernel])
        for precision in STAGED_PRECISIONS:
            with pytest.raises(SpecError, match="finite"):
                encode_layer(spec, blob, precision)


@pytest.mark.parametrize("precision", STAGED_PRECISIONS)
def test_stages_out_of_order_are_refused_without_a_state_change(precision: str) -> None:
    spec, blob, stages = _staged(precision)
    decoder = StageDecoder(spec, _declare(stages, precision))
    with pytest.raises(StageOrderError, match="expected stage 0"):
        decoder.accept(1, stages[1])
    assert decoder.next_stage == 0
    decoder.accept(0, stages[0])
    with pytest.raises(StageOrderError, match="expected stage 1"):
        decoder.accept(0, stages[0])
    decoder.accept(1, stages[1])
    with pytest.raises(StageOrderError, match="received already"):
        decoder.accept(2, stages[1])
    assert decoder.blob == blob


@pytest.mark.parametrize("precision", STAGED_PRECISIONS)
def test_a_corrupted_stage_is_refused_and_the_right_one_then_accepted(precision: str) -> None:
    spec, blob, stages = _staged(precision)
    decoder = StageDecoder(spec, _declare(stages, precision))
    flipped = bytearray(stages[0])
    flipped[len(flipped) // 2] ^= 0x10
    with pytest.raises(StageDigestError):
        decoder.accept(0, bytes(flipped))
    decoder.accept(0, stages[0])
    flipped = bytearray(stages[1])
    flipped[3] ^= 0x01
    with pytest.raises(StageDigestError):
        decoder.accept(1, bytes(flipped))
    assert decoder.next_stage == 1 and not decoder.exact
    assert decoder.accept(1, stages[1]) and decoder.blob == blob


@pytest.mark.parametrize("precision", STAGED_PRECISIONS)
def test_a_declared_but_wrong_refinement_fails_the_blob_digest(precision: str) -> None:
    """The client declared a refinement that does not rebuild its blob: its own SHA-256
    matches, the rebuilt blob's does not; the layer stays at its base."""
    spec, _, stages = _staged(precision)
    wrong = bytearray(stages[1])
    wrong[-1] ^= 0x40
    declared = _declare((stages[0], bytes(wrong)), precision)
    decoder = StageDecoder(spec, declared)
    decoder.accept(0, stages[0])
    with pytest.raises(StageDigestError, match="rebuilt blob"):
        decoder.accept(1, bytes(wrong))
    assert decoder.next_stage == 1 and decoder.blob is None
    with pytest.raises(StageDigestError, match="rebuilt blob"):
        reconstruct(spec, precision, (stages[0], bytes(wrong)))


def _bad_base(precision: str, patch: str) -> bytes:
    _, _, stages = _staged(precision)
    base = bytearray(stages[0])
    if patch == "nan-high":  # a bfloat16 NaN pattern (the kernel's first value)
        base[0:2] = (0x7FC1).to_bytes(2, "little")
    elif patch == "inf-whole":  # the bias, whole at the end of the base
        base[-4:] = np.float32(np.inf).tobytes()
    elif patch == "inf-scale":
        base[0:4] = np.float32(np.inf).tobytes()
    elif patch == "denormal-scale":
        base[0:4] = np.float32(1e-40).tobytes()
    elif patch == "huge-scale":  # 127 x scale overflows
        base[0:4] = np.float32(F32.max / 2).tobytes()
    elif patch == "q-128":
        base[4 * 30] = 0x80
    return bytes(base)


@pytest.mark.parametrize(
    ("precision", "patch", "match"),
    [
        ("16bit-first", "nan-high", "finite"),
        ("16bit-first", "inf-whole", "finite"),
        ("8bit-first", "inf-whole", "finite"),
        ("8bit-first", "inf-scale", "scales"),
        ("8bit-first", "denormal-scale", "scales"),
        ("8bit-first", "huge-scale", "scales"),
        ("8bit-first", "q-128", r"\[-127, 127\]"),
    ],
)
def test_a_base_that_would_not_decode_to_finite_values_is_refused(
    precision: str, patch: str, match: str
) -> None:
    spec, _, stages = _staged(precision)
    base = _bad_base(precision, patch)
    decoder = StageDecoder(spec, _declare((base, stages[1]), precision))
    with pytest.raises(StageError, match=match):
        decoder.accept(0, base)
    assert decoder.next_stage == 0
    with pytest.raises(StageError, match=match):
        decode_base(spec, precision, base)


def test_sizes_and_encodings_are_checked_before_decoding() -> None:
    spec, _, stages = _staged("8bit-first")
    declared = _declare(stages, "8bit-first")
    with pytest.raises(StageError, match="expected sizes"):
        StageDecoder(spec, [declared[0], StageSpec("int8-residual", 12, declared[1].sha256)])
    with pytest.raises(StageError, match="encodings"):
        StageDecoder(spec, [declared[0], StageSpec("bf16-low", declared[1].size, "0" * 64)])
    with pytest.raises(StageError, match="encodings"):
        StageDecoder(spec, declared[:1])
    decoder = StageDecoder(spec, declared)
    for short in (stages[0][:-1], stages[0] + b"\0", b""):
        with pytest.raises(StageError, match="bytes"):
            decoder.accept(0, short)
    with pytest.raises(StageError, match="expected bytes"):
        decoder.accept(0, "text")  # type: ignore[arg-type]
    with pytest.raises(StageError, match="bytes"):
        decode_base(spec, "8bit-first", stages[0][:-4])
    with pytest.raises(StageError, match="stages"):
        reconstruct(spec, "8bit-first", stages[:1])
    with pytest.raises(StageError, match="precision"):
        encode_layer(spec, b"", "exact")
    with pytest.raises(StageError, match="precision"):
        stage_sizes(spec, "4bit-first")


def test_a_layer_spec_that_does_not_add_up_is_refused() -> None:
    spec, _, _ = _staged()
    lying = LayerSpec(
        spec.name, spec.cls, {}, spec.inbound, spec.weights, spec.blob_sha256, spec.blob_size + 4
    )
    with pytest.raises(StageError, match="blob size"):
        stage_sizes(lying, "8bit-first")
    huge = WeightSpec("float32", (1 << 20, 1 << 20), "0" * 64)
    with pytest.raises(StageError, match="in limits"):
        stage_sizes(LayerSpec("d", "Dense", {}, (), (huge,), "0" * 64, 1 << 42), "8bit-first")
    with pytest.raises(StageError, match="with weights"):
        stage_sizes(LayerSpec("a", "Add", {}, ()), "16bit-first")


@settings(max_examples=80, deadline=None)
@given(st.binary(min_size=0, max_size=4000), st.sampled_from(STAGED_PRECISIONS))
def test_arbitrary_bytes_only_ever_raise_stage_errors(junk: bytes, precision: str) -> None:
    spec, _, stages = _staged(precision)
    size = len(stages[0])
    data = (junk * (size // max(len(junk), 1) + 1))[:size] if junk else bytes(size)
    decoder = StageDecoder(spec, _declare((data, stages[1]), precision))
    try:
        decoder.accept(0, data)
    except StageError:
        return
    with contextlib.suppress(StageError):
        decoder.accept(1, stages[1])


def test_stage_specs_parse_from_untrusted_json() -> None:
    spec = StageSpec("int8-channel", 10, "a" * 64)
    assert StageSpec.from_json_obj(spec.to_json_obj()) == spec
    for bad in (
        [],
        {"encoding": "int8-channel", "size": 10},
        {"encoding": "int4", "size": 10, "sha256": "a" * 64},
        {"encoding": "int8-channel", "size": -1, "sha256": "a" * 64},
        {"encoding": "int8-channel", "size": True, "sha256": "a" * 64},
        {"encoding": "int8-channel", "size": 10, "sha256": "A" * 64},
    ):
        with pytest.raises(StageError):
            StageSpec.from_json_obj(bad)


def test_residual_blocks_cover_more_than_one_block() -> None:
    """The residual is ordered per block: a tensor spanning several blocks, with the last
    one partial, rebuilds exactly (covers the block arithmetic)."""
    rng = np.random.default_rng(8)
    n = 2 * RESIDUAL_BLOCK + 12345
    spec, blob = _spec("Dense", [_rand(rng, n // 5, 5)])
    _round_trip(spec, blob, "8bit-first")
