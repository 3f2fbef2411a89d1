"""Weight stages of protocol.md §10.12.2 for the reference peer: encode, decode, rebuild.

Written from protocol.md alone, with ``struct`` and plain integers (one value at a time: meant
for the small layers of the conformance suite). Float32 arithmetic is done in double precision
and rounded once with ``struct`` (the product of two float32 values is exact in a double, so
rounding it once is the float32 product). Imports nothing from ``ionn_net``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

#: §10.12.1: the encodings of each precision, base first.
ENCODINGS = {
    "16bit-first": ("bf16-round", "bf16-low"),
    "8bit-first": ("int8-channel", "int8-residual"),
}
#: §10.12.2: (class, weight index) -> (first channel axis, last + 1, rank).
KERNELS = {
    ("Conv2D", 0): (3, 4, 4),
    ("Conv2DTranspose", 0): (2, 3, 4),
    ("DepthwiseConv2D", 0): (2, 4, 4),
    ("SeparableConv2D", 0): (2, 4, 4),
    ("SeparableConv2D", 1): (3, 4, 4),
    ("Dense", 0): (1, 2, 2),
}
BLOCK = 1 << 18
_SMALLEST_NORMAL = 2.0**-126
_MASK = 0xFFFFFFFF


class StageRefused(ValueError):
    """A stage that §10.12.2 says is invalid."""


@dataclass(frozen=True)
class W:
    """One weight of a layer: dtype ("float32" or "int64") and shape."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.count * (8 if self.dtype == "int64" else 4)


def _f32(x: float) -> float:
    """``x`` rounded to float32 (OverflowError when that is infinite)."""
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def _bits(x: float) -> int:
    return int(struct.unpack("<I", struct.pack("<f", x))[0])


def _value(bits: int) -> float:
    return float(struct.unpack("<f", struct.pack("<I", bits & _MASK))[0])


