"""Bounded soak: several clients with random faults and attacks; resources must stay flat.

Runs one EdgeServer (durable store in a temp directory) behind a FaultProxy in this
process. Clients (asyncio API, a Dense-only model whose answers numpy checks exactly):

* ``--clients`` steady tenants: one session each; upload (resuming from the server's
  offsets after every cut), load, then query in a loop;
* one churn tenant cycling through a pool of ``--pool`` sessions (each session's blobs are
  uploaded once, then never again: reconnects must not re-send them);
* one uploader: a fresh tenant per cycle uploading a 260 KiB model in paced 16 KiB
  requests, so faults cut uploads mid-blob and resumes happen all through the run.

Every query is retried on new connections until it gets a correct answer; a query that
gets none within ``--query-budget-s`` counts as lost. A fault task injects a random toxic
every 1-4 s (RST of every connection, FIN, half-open silence, cut after N bytes, 1-byte
slicing, latency); an attack task hits the server directly every few seconds (ping flood,
garbage, rapid reset, slowloris, huge length prefix). Every ``--sample-s`` seconds it prints
RSS, open file descriptors, threads, asyncio tasks, server sessions and live connections,
then the totals. Exit status 1 if a query was lost or answered wrongly.

Usage: ``python bench/soak.py [--minutes 10] [--clients 4] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import random
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.manifests import ManifestBuilder  # noqa: E402
from tests.refpeer import wire as rw  # noqa: E402

from ionn_net.aio import AioConnection, connect  # noqa: E402
from ionn_net.config import Limits  # noqa: E402
from ionn_net.errors import IonnError  # noqa: E402
from ionn_net.messages import (  # noqa: E402
    Blob,
    BlobOk,
    Have,
    Hello,
    Holdings,
    Load,
    LoadOk,
    Manifest,
    ManifestOk,
    Query,
    Result,
    Welcome,
    parse_reply,
)
from ionn_net.model.spec import canonical_json  # noqa: E402
from ionn_net.netem.faults import (  # noqa: E402
    FaultProxy,
    Latency,
    LimitData,
    ResetPeer,
    Slicer,
    Timeout,
)
from ionn_net.planner.costmodel import ServerCostModel  # noqa: E402
from ionn_net.server import EdgeServer, ServerConfig  # noqa: E402
from ionn_net.tensors import decode_tensors, encode_tensors  # noqa: E402

IN, HIDDEN, OUT = 64, 256, 10


@dataclass
class Totals:
    queries: int = 0
    lost: int = 0
    wrong: int = 0
    retries: int = 0
    faults: int = 0
    attacks: int = 0
    reconnects: int = 0
    blob_bytes_sent: int = 0
    blob_bytes_needed: int = 0
    complete_blobs_resent: int = 0
    uploads: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


def build_model(seed: int, hidden: int = HIDDEN) -> tuple[dict[str, Any], ManifestBuilder]:
    rng = np.random.default_rng(seed)
    b = ManifestBuilder(name=f"soak{seed}")
    x = b.input("x", [IN])
    w1 = [rng.standard_normal((IN, hidden)), rng.standard_normal(hidden)]
    h = b.add("d1", "Dense", {"units": hidden, "activation": "relu"}, [x], _f32(w1))
    w2 = [rng.standard_normal((hidden, OUT)) * 0.1, rng.standard_normal(OUT)]
    out = b.add("d2", "Dense", {"units": OUT, "activation": "softmax"}, [h], _f32(w2))
    return b.obj([out]), b


def _f32(arrays: list[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(a, np.float32) for a in arrays]


def reference(b: ManifestBuilder, x: np.ndarray) -> np.ndarray:
    (w1, b1), (w2, b2) = b.arrays["d1"], b.arrays["d2"]
    logits = np.maximum(x.astype(np.float64) @ w1 + b1, 0.0) @ w2 + b2
    e = np.exp(logits - logits.max())
    out: np.ndarray = e / e.sum()
    return out


class SoakTenant:
    """One session: keeps a connection, resumes uploads, answers every query once."""

    def __init__(self, port: int, seed: int, totals: Totals, hidden: int = HIDDEN) -> None:
        self.port, self.totals = port, totals
        self.session = hashlib.sha256(f"soak-{seed}".encode()).hexdigest()[:32]
        self.obj, self.builder = build_model(seed, hidden)
        self.piece = 0  # > 0: upload in requests of this size, paced
        self.body = canonical_json(self.obj)
        self.digest = hashlib.sha256(self.body).hexdigest()
        self.conn: AioConnection | None = None
        self.ready = False
        self.completed: set[str] = set()  # blobs the server confirmed complete

    async def call(self, head: dict[str, Any], body: bytes = b"") -> tuple[Any, bytes]:
        if self.conn is None or self.conn.closed:
            await self._reconnect()
        assert self.conn is not None
        return await asyncio.wait_for(self.conn.request(head, body, urgency=2), 5.0)

    async def _reconnect(self) -> None:
        if self.conn is not None:
            self.conn.abort()
            self.totals.reconnects += 1
        self.ready = False
        self.conn = await asyncio.wait_for(connect("127.0.0.1", self.port), 5.0)
        hello = Hello(session=self.session, nonce=os.urandom(16).hex())
        head, _ = await asyncio.wait_for(self.conn.request(hello.to_head()), 5.0)
        parse_reply(head, Welcome)
        manifest = Manifest(model=self.digest, body_len=len(self.body))
        head, _ = await asyncio.wait_for(self.conn.request(manifest.to_head(), self.body), 5.0)
        await self._upload(parse_reply(head, ManifestOk).holdings)

    async def _upload(self, holdings: Holdings) -> None:
        assert self.conn is not None
        held = set(holdings.blobs_held)
        partial = holdings.partial
        for sha, blob in self.builder.blobs.items():
            if sha in held:
                continue
            if sha in self.completed:
                self.totals.complete_blobs_resent += 1  # would be a resume bug
            offset = int(partial.get(sha, 0))
            while True:
                end = min(len(blob), offset + self.piece) if self.piece else len(blob)
                piece = Blob(
                    model=self.digest,
                    sha256=sha,
                    size=len(blob),
                    offset=offset,
                    body_len=end - offset,
                )
                self.totals.blob_bytes_sent += end - offset
                head, _ = await asyncio.wait_for(
                    self.conn.request(piece.to_head(), blob[offset:end]), 10.0
                )
                ok = parse_reply(head, BlobOk)
                offset = ok.offset
                if ok.complete:
                    break
                await asyncio.sleep(0.02)
            self.completed.add(sha)
        if not held >= set(self.builder.blobs):
            self.totals.uploads += 1
        names = [layer["name"] for layer in self.obj["layers"][1:]]
        load = Load(model=self.digest, layers=tuple(names))
        head, _ = await asyncio.wait_for(self.conn.request(load.to_head()), 10.0)
        parse_reply(head, LoadOk)
        self.ready = True

    async def query(self, rng: np.random.Generator, budget_s: float) -> None:
        x = rng.standard_normal((1, IN)).astype(np.float32)
        descs, parts = encode_tensors({"x:0": x})
        body = b"".join(parts)
        qid = os.urandom(6).hex()
        query = Query(
            model=self.digest,
            qid=qid,
            deadline_ms=5000,
            run=("d1", "d2"),
            tensors=descs,
            body_len=len(body),
        )
        deadline = time.monotonic() + budget_s
        attempt = 0
        while time.monotonic() < deadline:
            try:
                if not self.ready or self.conn is None or self.conn.closed:
                    await self._reconnect()
                head, out = await self.call(query.to_head(), body)
                result = parse_reply(head, Result)  # an error is retried below
                got = decode_tensors(result.tensors, out)["d2:0"]
                if result.qid != qid or not np.allclose(
                    got, reference(self.builder, x), rtol=1e-4, atol=1e-6
                ):
                    self.totals.wrong += 1
                self.totals.queries += 1
                return
            except (IonnError, OSError, TimeoutError, AssertionError, KeyError):
                pass
            attempt += 1
            self.totals.retries += 1
            self.ready = False
            await asyncio.sleep(min(0.05 * 2**attempt, 1.0) * random.uniform(0.5, 1.0))
        self.totals.lost += 1


async def steady(tenant: SoakTenant, stop: float, seed: int, budget: float) -> None:
    rng = np.random.default_rng(seed)
    while time.monotonic() < stop:
        await tenant.query(rng, budget)
        await asyncio.sleep(rng.uniform(0.0, 0.05))


async def churn(pool: list[SoakTenant], stop: float, budget: float) -> None:
    rng = np.random.default_rng(99)
    while time.monotonic() < stop:
        tenant = pool[int(rng.integers(len(pool)))]
        for _ in range(5):
            await tenant.query(rng, budget)
        if tenant.conn is not None:  # leave without saying goodbye
            tenant.conn.abort()
            tenant.conn = None
            tenant.ready = False


async def uploader(port: int, stop: float, totals: Totals, budget: float) -> None:
    """A new tenant (fresh session key, fresh model) per cycle, uploading in 16 KiB requests
    20 ms apart like a paced phone, so faults land mid-blob and uploads resume all through
    the run; one query checks the model, then it leaves. Old sessions are forgotten by the
    server when its session table is full (their stale partial uploads with them)."""
    rng = np.random.default_rng(7)
    seed = 5000
    while time.monotonic() < stop:
        seed += 1
        tenant = SoakTenant(port, seed, totals, hidden=1024)
        totals.blob_bytes_needed += sum(len(b) for b in tenant.builder.blobs.values())
        tenant.piece = 16 * 1024
        await tenant.query(rng, budget)
        if tenant.conn is not None:
            tenant.conn.abort()
        totals.kinds["upload_cycles"] = totals.kinds.get("upload_cycles", 0) + 1


async def faults(proxy: FaultProxy, stop: float, totals: Totals) -> None:
    rnd = random.Random(1)
    while time.monotonic() < stop:
        await asyncio.sleep(rnd.uniform(1.0, 4.0))
        kind = rnd.choice(["rst", "fin", "half_open", "cut", "slicer", "latency", "reset_peer"])
        totals.faults += 1
        totals.kinds[kind] = totals.kinds.get(kind, 0) + 1
        if kind in ("rst", "fin"):
            proxy.cut_all(rst=kind == "rst")
            continue
        toxic: Any = {
            "half_open": Timeout(ms=0),
            "cut": LimitData(nbytes=rnd.randint(100, 200_000), direction="up", mode="rst"),
            "slicer": Slicer(size=1, delay_ms=0.0),
            "latency": Latency(ms=rnd.uniform(5, 80), jitter_ms=5),
            "reset_peer": ResetPeer(after_ms=rnd.uniform(0, 300)),
        }[kind]
        proxy.set_toxics(toxic)
        await asyncio.sleep(rnd.uniform(0.3, 2.0))
        proxy.clear_toxics()
        if kind in ("half_open", "cut"):
            proxy.cut_all(rst=True)  # connections stuck in a half-open state


def _attack_once(port: int, kind: str) -> None:
    """One hostile connection straight to the server (blocking, bounded by timeouts)."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.settimeout(3)
        hs = rw.client_preface() + rw.settings_frame() + rw.settings_ack()
        if kind == "ping_flood":
            sock.sendall(hs + rw.ping_frame(b"floodfld") * 500)
        elif kind == "garbage":
            sock.sendall(os.urandom(4096))
        elif kind == "rapid_reset":
            burst = b"".join(
                rw.headers_frame(s, Have(model="0" * 64).to_head(), end_stream=True)
                + rw.reset_frame(s, rw.Code.CANCEL)
                for s in range(1, 4000, 2)
            )
            sock.sendall(hs + burst)
        elif kind == "slowloris":
            for byte in hs[:6]:
                sock.sendall(bytes([byte]))
                time.sleep(0.3)
        elif kind == "huge_length":
            sock.sendall(hs + rw.HEADER.pack(0, 0, 0, 0, 1, 2**32 - 1, 2**32 - 1))
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass


