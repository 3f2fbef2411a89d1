"""Measuring layers: per-layer execution profiles and server-side load times.

This module owns the measurements the planner's inputs come from, all built on the
executor's public API (:meth:`Executor.prepare`, :meth:`CompiledSlice.run_raw`):

* :func:`time_slice`: median milliseconds of one compiled slice;
* :func:`profile_layers` / :func:`measure_profile`: per-layer milliseconds measured inside
  compiled sub-models (the client's profile, the server's calibration);
* :func:`measure_load_times`: server-side cost of instantiating and compiling layers.

TensorFlow stays behind :mod:`ionn_net.executor`: this module never imports it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ionn_net.errors import ExecutorError
from ionn_net.executor import INPUT_CLASS, CompiledSlice, Executor
from ionn_net.model.graph import LayerGraph, TensorRef

__all__ = [
    "LayerProfile",
    "LoadTimes",
    "measure_load_times",
    "measure_profile",
    "measure_profiles",
    "profile_layers",
    "time_slice",
]


def time_slice(
    compiled: CompiledSlice, tensors: Mapping[TensorRef, np.ndarray], *, runs: int = 5
) -> float:
    """Median milliseconds of ``runs`` calls (after one untimed call)."""
    if runs < 1:
        raise ExecutorError(f"runs: expected >= 1, got {runs}")
    feeds = compiled.constant_feeds(tensors)
    compiled.run_raw(feeds)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        compiled.run_raw(feeds)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerProfile:
    """What :func:`measure_profile` measured (milliseconds at batch 1).

    ``layer_ms``: per-layer estimate (see :func:`profile_layers`); ``chunks`` and
    ``chunk_ms``: the compiled ranges timed and their medians (per-call cost included);
    ``call_overhead_ms``: median of an identity slice; ``whole_ms``: the whole model
    compiled as one slice, timed in the same interleaved rounds (None unless asked).
    """

    layer_ms: Mapping[str, float]
    chunks: tuple[tuple[str, ...], ...]
    chunk_ms: tuple[float, ...]
    call_overhead_ms: float
    whole_ms: float | None

    @property
    def total_ms(self) -> float:
        return sum(self.layer_ms.values())

    def net_chunk_ms(self) -> list[float]:
        """Each chunk's time net of what one call costs, chosen so that the chunks add
        up to the whole model less one call (needs ``whole_ms``). A chunk call costs
        more or less than the identity slice (its tensors in and out, work that the
        whole model overlaps across the cut), by 10-25% of the whole measured here
        either way; the difference is shared evenly among the calls, floored at a tenth
        of each chunk."""
        if self.whole_ms is None:
            raise ExecutorError("net_chunk_ms: the whole model was not timed (whole=True)")
        target = max(self.whole_ms - self.call_overhead_ms, 0.0)
        per_call = (sum(self.chunk_ms) - target) / len(self.chunk_ms)
        return [max(t - per_call, 0.1 * t) for t in self.chunk_ms]


def profile_layers(
    executor: Executor,
    *,
    runs: int = 5,
    chunks: int | None = None,
    warmup: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """Per-layer milliseconds at batch 1, measured inside compiled sub-models.

    Timing each layer as its own compiled call would add a fixed per-call cost (~0.2-0.3
    ms) to every layer and overshoot the whole model several times. Instead the
    topological order is cut into ``chunks`` contiguous ranges of similar estimated cost
    (default about one per 20 layers, at most 12), each compiled as one slice and fed
    the real activations of a random input. After ``warmup`` untimed rounds (freshly
    built functions run slower for their first calls), ``runs`` interleaved rounds are
    timed; each chunk's median, minus the median of an identity slice (the per-call
    cost, floored at a tenth of the chunk's time), is shared among its layers in
    proportion to ``a * macs + b * output_elements`` with ``a, b >= 0`` fitted by least
    squares over the chunks (convolutions scale with MACs, normalisation and activation
    layers with the elements they touch). Input layers get 0. Every layer of the graph
    must be held by ``executor``.
    """
    found = measure_profile(executor, runs=runs, chunks=chunks, warmup=warmup, seed=seed)
    return dict(found.layer_ms)


def measure_profile(
    executor: Executor,
    *,
    runs: int = 5,
    chunks: int | None = None,
    warmup: int = 3,
    seed: int = 0,
    whole: bool = False,
) -> LayerProfile:
    """:func:`profile_layers` with its measurements; ``whole=True`` also compiles the
    whole model and times it in the same rounds (a check of the profile's total that
    the machine's load affects like the chunks)."""
    found = measure_profiles(
        {"model": executor}, runs=runs, chunks=chunks, warmup=warmup, seed=seed, whole=whole
    )
    return found["model"]


def measure_profiles(
    executors: Mapping[str, Executor],
    *,
    runs: int = 5,
    chunks: int | None = None,
    layers_per_chunk: float = 20.0,
    warmup: int = 3,
    seed: int = 0,
    whole: bool = False,
) -> dict[str, LayerProfile]:
    """:func:`measure_profile` of several models at once: every round calls every
    chunk of every model (and each whole model), so that a machine whose load changes
    while they are measured slows them all alike and their profiles stay comparable.
    Without ``chunks``, each model is cut into about one chunk per
    ``layers_per_chunk`` layers (at most 12 at the default of 20)."""
    if runs < 1 or warmup < 0:
        raise ExecutorError(f"runs, warmup: expected >= 1 and >= 0, got {runs}, {warmup}")
    if not executors:
        raise ExecutorError("profile: expected at least one model, got none")
    cap = 12 if layers_per_chunk >= 20 else 10**6
    plans = []
    for executor in executors.values():
        graph = executor.graph
        missing = executor.missing(graph.order)
        if missing:
            raise ExecutorError(f"profile: layers not loaded here: {list(missing)}")
        count = chunks or min(cap, max(1, round(len(graph) / layers_per_chunk)))
        if count < 1:
            raise ExecutorError(f"chunks: expected >= 1, got {count}")
        parts = _chunks(graph, count)
        slices = [executor.prepare(p) for p in parts]
        if whole:
            slices.append(executor.prepare(graph.order))
        values = _random_inputs(graph, seed)
        for compiled in slices[: len(parts)]:
            values.update(compiled(values))
        plans.append((graph, parts, slices, values))
    first = next(iter(executors.values()))
    identity = first.prepare({first.graph.inputs[0]})
    # layer names may repeat across models: each slice is fed from its own model's values
    every = [identity.constant_feeds(plans[0][3])] + [
        s.constant_feeds(values) for _, _, slices, values in plans for s in slices
    ]
    calls = [identity] + [s for _, _, slices, _ in plans for s in slices]
    medians = _timed_rounds(calls, every, runs=runs, warmup=warmup)
    overhead, at = medians[0], 1
    found = {}
    for name, (graph, parts, slices, _) in zip(executors, plans, strict=True):
        times = medians[at : at + len(parts)]
        at += len(slices)
        net = [max(t - overhead, 0.1 * t) for t in times]
        found[name] = LayerProfile(
            layer_ms=_apportion(graph, parts, net),
            chunks=tuple(parts),
            chunk_ms=tuple(times),
            call_overhead_ms=overhead,
            whole_ms=medians[at - 1] if whole else None,
        )
    return found


def _random_inputs(graph: LayerGraph, seed: int) -> dict[TensorRef, np.ndarray]:
    rng = np.random.default_rng(seed)
    values: dict[TensorRef, np.ndarray] = {}
    for name in graph.inputs:
        node = graph[name]
        shape = (1, *node.output_shapes[0])
        values[TensorRef(name, 0)] = rng.random(shape).astype(node.output_dtype)
    return values


def _interleaved_medians(
    slices: Sequence[CompiledSlice],
    values: Mapping[TensorRef, np.ndarray],
    *,
    runs: int,
    warmup: int,
) -> list[float]:
    """Median milliseconds per slice over ``runs`` rounds that each call every slice
    once (interleaving spreads the shared machine's noise evenly)."""
    feeds = [s.constant_feeds(values) for s in slices]
    return _timed_rounds(slices, feeds, runs=runs, warmup=warmup)


def _timed_rounds(
    slices: Sequence[CompiledSlice], feeds: Sequence[Sequence[Any]], *, runs: int, warmup: int
) -> list[float]:
    samples: list[list[float]] = [[] for _ in slices]
    for round_no in range(warmup + runs):
        for compiled, feed, out in zip(slices, feeds, samples, strict=True):
            t0 = time.perf_counter()
            compiled.run_raw(feed)
            if round_no >= warmup:
                out.append(time.perf_counter() - t0)
    return [statistics.median(s) * 1e3 for s in samples]


def _cost_features(graph: LayerGraph, name: str) -> tuple[float, float]:
    node = graph[name]
    if node.cls == INPUT_CLASS:
        return 0.0, 0.0
    return float(node.macs), float(node.output_elements)


def _chunks(graph: LayerGraph, count: int) -> list[tuple[str, ...]]:
    """``count`` (or fewer) contiguous ranges of the topological order with similar
    estimated cost (MACs plus output elements)."""
    order = graph.order
    weights = [sum(_cost_features(graph, n)) + 1.0 for n in order]
    total = sum(weights)
    parts: list[tuple[str, ...]] = []
    current: list[str] = []
    acc = 0.0
    for name, w in zip(order, weights, strict=True):
        current.append(name)
        acc += w
        if acc >= total * (len(parts) + 1) / count and len(parts) < count - 1:
            parts.append(tuple(current))
            current = []
    if current:
        parts.append(tuple(current))
    return parts


def _fit_cost(
    features: Sequence[tuple[float, float]], times: Sequence[float]
) -> tuple[float, float]:
    """Non-negative least squares for ``t = a * m + b * e`` with two unknowns."""
    smm = sum(m * m for m, _ in features)
    see = sum(e * e for _, e in features)
    sme = sum(m * e for m, e in features)
    smt = sum(m * t for (m, _), t in zip(features, times, strict=True))
    set_ = sum(e * t for (_, e), t in zip(features, times, strict=True))
    det = smm * see - sme * sme
    if det > 1e-12 * max(smm * see, 1.0):
        a = (smt * see - set_ * sme) / det
        b = (set_ * smm - smt * sme) / det
        if a >= 0 and b >= 0:
            return a, b
    only_m = (max(smt, 0.0) / smm, 0.0) if smm > 0 else (0.0, 0.0)
    only_e = (0.0, max(set_, 0.0) / see) if see > 0 else (0.0, 0.0)

    def residual(ab: tuple[float, float]) -> float:
        return sum(
            (t - ab[0] * m - ab[1] * e) ** 2 for (m, e), t in zip(features, times, strict=True)
        )

    return min((only_m, only_e), key=residual)


def _apportion(
    graph: LayerGraph, parts: Sequence[tuple[str, ...]], times: Sequence[float]
) -> dict[str, float]:
    per_part = [
        tuple(map(sum, zip(*(_cost_features(graph, n) for n in p), strict=True))) for p in parts
    ]
    a, b = _fit_cost([(f[0], f[1]) for f in per_part], times)
    profile: dict[str, float] = {}
    for part, ms in zip(parts, times, strict=True):
        shares = {}
        for name in part:
            m, e = _cost_features(graph, name)
            shares[name] = a * m + b * e
        total = sum(shares.values())
        if total <= 0:  # no estimate: split evenly among the non-input layers
            shares = {n: float(graph[n].cls != INPUT_CLASS) for n in part}
            total = sum(shares.values()) or 1.0
        for name, share in shares.items():
            profile[name] = ms * share / total
    return profile


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadTimes:
    """Server-side cost of making layers runnable, per layer class (milliseconds).

    ``build_ms``: median time of ``build(name)`` (instantiate from spec, build, set
    weights). ``trace_ms``: median time to prepare (trace + warm up) a one-layer slice
    minus ``slice_overhead_ms``, the cost of preparing an identity slice (paid once per
    prepared set, not per layer: the planner's ``partition_overhead_ms``).
    ``samples``: layers measured per class. ``per_layer_ms``: build + net trace time of
    each measured layer (``(graph[name], ms)`` pairs are load samples for
    ``ServerCostModel.fit``).
    """

    build_ms: Mapping[str, float]
    trace_ms: Mapping[str, float]
    slice_overhead_ms: float
    samples: Mapping[str, int]
    per_layer_ms: Mapping[str, float]

    def layer_ms(self, cls: str) -> float:
        """Estimated build + trace time of one layer of class ``cls`` (the median over
        measured classes when ``cls`` was not measured)."""
        if cls in self.build_ms:
            return self.build_ms[cls] + self.trace_ms[cls]
        if not self.build_ms:
            return 0.0
        return statistics.median(self.build_ms[c] + self.trace_ms[c] for c in self.build_ms)


def measure_load_times(
    graph: LayerGraph,
    build: Callable[[str], Any],
    *,
    per_class: int = 3,
    jit: bool | None = None,
) -> LoadTimes:
    """Time ``build(name) -> built layer`` and one-layer slice preparation for up to
    ``per_class`` layers of each class of ``graph`` (spread over the model so that
    small and large instances are both sampled)."""
    if per_class < 1:
        raise ExecutorError(f"per_class: expected >= 1, got {per_class}")
    by_cls: dict[str, list[str]] = {}
    for node in graph:
        if node.cls != INPUT_CLASS:
            by_cls.setdefault(node.cls, []).append(node.name)
    # the first slice built in a process pays one-time TensorFlow set-up: not timed
    identity = [
        Executor(graph, {}, jit=jit).prepare({graph.inputs[0]}).build_seconds * 1e3
        for _ in range(6)
    ]
    overhead = statistics.median(identity[1:])
    build_ms: dict[str, float] = {}
    trace_ms: dict[str, float] = {}
    samples: dict[str, int] = {}
    per_layer: dict[str, float] = {}
    for cls, names in by_cls.items():
        step = max(1, math.ceil(len(names) / per_class))
        chosen = names[::step][:per_class]
        builds, traces = [], []
        for name in chosen:
            t0 = time.perf_counter()
            layer = build(name)
            builds.append((time.perf_counter() - t0) * 1e3)
            compiled = Executor(graph, {name: layer}, jit=jit).prepare({name})
            traces.append(max(0.0, compiled.build_seconds * 1e3 - overhead))
            per_layer[name] = builds[-1] + traces[-1]
        build_ms[cls] = statistics.median(builds)
        trace_ms[cls] = statistics.median(traces)
        samples[cls] = len(chosen)
    return LoadTimes(
        build_ms=build_ms,
        trace_ms=trace_ms,
        slice_overhead_ms=overhead,
        samples=samples,
        per_layer_ms=per_layer,
    )
