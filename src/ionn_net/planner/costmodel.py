"""The server's cost model: per-layer-type regressions of execution and load time.

This module owns :class:`ServerCostModel`, which predicts how long the edge server
takes to *execute* a layer and to *load* it (rebuild from its spec, set its weights
and its share of compiling the slices that contain it), from features of the
framework-free :class:`~ionn_net.model.graph.LayerNode`: multiply-accumulates (the
graph's ``macs`` already counts depthwise convolutions per channel), output elements
and weight bytes.

Each layer type (:func:`layer_type`: conv, depthwise, dense, bn, elementwise, pool,
other) gets one model ``ms = intercept + slope * feature`` on the feature that fits it
best, fitted by least squares on *relative* errors (weights 1/y^2, so a 0.05 ms
activation counts as much as a 20 ms convolution) under the constraint that both
coefficients are non-negative. Types with fewer than ``min_samples`` samples use a
pooled fallback fitted on every sample. The model travels to clients in the session
handshake (protocol.md §10.10), so :meth:`ServerCostModel.from_json` validates
everything it reads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from ionn_net.errors import PlannerError
from ionn_net.model.graph import LayerGraph, LayerNode

__all__ = [
    "FEATURES",
    "LAYER_TYPES",
    "LinearFit",
    "ServerCostModel",
    "feature_value",
    "layer_type",
]

FORMAT = "ionn-costmodel/1"
LAYER_TYPES: tuple[str, ...] = ("conv", "depthwise", "dense", "bn", "elementwise", "pool", "other")
FEATURES: tuple[str, ...] = ("macs", "out_elems", "weight_bytes")
_MAX_TEXT = 64 * 1024
_MAX_COEF = 1e9
_FLOOR_MS = 0.005  # relative-error weights are capped here: timer noise below it

_DEPTHWISE = {"DepthwiseConv1D", "DepthwiseConv2D"}
_CONV = {
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "Conv1DTranspose",
    "Conv2DTranspose",
    "Conv3DTranspose",
    "SeparableConv1D",
    "SeparableConv2D",
}
_NORM = {"BatchNormalization", "LayerNormalization", "GroupNormalization", "UnitNormalization"}
_POOL_PREFIX = ("MaxPooling", "AveragePooling", "GlobalMaxPooling", "GlobalAveragePooling")
_ELEMENTWISE = {
    "Activation",
    "ReLU",
    "LeakyReLU",
    "PReLU",
    "ELU",
    "Softmax",
    "Add",
    "Subtract",
    "Multiply",
    "Average",
    "Maximum",
    "Minimum",
    "Concatenate",
    "Rescaling",
    "Normalization",
}


def layer_type(cls: str) -> str:
    """The cost-model type of a layer class name (``LayerNode.cls``)."""
    if cls in _DEPTHWISE:
        return "depthwise"
    if cls in _CONV:
        return "conv"
    if cls in {"Dense", "EinsumDense"}:
        return "dense"
    if cls in _NORM:
        return "bn"
    if cls.startswith(_POOL_PREFIX):
        return "pool"
    if cls in _ELEMENTWISE or cls.startswith("ops."):
        return "elementwise"
    return "other"


def feature_value(node: LayerNode, feature: str) -> float:
    if feature == "macs":
        return float(node.macs)
    if feature == "out_elems":
        return float(node.output_elements)
    if feature == "weight_bytes":
        return float(node.weight_bytes)
    raise PlannerError(
        f"cost-model feature: expected one of {', '.join(FEATURES)}, got {feature!r}"
    )


@dataclass(frozen=True, slots=True)
class LinearFit:
    """``ms = intercept + slope * feature`` (both >= 0)."""

    feature: str
    slope: float
    intercept: float
    samples: int = 0

    def predict(self, node: LayerNode) -> float:
        return self.intercept + self.slope * feature_value(node, self.feature)

    def to_doc(self) -> dict[str, object]:
        return {
            "feature": self.feature,
            "slope": self.slope,
            "intercept": self.intercept,
            "samples": self.samples,
        }

    @classmethod
    def from_doc(cls, doc: object, where: str) -> LinearFit:
        if not isinstance(doc, dict):
            raise PlannerError(f"cost model {where}: expected an object, got {type(doc).__name__}")
        keys = {"feature", "slope", "intercept", "samples"}
        if set(doc) != keys:
            raise PlannerError(
                f"cost model {where}: expected keys {sorted(keys)}, got {sorted(map(str, doc))}"
            )
        feature = doc["feature"]
        if feature not in FEATURES:
            raise PlannerError(
                f"cost model {where}.feature: expected one of {FEATURES}, got {feature!r}"
            )
        coef = {k: doc[k] for k in ("slope", "intercept")}
        for k, v in coef.items():
            number = isinstance(v, int | float) and not isinstance(v, bool)
            if not (number and math.isfinite(v) and 0 <= v <= _MAX_COEF):
                raise PlannerError(
                    f"cost model {where}.{k}: expected a finite number in [0, {_MAX_COEF:g}], "
                    f"got {v!r}"
                )
        samples = doc["samples"]
        if not isinstance(samples, int) or isinstance(samples, bool) or not 0 <= samples <= 10**9:
            raise PlannerError(f"cost model {where}.samples: expected an integer, got {samples!r}")
        return cls(feature, float(coef["slope"]), float(coef["intercept"]), samples)


def _weighted_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Non-negative (intercept, slope) minimising sum(((a + b x - y) / y)^2); returns
    (intercept, slope, weighted squared error)."""
    ws = [1.0 / max(y, _FLOOR_MS) ** 2 for y in ys]
    sw = sum(ws)
    swx = sum(w * x for w, x in zip(ws, xs, strict=True))
    swy = sum(w * y for w, y in zip(ws, ys, strict=True))
    swxx = sum(w * x * x for w, x in zip(ws, xs, strict=True))
    swxy = sum(w * x * y for w, x, y in zip(ws, xs, ys, strict=True))

    def err(a: float, b: float) -> float:
        return sum(w * (a + b * x - y) ** 2 for w, x, y in zip(ws, xs, ys, strict=True))

    options = [(swy / sw, 0.0)]  # intercept only
    if swxx > 0:
        options.append((0.0, swxy / swxx))  # slope only
    det = sw * swxx - swx * swx
    if det > 1e-12 * max(sw * swxx, 1e-300):
        b = (sw * swxy - swx * swy) / det
        a = (swy - b * swx) / sw
        if a >= 0 and b >= 0:
            options.append((a, b))
    best = min(options, key=lambda ab: err(*ab))
    return max(best[0], 0.0), max(best[1], 0.0), err(*best)


