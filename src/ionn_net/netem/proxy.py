"""Userspace link shaping: an asyncio TCP proxy with a bottleneck and a delay line.

Owns :class:`LinkSpec` (what one direction of a link looks like) and
:class:`ShapingProxy` (listens on loopback, forwards each accepted connection to a
target, and shapes each direction). Needs no root, so it is the fallback backend.

Model of one direction (shared by every connection through the proxy, like one
physical link):

* **Bottleneck.** Bytes read from the source are serialised at ``rate_bps``; the
  departure time of each read is computed exactly (``start = max(now, link_free)``,
  ``link_free = start + bits / rate``), so timer lateness never accumulates into a
  rate error. The bottleneck queue is ``link_free - now`` seconds of link time;
  when it exceeds the limit (``queue_ms`` or ``queue_bytes``) the proxy stops
  reading from the source, the source's socket buffer fills and TCP flow control
  pushes back on the sender, as a full router queue does (minus the drops).
* **Delay line.** Each read is released to the sink at ``departure + delay +
  jitter``. Release times never go backwards (jitter never reorders), and many reads
  are in flight at once, so throughput is not one chunk per round trip.
* **Loss.** A proxy terminating TCP on both sides cannot drop a packet: the kernel
  would retransmit it on loopback within microseconds. What a TCP flow *sees* from
  a loss on the path is modelled instead: the stream is cut into MSS-sized
  segments (1448 bytes); each is lost with probability ``loss``; a lost segment
  costs its bytes again at the bottleneck (the retransmission), and a read
  (about 2 ms of link time) holding one or more lost segments is released
  ``loss_stall_ms`` late, with everything behind it waiting (in-order delivery).
  One stall per read, not per loss: SACK repairs the losses of one window in one
  round trip. Default stall: the proxy's round trip (up + down delay) + 1 ms, i.e.
  recovery by fast retransmit; pass 200 or more to model a retransmission
  timeout. Not modelled: the congestion window cut after a loss, spurious
  retransmissions, duplicate delivery.

Memory is bounded: each direction of each connection buffers at most
``max_buffer_bytes`` and the proxy accepts at most ``max_connections`` at once.
Run it in a thread (:class:`ThreadedShapingProxy`) or another process
(``python -m ionn_net.netem.proxy --help``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import math
import random
import signal
import sys
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from types import TracebackType

from ionn_net.errors import ConfigError
from ionn_net.netem.base import (
    NetemError,
    TaskSet,
    check_fraction,
    check_nonneg,
    check_positive,
    set_nodelay,
    set_rcvbuf,
)

__all__ = [
    "MSS",
    "LinkSpec",
    "ProxyStats",
    "ShapingProxy",
    "ThreadedShapingProxy",
    "main",
    "run_until_first_error",
]

#: TCP payload per segment on a 1500-byte MTU with timestamps, used by the loss model.
MSS = 1448
_MAX_READ = 65536
_DEFAULT_QUEUE_MS = 50.0
_CONNECT_TIMEOUT_S = 5.0
_RCVBUF = 64 << 10
_EARLY_S = 0.0005


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """One direction of an emulated link.

    ``rate_bps`` None means unlimited. At most one of ``queue_bytes`` / ``queue_ms``
    may be given; with neither, the bottleneck holds 50 ms of link time.
    """

    rate_bps: float | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    queue_bytes: int | None = None
    queue_ms: float | None = None
    loss: float = 0.0
    loss_stall_ms: float | None = None

    def __post_init__(self) -> None:
        check_positive("LinkSpec.rate_bps", self.rate_bps, allow_none=True)
        check_nonneg("LinkSpec.delay_ms", self.delay_ms, upper=60_000)
        check_nonneg("LinkSpec.jitter_ms", self.jitter_ms, upper=60_000)
        check_fraction("LinkSpec.loss", self.loss)
        if self.loss_stall_ms is not None:
            check_nonneg("LinkSpec.loss_stall_ms", self.loss_stall_ms, upper=60_000)
        if self.queue_bytes is not None and self.queue_ms is not None:
            raise ConfigError(
                "LinkSpec: expected at most one of queue_bytes / queue_ms, got both "
                f"({self.queue_bytes!r}, {self.queue_ms!r})"
            )
        if self.queue_bytes is not None and (
            isinstance(self.queue_bytes, bool)
            or not isinstance(self.queue_bytes, int)
            or self.queue_bytes < MSS
        ):
            raise ConfigError(
                f"LinkSpec.queue_bytes: expected an int >= {MSS}, got {self.queue_bytes!r}"
            )
        check_positive("LinkSpec.queue_ms", self.queue_ms, allow_none=True)

    def queue_limit_s(self) -> float | None:
        """Bottleneck queue limit in seconds of link time (None: unlimited rate)."""
        if self.rate_bps is None:
            return None
        if self.queue_bytes is not None:
            return self.queue_bytes * 8 / self.rate_bps
        return (self.queue_ms if self.queue_ms is not None else _DEFAULT_QUEUE_MS) / 1000

    def read_size(self) -> int:
        """Bytes per read: about 2 ms of link time, so a read is a fine-grained unit."""
        if self.rate_bps is None:
            return _MAX_READ
        return max(MSS, min(_MAX_READ, int(self.rate_bps * 0.002 / 8)))


@dataclass(frozen=True, slots=True)
class ProxyStats:
    """Counters of a proxy since it started."""

    connections: int
    active: int
    bytes_up: int
    bytes_down: int
    segments_lost_up: int
    segments_lost_down: int
    refused: int


class _Bottleneck:
    """The serialising part of one direction, shared by all connections."""

    def __init__(self, spec: LinkSpec, rng: random.Random, stall_s: float) -> None:
        self.spec = spec
        self._rng = rng
        self._free_at = 0.0
        self.stall_s = stall_s
        self.lost = 0

    def backlog_s(self, now: float) -> float:
        return max(0.0, self._free_at - now)

    async def wait_room(self, loop: asyncio.AbstractEventLoop) -> None:
        limit = self.spec.queue_limit_s()
        if limit is None:
            return
        # Each sleep ends when the queue has drained to the limit; another reader may
        # have added bytes meanwhile, hence a few rounds at most.
        for _ in range(64):
            excess = self.backlog_s(loop.time()) - limit
            if excess <= 0:
                return
            await asyncio.sleep(excess)

    def admit(self, nbytes: int, now: float) -> tuple[float, int]:
        """Departure time of ``nbytes`` arriving now, and how many segments were lost."""
        lost = 0
        if self.spec.loss > 0:
            segments = -(-nbytes // MSS)
            lost = sum(1 for _ in range(segments) if self._rng.random() < self.spec.loss)
            self.lost += lost
        if self.spec.rate_bps is None:
            return now, lost
        start = max(now, self._free_at)
        self._free_at = start + (nbytes + lost * MSS) * 8 / self.spec.rate_bps
        return self._free_at, lost


class _Pipe:
    """One direction of one connection: source -> bottleneck -> delay line -> sink."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: _Bottleneck,
        rng: random.Random,
        max_buffer: int,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._link = link
        self._rng = rng
        self._max_buffer = max_buffer
        self._queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self._buffered = 0
        self._last_due = 0.0
        self._eof = False
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self.forwarded = 0

    def abort(self) -> None:
        """Break the connection at this pipe's sink now (what it still holds is lost)."""
        self._writer.transport.abort()

    def _due(self, departure: float, lost: int) -> float:
        spec = self._link.spec
        delay = spec.delay_ms / 1000
        if spec.jitter_ms > 0:
            delay = max(0.0, delay + self._rng.uniform(-spec.jitter_ms, spec.jitter_ms) / 1000)
        # Several losses in one read are one window's worth: SACK repairs them in the
        # same round trip, so the read is held back by one stall, not one per loss.
        stall = self._link.stall_s if lost else 0.0
        due = max(departure + delay + stall, self._last_due)
        self._last_due = due
        return due

    async def pump_in(self) -> None:
        loop = asyncio.get_running_loop()
        size = self._link.spec.read_size()
        while True:
            await self._link.wait_room(loop)
            while self._buffered >= self._max_buffer:
                self._room.clear()
                await self._room.wait()
            data = await self._reader.read(size)
            if not data:
                break
            departure, lost = self._link.admit(len(data), loop.time())
            self._queue.append((self._due(departure, lost), data))
            self._buffered += len(data)
            self._ready.set()
        self._eof = True
        self._ready.set()

    async def pump_out(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._eof:
                    break
                self._ready.clear()
                await self._ready.wait()
                continue
            wait = self._queue[0][0] - loop.time()
            if wait > _EARLY_S:
                # epoll rounds timeouts up to whole milliseconds, so a sleep of w wakes
                # in [w, w + 1 ms); aiming half a millisecond early centres the error.
                await asyncio.sleep(wait - _EARLY_S)
            now = loop.time() + _EARLY_S
            # Release every read that is due now in one go; bounded by the queue length.
            while self._queue and self._queue[0][0] <= now:
                data = self._queue.popleft()[1]
                self._buffered -= len(data)
                self.forwarded += len(data)  # counted first: the write may wake a reader
                self._writer.write(data)
            self._room.set()
            await self._writer.drain()
        if self._writer.can_write_eof():
            with contextlib.suppress(OSError):
                self._writer.write_eof()


class ShapingProxy:
    """Async context manager: a shaping TCP proxy on ``listen_host``, port ``.port``.

    ``up`` shapes client -> target bytes, ``down`` target -> client bytes.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        up: LinkSpec | None = None,
        down: LinkSpec | None = None,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        seed: int | None = None,
        max_buffer_bytes: int = 8 << 20,
        max_connections: int = 64,
    ) -> None:
        if not isinstance(target_port, int) or not 0 < target_port < 65536:
            raise ConfigError(f"target_port: expected 1..65535, got {target_port!r}")
        if not isinstance(listen_port, int) or not 0 <= listen_port < 65536:
            raise ConfigError(f"listen_port: expected 0..65535, got {listen_port!r}")
        if not isinstance(max_buffer_bytes, int) or max_buffer_bytes < _MAX_READ:
            raise ConfigError(f"max_buffer_bytes: expected >= {_MAX_READ}, got {max_buffer_bytes}")
        if not isinstance(max_connections, int) or max_connections < 1:
            raise ConfigError(f"max_connections: expected >= 1, got {max_connections!r}")
        self.target = (target_host, target_port)
        self.up = up if up is not None else LinkSpec()
        self.down = down if down is not None else LinkSpec()
        self._listen = (listen_host, listen_port)
        rng = random.Random(seed)
        rtt_s = (self.up.delay_ms + self.down.delay_ms) / 1000
        self._links = {
            "up": _Bottleneck(self.up, random.Random(rng.random()), _stall_s(self.up, rtt_s)),
            "down": _Bottleneck(self.down, random.Random(rng.random()), _stall_s(self.down, rtt_s)),
        }
        self._rng = rng
        self._max_buffer = max_buffer_bytes
        self._max_conns = max_connections
        self._server: asyncio.Server | None = None
        self._conns = TaskSet()
        self._pipes: list[tuple[_Pipe, _Pipe]] = []
        self._counts = {"connections": 0, "refused": 0, "up": 0, "down": 0}
        self.port = 0

    async def start(self) -> ShapingProxy:
        """Start listening; ``.port`` is then the bound port."""
        self._server = await asyncio.start_server(self._on_connect, *self._listen)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening and abort every open connection."""
        if self._server is not None:
            self._server.close()
        await self._conns.cancel_all()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def sever(self) -> None:
        """Break every open connection now, on both sides (the path is gone: bytes the link
        still holds are lost). Synchronous, so a caller on the event loop can break the path
        at an exact point, before anything else runs; new connections are still accepted."""
        for pair in list(self._pipes):
            for pipe in pair:
                pipe.abort()

    async def __aenter__(self) -> ShapingProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def stats(self) -> ProxyStats:
        """Counters since start (bytes are those released to the sinks)."""
        live_up = sum(p[0].forwarded for p in self._pipes)
        live_down = sum(p[1].forwarded for p in self._pipes)
        return ProxyStats(
            connections=self._counts["connections"],
            active=len(self._pipes),
            bytes_up=self._counts["up"] + live_up,
            bytes_down=self._counts["down"] + live_down,
            segments_lost_up=self._links["up"].lost,
            segments_lost_down=self._links["down"].lost,
            refused=self._counts["refused"],
        )

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._conns) >= self._max_conns:
            self._counts["refused"] += 1
            writer.transport.abort()
            return
        self._counts["connections"] += 1
        self._conns.spawn(self._serve(reader, writer))

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            treader, twriter = await asyncio.wait_for(
                asyncio.open_connection(*self.target), _CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            cwriter.transport.abort()
            return
        for w in (cwriter, twriter):
            set_nodelay(w)
            # A small receive buffer keeps bytes the sender has "sent" from piling up
            # in the proxy's kernel ahead of the modelled bottleneck queue.
            set_rcvbuf(w, _RCVBUF)
        up = _Pipe(creader, twriter, self._links["up"], self._rng, self._max_buffer)
        down = _Pipe(treader, cwriter, self._links["down"], self._rng, self._max_buffer)
        pair = (up, down)
        self._pipes.append(pair)
        try:
            await run_until_first_error(
                [up.pump_in(), up.pump_out(), down.pump_in(), down.pump_out()]
            )
        except OSError:
            pass  # a reset on either side ends the connection; the other side is aborted
        finally:
            self._pipes.remove(pair)
            self._counts["up"] += up.forwarded
            self._counts["down"] += down.forwarded
            for w in (cwriter, twriter):
                w.transport.abort()


async def run_until_first_error(coros: Sequence[Coroutine[object, object, None]]) -> None:
    """Run ``coros`` as tasks; on the first error (or cancellation) cancel the rest.

    Re-raises the first error. Unlike :func:`asyncio.gather`, no task outlives the call.
    """
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            exc = None if task.cancelled() else task.exception()
            if exc is not None:
                raise exc
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _stall_s(spec: LinkSpec, rtt_s: float) -> float:
    if spec.loss_stall_ms is not None:
        return spec.loss_stall_ms / 1000
    return rtt_s + 0.001


class ThreadedShapingProxy:
    """A :class:`ShapingProxy` running on its own event loop in a daemon thread.

    ``with ThreadedShapingProxy(host, port, up=..., down=...) as p: p.port``.
    """

    def __init__(self, target_host: str, target_port: int, **kwargs: object) -> None:
        self._args = (target_host, target_port)
        self._kwargs = kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proxy: ShapingProxy | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self.port = 0

    def _run(self) -> None:
        async def body() -> None:
            self._stop = asyncio.Event()
            try:
                proxy = ShapingProxy(*self._args, **self._kwargs)  # type: ignore[arg-type]
                self._proxy = await proxy.start()
            except BaseException as exc:  # handed to the starting thread, not lost
                self._error = exc
                self._started.set()
                return
            self.port = proxy.port
            self._loop = asyncio.get_running_loop()
            self._started.set()
            try:
                await self._stop.wait()
            finally:
                await proxy.close()

        asyncio.run(body())

    def __enter__(self) -> ThreadedShapingProxy:
        self._thread = threading.Thread(target=self._run, name="shaping-proxy", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise NetemError("ThreadedShapingProxy: the proxy thread did not start within 10 s")
        if self._error is not None:
            raise self._error
        return self

    def stats(self) -> ProxyStats:
        if self._proxy is None:
            raise NetemError("ThreadedShapingProxy.stats: the proxy is not running")
        return self._proxy.stats()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)


def _spec_from_args(args: argparse.Namespace, side: str) -> LinkSpec:
    def get(name: str) -> float | None:
        value = getattr(args, name)
        return None if value is None else float(value)

    rate = get(f"{side}_rate_bps")
    return LinkSpec(
        rate_bps=None if rate in (None, 0) else float(rate),
        delay_ms=get(f"{side}_delay_ms") or 0.0,
        jitter_ms=get(f"{side}_jitter_ms") or 0.0,
        queue_ms=get(f"{side}_queue_ms"),
        loss=get(f"{side}_loss") or 0.0,
        loss_stall_ms=get(f"{side}_loss_stall_ms"),
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ionn_net.netem.proxy",
        description="Userspace shaping TCP proxy (rate, delay, jitter, queue, loss stalls).",
    )
    p.add_argument("--target", required=True, help="HOST:PORT to forward to")
    p.add_argument("--listen-host", default="127.0.0.1")
    p.add_argument("--listen-port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--duration-s", type=float, default=None, help="exit after this long")
    p.add_argument("--seed", type=int, default=None)
    for side in ("up", "down"):
        p.add_argument(f"--{side}-rate-bps", type=float, default=None, help="bits/s; 0 = none")
        p.add_argument(f"--{side}-delay-ms", type=float, default=0.0)
        p.add_argument(f"--{side}-jitter-ms", type=float, default=0.0)
        p.add_argument(f"--{side}-queue-ms", type=float, default=None)
        p.add_argument(f"--{side}-loss", type=float, default=0.0)
        p.add_argument(f"--{side}-loss-stall-ms", type=float, default=None)
    return p


async def _serve_cli(args: argparse.Namespace) -> None:
    host, _, port = str(args.target).rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--target: expected HOST:PORT, got {args.target!r}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with ShapingProxy(
        host,
        int(port),
        up=_spec_from_args(args, "up"),
        down=_spec_from_args(args, "down"),
        listen_host=args.listen_host,
        listen_port=args.listen_port,
        seed=args.seed,
    ) as proxy:
        print(f"listening {args.listen_host} {proxy.port}", flush=True)
        timeout = args.duration_s if args.duration_s is not None else math.inf
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), None if math.isinf(timeout) else timeout)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints ``listening HOST PORT`` once ready."""
    args = _parser().parse_args(argv)
    try:
        asyncio.run(_serve_cli(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
