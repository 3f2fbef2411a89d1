"""Server cost-model calibration on this machine (protocol.md §10.10).

This module owns how an :class:`~ionn_net.server.EdgeServer` learns its own speed:
it builds two small calibration models with random weights (a narrow MobileNetV2 for
convolutions, depthwise convolutions, normalisation and element-wise layers, and a
small CNN with pooling and dense layers), measures per-layer execution time inside
compiled slices (:func:`~ionn_net.executor.profile_layers`) and per-class load time
(rebuild from the safe spec, set weights, compile:
:func:`~ionn_net.executor.measure_load_times`), and fits a
:class:`~ionn_net.planner.costmodel.ServerCostModel`. The result is cached as JSON
(next to the layer store, or in ``~/.cache/ionn_net``) keyed by host and TensorFlow
version, so a restart does not pay for it again.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

from ionn_net.errors import PlannerError
from ionn_net.model.graph import LayerNode
from ionn_net.planner.costmodel import ServerCostModel

__all__ = ["calibrate", "load_or_calibrate"]

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
    return [mobilenet, keras.Model(x, out, name="calib_cnn")]


def calibrate(*, runs: int = 5) -> tuple[ServerCostModel, dict[str, float]]:
    """Measure and fit; returns the model and its held-out errors (fit on the first
    calibration model, evaluated on the second, then refit on both)."""
    from ionn_net.executor import Executor, measure_load_times, profile_layers
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
    return model, {**held_out, "partition_overhead_ms": overhead}


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
    tag = f"{platform.node()}-{tf.__version__}".replace(os.sep, "_")
    return base / f"costmodel-{tag}.json"


def load_or_calibrate(root: str | os.PathLike[str] | None = None) -> ServerCostModel:
    """The cached cost model for this host, or a fresh calibration (then cached)."""
    path = _cache_path(Path(root) if root is not None else None)
    try:
        return ServerCostModel.from_json(path.read_text())
    except FileNotFoundError:
        pass
    except PlannerError as exc:
        logger.warning("ignoring invalid cached cost model %s: %s", path, exc)
    model, held_out = calibrate()
    logger.info("calibrated the server cost model; held-out error %s", json.dumps(held_out))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(model.to_json())
    tmp.replace(path)
    return model
