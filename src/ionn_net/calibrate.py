"""Server cost-model calibration on this machine (protocol.md §10.10).

This module owns how an :class:`~ionn_net.server.EdgeServer` learns its own speed:
it builds two small calibration models with random weights (a narrow MobileNetV2 for
convolutions, depthwise convolutions, normalisation and element-wise layers, and a
small CNN with pooling and dense layers), measures per-layer execution time inside
compiled slices (:func:`~ionn_net.measure.profile_layers`) and per-class load time
(rebuild from the safe spec, set weights, compile:
:func:`~ionn_net.measure.measure_load_times`), and fits a
:class:`~ionn_net.planner.costmodel.ServerCostModel`. The result is cached as JSON
(next to the layer store, or in ``~/.cache/ionn_net``) keyed by host, TensorFlow
version and calibration method, so a restart does not pay for it again; a server on the
Redis store keeps it in the store instead (per host), as it has no directory of its own.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

from ionn_net.errors import PlannerError, StoreError
from ionn_net.model.graph import LayerNode
from ionn_net.planner.costmodel import ServerCostModel

__all__ = ["CALIBRATION_VERSION", "calibrate", "load_or_calibrate"]

#: Bumped whenever the calibration method changes, so that a cached cost model made
#: by an older method is not reused (it is part of the cache file's name).
#: 2: full-size convolutions and execution fits anchored to a whole MobileNetV2.
CALIBRATION_VERSION = 2

logger = logging.getLogger("ionn_net.calibrate")


def _models() -> list[Any]:
    import keras

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
    h = keras.layers.Dense(256, activation="relu")(h)
    out = keras.layers.Dense(10, activation="softmax")(h)
    # Full-size convolutions (ResNet-like 3x3 and 1x1 at 56x56 and 28x28): small layers
    # alone are dominated by per-op overheads and extrapolate 10x too slow to big models.
    y = keras.Input((56, 56, 64))
    k = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(y)
    k = keras.layers.Conv2D(256, 1)(k)
    k = keras.layers.BatchNormalization()(k)
    k = keras.layers.ReLU()(k)
    k = keras.layers.Conv2D(128, 3, strides=2, padding="same", activation="relu")(k)
    k = keras.layers.Conv2D(512, 1, activation="relu")(k)
    k = keras.layers.GlobalAveragePooling2D()(k)
    big = keras.Model(y, keras.layers.Dense(1000)(k), name="calib_big")
    return [mobilenet, keras.Model(x, out, name="calib_cnn"), big]


def calibrate(*, runs: int = 5) -> tuple[ServerCostModel, dict[str, float]]:
    """Measure and fit; returns the model and its held-out errors (fit on the first
    calibration model, evaluated on the second, then refit on both)."""
    from ionn_net.executor import Executor
    from ionn_net.measure import measure_load_times, profile_layers
    from ionn_net.model.layers import build_layers, extract_manifest

    exec_samples: list[list[tuple[LayerNode, float]]] = []
    load_samples: list[tuple[LayerNode, float]] = []
    for model in _models():
        executor = Executor.from_model(model)
        graph = executor.graph
        ms = profile_layers(executor, runs=runs)
        exec_samples.append([(graph[n], t) for n, t in ms.items() if graph[n].inbound])
        manifest, blobs, _ = extract_manifest(model)

        def build(name: str, manifest: Any = manifest, blobs: Any = blobs) -> Any:
            return build_layers(manifest, blobs, names=[name])[name]

        loads = measure_load_times(graph, build, per_class=2)
        load_samples += [(n, loads.layer_ms(n.cls)) for n in graph if n.inbound]
    held_out = ServerCostModel.fit(exec_samples[0]).evaluate(exec_samples[1])
    overhead = _partition_overhead_ms()
    model = ServerCostModel.fit(
        [s for group in exec_samples for s in group],
        load_samples,
        partition_overhead_ms=overhead,
    )
    model, factor = _anchor_to_whole_model(model)
    return model, {**held_out, "partition_overhead_ms": overhead, "anchor_factor": factor}


def _anchor_to_whole_model(model: ServerCostModel) -> tuple[ServerCostModel, float]:
    """Scale the execution fits so that they predict a realistic whole model (MobileNetV2
    at 224x224, measured compiled here) exactly: per-layer fits from small calibration
    layers are easily off by several times on full-size models, and the planner's
    decisions depend on the server/client ratio of whole segments."""
    import dataclasses

    import keras

    from ionn_net.executor import Executor
    from ionn_net.measure import time_slice

    executor = Executor.from_model(keras.applications.MobileNetV2(weights=None))
    graph = executor.graph
    whole = executor.prepare(graph.order)
    measured = time_slice(whole, whole.zero_feeds(), runs=9)
    predicted = sum(model.exec_profile(graph).values())
    if predicted <= 0:
        return model, 1.0
    k = measured / predicted

    def scaled(fit: Any) -> Any:
        return dataclasses.replace(fit, slope=fit.slope * k, intercept=fit.intercept * k)

    anchored = dataclasses.replace(
        model,
        exec_fits={t: scaled(f) for t, f in model.exec_fits.items()},
        exec_fallback=scaled(model.exec_fallback),
    )
    return anchored, k


def _partition_overhead_ms() -> float:
    """The fixed cost of making a new partition usable: compiling the new run set on
    the server and the new client-side slices around it (two compilations, each
    measured as the median build of 30-layer slices of a fresh MobileNetV2)."""
    import statistics

    import keras

    from ionn_net.executor import Executor

    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None)
    executor = Executor.from_model(model)
    order = executor.graph.order
    seconds = [executor.prepare(order[i : i + 30]).build_seconds for i in (10, 50, 90)]
    return 2 * 1000.0 * statistics.median(seconds)


def _cache_path(root: Path | None) -> Path:
    import tensorflow as tf

    base = root if root is not None else Path.home() / ".cache" / "ionn_net"
    tag = f"{platform.node()}-{tf.__version__}-c{CALIBRATION_VERSION}".replace(os.sep, "_")
    return base / f"costmodel-{tag}.json"


def load_or_calibrate(
    root: str | os.PathLike[str] | None = None, *, notes: Any = None
) -> ServerCostModel:
    """The cached cost model for this host, or a fresh calibration (then cached).

    The cache is the file ``costmodel-<host>-<tensorflow>-c<version>.json`` in ``root``
    (default ``~/.cache/ionn_net``). ``notes`` is the server's blob store: one that keeps
    notes (the Redis store: a server with no directory of its own, often in a fresh
    container at each start) holds the cost model under that same name, read first and
    written after a calibration; other stores keep none and the file is used."""
    path = _cache_path(Path(root) if root is not None else None)
    for text in (_read_note(notes, path.name), _read_file(path)):
        if text is None:
            continue
        try:
            return ServerCostModel.from_json(text)
        except PlannerError as exc:
            logger.warning("ignoring invalid cached cost model %s: %s", path.name, exc)
    model, held_out = calibrate()
    logger.info("calibrated the server cost model; held-out error %s", json.dumps(held_out))
    if not _write_note(notes, path.name, model.to_json()):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(model.to_json())
        tmp.replace(path)
    return model


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
        logger.warning("cannot read the cached cost model from the store: %s", exc)
        return None
    return text if isinstance(text, str) else None


def _write_note(notes: Any, name: str, text: str) -> bool:
    if notes is None:
        return False
    try:
        return bool(notes.write_note(name, text))
    except StoreError as exc:
        logger.warning("cannot cache the cost model in the store: %s", exc)
        return False