def _u32(data: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(data) // 4}I", data))


def _view(cls: str, index: int, w: W) -> tuple[int, int, int] | None:
    """(R, C, I) of a kernel, None for a whole weight."""
    found = KERNELS.get((cls, index))
    if w.dtype != "float32" or found is None or len(w.shape) != found[2]:
        return None
    first, stop, _ = found
    return (
        math.prod(w.shape[:first]),
        math.prod(w.shape[first:stop]),
        math.prod(w.shape[stop:]),
    )


def _split(weights: list[W], blob: bytes) -> list[bytes]:
    out, pos = [], 0
    for w in weights:
        out.append(blob[pos : pos + w.nbytes])
        pos += w.nbytes
    assert pos == len(blob), "the blob is not the weights' size"
    return out


def _channel(view: tuple[int, int, int], k: int) -> int:
    _, c, i = view
    return (k // i) % c


def _scale(peak: float) -> float:
    scale = _f32(peak / 127)
    if scale < _SMALLEST_NORMAL:
        return 0.0
    while True:
        try:
            _f32(127 * scale)
            return scale
        except OverflowError:
            scale = _value(_bits(scale) - 1)


def _order(qs: list[int]) -> list[int]:
    """Indices of each block of :data:`BLOCK` values by increasing |q|, ties in order."""
    out: list[int] = []
    for start in range(0, len(qs), BLOCK):
        block = range(start, min(start + BLOCK, len(qs)))
        out += sorted(block, key=lambda k: abs(qs[k]))
    return out


# -- encoding (the reference client's choice, §10.12.2) ----------------------------------


def encode(cls: str, weights: list[W], blob: bytes, precision: str) -> tuple[bytes, bytes]:
    """(base, refinement) of a layer's blob."""
    parts = _split(weights, blob)
    views = [_view(cls, i, w) for i, w in enumerate(weights)]
    assert any(views), "a blob without kernels has no stages"
    if precision == "16bit-first":
        base, low = b"", b""
        for data, view in zip(parts, views, strict=True):
            if view is None:
                base += data
                continue
            for b in _u32(data):
                base += struct.pack("<H", (b >> 16) + ((b >> 15) & 1))
                low += struct.pack("<H", b & 0xFFFF)
        return base, low
    scales, qs, whole, resid = b"", b"", b"", b""
    for data, view in zip(parts, views, strict=True):
        if view is None:
            whole += data
            continue
        values = [_value(b) for b in _u32(data)]
        peaks = [0.0] * view[1]
        for k, x in enumerate(values):
            c = _channel(view, k)
            peaks[c] = max(peaks[c], abs(x))
        sc = [_scale(p) for p in peaks]
        inv = [_f32(1.0 / s) if s else 0.0 for s in sc]
        q = [
            max(-127, min(127, round(_f32(x * inv[_channel(view, k)]))))
            for k, x in enumerate(values)
        ]
        zs = []
        for k, x in enumerate(values):
            base_bits = _bits(_f32(q[k] * sc[_channel(view, k)]))
            d = (_bits(x) - base_bits) & _MASK
            signed = d - (1 << 32) if d >> 31 else d
            zs.append(((signed << 1) ^ (signed >> 31)) & _MASK)
        scales += struct.pack(f"<{len(sc)}f", *sc)
        qs += struct.pack(f"<{len(q)}b", *q)
        resid += struct.pack(f"<{len(zs)}I", *(zs[k] for k in _order(q)))
    return scales + qs + whole, resid


# -- decoding (the server's side) -----------------------------------------------------------


def stage_sizes(cls: str, weights: list[W], precision: str) -> tuple[int, int]:
    views = [_view(cls, i, w) for i, w in enumerate(weights)]
    whole = sum(w.nbytes for w, v in zip(weights, views, strict=True) if v is None)
    kernel = sum(w.count for w, v in zip(weights, views, strict=True) if v is not None)
    if precision == "16bit-first":
        return 2 * kernel + whole, 2 * kernel
    channels = sum(v[1] for v in views if v is not None)
    return 4 * channels + kernel + whole, 4 * kernel


def _bf16_bits(hi: int) -> int:
    """The float32 pattern of a ``bf16-round`` value (§10.12.2)."""
    if hi & 0x7F80 == 0x7F80:
        if hi & 0x7FFF != 0x7F80:
            raise StageRefused("a bf16-round value is NaN or infinite")
        return ((hi & 0x8000) | 0x7F7F) << 16
    return hi << 16


def _check_value(bits: int) -> None:
    if (bits >> 23) & 0xFF == 0xFF:
        raise StageRefused("a base value is not finite")


def decode_base(cls: str, weights: list[W], precision: str, base: bytes) -> list[bytes]:
    """Each weight's bytes at base precision (float32 little-endian, int64 as is)."""
    if len(base) != stage_sizes(cls, weights, precision)[0]:
        raise StageRefused("the base stage has the wrong size")
    views = [_view(cls, i, w) for i, w in enumerate(weights)]
    out: list[bytes] = []
    pos = 0
    if precision == "16bit-first":
        for w, view in zip(weights, views, strict=True):
            if view is None:
                data = base[pos : pos + w.nbytes]
                pos += w.nbytes
                if w.dtype == "float32":
                    for b in _u32(data):
                        _check_value(b)
                out.append(data)
                continue
            his = struct.unpack(f"<{w.count}H", base[pos : pos + 2 * w.count])
            pos += 2 * w.count
            vals = [_bf16_bits(hi) for hi in his]
            out.append(struct.pack(f"<{len(vals)}I", *vals))
        return out
    kernels = [(i, v) for i, v in enumerate(views) if v is not None]
    scales: dict[int, tuple[float, ...]] = {}
    for i, v in kernels:
        scales[i] = struct.unpack(f"<{v[1]}f", base[pos : pos + 4 * v[1]])
        pos += 4 * v[1]
        for s in scales[i]:
            ok = s == 0 or (abs(s) >= _SMALLEST_NORMAL and math.isfinite(s))
            try:
                ok = ok and math.isfinite(_f32(127 * s))
            except OverflowError:
                ok = False
            if not ok:
                raise StageRefused("a scale is not 0 or a normal float32 with 127 x scale finite")
    decoded: dict[int, bytes] = {}
    for i, v in kernels:
        qs = struct.unpack(f"<{weights[i].count}b", base[pos : pos + weights[i].count])
        pos += weights[i].count
        if -128 in qs:
            raise StageRefused("an int8 value is -128")
        vals = [_f32(q * scales[i][_channel(v, k)]) for k, q in enumerate(qs)]
        decoded[i] = struct.pack(f"<{len(vals)}f", *vals)
    for i, (w, view) in enumerate(zip(weights, views, strict=True)):
        if view is not None:
            out.append(decoded[i])
            continue
        data = base[pos : pos + w.nbytes]
        pos += w.nbytes
        if w.dtype == "float32":
            for b in _u32(data):
                _check_value(b)
        out.append(data)
    return out


def rebuild(cls: str, weights: list[W], precision: str, base: bytes, refinement: bytes) -> bytes:
    """The exact blob from a layer's two stages."""
    decoded = decode_base(cls, weights, precision, base)
    if len(refinement) != stage_sizes(cls, weights, precision)[1]:
        raise StageRefused("the refinement has the wrong size")
    views = [_view(cls, i, w) for i, w in enumerate(weights)]
    out, pos = b"", 0
    if precision == "16bit-first":
        hpos = 0
        for w, view, data in zip(weights, views, decoded, strict=True):
            if view is None:
                out += data
                hpos += w.nbytes
                continue
            his = struct.unpack(f"<{w.count}H", base[hpos : hpos + 2 * w.count])
            los = struct.unpack(f"<{w.count}H", refinement[pos : pos + 2 * w.count])
            hpos += 2 * w.count
            pos += 2 * w.count
            pairs = zip(his, los, strict=True)
            exact = [(((h - (lo >> 15)) & 0xFFFF) << 16) | lo for h, lo in pairs]
            out += struct.pack(f"<{w.count}I", *exact)
        return out
    qpos = sum(4 * v[1] for v in views if v is not None)
    for w, view, data in zip(weights, views, decoded, strict=True):
        if view is None:
            out += data
            continue
        qs = struct.unpack(f"<{w.count}b", base[qpos : qpos + w.count])
        qpos += w.count
        zs = struct.unpack(f"<{w.count}I", refinement[pos : pos + 4 * w.count])
        pos += 4 * w.count
        base_bits = _u32(data)
        exact = [0] * w.count
        for z, k in zip(zs, _order(list(qs)), strict=True):
            d = (z >> 1) ^ (-(z & 1) & _MASK)
            exact[k] = (base_bits[k] + d) & _MASK
        out += struct.pack(f"<{w.count}I", *exact)
    return out
