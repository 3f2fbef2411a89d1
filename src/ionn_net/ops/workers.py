"""``ionn-server --workers N``: one port, N server processes, one store.

Design: a *supervisor* process (no TensorFlow) owns the listening socket, accepts every
connection and hands it to a worker over a Unix ``SOCK_SEQPACKET`` pair (``SCM_RIGHTS``),
round-robin over the workers that are ready. Each *worker* is a full ``ionn-server``
process (its own interpreter, GIL and TensorFlow runtime) serving only what it is handed
(:meth:`EdgeServer.adopt`); all of them open the same directory store, which finds what
another process stored after it opened (:class:`~ionn_net.store.DirectoryStore`), so a
client that reconnects to another worker finds its verified blobs and partial uploads.

Why a supervisor that hands out sockets rather than ``SO_REUSEPORT``: the kernel spreads
``SO_REUSEPORT`` connections by a hash of their addresses, and IONN clients hold one
long-lived connection each, so a handful of clients often land unevenly (4 clients on 2
workers: all on one in 1 case of 8); round-robin hand-out is even. The listening socket
also never closes while a worker restarts, and the supervisor stops accepting at once on
SIGTERM.

Supervision: workers start one after the other (the first one calibrates and caches the
cost model in the store, the others read it); a worker that dies is started again after
a back-off (1 s, doubling to 30 s); a worker that dies before it was ever ready ends the
supervisor (a configuration error would otherwise loop). SIGTERM/SIGINT: readiness turns
503, the listener closes, every worker gets SIGTERM and drains (§13.3) within
``--drain-timeout``; a worker still running 10 s after that is killed. Exit status 0 when
every worker exited 0.

Metrics: with ``--metrics-port`` the supervisor serves the one endpoint; workers write
their metrics to files in a private directory (``prometheus_client`` multiprocess mode),
which the supervisor's exposition adds up. Readiness: at least one worker ready, and not
draining (a connection is only ever handed to a ready worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from ionn_net.ops.hooks import ServerHooks
from ionn_net.ops.run import OpsOptions, start_or_stop, stop_event

if TYPE_CHECKING:
    from ionn_net.server import EdgeServer

__all__ = ["MULTIPROC_ENV", "Supervisor", "serve_worker"]

logger = logging.getLogger("ionn_net.ops")

#: prometheus_client's multiprocess directory, set for the workers only.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_READY, _DRAINING, _HANDOFF = b"ready", b"draining", b"c"
_ACCEPT_BATCH = 64
_KILL_GRACE_S = 10.0
_SAMPLE_S = 1.0


@dataclass(slots=True)
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    channel: socket.socket | None = None
    ready: bool = False
    ever_ready: bool = False
    started_at: float = 0.0
    backoff_s: float = 1.0
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    """The parent of ``--workers N`` (see the module docstring)."""

    def __init__(
        self,
        worker_argv: Callable[[int, int], Sequence[str]],
        count: int,
        *,
        host: str,
        port: int,
        ops: OpsOptions,
        out: TextIO,
    ) -> None:
        self._argv = worker_argv  # (index, channel fd) -> argv of the worker process
        self._workers = [_Worker(i) for i in range(count)]
        self._host, self._port = host, port
        self._ops = ops
        self._out = out
        self._listener: socket.socket | None = None
        self._next = 0
        self._stopping = False
        self._failed: str | None = None
        self._metrics_dir: str | None = None
        self._restarts: Any = None
        self._handed: Any = None

    # -- the whole life --------------------------------------------------------------------

    async def run(self) -> int:
        stop = stop_event()
        endpoint = await self._start_endpoint()
        self._listener = socket.create_server((self._host, self._port), backlog=1024)
        self._listener.setblocking(False)
        try:
            for worker in self._workers:  # one after the other (see the module docstring)
                await self._spawn(worker)
                if not await self._until_ready(worker, stop):
                    break
            if not stop.is_set() and self._failed is None:
                loop = asyncio.get_running_loop()
                loop.add_reader(self._listener.fileno(), self._accept)
                port = self._listener.getsockname()[1]
                _say(self._out, f"ionn-server listening on {self._host}:{port}")
                await stop.wait()
            return await self._drain_all()
        finally:
            if endpoint is not None:
                await endpoint.close()
            if self._metrics_dir is not None:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)

    async def _until_ready(self, worker: _Worker, stop: asyncio.Event) -> bool:
        while not (worker.ready or stop.is_set() or self._failed):
            await asyncio.sleep(0.05)
        if self._failed:
            logger.error("%s", self._failed)
        return worker.ready

    def ready(self) -> tuple[bool, str]:
        if self._stopping:
            return False, "draining"
        if any(w.ready for w in self._workers):
            return True, ""
        return False, "no worker ready"

    # -- workers ---------------------------------------------------------------------------

    async def _spawn(self, worker: _Worker) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mine.setblocking(False)
        env = dict(os.environ)
        if self._metrics_dir is not None:
            env[MULTIPROC_ENV] = self._metrics_dir
        argv = self._argv(worker.index, theirs.fileno())
        worker.proc = await asyncio.create_subprocess_exec(
            *argv, pass_fds=(theirs.fileno(),), env=env, stdin=asyncio.subprocess.DEVNULL
        )
        theirs.close()
        worker.channel, worker.ready, worker.started_at = mine, False, time.monotonic()
        asyncio.get_running_loop().add_reader(mine.fileno(), self._on_status, worker)
        worker.watcher = asyncio.ensure_future(self._watch(worker))
        logger.info(
            "worker %d started (pid %d)",
            worker.index,
            worker.proc.pid,
            extra={
                "ionn": {"event": "worker_started", "index": worker.index, "child": worker.proc.pid}
            },
        )

    def _on_status(self, worker: _Worker) -> None:
        channel = worker.channel
        assert channel is not None
        try:
            message = channel.recv(64)
        except BlockingIOError:
            return
        except OSError:
            message = b""
        if message == _READY:
            worker.ready = worker.ever_ready = True
        elif message in (_DRAINING, b""):
            worker.ready = False
            if not message:
                asyncio.get_running_loop().remove_reader(channel.fileno())

    async def _watch(self, worker: _Worker) -> None:
        proc = worker.proc
        assert proc is not None
        code = await proc.wait()
        worker.ready = False
        if worker.channel is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(worker.channel.fileno())
            worker.channel.close()
            worker.channel = None
        if self._metrics_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(proc.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
        if self._stopping:
            return
        if not worker.ever_ready:
            self._failed = f"worker {worker.index} exited with status {code} before it was ready"
            return
        lived = time.monotonic() - worker.started_at
        worker.backoff_s = 1.0 if lived > 60.0 else min(worker.backoff_s * 2, 30.0)
        logger.warning(
            "worker %d (pid %d) exited with status %s; restarting in %.0f s",
            worker.index,
            proc.pid,
            code,
            worker.backoff_s,
            extra={"ionn": {"event": "worker_exited", "index": worker.index, "status": code}},
        )
        if self._restarts is not None:
            self._restarts.inc()
        await asyncio.sleep(worker.backoff_s)
        if not self._stopping:
            await self._spawn(worker)

    # -- connections -----------------------------------------------------------------------

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: leave it in the backlog for now
                logger.warning("accept failed: %s", exc)
                return
            with conn:
                self._hand_out(conn)

    def _hand_out(self, conn: socket.socket) -> None:
        """Give ``conn`` to the next ready worker (round-robin); if none takes it, it is
        closed (the client reconnects)."""
        count = len(self._workers)
        for step in range(count):
            worker = self._workers[(self._next + step) % count]
            if not worker.ready or worker.channel is None:
                continue
            try:
                socket.send_fds(worker.channel, [_HANDOFF], [conn.fileno()])
            except OSError:
                continue
            self._next = (self._next + step + 1) % count
            if self._handed is not None:
                self._handed.labels(worker=str(worker.index)).inc()
            return
        logger.warning("no worker took a connection from %s", conn.getpeername())

    # -- the end ---------------------------------------------------------------------------

    async def _drain_all(self) -> int:
        self._stopping = True
        listener = self._listener
        if listener is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(listener.fileno())
            listener.close()
        procs = [w.proc for w in self._workers if w.proc is not None]
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        deadline = self._ops.drain_timeout_s + _KILL_GRACE_S
        status = 0 if self._failed is None else 1
        for proc in procs:
            try:
                code = await asyncio.wait_for(proc.wait(), deadline)
            except TimeoutError:
                proc.kill()
                code = await proc.wait()
            status = status or (1 if code else 0)
        for worker in self._workers:
            if worker.watcher is not None:
                worker.watcher.cancel()
        return status

    async def _start_endpoint(self) -> Any:
        if self._ops.metrics_port is None:
            return None
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            disable_created_metrics,
            multiprocess,
        )

        from ionn_net.ops.http import OpsEndpoint

        disable_created_metrics()  # type: ignore[no-untyped-call]
        self._metrics_dir = tempfile.mkdtemp(prefix="ionn-metrics-")
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            registry, path=self._metrics_dir
        )
        workers = Gauge("ionn_workers", "Worker processes ready.", registry=registry)
        workers.set_function(lambda: sum(w.ready for w in self._workers))
        self._restarts = Counter(
            "ionn_worker_restarts_total",
            "Workers started again after they died.",
            registry=registry,
        )
        self._handed = Counter(
            "ionn_worker_connections_total",
            "Connections handed to each worker.",
            ["worker"],
            registry=registry,
        )
        endpoint = OpsEndpoint(registry, self.ready)
        await endpoint.start(self._ops.metrics_host, self._ops.metrics_port)
        _say(self._out, f"ionn-server metrics on {self._ops.metrics_host}:{endpoint.port}")
        return endpoint


async def serve_worker(
    make: Callable[[ServerHooks], EdgeServer], channel_fd: int, ops: OpsOptions
) -> int:
    """One worker: serve the connections the supervisor hands over ``channel_fd`` until
    SIGTERM/SIGINT (or the supervisor is gone), then drain; the exit status."""
    stop = stop_event()
    metrics = None
    if os.environ.get(MULTIPROC_ENV):
        from ionn_net.ops.metrics import ServerMetrics

        metrics = ServerMetrics(process=False)
    hooks = ServerHooks(metrics)
    server = make(hooks)
    channel = socket.socket(fileno=channel_fd)
    channel.setblocking(False)
    loop = asyncio.get_running_loop()
    adopting: set[asyncio.Task[None]] = set()

    def on_handoff() -> None:
        try:
            _msg, fds, _flags, _addr = socket.recv_fds(channel, 16, 16)
        except BlockingIOError:
            return
        except OSError:
            fds, _msg = [], b""
        if not _msg and not fds:  # the supervisor is gone: drain and leave
            loop.remove_reader(channel.fileno())
            stop.set()
            return
        for fd in fds:
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
            task = loop.create_task(server.adopt(sock))
            adopting.add(task)
            task.add_done_callback(adopting.discard)

    if not await start_or_stop(server, stop):
        return 0
    loop.add_reader(channel.fileno(), on_handoff)
    channel.send(_READY)
    sampler = loop.create_task(_sample(hooks, server)) if metrics is not None else None
    await stop.wait()
    with contextlib.suppress(OSError):
        channel.send(_DRAINING)
    with contextlib.suppress(ValueError, OSError):
        loop.remove_reader(channel.fileno())
    await server.drain(ops.drain_timeout_s)
    if sampler is not None:
        sampler.cancel()
        hooks.sample(server.gauges())
    channel.close()
    return 0


async def _sample(hooks: ServerHooks, server: EdgeServer) -> None:
    """A worker's gauges, written every second (the supervisor cannot ask at a scrape)."""
    while True:
        hooks.sample(server.gauges())
        await asyncio.sleep(_SAMPLE_S)


def _say(out: TextIO, line: str) -> None:
    out.write(line + "\n")
    out.flush()


def worker_command(argv: Sequence[str]) -> list[str]:
    """The command line that runs ``ionn-server`` with ``argv`` in this interpreter."""
    code = "from ionn_net.cli import server_main; raise SystemExit(server_main())"
    return [sys.executable, "-c", code, *argv]
