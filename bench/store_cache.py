"""Model cache measurements: a model's blobs from Redis vs the directory store, and catalog
models built ahead of clients.

``store``: the blobs of ResNet50 (random weights, ~102 MB, one blob per layer with weights)
are uploaded into a DirectoryStore (fsync on) and into a RedisStore on a redis-server this
script starts (``--appendonly yes``, ``appendfsync`` everysec, then always) the way the
server stores them (``append_partial`` in 1 MiB pieces, then ``complete_partial``), then
read back with ``get`` (verified on read), warm and cold: for the directory store "cold"
drops the files' pages from the page cache first (``posix_fadvise DONTNEED``); Redis keeps
everything in memory, so its "cold" is a restart: the time until it answers again after
loading its append-only file, then a read.

``catalog``: exports ResNet50 and MobileNetV2 into a catalog, opens it (verifying every
blob), then builds and compiles each model cold through ``build_catalog_model`` in a fresh
process (so nothing of another build is cached), reporting seconds and the resident-memory
growth per model, from which follows how many fit in this machine's memory.

Usage: ``python bench/store_cache.py store|catalog [--repeat 5]``. Starts its own
redis-server on a free loopback port with a temporary directory; prints one line per result.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ionn_net.store import BlobStore, DirectoryStore, partial_key

SESSION = "ab" * 16
PIECE = 1 << 20


def model_blobs(name: str) -> tuple[Any, dict[str, bytes]]:
    import keras

    from ionn_net.model.layers import extract_manifest

    keras.utils.set_random_seed(0)
    model = {
        "resnet50": lambda: keras.applications.ResNet50(weights=None),
        "mobilenetv2": lambda: keras.applications.MobileNetV2(weights=None),
    }[name]()
    manifest, blobs, _ = extract_manifest(model)
    return manifest, blobs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Redis:
    def __init__(self, directory: Path, appendfsync: str) -> None:
        self.directory, self.appendfsync, self.port = directory, appendfsync, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> float:
        """Start it; seconds until it answers PING (loading its AOF first)."""
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--save", "", "--appendonly", "yes",
             "--appendfsync", self.appendfsync, "--logfile", str(self.directory / "log")],
        )  # fmt: skip
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return time.perf_counter() - started
            except OSError:
                pass
            if time.perf_counter() - started > 120:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.005)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)


def upload(store: BlobStore, blobs: dict[str, bytes]) -> float:
    started = time.perf_counter()
    for digest, blob in blobs.items():
        key = partial_key(SESSION, digest)
        for offset in range(0, len(blob), PIECE):
            store.append_partial(key, offset, blob[offset : offset + PIECE])
        store.complete_partial(digest, key=key)
        store.record_owner(SESSION, digest)
    return time.perf_counter() - started


def read_all(store: BlobStore, blobs: dict[str, bytes]) -> float:
    started = time.perf_counter()
    total = sum(len(store.get(d)) for d in blobs)
    elapsed = time.perf_counter() - started
    assert total == sum(len(b) for b in blobs.values())
    return elapsed


def drop_page_cache(root: Path) -> None:
    for path in (root / "blobs").glob("*/*"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def median(fn: Callable[[], float], repeat: int) -> float:
    return statistics.median(fn() for _ in range(repeat))


def bench_store(repeat: int) -> None:
    from ionn_net.store_redis import RedisStore

    _, blobs = model_blobs("resnet50")
    mb = sum(len(b) for b in blobs.values()) / 1e6
    print(f"resnet50: {len(blobs)} blobs, {mb:.1f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        directory = DirectoryStore(root / "dir")
        print(f"directory upload (fsync): {upload(directory, blobs):.2f} s")
        warm = median(lambda: read_all(directory, blobs), repeat)
        print(f"directory load warm: {warm:.3f} s ({mb / warm:.0f} MB/s)")

        def cold() -> float:
            drop_page_cache(root / "dir")
            return read_all(directory, blobs)

        cold_s = median(cold, repeat)
        print(f"directory load cold page cache: {cold_s:.3f} s ({mb / cold_s:.0f} MB/s)")
        for fsync in ("everysec", "always"):
            (root / fsync).mkdir()
            server = Redis(root / fsync, fsync)
            server.start()
            try:
                store = RedisStore(server.url)
                print(f"redis upload (appendfsync {fsync}): {upload(store, blobs):.2f} s")
                if fsync == "always":
                    continue
                warm = statistics.median(read_all(store, blobs) for _ in range(repeat))
                print(f"redis load warm: {warm:.3f} s ({mb / warm:.0f} MB/s)")
                held = store.describe()["bytes"] / 1e6
                print(f"redis memory: {_used_memory(server.url) / 1e6:.1f} MB for {held:.1f} MB")
                server.stop()
                ready = server.start()
                restarted = RedisStore(server.url)
                first = read_all(restarted, blobs)
                print(
                    f"redis restart: ready after {ready:.2f} s (AOF load), first load {first:.3f} s"
                )
            finally:
                server.stop()


def _used_memory(url: str) -> int:
    import redis

    with redis.Redis.from_url(url) as client:
        return int(client.info("memory")["used_memory"])


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build_one(root: str, digest: str, copies: int) -> None:
    """In a fresh process: open the catalog, build and compile ``copies`` times."""
    from ionn_net.catalog import Catalog, build_catalog_model

    base = _rss_mb()
    started = time.perf_counter()
    catalog = Catalog.open(root)
    opened = time.perf_counter() - started
    kept, rows = [], []
    for _ in range(copies):
        before = _rss_mb()
        warm = build_catalog_model(catalog, digest)
        kept.append(warm)
        rows.append({"build_s": warm.build_s, "compile_s": warm.compile_s,
                     "rss_mb": _rss_mb() - before})  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"open_s": opened, "base_mb": base, "rows": rows, "peak_mb": peak}))


def bench_catalog(copies: int) -> None:
    from ionn_net.catalog import add_manifest

    with tempfile.TemporaryDirectory() as tmp:
        digests = {}
        for name in ("resnet50", "mobilenetv2"):
            manifest, blobs = model_blobs(name)
            digests[name], _ = add_manifest(tmp, manifest, blobs, name=name)
        total_mb = os.popen("awk '/MemTotal/ {print $2}' /proc/meminfo").read().strip()
        for name, digest in digests.items():
            out = subprocess.run(
                [sys.executable, __file__, "_build", tmp, digest, str(copies)],
                capture_output=True, text=True, check=True, timeout=1800,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            ).stdout.strip().splitlines()[-1]  # fmt: skip
            doc = json.loads(out)
            first, rest = doc["rows"][0], doc["rows"][1:]
            per = statistics.median(r["rss_mb"] for r in rest) if rest else first["rss_mb"]
            fits = int(int(total_mb) / 1024 / per) if per > 0 else 0
            print(
                f"catalog {name}: open+verify {doc['open_s']:.2f} s; cold build "
                f"{first['build_s']:.2f} s + compile {first['compile_s']:.2f} s, "
                f"+{first['rss_mb']:.0f} MB RSS (first, incl. TF start-up); later copies "
                f"build {statistics.median(r['build_s'] for r in rest or [first]):.2f} s + "
                f"compile {statistics.median(r['compile_s'] for r in rest or [first]):.2f} s, "
                f"+{per:.0f} MB each -> ~{fits} fit in {int(total_mb) / 1024 / 1024:.0f} GiB"
            )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_build":
        build_one(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("store", "catalog"))
    p.add_argument("--repeat", type=int, default=5, help="reads per median (store)")
    p.add_argument("--copies", type=int, default=3, help="builds per model (catalog)")
    args = p.parse_args()
    if args.what == "store":
        bench_store(args.repeat)
    else:
        bench_catalog(args.copies)


if __name__ == "__main__":
    main()
