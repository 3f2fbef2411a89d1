"""The server's prior of its own per-layer execution time: :class:`LayerPrior`.

This module owns the regression the server predicts a layer's execution time with
before it has timed that layer (protocol.md §10.11 announces the predictions, then the
measurements). It is richer than the wire cost model of §10.10 (one feature per layer
type): ``ms = max(0, c . f)`` over the features

* ``one`` (a per-call constant), ``macs`` (multiply-accumulates, Appendix B.2),
* ``in_elems`` and ``out_elems`` (elements read and written: memory-bound layers), and the
  elements above a 1 MiB tensor (beyond the cache an element costs more),
* ``weight_bytes`` (weights streamed from memory: a large dense layer),
* ``macs_over_<M>`` (the MACs above M million, for a few M): on a CPU shared with other
  work a long operation is preempted more often, so big layers cost more per MAC than
  small ones there; on an idle machine these coefficients come out near 0,

with ``c`` the sum of a global vector, a deviation per layer type
(:func:`~ionn_net.planner.costmodel.layer_type`) and one per layer class (an
``Activation`` by its function), each deviation pulled toward 0. A layer cannot be timed
alone here (one compiled call costs 0.2-0.4 ms, more than most layers), so the fit works
on what a measurement really observes: chunks of a few layers timed together
(:class:`TimedChunk`), the predicted sum of each chunk against its time, relative errors,
non-negative least squares (:func:`nnls`). A layer's measured time is then its chunk's
time shared in proportion to the prediction (:meth:`LayerPrior.split`). Pure (numpy
only); the measurements come from :mod:`ionn_net.calibrate` and the server's timing.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from ionn_net.errors import PlannerError
from ionn_net.model.graph import LayerGraph, LayerNode
from ionn_net.planner.costmodel import layer_type

__all__ = [
    "PRIOR_FEATURES",
    "LayerPrior",
    "TimedChunk",
    "TimedLayer",
    "chunks_of",
    "class_key",
    "holdout_errors",
    "layer_features",
    "nnls",
]

FORMAT = "ionn-prior/1"
#: MACs (millions) above which the hinge features count.
_HINGES = (50.0, 200.0, 800.0)
#: Elements (tens of thousands) above which the element hinges count: about a 1 MiB
#: (L2-sized) float32 tensor; beyond it an element-wise layer streams from memory.
_ELEM_HINGE = 25.0
PRIOR_FEATURES: tuple[str, ...] = (
    "one",
    "macs",
    "in_elems",
    "out_elems",
    "weight_bytes",
    *(f"macs_over_{int(h)}M" for h in _HINGES),
    "in_elems_over_256k",
    "out_elems_over_256k",
)
#: Units of the features (coefficients are ms per unit): millions of MACs, tens of
#: thousands of elements, megabytes.
_SCALE = (1.0, 1e6, 1e4, 1e4, 1e6)
_FIT_FLOOR_MS = 0.01  # fit weights 1/max(ms, this): tiny layers' shares are noise
_EVAL_FLOOR_MS = 0.005  # errors relative to max(ms, this): timer resolution
_MAX_COEF = 1e9
_MAX_TEXT = 1 << 20
_MAX_KEY = 64

FloatArray = npt.NDArray[np.float64]


def class_key(node: LayerNode) -> str:
    """The class a layer is fitted with: its class name, an ``Activation`` by its
    function, a convolution or dense layer with a fused activation apart."""
    cls = node.cls
    act = node.params.get("activation")
    if cls == "Activation":
        return f"Activation:{act}"[:_MAX_KEY]
    return cls[:_MAX_KEY]


def layer_features(graph: LayerGraph, name: str) -> tuple[float, ...]:
    """The feature vector of layer ``name`` (in :data:`PRIOR_FEATURES` order)."""
    node = graph[name]
    in_elems = sum(math.prod(graph[r.layer].output_shapes[r.index]) for r in node.inbound)
    raw = (1.0, float(node.macs), float(in_elems), float(node.output_elements))
    base = [v / s for v, s in zip((*raw, float(node.weight_bytes)), _SCALE, strict=True)]
    macs_m = base[1]
    hinges = (max(0.0, macs_m - h) for h in _HINGES)
    return (*base, *hinges, max(0.0, base[2] - _ELEM_HINGE), max(0.0, base[3] - _ELEM_HINGE))


def nnls(a: FloatArray, b: FloatArray, *, max_iter: int = 500) -> FloatArray:
    """Non-negative least squares, ``argmin |a x - b|`` over ``x >= 0`` (Lawson-Hanson
    active set; the problems here have a handful of columns)."""
    _, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    grad = a.T @ (b - a @ x)
    tol = 1e-10 * max(1.0, float(np.abs(grad).max(initial=0.0)))
    for _ in range(max_iter):
        if passive.all() or (grad[~passive] <= tol).all():
            break
        passive[int(np.argmax(np.where(passive, -np.inf, grad)))] = True
        for _ in range(2 * n + 1):
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            step = float(np.min(x[neg] / (x[neg] - z[neg])))
            x = x + step * (z - x)
            passive &= x > 1e-15
            x[~passive] = 0.0
        grad = a.T @ (b - a @ x)
    return x


@dataclass(frozen=True, slots=True)
class TimedLayer:
    """A layer as the prior sees it: its fitting class and type, and its features."""

    key: str
    kind: str
    features: tuple[float, ...]

    @classmethod
    def of(cls, graph: LayerGraph, name: str) -> TimedLayer:
        node = graph[name]
        return cls(class_key(node), layer_type(node.cls), layer_features(graph, name))


@dataclass(frozen=True, slots=True)
class TimedChunk:
    """Layers timed together in one compiled slice, and the milliseconds they took
    (net of the per-call cost): what a measurement really observes."""

    layers: tuple[TimedLayer, ...]
    ms: float

    def __post_init__(self) -> None:
        ms = self.ms
        if not (isinstance(ms, int | float) and math.isfinite(ms) and ms >= 0):
            raise PlannerError(f"timed chunk: expected ms >= 0, got {ms!r}")


def chunks_of(
    graph: LayerGraph, chunks: Sequence[Sequence[str]], chunk_ms: Sequence[float]
) -> list[TimedChunk]:
    """The timed chunks of a measured model (input layers, which do no work, left out;
    chunks of input layers only dropped)."""
    out = []
    for names, ms in zip(chunks, chunk_ms, strict=True):
        layers = tuple(TimedLayer.of(graph, n) for n in names if graph[n].inbound)
        if layers:
            out.append(TimedChunk(layers, float(ms)))
    return out


def _coef(values: Sequence[float], where: str) -> tuple[float, ...]:
    if len(values) != len(PRIOR_FEATURES):
        raise PlannerError(f"prior {where}: expected {len(PRIOR_FEATURES)} coefficients")
    for v in values:
        number = isinstance(v, int | float) and not isinstance(v, bool)
        if not (number and math.isfinite(v) and abs(v) <= _MAX_COEF):
            raise PlannerError(f"prior {where}: expected finite coefficients, got {v!r}")
    return tuple(float(v) for v in values)


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerPrior:
    """``ms = max(0, c . f)`` with ``c`` the coefficients of the layer's class, else of
    its type, else the global ones (see :meth:`fit`)."""

    base: tuple[float, ...] = (0.0,) * len(PRIOR_FEATURES)
    by_class: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    by_type: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", _coef(self.base, "base"))
        for name in ("by_class", "by_type"):
            table = {k: _coef(v, f"{name}.{k}") for k, v in getattr(self, name).items()}
            object.__setattr__(self, name, MappingProxyType(table))

    @classmethod
    def fit(
        cls,
        chunks: Iterable[TimedChunk],
        *,
        min_samples: int = 5,
        ridge: float = 0.1,
    ) -> LayerPrior:
        """Fit on timed chunks, directly on what was measured: the predicted sum of each
        chunk's layers against its time, relative errors (rows weighted 1/ms). Every
        layer shares one global coefficient vector; its type and its class, each when
        seen in at least ``min_samples`` layers, add their own deviations, pulled toward
        0 by ``ridge`` (relative to the column's scale), so that a class seen in few
        chunks stays close to its type and a type close to what all layers do. A class
        the fit never saw uses its type's vector, a type it never saw the global one.
        Non-negative least squares over the global part and the positive and negative
        parts of the deviations."""
        rows = list(chunks)
        if not rows:
            raise PlannerError("prior: expected at least one timed chunk, got none")
        if min_samples < 1 or not ridge >= 0:
            raise PlannerError(f"prior: expected min_samples >= 1, ridge >= 0, got {min_samples}")
        count: dict[tuple[str, str], int] = {}
        for chunk in rows:
            for layer in chunk.layers:
                for g in (("type", layer.kind), ("class", layer.key)):
                    count[g] = count.get(g, 0) + 1
        groups: dict[tuple[str, str], int] = {}  # group -> its index among deviations
        nf = len(PRIOR_FEATURES)
        design = []
        for chunk in rows:
            row: dict[int, npt.NDArray[np.float64]] = {}
            for layer in chunk.layers:
                f = np.asarray(layer.features, dtype=np.float64)
                row[-1] = row.get(-1, 0.0) + f
                for g in (("type", layer.kind), ("class", layer.key)):
                    if count[g] >= min_samples:
                        gi = groups.setdefault(g, len(groups))
                        row[gi] = row.get(gi, 0.0) + f
            design.append(row)
        a = np.zeros((len(rows), nf * (1 + 2 * len(groups))))
        for r, row in enumerate(design):
            for gi, f in row.items():
                at = 0 if gi < 0 else nf + 2 * nf * gi
                a[r, at : at + nf] = f
                if gi >= 0:
                    a[r, at + nf : at + 2 * nf] = -f
        y = np.array([c.ms for c in rows])
        w = 1.0 / np.maximum(y, _FIT_FLOOR_MS)
        aw = a * w[:, None]
        scale = np.linalg.norm(aw, axis=0) + 1e-12
        penalty = np.diag(ridge * scale)[nf:]
        x = nnls(np.vstack([aw, penalty]), np.concatenate([y * w, np.zeros(len(penalty))]))
        base = x[:nf]

        def dev(group: tuple[str, str]) -> npt.NDArray[np.float64]:
            gi = groups.get(group)
            if gi is None:
                return np.zeros(nf)
            at = nf + 2 * nf * gi
            return np.asarray(x[at : at + nf] - x[at + nf : at + 2 * nf])

        by_type = {k: base + dev((lv, k)) for lv, k in groups if lv == "type"}
        by_class = {}
        for chunk in rows:
            for layer in chunk.layers:
                if ("class", layer.key) in groups and layer.key not in by_class:
                    kind = by_type.get(layer.kind, base)
                    by_class[layer.key] = kind + dev(("class", layer.key))

        def vec(v: npt.NDArray[np.float64]) -> tuple[float, ...]:
            return tuple(float(c) for c in v)

        return cls(
            base=vec(base),
            by_class={k: vec(v) for k, v in by_class.items()},
            by_type={k: vec(v) for k, v in by_type.items()},
        )

    def coef_for(self, key: str, kind: str) -> tuple[float, ...]:
        return self.by_class.get(key) or self.by_type.get(kind) or self.base

    def predict_layer(self, layer: TimedLayer) -> float:
        coef = self.coef_for(layer.key, layer.kind)
        return max(0.0, float(sum(c * f for c, f in zip(coef, layer.features, strict=True))))

    def predict_ms(self, graph: LayerGraph, name: str) -> float:
        if not graph[name].inbound:
            return 0.0  # input layers do no work
        return self.predict_layer(TimedLayer.of(graph, name))

    def profile(self, graph: LayerGraph) -> dict[str, float]:
        """Predicted milliseconds of every layer of ``graph``."""
        return {n: self.predict_ms(graph, n) for n in graph.order}

    def split(self, chunk: TimedChunk) -> list[float]:
        """A chunk's measured time shared among its layers in proportion to the
        prediction (how a layer's time is read from a chunk, here and on the server)."""
        shares = [max(self.predict_layer(layer), 1e-6) for layer in chunk.layers]
        total = sum(shares)
        return [chunk.ms * s / total for s in shares]

    # -- cache form (validated like wire input) ----------------------------------------

    def to_doc(self) -> dict[str, object]:
        return {
            "format": FORMAT,
            "features": list(PRIOR_FEATURES),
            "base": list(self.base),
            "by_class": {k: list(v) for k, v in sorted(self.by_class.items())},
            "by_type": {k: list(v) for k, v in sorted(self.by_type.items())},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_doc(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_doc(cls, doc: object) -> LayerPrior:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise PlannerError(f"prior: expected an object of format {FORMAT!r}")
        if set(doc) != {"format", "features", "base", "by_class", "by_type"}:
            raise PlannerError(f"prior: unexpected members {sorted(map(str, doc))}")
        if doc["features"] != list(PRIOR_FEATURES):
            raise PlannerError(f"prior: expected features {list(PRIOR_FEATURES)}")
        tables: dict[str, dict[str, tuple[float, ...]]] = {}
        for part in ("by_class", "by_type"):
            table = doc[part]
            if not isinstance(table, dict) or len(table) > 256:
                raise PlannerError(f"prior {part}: expected an object of at most 256 entries")
            for k, v in table.items():
                if not isinstance(k, str) or not 0 < len(k) <= _MAX_KEY or not isinstance(v, list):
                    raise PlannerError(f"prior {part}: bad entry {k!r}")
            tables[part] = {k: _coef(v, f"{part}.{k}") for k, v in table.items()}
        if not isinstance(doc["base"], list):
            raise PlannerError("prior base: expected a list")
        return cls(base=_coef(doc["base"], "base"), **tables)

    @classmethod
    def from_json(cls, text: str | bytes) -> LayerPrior:
        if len(text) > _MAX_TEXT:
            raise PlannerError(f"prior: expected at most {_MAX_TEXT} bytes, got {len(text)}")
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PlannerError(f"prior: not valid JSON ({exc})") from None
        return cls.from_doc(doc)


def _median_ape(pairs: Iterable[tuple[float, float]]) -> float:
    return statistics.median(abs(p - t) / max(t, _EVAL_FLOOR_MS) * 100 for p, t in pairs)


def holdout_errors(
    models: Mapping[str, Sequence[TimedChunk]], held_out: Iterable[str]
) -> dict[str, dict[str, float]]:
    """Leave one model out: for each model of ``held_out``, fit on every other model and
    report on it

    * ``median_ape``: the median absolute percentage error per layer, where a layer's
      measured time is its chunk's time shared by the prior fitted on *every* model
      (:meth:`LayerPrior.split`; a layer cannot be timed alone without the per-call
      cost dwarfing it);
    * ``chunk_ape``: the same per layer of the chunk's own error (no share involved);
    * ``whole_ape``: the error of the whole model, the sum over its layers.
    """
    consensus = LayerPrior.fit([c for rows in models.values() for c in rows])
    report = {}
    for name in held_out:
        prior = LayerPrior.fit([c for other, rows in models.items() if other != name for c in rows])
        layers: list[tuple[float, float]] = []
        chunks: list[tuple[float, float]] = []
        for chunk in models[name]:
            predicted = [prior.predict_layer(layer) for layer in chunk.layers]
            layers += zip(predicted, consensus.split(chunk), strict=True)
            chunks += [(sum(predicted), chunk.ms)] * len(chunk.layers)
        whole_pred = sum(p for p, _ in layers)
        whole = sum(c.ms for c in models[name])
        report[name] = {
            "median_ape": _median_ape(layers),
            "chunk_ape": _median_ape(chunks),
            "whole_pred_ms": whole_pred,
            "whole_ms": whole,
            "whole_ape": abs(whole_pred - whole) / max(whole, _EVAL_FLOOR_MS) * 100,
            "layers": float(len(layers)),
        }
    return report