def _fit(samples: Sequence[tuple[LayerNode, float]], features: Sequence[str]) -> LinearFit | None:
    if not samples:
        return None
    ys = [ms for _, ms in samples]
    best: LinearFit | None = None
    best_err = math.inf
    for feature in features:
        xs = [feature_value(node, feature) for node, _ in samples]
        a, b, e = _weighted_fit(xs, ys)
        if e < best_err - 1e-12:
            best, best_err = LinearFit(feature, min(b, _MAX_COEF), min(a, _MAX_COEF), len(ys)), e
    return best


def _check_samples(
    samples: Iterable[tuple[LayerNode, float]], what: str
) -> list[tuple[LayerNode, float]]:
    out = []
    for item in samples:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], LayerNode)):
            raise PlannerError(f"{what} sample: expected (LayerNode, ms), got {item!r}")
        ms = item[1]
        if not (isinstance(ms, int | float) and math.isfinite(ms) and ms >= 0):
            raise PlannerError(f"{what} sample {item[0].name!r}: expected ms >= 0, got {ms!r}")
        out.append((item[0], float(ms)))
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerCostModel:
    """Per-type execution and load-time regressions plus their fallbacks.

    ``partition_overhead_ms`` is the fixed cost of making one uploaded partition
    usable (building and compiling its slices) on top of the per-layer load times.
    """

    exec_fits: Mapping[str, LinearFit] = field(default_factory=dict)
    load_fits: Mapping[str, LinearFit] = field(default_factory=dict)
    exec_fallback: LinearFit = LinearFit("macs", 0.0, 0.0)
    load_fallback: LinearFit = LinearFit("weight_bytes", 0.0, 0.0)
    partition_overhead_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("exec_fits", "load_fits"):
            fits = getattr(self, name)
            unknown = set(fits) - set(LAYER_TYPES)
            if unknown:
                raise PlannerError(f"cost model {name}: unknown layer types {sorted(unknown)}")
            object.__setattr__(self, name, MappingProxyType(dict(fits)))
        po = self.partition_overhead_ms
        if not (isinstance(po, int | float) and math.isfinite(po) and 0 <= po <= _MAX_COEF):
            raise PlannerError(f"cost model partition_overhead_ms: expected >= 0, got {po!r}")

    @classmethod
    def fit(
        cls,
        exec_samples: Iterable[tuple[LayerNode, float]],
        load_samples: Iterable[tuple[LayerNode, float]] = (),
        *,
        min_samples: int = 3,
        partition_overhead_ms: float = 0.0,
    ) -> ServerCostModel:
        """Fit from ``(node, measured_ms)`` samples (execution, and optionally load)."""
        if min_samples < 1:
            raise PlannerError(f"min_samples: expected >= 1, got {min_samples}")
        ex = _check_samples(exec_samples, "execution")
        ld = _check_samples(load_samples, "load")
        if not ex:
            raise PlannerError("cost model: expected at least one execution sample, got none")
        exec_fits = cls._per_type(ex, FEATURES, min_samples)
        load_fits = cls._per_type(ld, ("weight_bytes", "out_elems"), min_samples)
        exec_fb = _fit(ex, FEATURES) or LinearFit("macs", 0.0, 0.0)
        load_fb = _fit(ld, ("weight_bytes",)) or LinearFit("weight_bytes", 0.0, 0.0)
        return cls(
            exec_fits=exec_fits,
            load_fits=load_fits,
            exec_fallback=exec_fb,
            load_fallback=load_fb,
            partition_overhead_ms=partition_overhead_ms,
        )

    @staticmethod
    def _per_type(
        samples: Sequence[tuple[LayerNode, float]], features: Sequence[str], min_samples: int
    ) -> dict[str, LinearFit]:
        by_type: dict[str, list[tuple[LayerNode, float]]] = {}
        for node, ms in samples:
            by_type.setdefault(layer_type(node.cls), []).append((node, ms))
        fits = {}
        for kind, group in by_type.items():
            if len(group) >= min_samples:
                fit = _fit(group, features)
                if fit is not None:
                    fits[kind] = fit
        return fits

    def _exec_fit(self, node: LayerNode) -> LinearFit:
        return self.exec_fits.get(layer_type(node.cls), self.exec_fallback)

    def predict_exec_ms(self, node: LayerNode) -> float:
        if not node.inbound:
            return 0.0  # input layers do no work
        return self._exec_fit(node).predict(node)

    def predict_load_ms(self, node: LayerNode) -> float:
        if not node.inbound:
            return 0.0
        return self.load_fits.get(layer_type(node.cls), self.load_fallback).predict(node)

    def exec_profile(self, graph: LayerGraph) -> dict[str, float]:
        return {n.name: self.predict_exec_ms(n) for n in graph}

    def load_profile(self, graph: LayerGraph) -> dict[str, float]:
        return {n.name: self.predict_load_ms(n) for n in graph}

    def evaluate(
        self, samples: Iterable[tuple[LayerNode, float]], *, which: str = "exec"
    ) -> dict[str, float]:
        """Prediction error on (held-out) samples: mean and median absolute
        percentage error (in %), and the sample count."""
        if which not in ("exec", "load"):
            raise PlannerError(f"evaluate: expected which='exec' or 'load', got {which!r}")
        predict = self.predict_exec_ms if which == "exec" else self.predict_load_ms
        apes = sorted(
            abs(predict(node) - ms) / max(ms, _FLOOR_MS) * 100.0
            for node, ms in _check_samples(samples, which)
        )
        if not apes:
            raise PlannerError("evaluate: expected at least one sample, got none")
        mid = len(apes) // 2
        median = apes[mid] if len(apes) % 2 else (apes[mid - 1] + apes[mid]) / 2
        return {"mape": sum(apes) / len(apes), "median_ape": median, "n": float(len(apes))}

    # -- wire form (protocol.md §10.10) ---------------------------------------------------

    def to_doc(self) -> dict[str, object]:
        return {
            "format": FORMAT,
            "exec": {k: v.to_doc() for k, v in sorted(self.exec_fits.items())},
            "load": {k: v.to_doc() for k, v in sorted(self.load_fits.items())},
            "exec_fallback": self.exec_fallback.to_doc(),
            "load_fallback": self.load_fallback.to_doc(),
            "partition_overhead_ms": self.partition_overhead_ms,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_doc(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ServerCostModel:
        if not isinstance(text, str | bytes):
            raise PlannerError(f"cost model: expected JSON text, got {type(text).__name__}")
        if len(text) > _MAX_TEXT:
            raise PlannerError(f"cost model: expected at most {_MAX_TEXT} bytes, got {len(text)}")
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PlannerError(f"cost model: not valid JSON ({exc})") from None
        return cls.from_doc(doc)

    @classmethod
    def from_doc(cls, doc: object) -> ServerCostModel:
        """Validate a decoded cost-model object (known keys, types, finite bounds)."""
        if not isinstance(doc, dict):
            raise PlannerError(f"cost model: expected an object, got {type(doc).__name__}")
        keys = {"format", "exec", "load", "exec_fallback", "load_fallback", "partition_overhead_ms"}
        if set(doc) != keys:
            raise PlannerError(
                f"cost model: expected keys {sorted(keys)}, got {sorted(map(str, doc))}"
            )
        if doc["format"] != FORMAT:
            raise PlannerError(f"cost model: expected format {FORMAT!r}, got {doc['format']!r}")
        fits: dict[str, dict[str, LinearFit]] = {}
        for part in ("exec", "load"):
            table = doc[part]
            if not isinstance(table, dict) or len(table) > len(LAYER_TYPES):
                raise PlannerError(f"cost model {part}: expected an object keyed by layer type")
            for kind in table:
                if kind not in LAYER_TYPES:
                    raise PlannerError(
                        f"cost model {part}: expected layer types {LAYER_TYPES}, got {kind!r}"
                    )
            fits[part] = {k: LinearFit.from_doc(v, f"{part}.{k}") for k, v in table.items()}
        po = doc["partition_overhead_ms"]
        if isinstance(po, bool) or not isinstance(po, int | float):
            raise PlannerError(f"cost model partition_overhead_ms: expected a number, got {po!r}")
        return cls(
            exec_fits=fits["exec"],
            load_fits=fits["load"],
            exec_fallback=LinearFit.from_doc(doc["exec_fallback"], "exec_fallback"),
            load_fallback=LinearFit.from_doc(doc["load_fallback"], "load_fallback"),
            partition_overhead_ms=float(po),
        )
