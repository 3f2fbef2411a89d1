"""Weight stages: a layer's blob sent as a low-precision base, then refined to the exact blob.

A layer's blob (protocol.md §10.3.1: its weights concatenated in order, little-endian, C
order) may travel as a *base stage*, from which a server builds the layer at a lower
precision, followed by *refinement stages*, after which the server holds the exact blob
again, bit for bit, checked against the blob's SHA-256 as a whole blob is (§10.5.3). Each
stage has its own SHA-256 (:class:`StageSpec`), which is all a server can check before the
last stage arrives; a decoded base must also be finite. Pure: numpy and hashlib only.

Precisions (:data:`STAGE_ENCODINGS`) and the byte layout of their stages. A *kernel* is a
weight in the table below; every other weight (biases, BatchNormalization,
LayerNormalization and Normalization vectors, int64 counts) travels whole in the base:
together they are 0.01-2% of a model's bytes (keras.applications), and they are where low
precision hurts most (a BatchNormalization moving mean is subtracted from activations of a
similar size, so its relative error is amplified; a moving variance spans orders of
magnitude, and per-element scales would be the floats themselves).

``16bit-first``
  0 ``bf16-round``: for each weight in order: a kernel as the high 16 bits of each value's
    bit pattern, rounded to nearest on the pattern (``hi + (lo >> 15)``: ties away from
    zero), uint16; any other weight whole. The high half is a bfloat16 (8 significant bits,
    relative error at most 2^-8). It decodes to the float32 ``hi << 16``, except that the
    patterns ``0x7f80``/``0xff80`` (a value within half a bfloat16 step of the float32
    maximum, rounded up) decode to the largest finite bfloat16 of that sign; every other
    pattern with all exponent bits set is refused.
  1 ``bf16-low``: for each kernel in order, the low 16 bits of each value, uint16. Exact
    pattern: ``((hi - (lo >> 15)) << 16) | lo``.

``8bit-first``
  0 ``int8-channel``: (a) for each kernel, its per-output-channel scales (float32, channel
    order); (b) for each kernel, ``q = round(x / scale)`` clipped to [-127, 127] (int8, C
    order); (c) every other weight whole, in order. A kernel value decodes to
    ``float32(q) * scale`` (one float32 multiplication). A scale is 0 or a normal float32
    with ``127 * scale`` finite, so a base is finite and never denormal: the same bits on
    every IEEE-754 machine, whether or not it flushes denormals.
  1 ``int8-residual``: for each kernel, per value the difference of the bit patterns (exact
    minus base) as a 32-bit two's complement integer ``d``, zigzag-mapped to ``(d << 1) ^
    (d >> 31)`` (uint32); within each block of :data:`RESIDUAL_BLOCK` consecutive values
    (C order) the residuals are ordered by ``|q|`` (stable sort): a small ``|q|`` leaves a
    long residual, and grouping residuals of one length lets zstd's entropy coder adapt to
    each (on the benchmark models, 1-2.5% fewer bytes than in C order and 4-5% fewer than
    an XOR of the patterns; BENCHMARKS.md, "Precision-first upload").

A layer without kernels (BatchNormalization, ...) has its base only: that stage is its
blob, byte for byte, and the layer is exact once it arrives. All integers and floats are
little-endian. Kernels and their output channel, from the layer class and the weight's
index in the manifest spec (the order of ``layer.get_weights()``,
:mod:`ionn_net.model.schema`):

=================  =====  =====================================  ===============
class              index  weight, shape                          channel axes
=================  =====  =====================================  ===============
Conv2D             0      kernel (kh, kw, in / groups, filters)  3
Conv2DTranspose    0      kernel (kh, kw, filters, in)           2
DepthwiseConv2D    0      kernel (kh, kw, in, multiplier)        2, 3
SeparableConv2D    0      depthwise kernel (kh, kw, in, mult)    2, 3
SeparableConv2D    1      pointwise kernel (1, 1, in * mult, f)  3
Dense              0      kernel (in, units)                     1
=================  =====  =====================================  ===============

(a depthwise kernel's output channel is an input channel times a multiplier index, hence
two axes; the 16-bit base does not use the axes).

Public API: :func:`encode_layer` (client: a blob to its stages and their
:class:`StageSpec`), :class:`StageDecoder` (server: stages checked and decoded in order,
weights at each precision, the exact blob at the end), :func:`decode_base` and
:func:`reconstruct` (the same as pure functions), :func:`stage_sizes`,
:func:`output_channel_axes`. Untrusted input is refused with :class:`StageError` (a
:class:`~ionn_net.errors.SpecError`), :class:`StageOrderError` or :class:`StageDigestError`;
every size is checked before anything is allocated.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from ionn_net.errors import SpecError, StageDigestError, StageError, StageOrderError
from ionn_net.model.limits import DEFAULT_LIMITS, SpecLimits
from ionn_net.model.spec import LayerSpec, WeightSpec, split_blob

__all__ = [
    "PRECISIONS",
    "RESIDUAL_BLOCK",
    "STAGED_PRECISIONS",
    "STAGE_ENCODINGS",
    "STAGE_SHUFFLE",
    "EncodedLayer",
    "StageDecoder",
    "StageSpec",
    "check_declared",
    "check_manifest_stages",
    "check_stage_specs",
    "decode_base",
    "encode_layer",
    "output_channel_axes",
    "precision_of",
    "reconstruct",
    "stage_encodings",
    "stage_sizes",
]

#: Every upload precision; ``exact`` sends whole blobs (no stages).
PRECISIONS = ("exact", "16bit-first", "8bit-first")
#: Precisions sent as stages.
STAGED_PRECISIONS = ("16bit-first", "8bit-first")
#: The stage encodings of each staged precision, base first.
STAGE_ENCODINGS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "16bit-first": ("bf16-round", "bf16-low"),
        "8bit-first": ("int8-channel", "int8-residual"),
    }
)
#: Byte-shuffle width that compresses each stage best with zstd (protocol.md §12:
#: 2 = ZSTD_SHUFFLE2, 4 = ZSTD_SHUFFLE4, 0 = plain ZSTD); a sender's hint only.
STAGE_SHUFFLE: Mapping[str, int] = MappingProxyType(
    {"bf16-round": 2, "bf16-low": 2, "int8-channel": 0, "int8-residual": 4}
)
#: Values per block whose residuals are ordered by |q| (one 1 MiB DATA frame of uint32).
RESIDUAL_BLOCK = 1 << 18

#: (class, weight index) -> (first, last + 1) output-channel axis, and the weight's rank.
_QUANTISED: Mapping[tuple[str, int], tuple[int, int, int]] = MappingProxyType(
    {
        ("Conv2D", 0): (3, 4, 4),
        ("Conv2DTranspose", 0): (2, 3, 4),
        ("DepthwiseConv2D", 0): (2, 4, 4),
        ("SeparableConv2D", 0): (2, 4, 4),
        ("SeparableConv2D", 1): (3, 4, 4),
        ("Dense", 0): (1, 2, 2),
    }
)

_SHA_RE = re.compile(r"[0-9a-f]{64}")
_F32_MIN_NORMAL = np.float32(np.finfo(np.float32).tiny)
_Q_MAX = 127
#: Elements processed at once when quantising (bounds temporaries).
_CHUNK = 1 << 22

_Bytes = bytes | bytearray | memoryview


# -- declared stages ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StageSpec:
    """One stage as a manifest would declare it: encoding, size in bytes, SHA-256 (hex)."""

    encoding: str
    size: int
    sha256: str

    def to_json_obj(self) -> dict[str, object]:
        return {"encoding": self.encoding, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_json_obj(cls, obj: object, where: str = "stage") -> StageSpec:
        """Parse an untrusted ``{"encoding", "size", "sha256"}`` object."""
        if not isinstance(obj, dict) or set(obj) != {"encoding", "size", "sha256"}:
            raise StageError(f"{where}: expected an object with encoding, size, sha256")
        enc, size, sha = obj["encoding"], obj["size"], obj["sha256"]
        if not isinstance(enc, str) or enc not in STAGE_SHUFFLE:
            raise StageError(f"{where}.encoding: expected one of {sorted(STAGE_SHUFFLE)}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise StageError(f"{where}.size: expected an integer >= 0, got {size!r}")
        if not isinstance(sha, str) or not _SHA_RE.fullmatch(sha):
            raise StageError(f"{where}.sha256: expected 64 lowercase hex digits")
        return cls(enc, size, sha)


@dataclass(frozen=True, slots=True)
class EncodedLayer:
    """A layer's blob as stages (base first) and their declarations."""

    precision: str
    stages: tuple[bytes, ...]
    specs: tuple[StageSpec, ...]


