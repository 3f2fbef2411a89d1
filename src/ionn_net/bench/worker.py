"""The client process of one group of runs (one model, one link, several strategies).

Run by :mod:`.runner` as ``python -m ionn_net.bench.worker --model M --cache-dir D``
(inside the client's network namespace when there is one). It imports TensorFlow at
once, builds and profiles the model on the ``prepare`` command (sent once the server
is up, so that profiling does not compete with the server's start), then runs one
:class:`~ionn_net.client.OffloadClient` per ``run`` command it reads on stdin
(:mod:`.session`), issuing queries back to back and reporting everything on stdout
as JSON lines prefixed with :data:`PREFIX` (anything else on stdout is ignored by the runner).

Events: ``ready`` (model facts, graph, full-speed whole-model time, versions),
``factor`` (the slowdown a CPU quota achieved), ``connected``, ``p`` (upload
progress), ``q`` (one query), ``log`` (the client's own log lines), ``run_end``
(what the simulator needs: plan, per-layer times, measured link), ``skipped``,
``error``. Commands: ``prepare``, ``run`` (strategy, server address, device, bounds),
``quota_ok`` (answer to a ``quota`` event), ``quit``.

Device emulation (see :mod:`.device`). With a factor (``kind="slowdown"``) the client
stretches its local segments itself (``ClientConfig.slowdown``). With a CPU quota
(``kind="cgroup"``) the runner moves this process into a cgroup on request: once to
measure the slowdown the quota achieves on the compiled whole model (recorded), then
for each run from just before ``OffloadClient.start`` to the end of the run.
``start`` measures the client's whole model and rescales its per-layer profile to
that time, so it must run throttled to learn the device's speed; its whole-model trace
is throttled too (2 s -> 20-40 s), which costs wall time but not run time: a run's
clock starts once ``start`` has returned. Slices the client compiles during a run
(when a new plan activates) are compiled under the quota, as its planning is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

__all__ = ["PREFIX", "main"]

#: Marks the worker's event lines on stdout.
PREFIX = "@@ionn-bench "
HOST_DEVICE = "bench-host"
_MAX_LOGS = 500


def emit(out: TextIO, ev: str, **fields: Any) -> None:
    """Write one event line (JSON, NaN-free) and flush."""
    doc = {"ev": ev, **fields}
    out.write(PREFIX + json.dumps(doc, default=_jsonable, allow_nan=False) + "\n")
    out.flush()


def _jsonable(value: object) -> object:
    if isinstance(value, frozenset | set | tuple):
        return sorted(value) if isinstance(value, frozenset | set) else list(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def ranges(positions: Sequence[int]) -> list[list[int]]:
    """Sorted positions as inclusive ``[start, end]`` runs: [1,2,3,7] -> [[1,3],[7,7]]."""
    out: list[list[int]] = []
    for p in sorted(positions):
        if out and p == out[-1][1] + 1:
            out[-1][1] = p
        else:
            out.append([p, p])
    return out


@dataclass
class Prepared:
    """What one model needs across runs (built once per worker)."""

    name: str
    model: Any
    x: np.ndarray
    expected: np.ndarray
    graph: Any
    digest: str
    profile: Any  # ClientProfile at this machine's speed, normalised (see prepare)
    profile_raw_ms: float
    whole: Any  # CompiledSlice of the whole model
    feeds: dict[Any, np.ndarray]
    whole_ms: float
    weight_ratio: float
    factor: float | None = None


def time_calls(fn: Callable[[], object], runs: int, budget_s: float) -> list[float]:
    """Milliseconds of up to ``runs`` calls after one untimed call, within ``budget_s``."""
    started = time.perf_counter()
    fn()
    samples: list[float] = []
    while len(samples) < runs and (not samples or time.perf_counter() - started < budget_s):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return samples


def _weight_ratio(blobs: Mapping[str, bytes]) -> float:
    """Raw / compressed bytes of every weight blob with the upload's codec."""
    from ionn_net.proto import Codec, encode

    raw = wire = 0
    for blob in blobs.values():
        raw += len(blob)
        wire += len(encode(blob, Codec.ZSTD_SHUFFLE4)) if blob else 0
    return raw / wire if wire else 1.0


def prepare(name: str, cache_dir: Path, seed: int) -> Prepared:
    """Build the model, its host profile (cached), the whole-model slice and timings."""
    from ionn_net.bench.models import build_model, query_input
    from ionn_net.executor import Executor
    from ionn_net.measure import profile_layers
    from ionn_net.model.graph import TensorRef
    from ionn_net.model.layers import extract_manifest
    from ionn_net.planner.profiles import ClientProfile, ProfileCache

    model = build_model(name, seed=seed)
    x = query_input(model, seed=seed)
    executor = Executor.from_model(model)
    graph = executor.graph
    manifest, blobs, _ = extract_manifest(model)
    digest = manifest.manifest_digest()
    ratio = _weight_ratio(blobs)
    del blobs
    cache = ProfileCache(cache_dir / "profiles")
    profile = cache.load(digest, HOST_DEVICE)
    if profile is None:
        ms = profile_layers(executor, runs=5)
        profile = ClientProfile(model_digest=digest, device_id=HOST_DEVICE, layer_ms=ms, runs=5)
        cache.store(profile)
    whole = executor.prepare(graph.order)
    feeds = {TensorRef(graph.inputs[0], 0): x}
    expected = next(iter(whole(feeds).values()))
    samples = time_calls(lambda: whole(feeds), 10, 30.0)
    # The fastest call: other load on a shared machine only ever slows a call down,
    # so the minimum is the best estimate of this machine's own speed.
    whole_ms = min(samples)
    # A per-layer profile taken while the machine is busy can sum to several times the
    # whole model (measured here: 85 ms against 21.5 ms for MobileNetV2 at load 6); its
    # shape is kept and its total set to the whole model's time.
    return Prepared(
        name=name,
        model=model,
        x=x,
        expected=expected,
        graph=graph,
        digest=digest,
        profile=profile.scaled(whole_ms / profile.total_ms) if profile.total_ms else profile,
        profile_raw_ms=profile.total_ms,
        whole=whole,
        feeds=feeds,
        whole_ms=whole_ms,
        weight_ratio=ratio,
    )


