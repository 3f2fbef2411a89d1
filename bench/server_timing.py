"""The server's timing of a client's model (protocol.md §10.11): how close the times it
announces are to what it then takes, and what the timing costs the queries it serves.

``agreement`` (default): for each model (MobileNetV2 and ResNet50 by default,
``keras.applications`` with random weights) a fresh EdgeServer with the cost model and
prior calibrated on this machine (``ionn_net.calibrate``, cached in ``--cache-dir``) gets
the manifest; the client long-polls ``timings`` until the server is done (printing how
long the server took), then uploads and loads every layer and runs ``--segments`` run sets
(contiguous ranges of the model's order, from a tenth of it to all of it, each compiled
before it is timed) ``--runs`` times each. Per run set: the median ``server_ms`` the server
reports (§10.8) against the sum of the announced times of its layers plus ``call_ms``,
and against the same sum of the server's predictions before it timed anything. Target:
median absolute error under 10% with the measured times.

``interference``: one client queries a loaded model back to back (the whole model as one
run set) while a second session sends a manifest that the server then times; the query
latencies before, during and after the timing, and how long the timing took.

Usage: ``python bench/server_timing.py [agreement|interference] [--models ...]``; wrap it in
``flock /tmp/ionn-bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from ionn_net.aio import AioConnection, connect
from ionn_net.client.session import handshake
from ionn_net.config import Limits
from ionn_net.messages import (
    CONTROL_URGENCY,
    QUERY_URGENCY,
    Blob,
    BlobOk,
    Load,
    LoadOk,
    Manifest,
    ManifestOk,
    Query,
    Result,
    Timings,
    TimingsOk,
    TimingTable,
    parse_reply,
)
from ionn_net.model.graph import LayerGraph
from ionn_net.tensors import encode_tensors

LIMIT = Limits().max_message_size


@dataclass
class Prepared:
    name: str
    graph: LayerGraph
    body: bytes
    digest: str
    blobs: dict[str, bytes]


def prepare(name: str) -> Prepared:
    import keras

    from ionn_net.executor import Executor
    from ionn_net.model.layers import extract_manifest

    side = 299 if name in ("InceptionV3", "Xception") else 224
    model = getattr(keras.applications, name)(weights=None, input_shape=(side, side, 3))
    manifest, blobs, _ = extract_manifest(model)
    graph = Executor.from_model(model).graph
    return Prepared(name, graph, manifest.to_json_bytes(), manifest.manifest_digest(), blobs)


async def open_session(port: int) -> AioConnection:
    conn = await connect("127.0.0.1", port, limits=Limits())
    await handshake(conn, os.urandom(16).hex(), None, LIMIT)
    return conn


async def send_manifest(conn: AioConnection, p: Prepared) -> float:
    started = time.monotonic()
    head, _ = await conn.request(
        Manifest(model=p.digest, body_len=len(p.body)).to_head(),
        p.body,
        limit=LIMIT,
        urgency=CONTROL_URGENCY,
    )
    parse_reply(head, ManifestOk)
    return time.monotonic() - started


async def timings(conn: AioConnection, p: Prepared, wait_ms: int) -> tuple[TimingsOk, TimingTable]:
    head, body = await conn.request(
        Timings(model=p.digest, wait_ms=wait_ms).to_head(), b"", limit=LIMIT
    )
    reply = parse_reply(head, TimingsOk)
    return reply, TimingTable.decode(body, p.graph.order)


async def until_timed(
    conn: AioConnection, p: Prepared, limit_s: float = 900.0
) -> tuple[TimingsOk, TimingTable]:
    """Long-poll ``timings`` (``wait_ms`` at most 60000, §10.11) until the server is done
    timing ``p`` or ``limit_s`` passed."""
    started = time.monotonic()
    reply, table = await timings(conn, p, 60_000)
    while not reply.done and time.monotonic() - started < limit_s:
        reply, table = await timings(conn, p, 60_000)
    return reply, table


async def upload_and_load(conn: AioConnection, p: Prepared) -> None:
    for digest, blob in p.blobs.items():
        for offset in range(0, len(blob), 32 << 20):
            piece = blob[offset : offset + (32 << 20)]
            head, _ = await conn.request(
                Blob(
                    model=p.digest, sha256=digest, size=len(blob), offset=offset,
                    body_len=len(piece),
                ).to_head(),
                piece,
                limit=LIMIT,
                urgency=5,
            )  # fmt: skip
            parse_reply(head, BlobOk)
    layers = tuple(n for n in p.graph.order if p.graph[n].inbound)
    head, _ = await conn.request(
        Load(model=p.digest, layers=layers).to_head(), b"", limit=LIMIT, urgency=CONTROL_URGENCY
    )
    parse_reply(head, LoadOk)


async def query(conn: AioConnection, p: Prepared, run: Sequence[str], qid: int) -> float:
    """One query of run set ``run`` on random inputs; the server's ``server_ms``."""
    graph = p.graph
    ins, _ = graph.boundary(run)
    rng = np.random.default_rng(qid)
    tensors = {
        str(r): rng.random((1, *graph[r.layer].output_shapes[r.index])).astype(np.float32)
        for r in ins
    }
    descs, parts = encode_tensors(tensors)
    body = b"".join(parts)
    q = Query(
        model=p.digest, qid=f"q{qid}", deadline_ms=60_000, run=tuple(run), tensors=descs,
        body_len=len(body),
    )  # fmt: skip
    head, _ = await conn.request(q.to_head(), body, limit=LIMIT, urgency=QUERY_URGENCY)
    return parse_reply(head, Result).server_ms


