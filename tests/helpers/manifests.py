"""Hand-built model manifests for the spec/layers tests (no keras import).

:class:`ManifestBuilder` writes the wire form (protocol.md §10.3) the way an
independent client would: weights as little-endian C-order bytes, per-weight and
per-blob SHA-256, layers in topological order. ``SHAPE_CASES`` is a table of
single-layer specs with the output and weight shapes worked out by hand from the
Keras documentation; test_spec checks the pure validator against it and
test_layers checks that Keras agrees.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["SHAPE_CASES", "ManifestBuilder", "ShapeCase", "encode_weights", "tiny_cnn"]


def encode_weights(arrays: list[np.ndarray]) -> tuple[list[dict[str, Any]], bytes]:
    """Weight entries and the concatenated blob of ``arrays``."""
    entries = []
    parts = []
    for a in arrays:
        data = a.astype(a.dtype.newbyteorder("<"), order="C").tobytes()
        entries.append(
            {
                "dtype": a.dtype.name,
                "shape": list(a.shape),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        parts.append(data)
    return entries, b"".join(parts)


@dataclass
class ManifestBuilder:
    """Accumulates layers; :meth:`obj` returns the manifest as a JSON object."""

    name: str = "tiny"
    layers: list[dict[str, Any]] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)
    arrays: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def input(self, name: str, shape: list[int]) -> str:
        self.inputs.append({"layer": name, "shape": list(shape), "dtype": "float32"})
        self.layers.append(
            {
                "name": name,
                "class": "InputLayer",
                "config": {"shape": list(shape)},
                "inbound": [],
                "weights": [],
            }
        )
        return f"{name}:0"

    def add(
        self,
        name: str,
        cls: str,
        config: dict[str, Any],
        inbound: list[str],
        weights: list[np.ndarray] | None = None,
    ) -> str:
        spec: dict[str, Any] = {
            "name": name,
            "class": cls,
            "config": config,
            "inbound": inbound,
            "weights": [],
        }
        if weights:
            entries, blob = encode_weights(weights)
            sha = hashlib.sha256(blob).hexdigest()
            spec["weights"] = entries
            spec["blob"] = {"sha256": sha, "size": len(blob)}
            self.blobs[sha] = blob
            self.arrays[name] = weights
        self.layers.append(spec)
        return f"{name}:0"

    def obj(self, outputs: list[str]) -> dict[str, Any]:
        return copy.deepcopy(
            {
                "format": "ionn-manifest/1",
                "name": self.name,
                "inputs": self.inputs,
                "outputs": outputs,
                "layers": self.layers,
            }
        )


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def tiny_cnn(seed: int = 0) -> tuple[dict[str, Any], ManifestBuilder]:
    """input(8,8,3) -> conv(4, 3x3 same, relu) -> bn -> dw(3x3 same) -> add(bn, dw)
    -> gap -> dense(5, softmax): a valid manifest with a branch and weights."""
    rng = np.random.default_rng(seed)
    b = ManifestBuilder()
    x = b.input("image", [8, 8, 3])
    conv_cfg = {"filters": 4, "kernel_size": [3, 3], "padding": "same", "activation": "relu"}
    c = b.add("conv1", "Conv2D", conv_cfg, [x], [_rand(rng, 3, 3, 3, 4), _rand(rng, 4)])
    variance = np.abs(_rand(rng, 4)) + 0.5
    bn_w = [_rand(rng, 4), _rand(rng, 4), _rand(rng, 4), variance]
    n = b.add("bn1", "BatchNormalization", {"epsilon": 0.001}, [c], bn_w)
    dw_cfg = {"kernel_size": [3, 3], "padding": "same", "use_bias": False}
    d = b.add("dw1", "DepthwiseConv2D", dw_cfg, [n], [_rand(rng, 3, 3, 4, 1)])
    s = b.add("add1", "Add", {}, [n, d])
    p = b.add("gap", "GlobalAveragePooling2D", {}, [s])
    out = b.add(
        "predictions",
        "Dense",
        {"units": 5, "activation": "softmax"},
        [p],
        [_rand(rng, 4, 5), _rand(rng, 5)],
    )
    return b.obj([out]), b


@dataclass(frozen=True)
class ShapeCase:
    """One layer: class, config, input shapes -> output shape, weight shapes, MACs."""

    cls: str
    config: dict[str, Any]
    inputs: list[list[int]]
    output: list[int]
    weights: list[list[int]]
    macs: int


SHAPE_CASES: list[ShapeCase] = [
    # out 7x7x8, kernel 3x3x5x8: 7*7*8*3*3*5
    ShapeCase("Conv2D", {"filters": 8, "kernel_size": [3, 3]}, [[9, 9, 5]], [7, 7, 8],
              [[3, 3, 5, 8], [8]], 7 * 7 * 8 * 9 * 5),
    ShapeCase("Conv2D", {"filters": 6, "kernel_size": [3, 3], "strides": [2, 2],
                         "padding": "same", "groups": 3, "use_bias": False},
              [[9, 9, 6]], [5, 5, 6], [[3, 3, 2, 6]], 5 * 5 * 6 * 9 * 2),
    ShapeCase("Conv2D", {"filters": 2, "kernel_size": [3, 3], "dilation_rate": [2, 2]},
              [[9, 9, 1]], [5, 5, 2], [[3, 3, 1, 2], [2]], 5 * 5 * 2 * 9),
    ShapeCase("Conv2DTranspose", {"filters": 8, "kernel_size": [3, 3], "strides": [2, 2]},
              [[9, 9, 3]], [19, 19, 8], [[3, 3, 8, 3], [8]], 9 * 9 * 3 * 9 * 8),
    ShapeCase("Conv2DTranspose", {"filters": 4, "kernel_size": [1, 1], "strides": [3, 3],
                                  "padding": "same"},
              [[5, 5, 2]], [15, 15, 4], [[1, 1, 4, 2], [4]], 5 * 5 * 2 * 4),
    ShapeCase("DepthwiseConv2D", {"kernel_size": [3, 3], "depth_multiplier": 2},
              [[9, 9, 3]], [7, 7, 6], [[3, 3, 3, 2], [6]], 7 * 7 * 3 * 2 * 9),
    ShapeCase("SeparableConv2D", {"filters": 8, "kernel_size": [3, 3], "depth_multiplier": 2},
              [[9, 9, 3]], [7, 7, 8], [[3, 3, 3, 2], [1, 1, 6, 8], [8]],
              7 * 7 * 6 * 9 + 7 * 7 * 6 * 8),
    ShapeCase("Dense", {"units": 7}, [[12]], [7], [[12, 7], [7]], 84),
    ShapeCase("Dense", {"units": 4, "use_bias": False}, [[5, 3]], [5, 4], [[3, 4]], 60),
    ShapeCase("BatchNormalization", {}, [[4, 4, 3]], [4, 4, 3], [[3], [3], [3], [3]], 48),
    ShapeCase("BatchNormalization", {"axis": 1, "center": False, "scale": False},
              [[4, 5, 3]], [4, 5, 3], [[4], [4]], 60),
    ShapeCase("LayerNormalization", {}, [[4, 5, 3]], [4, 5, 3], [[3], [3]], 60),
    ShapeCase("LayerNormalization", {"axis": [1, 2]}, [[4, 5, 3]], [4, 5, 3],
              [[4, 5], [4, 5]], 60),
    ShapeCase("Normalization", {"axis": [-1]}, [[4, 5, 3]], [4, 5, 3], [[3], [3], []], 60),
    ShapeCase("Normalization", {"axis": None}, [[4, 5, 3]], [4, 5, 3], [[], [], []], 60),
    ShapeCase("ReLU", {"max_value": 6.0}, [[4, 4, 3]], [4, 4, 3], [], 48),
    ShapeCase("Activation", {"activation": "hard_silu"}, [[10]], [10], [], 10),
    ShapeCase("Softmax", {"axis": -1}, [[2, 10]], [2, 10], [], 20),
    ShapeCase("LeakyReLU", {"negative_slope": 0.2}, [[10]], [10], [], 10),
    ShapeCase("ELU", {"alpha": 1.0}, [[10]], [10], [], 10),
    ShapeCase("Add", {}, [[5, 5, 3], [5, 5, 3], [5, 5, 3]], [5, 5, 3], [], 75),
    ShapeCase("Multiply", {}, [[5, 5, 3], [1, 1, 3]], [5, 5, 3], [], 75),
    ShapeCase("Subtract", {}, [[5, 1, 3], [1, 5, 3]], [5, 5, 3], [], 75),
    ShapeCase("Average", {}, [[4], [4]], [4], [], 4),
    ShapeCase("Maximum", {}, [[4], [4]], [4], [], 4),
    ShapeCase("Minimum", {}, [[4], [4]], [4], [], 4),
    ShapeCase("Concatenate", {"axis": -1}, [[5, 5, 3], [5, 5, 4]], [5, 5, 7], [], 175),
    ShapeCase("Concatenate", {"axis": 1}, [[2, 5, 3], [4, 5, 3]], [6, 5, 3], [], 90),
    ShapeCase("MaxPooling2D", {"pool_size": [3, 3], "strides": [2, 2]}, [[9, 9, 3]],
              [4, 4, 3], [], 4 * 4 * 3 * 9),
    ShapeCase("MaxPooling2D", {}, [[9, 9, 3]], [4, 4, 3], [], 4 * 4 * 3 * 4),
    ShapeCase("AveragePooling2D", {"pool_size": [2, 2], "padding": "same"}, [[9, 9, 3]],
              [5, 5, 3], [], 5 * 5 * 3 * 4),
    ShapeCase("GlobalAveragePooling2D", {}, [[7, 7, 8]], [8], [], 392),
    ShapeCase("GlobalMaxPooling2D", {"keepdims": True}, [[7, 7, 8]], [1, 1, 8], [], 392),
    ShapeCase("ZeroPadding2D", {"padding": [[1, 2], [0, 3]]}, [[4, 4, 2]], [7, 7, 2], [], 98),
    ShapeCase("Cropping2D", {"cropping": [[1, 0], [1, 0]]}, [[5, 5, 2]], [4, 4, 2], [], 32),
    ShapeCase("Reshape", {"target_shape": [-1, 3]}, [[5, 5, 3]], [25, 3], [], 0),
    ShapeCase("Reshape", {"target_shape": [1, 1, 12]}, [[12]], [1, 1, 12], [], 0),
    ShapeCase("Flatten", {}, [[5, 5, 3]], [75], [], 0),
    ShapeCase("Dropout", {"rate": 0.2}, [[10]], [10], [], 0),
    ShapeCase("Rescaling", {"scale": 0.5, "offset": -1.0}, [[4, 4, 3]], [4, 4, 3], [], 48),
    ShapeCase("Rescaling", {"scale": [1.0, 2.0, 3.0]}, [[4, 4, 3]], [4, 4, 3], [], 48),
    ShapeCase("Permute", {"dims": [2, 1]}, [[3, 5]], [5, 3], [], 15),
    ShapeCase("Identity", {}, [[3, 5]], [3, 5], [], 0),
    ShapeCase("UpSampling2D", {"size": [2, 3]}, [[4, 4, 2]], [8, 12, 2], [], 192),
    ShapeCase("UpSampling2D", {"interpolation": "bilinear"}, [[4, 4, 2]], [8, 8, 2], [], 128),
]  # fmt: skip