# -- how each weight travels -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Coding:
    """One weight: ``kind`` ``q8`` (a kernel, int8 per channel), ``h16`` (a kernel, bfloat16
    halves), ``x32`` or ``x64`` (float32 or int64, whole in the base); ``view`` the
    (outer, channels, inner) shape of a ``q8``."""

    kind: str
    shape: tuple[int, ...]
    count: int
    view: tuple[int, int, int] = (0, 0, 0)


def output_channel_axes(cls: str, index: int, shape: Sequence[int]) -> tuple[int, int] | None:
    """The output-channel axes ``[first, stop)`` of weight ``index`` of a ``cls`` layer when
    it is a kernel (the table in the module docstring); ``None`` for any other weight
    (biases, normalisation vectors), which travels whole in the base."""
    found = _QUANTISED.get((cls, index))
    if found is None or len(shape) != found[2]:
        return None
    return found[0], found[1]


def _check_spec(spec: object, limits: SpecLimits) -> LayerSpec:
    """Enough of a layer spec to size its stages safely (the manifest parser checks the
    rest): weights of known dtypes and bounded shapes that add up to the blob size."""
    if not isinstance(spec, LayerSpec):
        raise StageError(f"stages: expected a LayerSpec, got {type(spec).__name__}")
    where = f"layer {spec.name!r}"
    if not isinstance(spec.weights, tuple) or not spec.weights:
        raise StageError(f"{where}: expected a layer with weights (a blob) to stage")
    if len(spec.weights) > limits.max_weights_per_layer:
        raise StageError(f"{where}: expected at most {limits.max_weights_per_layer} weights")
    total = 0
    for i, w in enumerate(spec.weights):
        ok = isinstance(w, WeightSpec) and w.dtype in ("float32", "int64")
        ok = ok and isinstance(w.shape, tuple) and len(w.shape) <= limits.max_dims
        ok = ok and all(isinstance(d, int) and 0 <= d <= limits.max_dim for d in w.shape)
        if not ok or math.prod(w.shape) > limits.max_tensor_elements:
            raise StageError(f"{where}: weight {i}: expected a float32/int64 WeightSpec in limits")
        total += w.nbytes
    if spec.blob_size != total:
        raise StageError(f"{where}: blob size {spec.blob_size!r} is not its weights' {total}")
    return spec