async def attacks(port: int, stop: float, totals: Totals) -> None:
    rnd = random.Random(2)
    kinds = ["ping_flood", "garbage", "rapid_reset", "slowloris", "huge_length"]
    while time.monotonic() < stop:
        await asyncio.sleep(rnd.uniform(2.0, 6.0))
        kind = rnd.choice(kinds)
        totals.attacks += 1
        totals.kinds[f"attack:{kind}"] = totals.kinds.get(f"attack:{kind}", 0) + 1
        with contextlib.suppress(OSError):
            await asyncio.to_thread(_attack_once, port, kind)


def sample(server: EdgeServer) -> dict[str, float]:
    rss = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    live = sum(1 for c in list(server._conns) if not c.closed)
    return {
        "rss_mib": rss,
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "tasks": len(asyncio.all_tasks()),
        "sessions": len(server._sessions),
        "conns": live,
    }


async def sampler(server: EdgeServer, stop: float, every: float, out: list[Any]) -> None:
    start = time.monotonic()
    while True:
        s = sample(server)
        out.append((time.monotonic() - start, s))
        print(
            f"t={out[-1][0]:7.1f}s rss={s['rss_mib']:7.1f}MiB fds={s['fds']:4d} "
            f"threads={s['threads']:3d} tasks={s['tasks']:4d} sessions={s['sessions']:3d} "
            f"conns={s['conns']:3d}",
            flush=True,
        )
        if time.monotonic() >= stop:
            return
        await asyncio.sleep(min(every, max(stop - time.monotonic(), 0.1)))