def run_sets(graph: LayerGraph, count: int, seed: int = 0) -> list[tuple[str, ...]]:
    """``count`` contiguous ranges of the order (input layers left out), from a tenth of
    the model to all of it, the whole model first."""
    order = [n for n in graph.order if graph[n].inbound]
    rng = np.random.default_rng(seed)
    sets = [tuple(order)]
    while len(sets) < count:
        length = int(rng.integers(max(1, len(order) // 10), len(order)))
        start = int(rng.integers(0, len(order) - length + 1))
        sets.append(tuple(order[start : start + length]))
    return sets


async def agreement(name: str, args: argparse.Namespace, cal: Any) -> dict[str, Any]:
    from ionn_net.server import EdgeServer

    p = await asyncio.to_thread(prepare, name)
    async with EdgeServer(cost_model=cal.cost_model, prior=cal.prior) as server:
        conn = await open_session(server.port)
        await send_manifest(conn, p)
        started = time.monotonic()
        _, first = await timings(conn, p, 0)
        reply, table = await timings(conn, p, 60_000)
        while not reply.done and time.monotonic() - started < 900:
            reply, table = await timings(conn, p, 60_000)
        timed_s = time.monotonic() - started
        await upload_and_load(conn, p)
        rows = []
        for i, run in enumerate(run_sets(p.graph, args.segments)):
            await query(conn, p, run, 10_000 + i)  # compiles the run set ...
            await asyncio.sleep(args.settle_s)  # ... then as one slice, in the background
            await query(conn, p, run, 20_000 + i)
            took = statistics.median(
                [await query(conn, p, run, i * 100 + k) for k in range(args.runs)]
            )
            measured = sum(table.measured.get(n, table.predicted.get(n, 0.0)) for n in run)
            predicted = sum(first.predicted.get(n, 0.0) for n in run)
            rows.append((len(run), took, measured + reply.call_ms, predicted + reply.call_ms))
        await conn.aclose()
    errors = [abs(m / t - 1) for _, t, m, _ in rows]
    before = [abs(pr / t - 1) for _, t, _, pr in rows]
    print(
        f"{name}: timed {len(table.measured)} of {len(table.measured) + len(table.predicted)} "
        f"layers in {timed_s:.1f} s (call {reply.call_ms:.2f} ms); over {len(rows)} run sets "
        f"median |error| {statistics.median(errors) * 100:.1f}% measured, "
        f"{statistics.median(before) * 100:.1f}% predicted (prior)"
    )
    for n, took, measured, predicted in rows:
        print(
            f"    {n:4d} layers: server {took:8.2f} ms, announced {measured:8.2f} "
            f"({(measured / took - 1) * 100:+6.1f}%), prior {predicted:8.2f} "
            f"({(predicted / took - 1) * 100:+6.1f}%)"
        )
    return {
        "model": name,
        "timed_s": timed_s,
        "median_error": statistics.median(errors),
        "median_error_prior": statistics.median(before),
        "rows": rows,
    }


async def interference(args: argparse.Namespace, cal: Any) -> None:
    """Queries of a loaded model while the server times another client's manifest."""
    from ionn_net.server import EdgeServer

    served = await asyncio.to_thread(prepare, args.models[0])
    timed = await asyncio.to_thread(prepare, args.timed_model)
    async with EdgeServer(cost_model=cal.cost_model, prior=cal.prior) as server:
        a = await open_session(server.port)
        await send_manifest(a, served)
        await until_timed(a, served)  # its own timing out of the way first
        await upload_and_load(a, served)
        run = tuple(n for n in served.graph.order if served.graph[n].inbound)
        await query(a, served, run, 0)
        latencies: list[tuple[float, float]] = []
        qid = 1

        async def queries(until: float) -> None:
            nonlocal qid
            while time.monotonic() < until:
                t0 = time.monotonic()
                await query(a, served, run, qid)
                qid += 1
                latencies.append((t0, (time.monotonic() - t0) * 1000))

        start = time.monotonic()
        await queries(start + args.quiet_s)
        b = await open_session(server.port)
        manifest_s = await send_manifest(b, timed)
        t_manifest = time.monotonic()
        poll = asyncio.create_task(until_timed(b, timed))
        while not poll.done():
            await queries(time.monotonic() + 0.5)
        t_done = time.monotonic()
        reply, table = poll.result()
        await queries(time.monotonic() + args.quiet_s)
        for conn in (a, b):
            await conn.aclose()
    phases = {
        "before": [ms for t, ms in latencies if t < t_manifest],
        "during": [ms for t, ms in latencies if t_manifest <= t < t_done],
        "after": [ms for t, ms in latencies if t >= t_done],
    }
    print(
        f"serving {served.name} back to back while timing {timed.name}: manifest_ok in "
        f"{manifest_s * 1000:.0f} ms, timed {len(table.measured)} layers in "
        f"{t_done - t_manifest:.1f} s ({'done' if reply.done else 'not done'})"
    )
    for phase, values in phases.items():
        if values:
            arr = np.asarray(values)
            print(
                f"  {phase:7s} {len(values):4d} queries: median {np.median(arr):7.2f} ms, "
                f"p95 {np.percentile(arr, 95):7.2f} ms, max {arr.max():7.2f} ms"
            )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", nargs="?", default="agreement", choices=("agreement", "interference"))
    ap.add_argument("--models", nargs="+", default=["MobileNetV2", "ResNet50"])
    ap.add_argument("--timed-model", default="InceptionV3")
    ap.add_argument("--segments", type=int, default=20)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--quiet-s", type=float, default=10.0)
    ap.add_argument("--settle-s", type=float, default=2.0)
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "ionn_net")
    ap.add_argument("--save", type=Path, default=None)
    args = ap.parse_args(argv)
    from ionn_net.calibrate import load_calibration

    cal = load_calibration(args.cache_dir)
    print(f"load average {os.getloadavg()[0]:.1f}")
    if args.mode == "interference":
        asyncio.run(interference(args, cal))
        return 0
    results = [asyncio.run(agreement(name, args, cal)) for name in args.models]
    if args.save is not None:
        args.save.write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
