"""Server cost-model calibration on this machine (protocol.md §10.10, §10.11).

This module owns how an :class:`~ionn_net.server.EdgeServer` learns its own speed
(:func:`calibrate`): it builds real models with random weights (``keras.applications``,
``weights=None``: :data:`HELD_OUT` and :data:`EXTRA`), cuts each into compiled chunks of
about :data:`LAYERS_PER_CHUNK` layers and times every chunk of every model, and each whole
model, in the same interleaved rounds (:func:`~ionn_net.measure.measure_profiles`), so
that a machine whose load changes meanwhile slows them all alike. From those chunk times
it fits

* the :class:`~ionn_net.planner.prior.LayerPrior`, the per-class regression the server
  predicts a client's layers with until it has timed them (§10.11), and reports its
  error leave-one-model-out on each model of :data:`HELD_OUT` (fitted on every other
  model, evaluated on the one left out: per layer and on the whole model);
* the :class:`~ionn_net.planner.costmodel.ServerCostModel` sent in ``welcome`` (§10.10),
  with per-class load times measured on two small models
  (:func:`~ionn_net.measure.measure_load_times`) and the per-partition overhead.

The result is cached as JSON (next to the layer store, or in ``~/.cache/ionn_net``) in a
file named by host, TensorFlow version and :data:`CALIBRATION_VERSION`, so a restart does
not pay for it again and a cache made by an older method is refitted; a server on the
Redis store keeps it in the store instead (per host), as it has no directory of its own.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ionn_net.errors import PlannerError, StoreError
from ionn_net.model.graph import LayerGraph, LayerNode
from ionn_net.planner.costmodel import ServerCostModel
from ionn_net.planner.prior import LayerPrior, chunks_of, holdout_errors

__all__ = [
    "CALIBRATION_VERSION",
    "EXTRA",
    "HELD_OUT",
    "LAYERS_PER_CHUNK",
    "Calibration",
    "MeasuredModel",
    "cache_path",
    "calibrate",
    "fit_calibration",
    "layer_ms",
    "load_calibration",
    "load_or_calibrate",
    "measure_models",
    "store_calibration",
]

#: Bumped whenever the calibration method changes, so that a cached cost model made
#: by an older method is not reused (it is part of the cache file's name).
#: 2: full-size convolutions and execution fits anchored to a whole MobileNetV2.
#: 3: real models timed in chunks, a per-class prior fitted on chunk times.
CALIBRATION_VERSION = 3
_FORMAT = "ionn-calibration/3"

#: Models the prior is fitted on and evaluated on, one left out at a time.
HELD_OUT: tuple[str, ...] = ("MobileNetV2", "ResNet50", "InceptionV3", "VGG16")
#: Further models the prior is fitted on (more layer classes and shapes: depthwise and
#: separable convolutions, squeeze-and-excitation, dense blocks).
EXTRA: tuple[str, ...] = (
    "MobileNet",
    "MobileNetV3Large",
    "EfficientNetB0",
    "DenseNet121",
    "ResNet50V2",
    "Xception",
)
#: Layers per timed chunk: fewer and the per-call cost dominates the smallest chunks.
LAYERS_PER_CHUNK = 5.0

logger = logging.getLogger("ionn_net.calibrate")


@dataclass(frozen=True, slots=True, kw_only=True)
class Calibration:
    """What :func:`calibrate` found: the wire cost model, the prior, and the prior's
    held-out errors (per model: ``median_ape``, ``chunk_ape``, ``whole_ape`` in %,
    ``whole_pred_ms``, ``whole_ms``; see :func:`~ionn_net.planner.prior.holdout_errors`),
    the same for the wire cost model (``cost_model_held_out``), and its cost in seconds."""

    cost_model: ServerCostModel
    prior: LayerPrior
    held_out: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    cost_model_held_out: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        for name in ("held_out", "cost_model_held_out"):
            table = {k: MappingProxyType(dict(v)) for k, v in getattr(self, name).items()}
            object.__setattr__(self, name, MappingProxyType(table))

    def summary(self) -> list[str]:
        """The held-out errors, one line per model (what the server logs at start)."""
        lines = []
        for name, r in self.held_out.items():
            v1 = self.cost_model_held_out.get(name, {})
            lines.append(
                f"{name}: per layer median {r['median_ape']:.1f}% (chunks {r['chunk_ape']:.1f}%), "
                f"whole model {r['whole_pred_ms']:.1f} ms predicted vs {r['whole_ms']:.1f} ms "
                f"({r['whole_ape']:.1f}%); wire cost model (§10.10): per layer median "
                f"{v1.get('median_ape', math.nan):.1f}%, whole {v1.get('whole_ape', math.nan):.1f}%"
            )
        return lines

    def log_held_out(self) -> None:
        logger.info(
            "server cost model (calibrated in %.0f s): held-out error, leave one model out:",
            self.seconds,
        )
        for line in self.summary():
            logger.info("  %s", line)

    def to_json(self) -> str:
        doc = {
            "format": _FORMAT,
            "cost_model": self.cost_model.to_doc(),
            "prior": self.prior.to_doc(),
            "held_out": {k: dict(v) for k, v in self.held_out.items()},
            "cost_model_held_out": {k: dict(v) for k, v in self.cost_model_held_out.items()},
            "seconds": self.seconds,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise PlannerError(f"calibration: not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise PlannerError(f"calibration: expected format {_FORMAT!r}")
        tables: dict[str, dict[str, dict[str, float]]] = {}
        for name in ("held_out", "cost_model_held_out"):
            table = doc.get(name)
            if not isinstance(table, dict):
                raise PlannerError(f"calibration {name}: expected an object")
            ok = all(
                isinstance(v, dict) and all(isinstance(x, int | float) for x in v.values())
                for v in table.values()
            )
            if not ok:
                raise PlannerError(f"calibration {name}: expected model -> numbers")
            tables[name] = dict(table)
        seconds = doc.get("seconds")
        if not isinstance(seconds, int | float):
            raise PlannerError("calibration seconds: expected a number")
        return cls(
            cost_model=ServerCostModel.from_doc(doc.get("cost_model")),
            prior=LayerPrior.from_doc(doc.get("prior")),
            held_out=tables["held_out"],
            cost_model_held_out=tables["cost_model_held_out"],
            seconds=float(seconds),
        )


@dataclass(frozen=True, slots=True)
class MeasuredModel:
    """One calibration model as measured: its graph, its timed chunks (layer names in
    topological order) and their times net of one call (ms)."""

    graph: LayerGraph
    chunks: tuple[tuple[str, ...], ...]
    chunk_ms: tuple[float, ...]

    def to_doc(self) -> dict[str, object]:
        from ionn_net.model.graph_io import graph_to_json

        return {
            "graph": graph_to_json(self.graph),
            "chunks": [list(c) for c in self.chunks],
            "chunk_ms": list(self.chunk_ms),
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> MeasuredModel:
        from ionn_net.model.graph_io import graph_from_json

        graph = graph_from_json(doc["graph"])
        chunks = tuple(tuple(str(n) for n in c) for c in doc["chunks"])
        times = tuple(float(t) for t in doc["chunk_ms"])
        if len(chunks) != len(times) or any(n not in graph for c in chunks for n in c):
            raise PlannerError("measured model: chunks and times do not match its graph")
        return cls(graph, chunks, times)


def _application(name: str) -> Any:
    import keras

    side = 299 if name in ("InceptionV3", "Xception") else 224
    return getattr(keras.applications, name)(weights=None, input_shape=(side, side, 3))


def measure_models(names: Sequence[str], *, runs: int = 5) -> dict[str, MeasuredModel]:
    """Time every chunk and whole model of ``names`` (``keras.applications``, random
    weights) in interleaved rounds."""
    from ionn_net.executor import Executor
    from ionn_net.measure import measure_profiles

    executors = {n: Executor.from_model(_application(n)) for n in names}
    found = measure_profiles(
        executors, runs=runs, layers_per_chunk=LAYERS_PER_CHUNK, warmup=2, whole=True
    )
    return {
        n: MeasuredModel(executors[n].graph, p.chunks, tuple(p.net_chunk_ms()))
        for n, p in found.items()
    }


def fit_calibration(
    measured: Mapping[str, MeasuredModel],
    *,
    held_out: Sequence[str] = HELD_OUT,
    load_samples: Sequence[tuple[LayerNode, float]] = (),
    partition_overhead_ms: float = 0.0,
    seconds: float = 0.0,
) -> Calibration:
    """The prior, the wire cost model and their held-out errors from measured models
    (pure: the benchmarks refit stored measurements with it)."""
    timed = {n: chunks_of(m.graph, m.chunks, m.chunk_ms) for n, m in measured.items()}
    evaluate = [n for n in held_out if n in timed]
    prior = LayerPrior.fit([c for rows in timed.values() for c in rows])
    per_layer = {n: layer_ms(prior, m) for n, m in measured.items()}

    def wire_fit(names: Sequence[str]) -> ServerCostModel:
        samples = [(measured[n].graph[k], v) for n in names for k, v in per_layer[n].items()]
        return ServerCostModel.fit(
            samples, load_samples, partition_overhead_ms=partition_overhead_ms
        )

    wire_held_out = {}
    for name in evaluate:
        model = wire_fit([n for n in measured if n != name])
        graph = measured[name].graph
        pairs = [(model.predict_exec_ms(graph[k]), v) for k, v in per_layer[name].items()]
        predicted, whole = sum(p for p, _ in pairs), sum(v for _, v in pairs)
        wire_held_out[name] = {
            "median_ape": statistics.median(abs(p - t) / max(t, 0.005) * 100 for p, t in pairs),
            "whole_ape": abs(predicted - whole) / max(whole, 0.005) * 100,
        }
    return Calibration(
        cost_model=wire_fit(list(measured)),
        prior=prior,
        held_out=holdout_errors(timed, evaluate),
        cost_model_held_out=wire_held_out,
        seconds=seconds,
    )


def layer_ms(prior: LayerPrior, m: MeasuredModel) -> dict[str, float]:
    """Each (non-input) layer's measured time: its chunk's, shared by ``prior``."""
    timed = chunks_of(m.graph, m.chunks, m.chunk_ms)
    out: dict[str, float] = {}
    names = [[n for n in c if m.graph[n].inbound] for c in m.chunks]
    for chunk_names, chunk in zip((c for c in names if c), timed, strict=True):
        out.update(zip(chunk_names, prior.split(chunk), strict=True))
    return out


def calibrate(*, runs: int = 5, models: Sequence[str] = (*HELD_OUT, *EXTRA)) -> Calibration:
    """Measure this machine and fit (see the module docstring). ``models`` (by default
    :data:`HELD_OUT` and :data:`EXTRA`) may be a subset: the held-out errors are then
    reported on the models of :data:`HELD_OUT` among them, each left out of the rest."""
    started = time.monotonic()
    measured = measure_models(models, runs=runs)
    load_samples = _load_samples()
    overhead = _partition_overhead_ms()
    return fit_calibration(
        measured,
        load_samples=load_samples,
        partition_overhead_ms=overhead,
        seconds=time.monotonic() - started,
    )


def _load_samples() -> list[tuple[LayerNode, float]]:
    """Per-class load times (rebuild from the safe spec, set weights, compile) of two
    small models: a narrow MobileNetV2 and a small CNN with pooling and dense layers."""
    import keras

    from ionn_net.executor import Executor
    from ionn_net.measure import measure_load_times
    from ionn_net.model.layers import build_layers, extract_manifest

    mobilenet = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=100
    )
    x = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = keras.layers.AveragePooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(512, activation="relu")(h)
    out = keras.layers.Dense(10, activation="softmax")(h)
    samples: list[tuple[LayerNode, float]] = []
    for model in (mobilenet, keras.Model(x, out, name="calib_cnn")):
        graph = Executor.from_model(model).graph
        manifest, blobs, _ = extract_manifest(model)

        def build(name: str, manifest: Any = manifest, blobs: Any = blobs) -> Any:
            return build_layers(manifest, blobs, names=[name])[name]

        loads = measure_load_times(graph, build, per_class=2)
        samples += [(n, loads.layer_ms(n.cls)) for n in graph if n.inbound]
    return samples


def _partition_overhead_ms() -> float:
    """The fixed cost of making a new partition usable: compiling the new run set on
    the server and the new client-side slices around it (two compilations, each
    measured as the median build of 30-layer slices of a fresh MobileNetV2)."""
    import keras

    from ionn_net.executor import Executor

    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None)
    executor = Executor.from_model(model)
    order = executor.graph.order
    seconds = [executor.prepare(order[i : i + 30]).build_seconds for i in (10, 50, 90)]
    return 2 * 1000.0 * statistics.median(seconds)


def cache_path(root: str | os.PathLike[str] | None) -> Path:
    """Where this host's calibration is cached (``root``, or ``~/.cache/ionn_net``)."""
    import tensorflow as tf

    base = Path(root) if root is not None else Path.home() / ".cache" / "ionn_net"
    tag = f"{platform.node()}-{tf.__version__}-c{CALIBRATION_VERSION}".replace(os.sep, "_")
    return base / f"costmodel-{tag}.json"


