"""The edge server process of one group of runs.

Run by :mod:`.runner` as ``python -m ionn_net.bench.serverproc --host H --cache-dir D``
(inside the server's network namespace when there is one). It loads the server cost
model calibrated on this machine (:func:`ionn_net.calibrate.load_or_calibrate`,
cached in ``D``; the first call calibrates, about 10-30 s), starts an
:class:`~ionn_net.server.EdgeServer` with an in-memory store on a free port, prints
one ``listening`` event line (see :data:`~ionn_net.bench.worker.PREFIX`) and serves
until its stdin closes, SIGTERM or SIGINT, then prints ``stats`` and exits.

With ``--workload-model M`` the cost model the server announces is instead fitted on
the benchmark model's own layers timed here (per-layer profile normalised to the
whole model's fastest call, per-class load times), keeping the calibrated
per-partition overhead: the calibration models are small, and their linear fits
extrapolate badly to large layers (measured: 3x3 convolutions of ResNet50 predicted
at 52 ms each, ResNet50 at 1.8 s, against about 0.1 s measured). This separates the
strategies' merits from the cost model's error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ionn_net.bench.worker import emit
from ionn_net.handoff import cli as handoff_cli

__all__ = ["main"]


async def _stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


def workload_cost_model(name: str, seed: int, base: Any) -> tuple[Any, dict[str, Any]]:
    """A server cost model fitted on model ``name``'s own layers, timed on this machine."""
    from ionn_net.bench.models import build_model
    from ionn_net.bench.worker import time_calls
    from ionn_net.executor import Executor
    from ionn_net.measure import measure_load_times, profile_layers
    from ionn_net.model.graph import TensorRef
    from ionn_net.model.layers import build_layers, extract_manifest
    from ionn_net.planner.costmodel import ServerCostModel

    model = build_model(name, seed=seed)
    executor = Executor.from_model(model)
    graph = executor.graph
    ms = profile_layers(executor, runs=5)
    whole = executor.prepare(graph.order)
    feeds = {
        TensorRef(graph.inputs[0], 0): np.zeros(
            (1, *graph[graph.inputs[0]].output_shapes[0]), np.float32
        )
    }
    whole_ms = min(time_calls(lambda: whole(feeds), 10, 30.0))
    scale = whole_ms / max(sum(ms.values()), 1e-6)
    exec_samples = [(graph[n], t * scale) for n, t in ms.items() if graph[n].inbound]
    manifest, blobs, _ = extract_manifest(model)

    def build(layer: str) -> Any:
        return build_layers(manifest, blobs, names=[layer])[layer]

    loads = measure_load_times(graph, build, per_class=2)
    load_samples = [(n, loads.layer_ms(n.cls)) for n in graph if n.inbound]
    fitted = ServerCostModel.fit(
        exec_samples, load_samples, partition_overhead_ms=base.partition_overhead_ms
    )
    info = {
        "kind": "workload",
        "model": name,
        "whole_ms": whole_ms,
        "predicted_whole_ms": sum(fitted.predict_exec_ms(n) for n, _ in exec_samples),
        "exec_fit_error": fitted.evaluate(exec_samples),
        "load_fit_error": fitted.evaluate(load_samples, which="load"),
        "partition_overhead_ms": base.partition_overhead_ms,
    }
    return fitted, info


async def serve(
    host: str, port: int, cache_dir: str, workload: str | None, seed: int, *, handoff: Any = None
) -> int:
    from ionn_net.calibrate import load_or_calibrate
    from ionn_net.server import EdgeServer, ServerConfig

    started = time.monotonic()
    cost = await asyncio.to_thread(load_or_calibrate, cache_dir)
    info: dict[str, Any] = {"kind": "calibrated"}
    if workload is not None:
        cost, info = await asyncio.to_thread(workload_cost_model, workload, seed, cost)
    info["seconds"] = round(time.monotonic() - started, 3)
    cost_s = info["seconds"]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    config = ServerConfig() if handoff is None else ServerConfig(handoff=handoff)
    async with EdgeServer(host, port, cost_model=cost, config=config) as server:
        emit(
            sys.stdout,
            "listening",
            host=host,
            port=server.port,
            cost_model_s=cost_s,
            cost_model=info,
            cost_model_doc=json.loads(cost.to_json()),
        )
        watcher = asyncio.ensure_future(_stdin_closed())
        watcher.add_done_callback(lambda _: stop.set())
        try:
            await stop.wait()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        stats = {**server.stats, **server.handoff.stats}  # §15 counters too
        emit(sys.stdout, "stats", **{k: int(v) for k, v in stats.items()})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ionn_net.bench.serverproc")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--workload-model", default=None, help="fit the cost model on this model")
    p.add_argument("--seed", type=int, default=0)
    handoff_cli.add_arguments(p)  # peers for the handoff benchmark (protocol.md §15)
    args = p.parse_args(argv)
    from ionn_net.tflog import import_tensorflow

    import_tensorflow()  # verbose when the ionn-bench that started it was (tflog.VERBOSE_ENV)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    from ionn_net.aio import run

    handoff = handoff_cli.config_from(args)
    return run(
        serve(args.host, args.port, args.cache_dir, args.workload_model, args.seed, handoff=handoff)
    )


if __name__ == "__main__":
    sys.exit(main())