def _codings(spec: LayerSpec, precision: str) -> tuple[_Coding, ...]:
    out = []
    for i, w in enumerate(spec.weights):
        count = math.prod(w.shape)
        axes = output_channel_axes(spec.cls, i, w.shape) if w.dtype == "float32" else None
        if axes is None:
            out.append(_Coding("x64" if w.dtype == "int64" else "x32", w.shape, count))
        elif precision == "16bit-first":
            out.append(_Coding("h16", w.shape, count))
        else:
            first, stop = axes
            view = (
                math.prod(w.shape[:first]),
                math.prod(w.shape[first:stop]),
                math.prod(w.shape[stop:]),
            )
            out.append(_Coding("q8", w.shape, count, view))
    return tuple(out)


def _precision(precision: object) -> str:
    if not isinstance(precision, str) or precision not in STAGE_ENCODINGS:
        raise StageError(f"precision: expected one of {list(STAGE_ENCODINGS)}, got {precision!r}")
    return precision


def _sizes(codings: Sequence[_Coding]) -> tuple[int, ...]:
    """Stage sizes; one stage (the blob itself) for a layer without kernels."""
    whole = sum(4 * c.count for c in codings if c.kind == "x32")
    whole += sum(8 * c.count for c in codings if c.kind == "x64")
    h16 = sum(2 * c.count for c in codings if c.kind == "h16")
    q8 = [c for c in codings if c.kind == "q8"]
    if h16:
        return h16 + whole, h16
    if q8:
        return sum(4 * c.view[1] + c.count for c in q8) + whole, sum(4 * c.count for c in q8)
    return (whole,)