async def main(args: argparse.Namespace) -> int:
    totals = Totals()
    limits = Limits(handshake_timeout_s=2.0, keepalive_interval_s=1.0, heartbeat_timeout_s=3.0)
    # A small session table: the uploader's departed tenants are forgotten (LRU, no live
    # connection) so the table, and what the sessions hold, stays bounded.
    config = ServerConfig(limits=limits, max_connections_per_address=64, max_sessions=24)
    samples: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="ionn-soak-") as tmp:
        server = EdgeServer(store=Path(tmp), config=config, cost_model=ServerCostModel())
        async with server, FaultProxy("127.0.0.1", server.port) as proxy:
            started = time.monotonic()
            stop = started + args.minutes * 60
            tenants = [SoakTenant(proxy.port, i, totals) for i in range(args.clients)]
            pool = [SoakTenant(proxy.port, 1000 + i, totals) for i in range(args.pool)]
            for t in tenants + pool:
                totals.blob_bytes_needed += sum(len(b) for b in t.builder.blobs.values())
            jobs = [
                *(steady(t, stop, i, args.query_budget_s) for i, t in enumerate(tenants)),
                churn(pool, stop, args.query_budget_s),
                uploader(proxy.port, stop, totals, args.query_budget_s),
                faults(proxy, stop, totals),
                attacks(server.port, stop, totals),
                sampler(server, stop, args.sample_s, samples),
            ]
            await asyncio.gather(*jobs)
            for t in tenants + pool:
                if t.conn is not None:
                    t.conn.abort()
            await asyncio.sleep(limits.heartbeat_timeout_s + 1.0)
            final = sample(server)
            elapsed = time.monotonic() - started
    report(totals, samples, final, elapsed, args)
    return 1 if totals.lost or totals.wrong or totals.complete_blobs_resent else 0


