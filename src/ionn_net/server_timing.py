"""The server times a client's model before its weights arrive (protocol.md §10.11).

This module owns :class:`ServerTimer`: once a manifest is valid, the server builds its
layers with placeholder weights of the declared shapes
(:func:`~ionn_net.model.layers.build_placeholder_layer`), compiles them in contiguous
chunks (``chunk_layers`` layers or ``chunk_ms`` predicted milliseconds), and times the
chunks in interleaved rounds against an identity slice (the per-call cost), as it will
run them (§10.6). Each
chunk's time is shared among its layers in proportion to the server's prior
(:class:`~ionn_net.planner.prior.LayerPrior`); a layer's announced time is that share.

The work is bounded so that it never delays ``manifest_ok`` or a query:

* it runs on one worker thread (niced, ``nice``), one model at a time, after
  ``manifest_ok`` has been sent; at most ``max_pending`` models wait for it;
* before every timed call it waits until no query or load has run for ``quiet_ms``
  (:class:`WorkGauge`), and drops a sample that a query overlapped, so a query waits for
  at most one chunk call (chunks are cut at about ``chunk_ms`` predicted);
* each session key gets ``budget_s`` seconds of timing work in all (the worker thread's
  CPU time building and compiling, plus the timed calls; waiting for the CPU or for
  queries is not counted), and one model at most ``max_wait_s`` of wall-clock time;
  past either the timer stops and announces what it has;
* placeholder weights take at most ``max_bytes`` at once; a model above that is not timed.

Until a layer is timed, and for layers it could not time, the server announces its prior's
prediction (§10.11: ``predicted``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ionn_net.errors import ConfigError, IonnError
from ionn_net.messages.timing import MAX_LAYER_MS, TimingTable
from ionn_net.model.graph import LayerGraph, TensorRef
from ionn_net.model.limits import DEFAULT_LIMITS, SpecLimits
from ionn_net.model.schema import LOCAL_ONLY
from ionn_net.model.spec import ModelManifest
from ionn_net.offthread import lower_priority

__all__ = ["ModelTiming", "ServerTimer", "TimingConfig", "WorkGauge"]

logger = logging.getLogger("ionn_net.server")


@dataclass(frozen=True, slots=True, kw_only=True)
class TimingConfig:
    """Bounds of the server's timing of client models (see the module docstring)."""

    enabled: bool = True
    budget_s: float = 60.0
    max_wait_s: float = 600.0
    max_bytes: int = 1 << 30
    chunk_ms: float = 10.0
    chunk_layers: int = 8
    max_chunks: int = 64
    runs: int = 5
    warmup: int = 1
    quiet_ms: float = 20.0
    nice: int = 19
    max_pending: int = 16

    def __post_init__(self) -> None:
        for name in ("budget_s", "max_wait_s", "chunk_ms", "quiet_ms"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"timing.{name}: expected a number >= 0, got {value!r}")
        for name in ("max_bytes", "chunk_layers", "max_chunks", "runs", "max_pending"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"timing.{name}: expected an integer >= 1, got {value!r}")
        if type(self.warmup) is not int or self.warmup < 0:
            raise ConfigError(f"timing.warmup: expected an integer >= 0, got {self.warmup!r}")
        if type(self.nice) is not int or not 0 <= self.nice <= 19:
            raise ConfigError(f"timing.nice: expected an integer 0..19, got {self.nice!r}")


class WorkGauge:
    """Queries and loads in flight, for the timer to keep out of their way. Entered and
    left on the event loop, read from the timer's thread (plain int and float reads)."""

    def __init__(self) -> None:
        self._running = 0
        self._generation = 0
        self._last_end = 0.0

    def enter(self) -> None:
        self._running += 1
        self._generation += 1

    def leave(self) -> None:
        self._running -= 1
        self._last_end = time.monotonic()

    def __enter__(self) -> WorkGauge:
        self.enter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.leave()

    @property
    def generation(self) -> int:
        """Bumped by each piece of work that starts (a sample spanning a change is
        dropped)."""
        return self._generation

    def quiet_for(self, seconds: float) -> bool:
        """Nothing runs, and nothing ran during the last ``seconds``."""
        return self._running == 0 and time.monotonic() - self._last_end >= seconds