def versions() -> dict[str, str]:
    import keras
    import tensorflow as tf
    import zstandard

    from ionn_net import __version__

    return {
        "ionn_net": __version__,
        "python": sys.version.split()[0],
        "tensorflow": str(tf.__version__),
        "keras": str(keras.__version__),
        "numpy": np.__version__,
        "zstandard": str(zstandard.__version__),
    }


class _LogRelay(logging.Handler):
    """Forwards the client's log records as ``log`` events (bounded per run)."""

    def __init__(self, out: TextIO) -> None:
        super().__init__(logging.INFO)
        self.out = out
        self.t0 = time.monotonic()
        self.count = 0

    def reset(self, t0: float) -> None:
        """Start a new run's clock and log budget."""
        self.t0 = t0
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.count >= _MAX_LOGS:
            return
        self.count += 1
        t = round(time.monotonic() - self.t0, 4)
        emit(self.out, "log", t=t, level=record.levelname, msg=record.getMessage()[:500])


class Worker:
    """The command loop (see the module docstring)."""

    def __init__(self, args: argparse.Namespace, out: TextIO) -> None:
        self.args = args
        self.out = out
        self.cache = Path(args.cache_dir)
        self.prep: Prepared | None = None
        self.commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.relay = _LogRelay(out)

    async def read_commands(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line:
                await self.commands.put({"cmd": "quit"})
                return
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                await self.commands.put(doc)

    async def quota(self, on: bool, phase: str) -> None:
        """Ask the runner to move this process into (or out of) the CPU quota."""
        emit(self.out, "quota", on=on, phase=phase)
        reply = await asyncio.wait_for(self.commands.get(), 60.0)
        if reply.get("cmd") != "quota_ok" or reply.get("on") != on:
            raise RuntimeError(f"quota {phase}: expected quota_ok on={on}, got {reply!r}")

    async def measure_factor(self, quota: float) -> float:
        prep = self.prep
        assert prep is not None
        await self.quota(True, "measure")
        try:
            samples = await asyncio.to_thread(time_calls, lambda: prep.whole(prep.feeds), 3, 20.0)
        finally:
            await self.quota(False, "measure")
        slowed = statistics.median(samples)  # throttling is the point here: no minimum
        factor = max(1.0, slowed / prep.whole_ms)
        emit(
            self.out,
            "factor",
            quota=quota,
            full_ms=prep.whole_ms,
            quota_ms=slowed,
            samples=samples,
            factor=factor,
        )
        return factor

    async def serve(self) -> int:
        import tensorflow  # noqa: F401  (imported before "prepare" arrives: it takes seconds)

        reader = asyncio.ensure_future(self.read_commands())
        emit(self.out, "started", pid=os.getpid())
        try:
            while True:
                cmd = await self.commands.get()
                if cmd.get("cmd") == "quit":
                    return 0
                if cmd.get("cmd") == "prepare" and self.prep is None:
                    self.prep = await asyncio.to_thread(
                        prepare, self.args.model, self.cache, self.args.seed
                    )
                    self._ready()
                elif cmd.get("cmd") == "run" and self.prep is not None:
                    await self.run(cmd)
        finally:
            reader.cancel()

    def _ready(self) -> None:
        from ionn_net.model.graph_io import graph_to_json

        prep = self.prep
        assert prep is not None
        g = prep.graph
        emit(
            self.out,
            "ready",
            model=prep.name,
            digest=prep.digest,
            layers=len(g),
            params=int(prep.model.count_params()),
            weight_bytes=int(g.total_weight_bytes),
            whole_ms=prep.whole_ms,
            profile_ms=prep.profile.total_ms,
            profile_raw_ms=prep.profile_raw_ms,
            weight_ratio=prep.weight_ratio,
            graph=graph_to_json(g),
            versions=versions(),
            pid=os.getpid(),
        )

    async def run(self, cmd: Mapping[str, Any]) -> None:
        from ionn_net.bench.session import run_session

        assert self.prep is not None
        try:
            await run_session(self, cmd)
        except Exception as exc:  # reported, and the worker stays usable for the next run
            emit(self.out, "error", what=f"{type(exc).__name__}: {exc}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ionn_net.bench.worker")
    p.add_argument("--model", required=True)
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ionn_net.tflog import import_tensorflow

    import_tensorflow()  # verbose when the ionn-bench that started it was (tflog.VERBOSE_ENV)
    out = sys.stdout
    worker = Worker(args, out)
    log = logging.getLogger("ionn_net")
    log.setLevel(logging.INFO)
    log.addHandler(worker.relay)
    from ionn_net.aio import run

    try:
        return run(worker.serve())
    except Exception as exc:
        emit(out, "error", what=f"{type(exc).__name__}: {exc}", fatal=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
