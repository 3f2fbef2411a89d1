"""The edge server process of one group of runs.

Run by :mod:`.runner` as ``python -m ionn_net.bench.serverproc --host H --cache-dir D``
(inside the server's network namespace when there is one). It loads the server cost
model calibrated on this machine (:func:`ionn_net.calibrate.load_or_calibrate`,
cached in ``D``; the first call calibrates, about 10-30 s), starts an
:class:`~ionn_net.server.EdgeServer` with an in-memory store on a free port, prints
one ``listening`` event line (see :data:`~ionn_net.bench.worker.PREFIX`) and serves
until its stdin closes, SIGTERM or SIGINT, then prints ``stats`` and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from ionn_net.bench.worker import emit

__all__ = ["main"]


async def _stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


async def serve(host: str, port: int, cache_dir: str) -> int:
    from ionn_net.calibrate import load_or_calibrate
    from ionn_net.server import EdgeServer

    started = time.monotonic()
    cost = await asyncio.to_thread(load_or_calibrate, cache_dir)
    cost_s = time.monotonic() - started
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with EdgeServer(host, port, cost_model=cost) as server:
        emit(sys.stdout, "listening", host=host, port=server.port, cost_model_s=round(cost_s, 3))
        watcher = asyncio.ensure_future(_stdin_closed())
        watcher.add_done_callback(lambda _: stop.set())
        try:
            await stop.wait()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        emit(sys.stdout, "stats", **{k: int(v) for k, v in server.stats.items()})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ionn_net.bench.serverproc")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cache-dir", required=True)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    from ionn_net.aio import run

    return run(serve(args.host, args.port, args.cache_dir))


if __name__ == "__main__":
    sys.exit(main())
