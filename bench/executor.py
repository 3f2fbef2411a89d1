"""Cost of running a model as compiled partitions instead of one compiled model.

For each model (default MobileNetV2 and ResNet50, ``weights=None``, batch 1) prints
  * the whole model compiled by the executor: build + warm-up time and median latency,
    next to ``model.predict_on_batch`` measured in the same run,
  * the same model as 4 and as 8 partitions cut at single-tensor cut points (balanced
    by MACs, preferring small boundary tensors): summed latency of the chain and its
    ratio to the whole model (issue target <= 1.15x), measured two ways: ``raw`` calls
    the compiled functions on TensorFlow tensors (compute only), ``api`` goes through
    ``CompiledSlice.__call__`` with numpy in and out (validation and input copies
    included, as on the query path),
  * build + warm-up seconds of each partition,
  * XLA (``jit_compile=True``) against the default, for the whole model and 4 partitions.
Latencies are medians of ``--runs`` interleaved rounds (every variant once per round),
so the shared machine's noise hits all variants alike.

Usage: ``python bench/executor.py [--models MobileNetV2 ResNet50] [--runs 20]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf

from ionn_net.executor import CompiledSlice, Executor
from ionn_net.model.graph import LayerGraph, TensorRef


def balanced_cuts(graph: LayerGraph, parts: int) -> list[tuple[str, ...]]:
    """``parts`` contiguous partitions ending at single-tensor cut points, each holding
    about the same share of the model's MACs. Near each target (within a third of a
    share) the cut with the smallest tensor wins, as a planner would choose."""
    order = graph.order
    cuts = [c for c in graph.cut_points() if c != order[-1]]
    cum: dict[str, float] = {}
    acc = 0.0
    for name in order:
        acc += graph[name].macs
        cum[name] = acc
    ends: list[str] = []
    for i in range(1, parts):
        target = acc * i / parts
        free = [c for c in cuts if not ends or cum[c] > cum[ends[-1]]]
        near = [c for c in free if abs(cum[c] - target) <= acc / parts / 3]
        if near:
            ends.append(min(near, key=lambda c: graph.tensor_bytes(TensorRef(c))))
        else:
            ends.append(min(free, key=lambda c: abs(cum[c] - target)))
    result: list[tuple[str, ...]] = []
    current: list[str] = []
    for name in order:
        current.append(name)
        if name in ends:
            result.append(tuple(current))
            current = []
    result.append(tuple(current))
    return result


class Chain:
    """A model run as a chain of compiled slices."""

    def __init__(self, slices: Sequence[CompiledSlice], x: np.ndarray, graph: LayerGraph):
        self.slices = list(slices)
        self.x_ref = TensorRef(graph.inputs[0])
        self.out_ref = graph.outputs[0]
        self.x = x
        values: dict[TensorRef, np.ndarray] = {self.x_ref: x}
        for s in self.slices:
            values.update(s(values))
        self.expected = values[self.out_ref]
        # the TensorFlow-tensor feeds of each slice, for compute-only timing
        self.feeds = [[tf.constant(values[r]) for r in s.inputs] for s in self.slices]

    def raw(self) -> None:
        for s, feed in zip(self.slices, self.feeds, strict=True):
            s._fn(*feed)

    def api(self) -> None:
        values: dict[TensorRef, np.ndarray] = {self.x_ref: self.x}
        for s in self.slices:
            values.update(s(values))
        assert values[self.out_ref].shape == self.expected.shape


def interleaved(variants: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median milliseconds per variant over ``runs`` rounds (2 untimed rounds first)."""
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for round_no in range(runs + 2):
        for key, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            if round_no >= 2:
                samples[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in samples.items()}


def bench_model(name: str, runs: int) -> None:
    model = getattr(keras.applications, name)(weights=None)
    x = np.random.default_rng(0).uniform(-1, 1, (1, *model.input_shape[1:])).astype("float32")
    print(f"\n== {name}: {len(model.layers)} layers, batch 1 ==")
    plain = Executor.from_model(model, jit=False)
    xla = Executor.from_model(model, jit=True)
    graph = plain.graph
    whole = Chain([plain.prepare(graph.order)], x, graph)
    print(f"whole model build + warm-up: {whole.slices[0].build_seconds:6.2f} s")
    chains: dict[int, Chain] = {}
    for parts in (4, 8):
        plan = balanced_cuts(graph, parts)
        chains[parts] = Chain([plain.prepare(p) for p in plan], x, graph)
        builds = ", ".join(f"{s.build_seconds:.2f}" for s in chains[parts].slices)
        sizes = ", ".join(str(len(p)) for p in plan)
        kib = ", ".join(f"{graph.tensor_bytes(TensorRef(p[-1])) // 1024}" for p in plan[:-1])
        print(f"{parts} partitions (layers {sizes}; cut tensors KiB {kib})")
        print(f"  build + warm-up s [{builds}]")
    t0 = time.perf_counter()
    xla_whole = Chain([xla.prepare(graph.order)], x, graph)
    xla_whole_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    xla_four = Chain([xla.prepare(p) for p in balanced_cuts(graph, 4)], x, graph)
    xla_four_build = time.perf_counter() - t0
    np.testing.assert_allclose(xla_whole.expected, whole.expected, rtol=1e-4, atol=1e-5)
    variants: dict[str, Callable[[], object]] = {
        "predict_on_batch": lambda: model.predict_on_batch(x),
        "whole raw": whole.raw,
        "whole api": whole.api,
        "4 parts raw": chains[4].raw,
        "4 parts api": chains[4].api,
        "8 parts raw": chains[8].raw,
        "8 parts api": chains[8].api,
        "XLA whole raw": xla_whole.raw,
        "XLA 4 parts raw": xla_four.raw,
    }
    ms = interleaved(variants, runs)
    print(f"median latency over {runs} interleaved rounds (ms, ratio to 'whole' same kind):")
    for key, value in ms.items():
        base = ms["whole api"] if key.endswith("api") else ms["whole raw"]
        print(f"  {key:18s} {value:8.2f} ms   x{value / base:5.2f}")
    print(
        f"XLA build + warm-up: whole {xla_whole_build:.2f} s, 4 partitions {xla_four_build:.2f} s"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["MobileNetV2", "ResNet50"])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs")
    for name in args.models:
        bench_model(name, args.runs)


if __name__ == "__main__":
    main()
