"""Builds ``stages.json``, the golden weight-stage vectors of protocol.md §10.12.2, with the
reference peer's encoder (``tests/refpeer/stages.py``, written from the text alone).

Run ``python -m tests.conformance.vectors.build_stage_vectors`` to rewrite the file; the JSON is
the source of truth for the tests. Each ``valid`` vector is one layer (class, weights) with its
blob and, per precision, the two stages, their SHA-256 and the weights decoded from the base;
the values include the cases the text singles out (zeros of both signs, a channel of zeros and
one below the smallest normal, exact ties, values that round up to the largest bfloat16, and a
largest float32). Each ``invalid`` vector is a base stage that must be refused.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

from tests.refpeer.stages import ENCODINGS, W, decode_base, encode, rebuild

OUT = Path(__file__).resolve().parent / "stages.json"
FLT_MAX = 3.4028234663852886e38


def _values(n: int, seed: int) -> list[float]:
    """Deterministic float32 values of mixed magnitudes (a small LCG: no library)."""
    state = seed * 2654435761 % 2**32 or 1
    out = []
    for _ in range(n):
        state = (1103515245 * state + 12345) % 2**31
        mantissa = (state % 20001 - 10000) / 10000
        scale = 10.0 ** ((state // 20001) % 7 - 4)
        out.append(struct.unpack("<f", struct.pack("<f", mantissa * scale))[0])
    return out


def _bytes(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def _pattern(bits: list[int]) -> bytes:
    return struct.pack(f"<{len(bits)}I", *bits)


def _layers() -> list[dict[str, Any]]:
    dense_kernel = _values(4 * 3, 1)
    dense_kernel[0:3] = [0.0, -0.0, 1.5]  # zeros of both signs
    dense_kernel[3:6] = [127.0, -0.5, 0.25]  # 127 / 127 exactly, ties
    conv_kernel = _values(3 * 3 * 2 * 4, 2)
    for k in range(0, len(conv_kernel), 4):
        conv_kernel[k + 1] = 0.0  # output channel 1 all zeros: scale 0
        conv_kernel[k + 2] = 1e-40 if k % 8 else -1e-41  # channel 2 denormal: scale 0
    big = [FLT_MAX, -FLT_MAX, 3.3961776e38, 1.0]  # rounds up to the bfloat16 0x7F80 / 0xFF80
    return [
        {
            "name": "dense_with_bias",
            "cls": "Dense",
            "weights": [("float32", (4, 3)), ("float32", (3,))],
            "blob": _bytes(dense_kernel) + _bytes([0.5, -2.0, 3e-3]),
        },
        {
            "name": "conv_zero_and_denormal_channels",
            "cls": "Conv2D",
            "weights": [("float32", (3, 3, 2, 4)), ("float32", (4,))],
            "blob": _bytes(conv_kernel) + _bytes(_values(4, 3)),
        },
        {
            "name": "depthwise_no_bias",
            "cls": "DepthwiseConv2D",
            "weights": [("float32", (2, 2, 3, 2))],
            "blob": _bytes(_values(24, 4)),
        },
        {
            "name": "separable_two_kernels",
            "cls": "SeparableConv2D",
            "weights": [("float32", (3, 3, 2, 1)), ("float32", (1, 1, 2, 3)), ("float32", (3,))],
            "blob": _bytes(_values(18, 5)) + _bytes(_values(6, 6)) + _bytes(_values(3, 7)),
        },
        {
            "name": "dense_largest_values",
            "cls": "Dense",
            "weights": [("float32", (2, 2))],
            "blob": _bytes(big),
        },
    ]


def _valid(layer: dict[str, Any]) -> dict[str, Any]:
    weights = [W(d, s) for d, s in layer["weights"]]
    blob = layer["blob"]
    out: dict[str, Any] = {
        "name": layer["name"],
        "section": "10.12.2",
        "class": layer["cls"],
        "weights": [{"dtype": d, "shape": list(s)} for d, s in layer["weights"]],
        "blob_hex": blob.hex(),
        "blob_sha256": hashlib.sha256(blob).hexdigest(),
        "stages": {},
    }
    for precision, encodings in ENCODINGS.items():
        base, refinement = encode(layer["cls"], weights, blob, precision)
        assert rebuild(layer["cls"], weights, precision, base, refinement) == blob
        decoded = b"".join(decode_base(layer["cls"], weights, precision, base))
        out["stages"][precision] = {
            "encodings": list(encodings),
            "hex": [base.hex(), refinement.hex()],
            "sha256": [hashlib.sha256(s).hexdigest() for s in (base, refinement)],
            "decoded_base_hex": decoded.hex(),
        }
    return out


def _invalid() -> list[dict[str, Any]]:
    dense = [("float32", (2, 2)), ("float32", (2,))]
    bias = _bytes([1.0, -1.0])
    nan_hi = struct.pack("<4H", 0x3F80, 0x7FC0, 0, 0) + bias  # a quiet NaN high half
    inf_hi = struct.pack("<4H", 0x3F80, 0, 0xFF81, 0) + bias  # a signalling NaN, negative
    bad_bias = struct.pack("<4H", 0x3F80, 0, 0, 0) + _pattern([0x7F800000, 0])  # +inf bias
    scales = struct.pack("<2f", 0.5, 0.25)
    q_min = scales + struct.pack("<4b", 1, -128, 3, 4) + bias
    nan_scale = _pattern([0x7FC00000]) + struct.pack("<f", 0.25) + struct.pack("<4b", 1, 2, 3, 4)
    denormal = struct.pack("<2f", 1e-40, 0.25) + struct.pack("<4b", 1, 2, 3, 4) + bias
    huge = struct.pack("<2f", 3e36, 0.25) + struct.pack("<4b", 1, 2, 3, 4) + bias
    short = scales + struct.pack("<3b", 1, 2, 3) + bias
    cases = [
        ("bf16_nan", "16bit-first", nan_hi),
        ("bf16_negative_nan", "16bit-first", inf_hi),
        ("bf16_whole_weight_infinite", "16bit-first", bad_bias),
        ("int8_minus_128", "8bit-first", q_min),
        ("int8_nan_scale", "8bit-first", nan_scale + bias),
        ("int8_denormal_scale", "8bit-first", denormal),
        ("int8_scale_times_127_overflows", "8bit-first", huge),
        ("int8_short", "8bit-first", short),
    ]
    return [
        {
            "name": name,
            "section": "10.12.2",
            "class": "Dense",
            "weights": [{"dtype": d, "shape": list(s)} for d, s in dense],
            "precision": precision,
            "base_hex": data.hex(),
        }
        for name, precision, data in cases
    ]


def main() -> None:
    doc = {
        "about": "protocol.md §10.12.2 weight stages; built by build_stage_vectors.py",
        "valid": [_valid(layer) for layer in _layers()],
        "invalid": _invalid(),
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