def report(
    totals: Totals,
    samples: list[Any],
    final: dict[str, float],
    elapsed: float,
    args: argparse.Namespace,
) -> None:
    # Steady state: compare a sample after warm-up (Keras imported, every model built, the
    # allocator's arenas grown: a quarter of the run, at most 2 minutes in) with the last one.
    cutoff = min(120.0, elapsed / 4)
    warm = next((s for t, s in samples if t >= cutoff), samples[-1][1])
    last = samples[-1][1]
    print("\n== soak summary ==")
    print(
        f"duration {elapsed / 60:.1f} min, {args.clients} steady clients + churn over "
        f"{args.pool} sessions"
    )
    print(
        f"queries answered {totals.queries}, lost {totals.lost}, wrong {totals.wrong}, "
        f"retries {totals.retries}, reconnects {totals.reconnects}"
    )
    print(f"warm-up sample at t={cutoff:.0f} s")
    print(f"faults injected {totals.faults}, attacks tried {totals.attacks}")
    print("by kind: " + ", ".join(f"{k}={v}" for k, v in sorted(totals.kinds.items())))
    resent = totals.blob_bytes_sent - totals.blob_bytes_needed
    print(
        f"blob bytes sent {totals.blob_bytes_sent} for {totals.blob_bytes_needed} needed "
        f"(re-sent after cuts: {resent}); complete blobs re-sent: "
        f"{totals.complete_blobs_resent}"
    )
    for key in ("rss_mib", "fds", "threads", "tasks", "sessions", "conns"):
        series = [s[key] for _, s in samples]
        print(
            f"{key:9s} after warm-up {warm[key]:8.1f}  end of run {last[key]:8.1f}  "
            f"max {max(series):8.1f}  after clients left {final[key]:8.1f}"
        )


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--pool", type=int, default=6, help="sessions the churn tenant cycles over")
    p.add_argument("--sample-s", type=float, default=15.0)
    p.add_argument("--query-budget-s", type=float, default=60.0)
    return p.parse_args()


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)  # expected warnings (attacks, cuts) stay quiet
    sys.exit(asyncio.run(main(parse())))