class ModelTiming:
    """What the server knows of one model's per-layer times (§10.11), read and changed on
    the event loop."""

    def __init__(self, predicted: Mapping[str, float]) -> None:
        self._predicted = {n: _bounded(v) for n, v in predicted.items()}
        self._measured: dict[str, float] = {}
        self._call_ms = 0.0
        self._done = asyncio.Event()
        self.note = "pending"

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def call_ms(self) -> float:
        return self._call_ms

    @property
    def measured(self) -> Mapping[str, float]:
        return dict(self._measured)

    def table(self) -> TimingTable:
        predicted = {n: v for n, v in self._predicted.items() if n not in self._measured}
        return TimingTable(self._measured, predicted)

    def finish(self, measured: Mapping[str, float], call_ms: float, note: str) -> None:
        """The timer's result (``measured`` may be empty): nothing more will come."""
        self._measured = {n: _bounded(v) for n, v in measured.items() if n in self._predicted}
        self._call_ms = _bounded(call_ms)
        self.note = note
        self._done.set()

    async def wait(self, timeout_s: float) -> None:
        """Until the timing is done or ``timeout_s`` passed (§10.11 ``wait_ms``)."""
        if timeout_s > 0 and not self.done:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), timeout_s)


def _bounded(ms: float) -> float:
    """§10.11.1: every announced value is finite and within [0, 1e5]."""
    return min(max(float(ms), 0.0), MAX_LAYER_MS) if math.isfinite(ms) else 0.0


@dataclass(frozen=True, slots=True)
class _Job:
    session: str
    graph: LayerGraph
    manifest: ModelManifest
    predicted: Mapping[str, float]
    timing: ModelTiming