def stage_sizes(
    spec: LayerSpec, precision: str, limits: SpecLimits = DEFAULT_LIMITS
) -> tuple[int, ...]:
    """Byte size of each stage of ``spec``'s blob at ``precision`` (base first; one stage
    for a layer without kernels)."""
    return _sizes(_codings(_check_spec(spec, limits), _precision(precision)))


def stage_encodings(
    spec: LayerSpec, precision: str, limits: SpecLimits = DEFAULT_LIMITS
) -> tuple[str, ...]:
    """The encodings of ``spec``'s stages at ``precision`` (the base's only for a layer
    without kernels)."""
    n = len(stage_sizes(spec, precision, limits))
    return STAGE_ENCODINGS[precision][:n]


def precision_of(stages: Sequence[StageSpec]) -> str | None:
    """The precision whose encodings ``stages`` declare, base first (None if none)."""
    encodings = tuple(getattr(s, "encoding", None) for s in stages)
    return next((p for p, encs in STAGE_ENCODINGS.items() if encs == encodings), None)


def check_stage_specs(stages: object, where: str) -> None:
    """Hand-built stages (no parsing) checked as parsed ones are (§10.12.1's format): a
    tuple of :class:`StageSpec` whose fields a manifest could carry."""
    if not isinstance(stages, tuple):
        raise SpecError(f"{where}: expected a tuple of StageSpec, got {type(stages).__name__}")
    for i, stage in enumerate(stages):
        if not isinstance(stage, StageSpec):
            raise SpecError(f"{where}[{i}]: expected a StageSpec, got {type(stage).__name__}")
        StageSpec.from_json_obj(stage.to_json_obj(), f"{where}[{i}]")


def check_declared(spec: LayerSpec, limits: SpecLimits = DEFAULT_LIMITS) -> str:
    """The precision of ``spec``'s declared stages (protocol.md §10.12.1), checked against
    what its blob allows: the encodings of one precision, base first; each stage's size
    as computed from the layer's weights; a blob with at least one kernel (a blob
    without kernels travels whole); stage digests distinct from each other and from the
    blob's. :class:`StageError` names what is wrong."""
    where = f"layer {spec.name!r}: blob.stages"
    if spec.blob_sha256 is None:
        raise StageError(f"{where}: expected no stages for a layer without a blob")
    precision = precision_of(spec.stages)
    if precision is None:
        raise StageError(
            f"{where}: expected the encodings of one of {dict(STAGE_ENCODINGS)}, got "
            f"{[getattr(s, 'encoding', None) for s in spec.stages]}"
        )
    sizes = stage_sizes(spec, precision, limits)
    if len(sizes) < 2:
        raise StageError(f"{where}: expected none: a blob without kernels travels whole")
    got = tuple(s.size for s in spec.stages)
    if got != sizes:
        raise StageError(f"{where}: expected sizes {list(sizes)}, got {list(got)}")
    digests = {s.sha256 for s in spec.stages} | {spec.blob_sha256}
    if len(digests) != len(spec.stages) + 1:
        raise StageError(f"{where}: expected digests distinct from each other and the blob's")
    return precision


def check_manifest_stages(layers: Sequence[LayerSpec], limits: SpecLimits = DEFAULT_LIMITS) -> None:
    """Every layer's stages (:func:`check_declared`) and the rule that makes a digest
    name one thing in a manifest (§10.12.1): a whole blob, a base stage (which blobs of
    the same size may share), or a refinement of one blob; layers with the same blob
    declare the same stages or none."""
    roles: dict[str, tuple[str, object]] = {}
    stages_of: dict[str, tuple[StageSpec, ...]] = {}

    def claim(digest: str, role: str, owner: object, where: str) -> None:
        held = roles.setdefault(digest, (role, owner))
        if held != (role, owner):
            raise StageError(f"{where}: digest {digest} already names a {held[0]} elsewhere")

    for spec in layers:
        where = f"layer {spec.name!r}: blob"
        if spec.blob_sha256 is None:
            if spec.stages:
                check_declared(spec, limits)  # raises: no blob, no stages
            continue
        claim(spec.blob_sha256, "blob", spec.blob_size, where)
        if not spec.stages:
            continue
        check_declared(spec, limits)
        if stages_of.setdefault(spec.blob_sha256, spec.stages) != spec.stages:
            raise StageError(f"{where}.stages: expected the stages other layers declare for it")
        base, *rest = spec.stages
        claim(base.sha256, "base stage", base.size, f"{where}.stages[0]")
        for i, stage in enumerate(rest, 1):
            claim(stage.sha256, "refinement", spec.blob_sha256, f"{where}.stages[{i}]")