_cache_path = cache_path  # the name the cache tests have always used


def store_calibration(
    root: str | os.PathLike[str] | None, found: Calibration, *, notes: Any = None
) -> Path | None:
    """Write ``found`` to the cache: into ``notes`` when that store keeps notes (then
    returns ``None``), else to the file (atomically; returns it)."""
    path = cache_path(root)
    if _write_note(notes, path.name, found.to_json()):
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(found.to_json())
    tmp.replace(path)
    return path


def load_calibration(
    root: str | os.PathLike[str] | None = None, *, notes: Any = None
) -> Calibration:
    """The cached calibration for this host, or a fresh one (then cached).

    The cache is the file ``costmodel-<host>-<tensorflow>-c<version>.json`` in ``root``
    (default ``~/.cache/ionn_net``). ``notes`` is the server's blob store: one that keeps
    notes (the Redis store: a server with no directory of its own, often in a fresh
    container at each start) holds the calibration under that same name, read first and
    written after a calibration; other stores keep none and the file is used."""
    path = cache_path(root)
    for text in (_read_note(notes, path.name), _read_file(path)):
        if text is None:
            continue
        try:
            return Calibration.from_json(text)
        except PlannerError as exc:
            logger.warning("ignoring invalid cached calibration %s: %s", path.name, exc)
    found = calibrate()
    store_calibration(root, found, notes=notes)
    return found


def load_or_calibrate(
    root: str | os.PathLike[str] | None = None, *, notes: Any = None
) -> ServerCostModel:
    """The cached wire cost model for this host (§10.10), or a fresh calibration
    (:func:`load_calibration`)."""
    return load_calibration(root, notes=notes).cost_model


def _read_file(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _read_note(notes: Any, name: str) -> str | None:
    if notes is None:
        return None
    try:
        text = notes.read_note(name)
    except StoreError as exc:  # the store is down: calibrate (or use the file) instead
        logger.warning("cannot read the cached calibration from the store: %s", exc)
        return None
    return text if isinstance(text, str) else None


def _write_note(notes: Any, name: str, text: str) -> bool:
    if notes is None:
        return False
    try:
        return bool(notes.write_note(name, text))
    except StoreError as exc:
        logger.warning("cannot cache the calibration in the store: %s", exc)
        return False