class ServerTimer:
    """Schedules and runs the timing of client models (see the module docstring)."""

    def __init__(
        self,
        config: TimingConfig,
        gauge: WorkGauge,
        *,
        limits: SpecLimits = DEFAULT_LIMITS,
        jit: bool | None = None,
    ) -> None:
        self.config = config
        self.gauge = gauge
        self._limits = limits
        self._jit = jit
        self._spent: dict[str, float] = {}
        self._pending = 0
        self._pool = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="ionn-timer",
            initializer=lower_priority,
            initargs=(config.nice,),
        )
        self._tasks: set[asyncio.Future[None]] = set()
        self._closing = False

    def spent_s(self, session: str) -> float:
        """Seconds of timing work done for a session key so far."""
        return self._spent.get(session, 0.0)

    def start(
        self,
        session: str,
        graph: LayerGraph,
        manifest: ModelManifest,
        predicted: Mapping[str, float],
    ) -> ModelTiming:
        """A new model of ``session``: its timing, with the prior's ``predicted`` times of
        the layers the server may run; the work is queued (event loop)."""
        timing = ModelTiming(predicted)
        config = self.config
        if not config.enabled or self._closing:
            timing.finish({}, 0.0, "timing disabled")
        elif self._pending >= config.max_pending:
            timing.finish({}, 0.0, "too many models waiting to be timed")
        elif self.spent_s(session) >= config.budget_s:
            timing.finish({}, 0.0, "this session's timing budget is spent")
        else:
            self._pending += 1
            job = _Job(session, graph, manifest, predicted, timing)
            task = asyncio.ensure_future(self._run(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return timing

    async def _run(self, job: _Job) -> None:
        loop = asyncio.get_running_loop()
        try:
            measured, call_ms, work_s, note = await loop.run_in_executor(
                self._pool, self._time_job, job
            )
        except Exception as exc:  # a model that cannot be timed is predicted, not fatal
            logger.warning("timing a model failed: %s", exc)
            measured, call_ms, work_s, note = {}, 0.0, 0.0, f"failed: {exc}"
        finally:
            self._pending -= 1
        self._spent[job.session] = self.spent_s(job.session) + work_s
        job.timing.finish(measured, call_ms, note)
        logger.info(
            "timed %d of %d layers of model %s in %.1f s (%s)",
            len(measured),
            len(job.predicted),
            job.graph.name,
            work_s,
            note,
        )

    def _time_job(self, job: _Job) -> tuple[dict[str, float], float, float, str]:
        """Worker thread: build, compile and time (see :class:`_Timing`)."""
        budget = max(self.config.budget_s - self.spent_s(job.session), 0.0)
        run = _Timing(
            job,
            config=self.config,
            gauge=self.gauge,
            limits=self._limits,
            jit=self._jit,
            budget_s=budget,
        )
        return run.measure()

    async def close(self) -> None:
        """Stop taking models; wait for the one being timed (a thread cannot be stopped)."""
        self._closing = True
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.shutdown(wait=False)


class _Stop(IonnError):
    """Internal: the budget or the wall-clock limit is spent."""


class _Timing:
    """One model's timing, in the timer's worker thread."""

    def __init__(
        self,
        job: _Job,
        *,
        config: TimingConfig,
        gauge: WorkGauge,
        limits: SpecLimits,
        jit: bool | None,
        budget_s: float,
    ) -> None:
        self.job = job
        self.config = config
        self.gauge = gauge
        self.limits = limits
        self.jit = jit
        self.budget_s = budget_s
        self.work_s = 0.0
        self.started = time.monotonic()

    def _charge(self, since: float) -> None:
        """Count the work since ``since`` (this thread's CPU time: on a busy server the
        niced thread waits for the CPU, and waiting is not work)."""
        self.work_s += time.thread_time() - since
        if self.work_s > self.budget_s:
            raise _Stop(f"budget of {self.budget_s:.0f} s spent")
        if time.monotonic() - self.started > self.config.max_wait_s:
            raise _Stop("waited too long for an idle server")

    def measure(self) -> tuple[dict[str, float], float, float, str]:
        graph, predicted = self.job.graph, self.job.predicted
        names = [n for n in graph.order if n in predicted and graph[n].inbound]
        size = sum(graph[n].weight_bytes for n in names)
        if not names:
            return {}, 0.0, 0.0, "nothing to time"
        if size > self.config.max_bytes:
            return {}, 0.0, 0.0, f"{size} bytes of weights: above the timing cap"
        try:
            executor = self._build(names)
            chunks = self._chunks(names)
            slices = self._compile(executor, chunks)
            identity = self._compile(executor, [(graph.inputs[0],)])[0]
            medians = self._rounds([identity, *slices])
            call = self._call_ms(identity)
        except _Stop as exc:
            return {}, 0.0, self.work_s, str(exc)
        measured: dict[str, float] = {}
        for chunk, ms in zip(chunks, medians[1:], strict=True):
            measured.update(_share(chunk, max(ms - medians[0], 0.1 * ms), predicted))
        return measured, call, self.work_s, f"{len(chunks)} chunks"

    def _call_ms(self, identity: Any) -> float:
        """What one run set costs on top of its layers as a query calls it (§10.7): an
        identity slice called with arrays (checked, converted in and out), median."""
        graph = self.job.graph
        ref = TensorRef(graph.inputs[0], 0)
        node = graph[ref.layer]
        feeds = {ref: np.zeros((1, *node.output_shapes[0]), node.output_dtype)}
        samples = []
        for _ in range(self.config.runs + self.config.warmup):
            self._wait_quiet(self.config.quiet_ms / 1000.0)
            t0 = time.monotonic()
            identity(feeds)
            samples.append(time.monotonic() - t0)
        self.work_s += sum(samples)
        self._charge(time.thread_time())
        return statistics.median(samples[self.config.warmup :]) * 1e3

    def _build(self, names: Sequence[str]) -> Any:
        from ionn_net.executor import Executor  # keras stays out of import time
        from ionn_net.model.layers import build_placeholder_layer

        graph, specs = self.job.graph, {s.name: s for s in self.job.manifest.layers}
        built = {}
        for name in names:
            began = time.thread_time()
            spec = specs[name]
            shapes = [graph[r.layer].output_shapes[r.index] for r in spec.inbound]
            built[name] = build_placeholder_layer(spec, shapes, limits=self.limits)
            self._charge(began)
        return Executor(graph, built, jit=self.jit)

    def _chunks(self, names: Sequence[str]) -> list[tuple[str, ...]]:
        """Contiguous runs of ``names`` (topological order) of ``chunk_layers`` layers or
        ``chunk_ms`` predicted, whichever comes first, never across a layer the server
        does not run; about ``max_chunks`` at most (each costs a compilation)."""
        config, graph, predicted = self.config, self.job.graph, self.job.predicted
        total = sum(predicted[n] for n in names)
        target = max(config.chunk_ms, total / config.max_chunks)
        most = max(config.chunk_layers, math.ceil(len(names) / config.max_chunks))
        wanted = set(names)
        chunks: list[tuple[str, ...]] = []
        current: list[str] = []
        acc = 0.0
        for name in graph.order:
            if name not in wanted:
                if current and graph[name].inbound:  # a layer the server does not run
                    chunks.append(tuple(current))
                    current, acc = [], 0.0
                continue
            current.append(name)
            acc += predicted[name]
            if acc >= target or len(current) >= most:
                chunks.append(tuple(current))
                current, acc = [], 0.0
        if current:
            chunks.append(tuple(current))
        return [c for c in chunks if c]

    def _compile(self, executor: Any, chunks: Sequence[tuple[str, ...]]) -> list[Any]:
        slices = []
        for chunk in chunks:
            self._wait_quiet(self.config.quiet_ms / 1000.0)  # preparing runs it once
            began = time.thread_time()
            slices.append(executor.prepare(chunk))
            self._charge(began)
        return slices

    def _feeds(self, slices: Sequence[Any]) -> list[list[Any]]:
        """Inputs for every slice: random model inputs run through the chunks in order,
        random values for tensors the server does not compute (LocalOnly outputs)."""
        rng = np.random.default_rng(0)
        graph = self.job.graph
        needed = {ref for compiled in slices for ref in compiled.inputs}
        values: dict[TensorRef, np.ndarray] = {}
        for compiled in slices:
            for ref in compiled.inputs:
                if ref not in values:
                    shape = (1, *graph[ref.layer].output_shapes[ref.index])
                    values[ref] = rng.random(shape).astype(graph[ref.layer].output_dtype)
            if compiled is not slices[0]:
                self._wait_quiet(self.config.quiet_ms / 1000.0)
                found = compiled(values)
                values.update({r: v for r, v in found.items() if r in needed})
        return [s.constant_feeds(values) for s in slices]

    def _rounds(self, slices: Sequence[Any]) -> list[float]:
        """Medians (ms) of ``runs`` interleaved rounds after ``warmup``; each call waits
        for an idle server, and a call that a query or load overlapped is repeated."""
        began = time.thread_time()
        feeds = self._feeds(slices)
        self._charge(began)
        samples: list[list[float]] = [[] for _ in slices]
        quiet = self.config.quiet_ms / 1000.0
        for round_no in range(self.config.warmup + self.config.runs):
            for compiled, feed, out in zip(slices, feeds, samples, strict=True):
                for _ in range(10):  # a sample overlapped by work is taken again, 10x at most
                    self._wait_quiet(quiet)
                    generation = self.gauge.generation
                    t0 = time.monotonic()
                    compiled.run_raw(feed)
                    elapsed = time.monotonic() - t0
                    self.work_s += elapsed  # the call's wall time: TensorFlow's threads work
                    self._charge(time.thread_time())
                    if self.gauge.generation == generation:
                        break
                if round_no >= self.config.warmup:
                    out.append(elapsed * 1e3)
        return [statistics.median(s) for s in samples]

    def _wait_quiet(self, quiet_s: float) -> None:
        while not self.gauge.quiet_for(quiet_s):
            if time.monotonic() - self.started > self.config.max_wait_s:
                raise _Stop("waited too long for an idle server")
            time.sleep(quiet_s / 2 if quiet_s > 0 else 0.001)


def _share(chunk: Sequence[str], ms: float, predicted: Mapping[str, float]) -> dict[str, float]:
    """A chunk's measured time shared in proportion to the prior's predictions (evenly
    when the prior predicts nothing for any of them)."""
    weights = {n: max(predicted.get(n, 0.0), 1e-6) for n in chunk}
    total = sum(weights.values())
    return {n: ms * w / total for n, w in weights.items()}


def predicted_times(
    graph: LayerGraph, predict: Callable[[LayerGraph], Mapping[str, float]]
) -> dict[str, float]:
    """The prior's times of the layers a server may run (not input or LocalOnly)."""
    found = predict(graph)
    return {
        n: float(found.get(n, 0.0))
        for n in graph.order
        if graph[n].inbound and graph[n].cls != LOCAL_ONLY
    }
