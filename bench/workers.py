"""``ionn-server --workers 2`` against 1: queries/s and tail latency on this machine.

For each worker count (default 1 then 2, in one run) it starts the real ``ionn-server``
(durable store in a temporary directory, ``--metrics-port``), then ``--clients`` load
generator processes, each a real :class:`~ionn_net.client.OffloadClient` with its own
session: it uploads a small model (MobileNetV2 96x96, alpha 0.35, random weights, 2 MB)
over loopback, waits until the server's latency is steady (the server compiles the run
sets in use as one slice in the background after an upload, §10.6), then all clients run
back-to-back queries for ``--seconds`` from a common start. The client is an emulated
device 20x slower than this machine, so every query runs the whole model on the server
(its input layer aside).

Printed per worker count: queries/s (all clients), p50/p99 latency, and where the time
goes: the server's compute per query and its wait for an inference slot (from its own
metrics: ``ionn_query_compute_seconds``, ``ionn_query_queue_seconds``), the server's
request time (``ionn_request_duration_seconds``), the rest of the round trip (client
encode/decode, transport, scheduling), and the CPU seconds per query of the server
processes and of the clients (``/proc``; 2 cores give 2 CPU-seconds per second).

``--store redis`` runs the same rows with the servers on a ``redis-server`` of their own
(started per row, its CPU counted with the server's) instead of a directory.

Usage: ``flock /tmp/ionn-bench.lock .venv/bin/python bench/workers.py [--clients 4]
[--seconds 30] [--workers 1 2] [--store dir redis]``. Other processes on the machine
change the absolute figures; the ratio between worker counts measured in one run is what
counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.server_proc import metrics, start  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# -- one load generator (a child process) ---------------------------------------------------


def _model() -> Any:
    import keras

    keras.utils.set_random_seed(2)
    return keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=0.35)


async def _client(port: int, profiles: str) -> None:
    import numpy as np

    from ionn_net.client import ClientConfig, OffloadClient

    model = _model()
    x = np.random.default_rng(0).uniform(-1, 1, (1, 96, 96, 3)).astype(np.float32)
    config = ClientConfig(slowdown=20.0, profile_cache=profiles)
    async with OffloadClient("127.0.0.1", port, model, config=config) as client:
        await client.wait_uploaded(timeout=600)
        previous, current = 0.0, 1.0
        for _ in range(20):  # steady: two windows of 10 queries within 15%
            if abs(current - previous) <= 0.15 * current:
                break
            latencies = [(await client.infer_detailed(x)).total_ms for _ in range(10)]
            previous, current = current, statistics.median(latencies)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        start_at, seconds = map(float, (await asyncio.to_thread(sys.stdin.readline)).split())
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0, out = time.process_time(), []
        while time.time() < start_at + seconds:
            result = await client.infer_detailed(x)
            offloaded = all(not s.fallback for s in result.segments)
            out.append((result.total_ms, offloaded))
        cpu = time.process_time() - cpu0
    doc = {"ms": [ms for ms, _ in out], "fallbacks": sum(not ok for _, ok in out), "cpu": cpu}
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


# -- the orchestrator --------------------------------------------------------------------------


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def _metric(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _store(kind: str, workers: int, work: Path) -> tuple[str, Any]:
    """The ``--store`` of a row and the redis-server started for it (or None)."""
    if kind != "redis":
        return str(work / f"store-{workers}"), None
    from tests.helpers.redis_server import RedisServer, redis_server_binary

    binary = redis_server_binary()
    if binary is None:
        raise SystemExit("--store redis needs a redis-server binary")
    redis = RedisServer(work / f"redis-{workers}", binary=binary).start()
    return redis.url(0), redis


def _one(
    workers: int, clients: int, seconds: float, cost: Path, work: Path, *, kind: str
) -> dict[str, Any]:
    store, redis = _store(kind, workers, work)  # a redis-server's CPU counts as the server's
    args = ["--port", "0", "--store", store, "--metrics-port", "0"]
    args += ["--cost-model", str(cost), "--workers", str(workers)]
    server = start(args, work / f"server-{workers}-{kind}.log")
    procs: list[subprocess.Popen[str]] = []
    try:
        port = server.wait_listening(900)
        for _ in range(clients):
            procs.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--client", str(port), str(work / "profiles")],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"a client did not get ready: {line!r}")
        assert server.metrics_port is not None
        before = metrics(server.metrics_port)
        server_pids = [server.proc.pid]
        server_pids += [e["child"] for e in server.events("worker_started")]
        if redis is not None and redis.proc is not None:
            server_pids.append(redis.proc.pid)
        load = os.getloadavg()
        start_at = time.time() + 1.0
        cpu0 = _cpu_seconds(server_pids)
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{start_at} {seconds}\n")
            proc.stdin.flush()
        time.sleep(max(0.0, start_at + seconds - time.time()))
        server_cpu = _cpu_seconds(server_pids) - cpu0
        after = metrics(server.metrics_port)
        results = [
            json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs
        ]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(120)
        finally:
            server.stop()
            if redis is not None:
                redis.stop()

    def delta(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    latencies = sorted(ms for r in results for ms in r["ms"])
    n = len(latencies)
    served = delta("ionn_query_compute_seconds_count") or 1.0
    return {
        "workers": workers,
        "store": kind,
        "clients": clients,
        "queries": n,
        "qps": n / seconds,
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(n - 1, int(0.99 * n))],
        "fallbacks": sum(r["fallbacks"] for r in results),
        "compute_ms": 1000 * delta("ionn_query_compute_seconds_sum") / served,
        "queue_ms": 1000 * delta("ionn_query_queue_seconds_sum") / served,
        "server_request_ms": 1000
        * delta("ionn_request_duration_seconds_sum", message="query", outcome="ok")
        / served,
        "server_cpu_ms_per_query": 1000 * server_cpu / max(n, 1),
        "client_cpu_ms_per_query": 1000 * sum(r["cpu"] for r in results) / max(n, 1),
        "load_avg_1m": load[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--store",
        choices=("dir", "redis"),
        nargs="+",
        default=["dir"],
        help="store of the servers: a directory, or a redis-server of each row's own "
        "(every worker count is run with each store)",
    )
    args = parser.parse_args()
    from ionn_net.calibrate import load_or_calibrate

    with tempfile.TemporaryDirectory(prefix="ionn-bench-workers-") as tmp:
        work = Path(tmp)
        cost = work / "cost.json"
        cost.write_text(load_or_calibrate(work).to_json())
        rows = [
            _one(w, args.clients, args.seconds, cost, work, kind=kind)
            for kind in args.store
            for w in args.workers
        ]
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        cells = [f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")
    for kind in args.store:
        mine = [r for r in rows if r["store"] == kind]
        if len(mine) > 1:
            print(
                f"{kind}: queries/s ratio {mine[-1]['workers']} vs {mine[0]['workers']} "
                f"workers: {mine[-1]['qps'] / mine[0]['qps']:.2f}x"
            )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        asyncio.run(_client(int(sys.argv[2]), sys.argv[3]))
    else:
        main()