# -- bit-level helpers ---------------------------------------------------------------------


def _high_round(bits: np.ndarray) -> np.ndarray:
    """High halves rounded on the pattern (``hi + (lo >> 15)``) of finite float32 bits."""
    return ((bits >> 16) + ((bits >> 15) & 1)).astype("<u2")


def _high_values(hi: np.ndarray, where: str) -> np.ndarray:
    """float32 values of rounded high halves; the rounded-up maximum decodes to the
    largest finite bfloat16, any other all-ones exponent is refused."""
    special = (hi & 0x7F80) == 0x7F80
    if special.any():
        if ((hi[special] & 0x7FFF) != 0x7F80).any():
            raise StageError(f"{where}: expected finite base values, got NaN or infinity")
        hi = np.where(special, (hi & 0x8000) | 0x7F7F, hi)
    return (hi.astype(np.uint32) << 16).view(np.float32)


def _exact_from_halves(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    hi32 = hi.astype(np.uint32) - (lo.astype(np.uint32) >> 15)
    return ((hi32 & 0xFFFF) << 16) | lo.astype(np.uint32)


def _scales(peak: np.ndarray) -> np.ndarray:
    """Per-channel scales from the channels' largest magnitudes: 0 or a normal float32
    whose 127 multiple is finite."""
    with np.errstate(over="ignore"):
        scale = (peak.astype(np.float64) / _Q_MAX).astype(np.float32)
        scale[scale < _F32_MIN_NORMAL] = 0.0
        while True:
            bad = ~np.isfinite(scale * np.float32(_Q_MAX))
            if not bad.any():
                return scale
            scale[bad] = np.nextafter(scale[bad], np.float32(0.0))


def _dequantise(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32(q) * scale per channel of a (rows, channels, inner) int8 view."""
    out: np.ndarray = q.astype(np.float32) * scale[None, :, None]
    return out


def _zigzag(d: np.ndarray) -> np.ndarray:
    s = d.view(np.int32)
    return ((s << 1) ^ (s >> 31)).view(np.uint32)


def _unzigzag(z: np.ndarray) -> np.ndarray:
    return (z >> 1) ^ (np.uint32(0) - (z & 1))


def _block_orders(q: np.ndarray) -> list[np.ndarray]:
    """Per block of :data:`RESIDUAL_BLOCK` values, the stable order by |q|."""
    keys = np.abs(q.reshape(-1).astype(np.int16)).astype(np.uint8)
    return [
        np.argsort(keys[s : s + RESIDUAL_BLOCK], kind="stable")
        for s in range(0, keys.size, RESIDUAL_BLOCK)
    ]


# -- encoding (client) -----------------------------------------------------------------------


def _quantise(
    x: np.ndarray, view: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scales, q int8, zigzag residual uint32 in C order) of one float32 weight."""
    rows, channels, inner = view
    x3 = x.reshape(view)
    if x.size == 0:
        return np.zeros(channels, np.float32), np.zeros(view, np.int8), np.zeros(0, np.uint32)
    scale = _scales(np.abs(x3).max(axis=(0, 2)))
    with np.errstate(divide="ignore"):
        inv = np.where(scale > 0, 1.0 / scale.astype(np.float64), 0.0).astype(np.float32)
    q = np.empty(view, np.int8)
    resid = np.empty(view, np.uint32)
    step = max(1, _CHUNK // max(channels * inner, 1))
    for r in range(0, rows, step):
        part = x3[r : r + step]
        qq = np.clip(np.rint(part * inv[None, :, None]), -_Q_MAX, _Q_MAX).astype(np.int8)
        q[r : r + step] = qq
        base = _dequantise(qq, scale).view(np.uint32)
        resid[r : r + step] = _zigzag(part.view(np.uint32) - base)
    return scale, q, resid.reshape(-1)


def _sorted_residual(q: np.ndarray, resid: np.ndarray) -> bytes:
    parts = [
        resid[s : s + RESIDUAL_BLOCK][order]
        for s, order in zip(range(0, resid.size, RESIDUAL_BLOCK), _block_orders(q), strict=True)
    ]
    return np.concatenate(parts).astype("<u4").tobytes() if parts else b""


def _whole(a: np.ndarray, c: _Coding) -> bytes:
    return a.astype("<i8" if c.kind == "x64" else "<f4").tobytes()


def _encode_16(arrays: Sequence[np.ndarray], codings: Sequence[_Coding]) -> list[bytes]:
    base: list[bytes] = []
    low: list[bytes] = []
    for a, c in zip(arrays, codings, strict=True):
        if c.kind != "h16":
            base.append(_whole(a, c))
            continue
        bits = a.reshape(-1).view(np.uint32)
        base.append(_high_round(bits).tobytes())
        low.append((bits & 0xFFFF).astype("<u2").tobytes())
    return [b"".join(base), b"".join(low)]


def _encode_8(arrays: Sequence[np.ndarray], codings: Sequence[_Coding]) -> list[bytes]:
    scales: list[bytes] = []
    qs: list[bytes] = []
    resids: list[bytes] = []
    whole: list[bytes] = []
    for a, c in zip(arrays, codings, strict=True):
        if c.kind != "q8":
            whole.append(_whole(a, c))
            continue
        scale, q, resid = _quantise(a, c.view)
        scales.append(scale.astype("<f4").tobytes())
        qs.append(q.tobytes())
        resids.append(_sorted_residual(q, resid))
    return [b"".join(scales + qs + whole), b"".join(resids)]


def encode_layer(
    spec: LayerSpec, blob: _Bytes, precision: str, limits: SpecLimits = DEFAULT_LIMITS
) -> EncodedLayer:
    """Stages of ``spec``'s ``blob`` at ``precision`` (the blob checked first as a whole
    blob is: size, SHA-256, finite values)."""
    precision = _precision(precision)
    codings = _codings(_check_spec(spec, limits), precision)
    arrays = split_blob(spec, blob, limits)
    encode = _encode_16 if precision == "16bit-first" else _encode_8
    expected = _sizes(codings)
    stages = tuple(encode(arrays, codings)[: len(expected)])
    assert tuple(map(len, stages)) == expected, (tuple(map(len, stages)), expected)
    specs = tuple(
        StageSpec(enc, len(data), hashlib.sha256(data).hexdigest())
        for enc, data in zip(STAGE_ENCODINGS[precision], stages, strict=False)
    )
    return EncodedLayer(precision, stages, specs)


# -- decoding (server) -----------------------------------------------------------------------


class _Reader:
    """Sequential typed reads from a stage whose total size was checked already."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, dtype: str, count: int) -> np.ndarray:
        dt = np.dtype(dtype)
        end = self.pos + count * dt.itemsize
        out = np.frombuffer(self.data[self.pos : end], dtype=dt)
        self.pos = end
        return out


@dataclass(frozen=True, slots=True)
class _Base:
    """A decoded base: the weights at base precision, and what a refinement needs."""

    arrays: tuple[np.ndarray, ...]
    highs: tuple[np.ndarray | None, ...]
    quantised: tuple[tuple[np.ndarray, np.ndarray] | None, ...]


def _check_scales(scale: np.ndarray, where: str) -> None:
    ok = np.isfinite(scale) & ((scale == 0) | (scale >= _F32_MIN_NORMAL))
    with np.errstate(over="ignore", invalid="ignore"):
        ok &= np.isfinite(scale * np.float32(_Q_MAX))
    if not ok.all():
        raise StageError(f"{where}: expected scales 0 or normal with 127 x scale finite")


def _read_whole(r: _Reader, c: _Coding, where: str) -> np.ndarray:
    if c.kind == "x64":
        return r.take("<i8", c.count).astype(np.int64).reshape(c.shape)
    values = r.take("<f4", c.count).astype(np.float32).reshape(c.shape)
    if not np.isfinite(values).all():
        raise StageError(f"{where}: expected finite base values, got NaN or infinity")
    return values


def _decode_base(codings: Sequence[_Coding], data: memoryview, where: str) -> _Base:
    r = _Reader(data)
    n = len(codings)
    arrays: list[np.ndarray | None] = [None] * n
    highs: list[np.ndarray | None] = [None] * n
    quant: list[tuple[np.ndarray, np.ndarray] | None] = [None] * n
    q8 = [i for i, c in enumerate(codings) if c.kind == "q8"]
    scales = {i: r.take("<f4", codings[i].view[1]).astype(np.float32) for i in q8}
    for i in q8:
        c = codings[i]
        _check_scales(scales[i], f"{where}: weight {i}")
        q = r.take("i1", c.count).reshape(c.view)
        if (q == -128).any():
            raise StageError(f"{where}: weight {i}: expected int8 values in [-127, 127]")
        quant[i] = (scales[i], q)
        arrays[i] = _dequantise(q, scales[i]).reshape(c.shape)
    for i, c in enumerate(codings):
        if c.kind == "h16":
            hi = r.take("<u2", c.count).astype(np.uint16)
            highs[i] = hi
            arrays[i] = _high_values(hi, f"{where}: weight {i}").reshape(c.shape)
        elif c.kind != "q8":
            arrays[i] = _read_whole(r, c, f"{where}: weight {i}")
    assert r.pos == len(data) and all(a is not None for a in arrays)
    return _Base(tuple(a for a in arrays if a is not None), tuple(highs), tuple(quant))


def _exact_blob(codings: Sequence[_Coding], base: _Base, data: memoryview) -> bytes:
    r = _Reader(data)
    parts: list[bytes] = []
    for i, c in enumerate(codings):
        found, hi = base.quantised[i], base.highs[i]
        if found is not None:
            scale, q = found
            b = _dequantise(q, scale).reshape(-1).view(np.uint32)
            out = np.empty_like(b)
            for s, order in zip(range(0, b.size, RESIDUAL_BLOCK), _block_orders(q), strict=True):
                d = _unzigzag(r.take("<u4", order.size).astype(np.uint32))
                out[s + order] = b[s + order] + d
            parts.append(out.astype("<u4").tobytes())
        elif hi is not None:
            parts.append(_exact_from_halves(hi, r.take("<u2", c.count)).astype("<u4").tobytes())
        else:
            parts.append(_whole(base.arrays[i], c))
    assert r.pos == len(data)
    return b"".join(parts)


def _bytes_view(data: object, size: int, where: str) -> memoryview:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise StageError(f"{where}: expected bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    if view.nbytes != size:
        raise StageError(f"{where}: expected {size} bytes, got {view.nbytes}")
    return view


def _guarded(where: str, fn: Any, *args: Any) -> Any:
    """Run a decoding step; anything numpy raises becomes a :class:`StageError`."""
    try:
        return fn(*args)
    except SpecError:
        raise
    except (ValueError, TypeError, ArithmeticError, IndexError) as exc:  # pragma: no cover
        raise StageError(f"{where}: could not decode ({type(exc).__name__}: {exc})") from None


def decode_base(
    spec: LayerSpec, precision: str, data: _Bytes, limits: SpecLimits = DEFAULT_LIMITS
) -> list[np.ndarray]:
    """The weights of ``spec`` at base precision from its base stage ``data`` (float32
    and int64 arrays, C order, in the layer's weight order; finite)."""
    precision = _precision(precision)
    codings = _codings(_check_spec(spec, limits), precision)
    where = f"layer {spec.name!r}: stage 0 ({STAGE_ENCODINGS[precision][0]})"
    view = _bytes_view(data, _sizes(codings)[0], where)
    base: _Base = _guarded(where, _decode_base, codings, view, where)
    return list(base.arrays)


def reconstruct(
    spec: LayerSpec, precision: str, stages: Sequence[_Bytes], limits: SpecLimits = DEFAULT_LIMITS
) -> bytes:
    """The exact blob of ``spec`` from all its stages, checked against the blob's SHA-256
    (:class:`StageDigestError` when it does not match)."""
    precision = _precision(precision)
    codings = _codings(_check_spec(spec, limits), precision)
    sizes = _sizes(codings)
    if not isinstance(stages, Sequence) or len(stages) != len(sizes):
        raise StageError(f"layer {spec.name!r}: expected {len(sizes)} stages")
    views = [
        _bytes_view(s, n, f"layer {spec.name!r}: stage {i}")
        for i, (s, n) in enumerate(zip(stages, sizes, strict=True))
    ]
    where = f"layer {spec.name!r}"
    base: _Base = _guarded(where, _decode_base, codings, views[0], where)
    blob: bytes = (
        bytes(views[0])
        if len(views) == 1
        else _guarded(where, _exact_blob, codings, base, views[1])
    )
    if hashlib.sha256(blob).hexdigest() != spec.blob_sha256:
        raise StageDigestError(f"{where}: rebuilt blob does not match SHA-256 {spec.blob_sha256}")
    return blob


class StageDecoder:
    """A server's view of one layer's stages: each checked (order, size, SHA-256, values)
    and decoded as it arrives; after the last, the exact blob, verified.

    A refused stage changes nothing: the layer keeps the precision it had, and the same
    stage may be sent again. Not thread-safe (one per layer, used by its session)."""

    def __init__(
        self, spec: LayerSpec, declared: Sequence[StageSpec], limits: SpecLimits = DEFAULT_LIMITS
    ) -> None:
        self.spec = _check_spec(spec, limits)
        self.limits = limits
        where = f"layer {spec.name!r}: stages"
        if not isinstance(declared, Sequence) or not all(
            isinstance(s, StageSpec) for s in declared
        ):
            raise StageError(f"{where}: expected a sequence of StageSpec")
        encodings = tuple(s.encoding for s in declared)
        found = [p for p, encs in STAGE_ENCODINGS.items() if encodings and encs[0] == encodings[0]]
        if not found:
            raise StageError(
                f"{where}: expected the encodings of one of {dict(STAGE_ENCODINGS)}, "
                f"got {list(encodings)}"
            )
        self.precision = found[0]
        self._codings = _codings(self.spec, self.precision)
        sizes = _sizes(self._codings)
        if encodings != STAGE_ENCODINGS[self.precision][: len(sizes)]:
            raise StageError(
                f"{where}: expected the encodings "
                f"{list(STAGE_ENCODINGS[self.precision][: len(sizes)])}, got {list(encodings)}"
            )
        if tuple(s.size for s in declared) != sizes:
            raise StageError(
                f"{where}: expected sizes {list(sizes)}, got {[s.size for s in declared]}"
            )
        self.declared = tuple(declared)
        self._next = 0
        self._base: _Base | None = None
        self._blob: bytes | None = None

    @property
    def next_stage(self) -> int:
        """Index of the stage expected next (``len(declared)`` once exact)."""
        return self._next

    @property
    def exact(self) -> bool:
        return self._blob is not None

    @property
    def blob(self) -> bytes | None:
        """The exact blob, once every stage verified."""
        return self._blob

    def accept(self, index: int, data: _Bytes) -> list[np.ndarray]:
        """Check and decode stage ``index``; return the layer's weights at the precision
        it now has (the base's, or exact after the last stage)."""
        where = f"layer {self.spec.name!r}: stage {index!r}"
        if isinstance(index, bool) or not isinstance(index, int) or index != self._next:
            raise StageOrderError(f"{where}: expected stage {self._next} next")
        stage = self.declared[index] if index < len(self.declared) else None
        if stage is None:
            raise StageOrderError(f"{where}: every stage was received already")
        view = _bytes_view(data, stage.size, f"{where} ({stage.encoding})")
        if hashlib.sha256(view).hexdigest() != stage.sha256:
            raise StageDigestError(f"{where}: does not match its SHA-256 {stage.sha256}")
        if index == 0:
            base = _guarded(where, _decode_base, self._codings, view, where)
            if len(self.declared) > 1:
                self._base, self._next = base, 1
                return [a.copy() for a in base.arrays]
            blob = bytes(view)  # a layer without kernels: its base is its blob
        else:
            assert self._base is not None
            blob = _guarded(where, _exact_blob, self._codings, self._base, view)
        if hashlib.sha256(blob).hexdigest() != self.spec.blob_sha256:
            raise StageDigestError(
                f"{where}: the rebuilt blob does not match SHA-256 {self.spec.blob_sha256}"
            )
        arrays = split_blob(self.spec, blob, self.limits)
        self._blob, self._next, self._base = blob, index + 1, None
        return arrays
