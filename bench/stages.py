"""Weight stages on real models: bytes on the wire, codec speeds, and the swap of exact weights.

For each model (the digits CNN trained by ``bench/fidelity.py``, and MobileNetV2, ResNet50,
InceptionV3, VGG16 from ``keras.applications`` with ``weights=None``, seed 0) every layer's
blob is cut into stages (:mod:`ionn_net.model.stages`) and each stage compressed as the
transport would (protocol.md §12): 1 MiB frames, each with the best codec of RAW, ZSTD,
ZSTD_SHUFFLE4 and ZSTD_SHUFFLE2 (level 1), per layer. Printed per model and precision:

* ``base``: the base stage's wire bytes over the float32 bytes (raw), and over the float32
  blob's own wire bytes (compressed the same way: what sending it whole costs today);
* ``refine``: the refinement's wire bytes over the float32 bytes;
* ``total``: all stages over the float32 blob's wire bytes (target: within 5%), for the
  model and for its worst layer of at least 64 KiB;
* ``32KiB hint``: the same total with the transport's default 32 KiB frames and one codec per
  stage (``STAGE_SHUFFLE``), RAW where zstd saves less than 5% (§12.4);
* alternatives measured for the choice of encodings: a float16 base with an XOR residual
  (16-bit), an int8 base with the residual in C order, and with an XOR of the patterns.

Speeds (CPU time of this process, MB of float32 per second): the client's ``encode`` (stages,
their SHA-256, and zstd of each stage with its hinted codec), the server's ``decode`` of the
base (SHA-256 and decoding) and of the refinement (SHA-256, rebuilding, the blob's SHA-256
and split), and the swap of exact weights into a built Keras layer (``variable.assign``,
wall time), fitted as ms per layer + ms per MB. The link at 80 Mbit/s carries 10 MB/s.

``--save DIR`` writes what the planner's simulator charges (wire fractions per stage, decode
ms per MB, swap) into ``DIR/<model>.json`` under ``"stages"`` (the four applications).
Usage: ``python bench/stages.py [--models ...] [--save bench/data/planner]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from ionn_net.model.spec import LayerSpec
from ionn_net.model.stages import (
    STAGE_SHUFFLE,
    STAGED_PRECISIONS,
    StageDecoder,
    encode_layer,
)
from ionn_net.proto.codecs import Codec, encode, encode_if_smaller

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity import APPS, app_model, train_digits

MODELS = ("digits-cnn", *APPS)
FRAME = 1 << 20
SMALL_FRAME = 32 * 1024
BIG_LAYER = 64 * 1024
_CODECS = (Codec.ZSTD, Codec.ZSTD_SHUFFLE4, Codec.ZSTD_SHUFFLE2)
_HINT = {0: Codec.ZSTD, 2: Codec.ZSTD_SHUFFLE2, 4: Codec.ZSTD_SHUFFLE4}


def wire_best(data: bytes, frame: int = FRAME) -> int:
    """Bytes on the wire with the best codec per frame (RAW if nothing is smaller)."""
    total = 0
    for i in range(0, len(data), frame):
        chunk = data[i : i + frame]
        best = len(chunk)
        for codec in _CODECS:
            width = {Codec.ZSTD_SHUFFLE4: 4, Codec.ZSTD_SHUFFLE2: 2}.get(codec, 1)
            if len(chunk) % width == 0 and len(chunk) >= 256:
                best = min(best, len(encode(chunk, codec)))
        total += best
    return total


def wire_hint(data: bytes, codec: Codec, frame: int = SMALL_FRAME) -> int:
    """Bytes on the wire as the transport sends them: one codec, RAW below 5% gain."""
    return sum(
        len(encode_if_smaller(data[i : i + frame], codec, 1, 0.05)[1])
        for i in range(0, len(data), frame)
    )


# -- alternatives (measured for the choice of encodings only) ----------------------------------


def _f16_xor(arrays: Sequence[np.ndarray]) -> tuple[bytes, bytes]:
    base, resid = [], []
    for a in arrays:
        with np.errstate(over="ignore"):
            f16 = a.astype(np.float16)
        back = f16.astype(np.float32)
        base.append(f16.tobytes())
        resid.append((a.view(np.uint32) ^ back.view(np.uint32)).tobytes())
    return b"".join(base), b"".join(resid)


def _int8_variants(
    arrays: Sequence[np.ndarray], axes: Sequence[tuple[int, int]]
) -> tuple[bytes, bytes]:
    """The same int8 base (max / 127 per output channel), its residual in C order (zigzag
    difference of the patterns) and as an XOR of the patterns."""
    plain, xor = [], []
    for a, (first, stop) in zip(arrays, axes, strict=True):
        other = tuple(i for i in range(a.ndim) if not first <= i < stop)
        scale = (np.abs(a).max(axis=other, keepdims=True) / np.float32(127)).astype(np.float32)
        safe = np.where(scale > 0, scale, np.float32(1))
        q = np.clip(np.rint(a / safe), -127, 127).astype(np.int8)
        base = (q.astype(np.float32) * scale).reshape(-1).view(np.uint32)
        bits = a.reshape(-1).view(np.uint32)
        d = (bits - base).view(np.int32)
        plain.append(((d << 1) ^ (d >> 31)).view(np.uint32).astype("<u4").tobytes())
        xor.append((bits ^ base).astype("<u4").tobytes())
    return b"".join(plain), b"".join(xor)


# -- per model -------------------------------------------------------------------------------


@dataclass
class Tally:
    raw: int = 0
    f32: int = 0
    stages: dict[str, list[int]] = field(default_factory=dict)
    hint: dict[str, int] = field(default_factory=dict)
    f32_hint: int = 0
    worst: dict[str, tuple[float, str]] = field(default_factory=dict)
    alt: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, value: float, into: dict[str, Any]) -> None:
        into[key] = into.get(key, 0) + value


def _timed(tally: Tally, key: str, fn: Callable[[], Any]) -> Any:
    t0 = time.process_time()
    out = fn()
    tally.add(key, time.process_time() - t0, tally.cpu)
    return out


def _layer(tally: Tally, spec: LayerSpec, blob: bytes, alternatives: bool) -> None:
    tally.raw += len(blob)
    f32 = wire_best(blob)
    tally.f32 += f32
    tally.f32_hint += wire_hint(blob, Codec.ZSTD_SHUFFLE4)
    for precision in STAGED_PRECISIONS:
        enc = _timed(tally, f"encode {precision}", lambda p=precision: encode_layer(spec, blob, p))
        codecs = [_HINT[STAGE_SHUFFLE[s.encoding]] for s in enc.specs]
        _timed(
            tally,
            f"encode {precision}",
            lambda e=enc, c=codecs: [wire_hint(s, k) for s, k in zip(e.stages, c, strict=True)],
        )
        decoder = StageDecoder(spec, enc.specs)
        for i, stage in enumerate(enc.stages):
            _timed(tally, f"decode {precision} {i}", lambda d=decoder, i=i, s=stage: d.accept(i, s))
        wires = [wire_best(s) for s in enc.stages] + [0] * (2 - len(enc.stages))
        got = tally.stages.setdefault(precision, [0, 0])
        got[0] += wires[0]
        got[1] += wires[1]
        tally.add(
            precision,
            sum(wire_hint(s, k) for s, k in zip(enc.stages, codecs, strict=True)),
            tally.hint,
        )
        if len(blob) >= BIG_LAYER:
            ratio = sum(wires) / f32
            if ratio > tally.worst.get(precision, (0.0, ""))[0]:
                tally.worst[precision] = (ratio, spec.name)
    if alternatives:
        _alternatives(tally, spec, blob)


def _alternatives(tally: Tally, spec: LayerSpec, blob: bytes) -> None:
    from ionn_net.model.spec import split_blob
    from ionn_net.model.stages import output_channel_axes

    arrays = split_blob(spec, blob)
    kernels = [
        (a, output_channel_axes(spec.cls, i, a.shape))
        for i, a in enumerate(arrays)
        if a.dtype == np.float32
    ]
    others = b"".join(a.tobytes() for a, ax in kernels if ax is None)
    ks = [(a, ax) for a, ax in kernels if ax is not None]
    f16, xor16 = _f16_xor([a for a, _ in ks])
    tally.add("f16 base", wire_best(f16 + others), tally.alt)
    tally.add("f16 xor residual", wire_best(xor16), tally.alt)
    if ks:
        plain, xor8 = _int8_variants([a for a, _ in ks], [ax for _, ax in ks if ax is not None])
        tally.add("int8 residual C order", wire_best(plain), tally.alt)
        tally.add("int8 residual XOR", wire_best(xor8), tally.alt)


def measure_model(model: Any, alternatives: bool = True) -> Tally:
    from ionn_net.model.layers import extract_manifest

    manifest, blobs, _ = extract_manifest(model)
    tally = Tally()
    for spec in manifest.layers:
        if spec.weights:
            _layer(tally, spec, blobs[str(spec.blob_sha256)], alternatives)
    return tally


def measure_swap(model: Any) -> tuple[float, float]:
    """(ms per layer, ms per MB) of assigning exact weights to a built layer's variables:
    a least-squares line through the per-layer wall times (median of 3)."""
    sizes, times = [], []
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        fresh = [w.copy() for w in weights]
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            for var, value in zip(layer.weights, fresh, strict=True):
                var.assign(value)
            runs.append(time.perf_counter() - t0)
        sizes.append(sum(w.nbytes for w in weights) / 1e6)
        times.append(float(np.median(runs)) * 1e3)
    slope, intercept = np.polyfit(np.asarray(sizes), np.asarray(times), 1)
    return max(float(intercept), 0.0), max(float(slope), 0.0)


# -- report ----------------------------------------------------------------------------------


def report(name: str, t: Tally, swap: tuple[float, float]) -> dict[str, Any]:
    mb = t.raw / 1e6
    print(
        f"\n{name}: {mb:.1f} MB float32, wire {t.f32 / t.raw:.3f} of it (best codec, 1 MiB frames)"
    )
    saved: dict[str, Any] = {}
    for p in STAGED_PRECISIONS:
        base, refine = t.stages[p]
        worst, layer = t.worst.get(p, (float("nan"), "-"))
        total = (base + refine) / t.f32
        print(
            f"  {p:12s} base {base / t.raw:.3f} raw = {base / t.f32:.3f} of float32 wire | "
            f"refine {refine / t.raw:.3f} raw | total {total:.3f} of float32 wire "
            f"(worst layer >= 64 KiB {worst:.3f}, {layer}) | "
            f"32KiB hint {t.hint[p] / t.f32_hint:.3f}"
        )
        dec = [t.cpu.get(f"decode {p} {i}", 0.0) for i in (0, 1)]
        enc = t.cpu[f"encode {p}"]
        print(
            f"  {'':12s} encode {mb / enc:6.0f} MB/s | decode base {mb / dec[0]:6.0f} MB/s, "
            f"refine {mb / max(dec[1], 1e-9):6.0f} MB/s (float32 MB per CPU second)"
        )
        saved[p] = {
            "wire_fraction": [base / t.raw, refine / t.raw],
            "decode_ms_per_mb": [1e3 * d / mb for d in dec],
            "encode_ms_per_mb": 1e3 * enc / mb,
        }
    if t.alt:
        a = t.alt
        b8 = t.stages["8bit-first"][0]
        f16 = (a["f16 base"] + a["f16 xor residual"]) / t.f32
        plain = (b8 + a.get("int8 residual C order", 0)) / t.f32
        xor = (b8 + a.get("int8 residual XOR", 0)) / t.f32
        print(
            f"  alternatives: float16 base {a['f16 base'] / t.raw:.3f} raw, + XOR residual "
            f"total {f16:.3f}; int8 residual in C order total {plain:.3f}, XOR total {xor:.3f}"
        )
    print(f"  swap (variable.assign): {swap[0]:.3f} ms per layer + {swap[1]:.2f} ms per MB")
    saved["swap_ms_per_layer"], saved["swap_ms_per_mb"] = swap
    saved["note"] = f"bench/stages.py on {os.uname().nodename}"
    return saved


def save(directory: Path, name: str, stages: dict[str, Any]) -> None:
    path = directory / f"{name.lower()}.json"
    doc = json.loads(path.read_text())
    doc["stages"] = stages
    path.write_text(json.dumps(doc, indent=0, sort_keys=True))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--save", type=Path, default=None, help="planner data directory to update")
    ap.add_argument("--no-alternatives", action="store_true")
    args = ap.parse_args(argv)
    for name in args.models:
        model = train_digits(20).model if name == "digits-cnn" else app_model(name)
        tally = measure_model(model, not args.no_alternatives)
        saved = report(name, tally, measure_swap(model))
        if args.save is not None and name != "digits-cnn":
            save(args.save, name, saved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
