"""Fault injection for hardening tests: a TCP proxy with Toxiproxy-style toxics.

Owns :class:`FaultProxy` and the toxic value types. A toxic applies to the ``up``
direction (client -> target), ``down`` (target -> client) or ``both``:

* :class:`Latency` — each chunk is released ``ms`` (+- ``jitter_ms``, never
  reordered) after it was read; a delay line, not one chunk per round trip.
* :class:`Bandwidth` — writes are paced to ``rate_bps``.
* :class:`Slicer` — data is written ``size`` bytes at a time with ``delay_ms``
  between writes and Nagle off, so the peer's reads return small pieces.
* :class:`LimitData` — exactly ``nbytes`` are forwarded in that direction per
  connection, then both sides are closed (``mode="eof"``: FIN; ``"rst"``: RST).
* :class:`Timeout` — forwarding stops (bytes stay queued, nothing is closed: a
  half-open peer); with ``ms > 0`` both sides are closed after ``ms``. Removing the
  toxic resumes forwarding.
* :class:`ResetPeer` — after ``after_ms`` both sides are closed with RST
  (``SO_LINGER`` 0): the peers' next read or write raises ``ConnectionResetError``.

Toxics are read on every chunk, so :meth:`FaultProxy.set_toxics` changes open
connections too. Use a proxy from the event loop that created it.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from ionn_net.errors import ConfigError
from ionn_net.netem.base import (
    TaskSet,
    abort_with_rst,
    check_nonneg,
    check_positive,
    set_nodelay,
)

__all__ = [
    "Bandwidth",
    "FaultProxy",
    "FaultStats",
    "Latency",
    "LimitData",
    "ResetPeer",
    "Slicer",
    "Timeout",
    "Toxic",
]

Direction = Literal["up", "down", "both"]
_DIRECTIONS = ("up", "down", "both")
_CHUNK = 65536
_QUEUE_CHUNKS = 64  # per direction: bounds memory at 4 MiB per connection direction


def _check_direction(owner: str, direction: str, allowed: tuple[str, ...] = _DIRECTIONS) -> None:
    if direction not in allowed:
        raise ConfigError(f"{owner}.direction: expected one of {allowed}, got {direction!r}")


@dataclass(frozen=True, slots=True)
class Latency:
    """Delay every chunk by ``ms`` (uniform jitter of +- ``jitter_ms``, order kept)."""

    ms: float
    jitter_ms: float = 0.0
    direction: Direction = "both"

    def __post_init__(self) -> None:
        check_nonneg("Latency.ms", self.ms, upper=600_000)
        check_nonneg("Latency.jitter_ms", self.jitter_ms, upper=600_000)
        _check_direction("Latency", self.direction)


@dataclass(frozen=True, slots=True)
class Bandwidth:
    """Pace writes to ``rate_bps`` bits per second."""

    rate_bps: float
    direction: Direction = "both"

    def __post_init__(self) -> None:
        check_positive("Bandwidth.rate_bps", self.rate_bps)
        _check_direction("Bandwidth", self.direction)


@dataclass(frozen=True, slots=True)
class Slicer:
    """Write ``size`` bytes at a time, ``delay_ms`` apart."""

    size: int = 1
    delay_ms: float = 1.0
    direction: Direction = "both"

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ConfigError(f"Slicer.size: expected an int >= 1, got {self.size!r}")
        check_nonneg("Slicer.delay_ms", self.delay_ms, upper=60_000)
        _check_direction("Slicer", self.direction)


@dataclass(frozen=True, slots=True)
class LimitData:
    """Forward exactly ``nbytes`` in ``direction`` per connection, then close both sides."""

    nbytes: int
    direction: Literal["up", "down"] = "up"
    mode: Literal["eof", "rst"] = "eof"

    def __post_init__(self) -> None:
        if isinstance(self.nbytes, bool) or not isinstance(self.nbytes, int) or self.nbytes < 0:
            raise ConfigError(f"LimitData.nbytes: expected an int >= 0, got {self.nbytes!r}")
        _check_direction("LimitData", self.direction, ("up", "down"))
        if self.mode not in ("eof", "rst"):
            raise ConfigError(f"LimitData.mode: expected 'eof' or 'rst', got {self.mode!r}")


@dataclass(frozen=True, slots=True)
class Timeout:
    """Stop forwarding (half-open); with ``ms > 0`` close both sides after ``ms``."""

    ms: float = 0.0
    direction: Direction = "both"

    def __post_init__(self) -> None:
        check_nonneg("Timeout.ms", self.ms, upper=600_000)
        _check_direction("Timeout", self.direction)


@dataclass(frozen=True, slots=True)
class ResetPeer:
    """Reset both sides of every connection ``after_ms`` after the toxic applies."""

    after_ms: float = 0.0

    def __post_init__(self) -> None:
        check_nonneg("ResetPeer.after_ms", self.after_ms, upper=600_000)


Toxic = Latency | Bandwidth | Slicer | LimitData | Timeout | ResetPeer
_TOXIC_TYPES = (Latency, Bandwidth, Slicer, LimitData, Timeout, ResetPeer)


@dataclass(frozen=True, slots=True)
class FaultStats:
    """Counters since the proxy started (bytes actually written to the sinks)."""

    connections: int
    active: int
    bytes_up: int
    bytes_down: int


def _applies(toxic: Toxic, direction: str) -> bool:
    return isinstance(toxic, ResetPeer) or toxic.direction in (direction, "both")


class _Conn:
    """One proxied connection: two pumps per direction and a control task."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        target: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.ends = {"up": (client[0], target[1]), "down": (target[0], client[1])}
        self.writers = (client[1], target[1])
        self.forwarded = {"up": 0, "down": 0}
        self.closed = asyncio.Event()
        self._last_due = {"up": 0.0, "down": 0.0}
        self._rng = random.Random()

    def close(self, rst: bool) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for w in self.writers:
            if rst:
                abort_with_rst(w)
            else:
                w.close()

    def _find(self, kind: type, direction: str) -> Toxic | None:
        for toxic in self.proxy.toxics:
            if isinstance(toxic, kind) and _applies(toxic, direction):
                return toxic
        return None

    async def _gate(self, direction: str) -> None:
        """Wait while a Timeout toxic holds this direction."""
        for _ in range(1_000_000):  # bounded by the number of toxic changes
            if self._find(Timeout, direction) is None:
                return
            await self.proxy.changed()

    async def reader(
        self, direction: str, queue: asyncio.Queue[tuple[float, bytes] | None]
    ) -> None:
        loop = asyncio.get_running_loop()
        source = self.ends[direction][0]
        while True:
            await self._gate(direction)
            data = await source.read(_CHUNK)
            await queue.put((loop.time(), data) if data else None)
            if not data:
                return

    async def writer(
        self, direction: str, queue: asyncio.Queue[tuple[float, bytes] | None]
    ) -> None:
        sink = self.ends[direction][1]
        while True:
            item = await queue.get()
            if item is None:
                if sink.can_write_eof():
                    sink.write_eof()
                return
            await self._deliver(direction, sink, *item)

    async def _deliver(
        self, direction: str, sink: asyncio.StreamWriter, arrived: float, data: bytes
    ) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            await self._gate(direction)
            lat = self._find(Latency, direction)
            if isinstance(lat, Latency):
                jitter = self._rng.uniform(-lat.jitter_ms, lat.jitter_ms) if lat.jitter_ms else 0
                due = max(arrived + max(0.0, lat.ms + jitter) / 1000, self._last_due[direction])
                self._last_due[direction] = due
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
            limit = self._find(LimitData, direction)
            room = len(view)
            if isinstance(limit, LimitData):
                room = min(room, limit.nbytes - self.forwarded[direction])
            slicer = self._find(Slicer, direction)
            if isinstance(slicer, Slicer):
                room = min(room, slicer.size)
            if room > 0:
                self.forwarded[direction] += room
                sink.write(view[:room])
                view = view[room:]
                await sink.drain()
            if isinstance(limit, LimitData) and self.forwarded[direction] >= limit.nbytes:
                self.close(rst=limit.mode == "rst")
                return
            await self._pace(direction, room, slicer)

    async def _pace(self, direction: str, nbytes: int, slicer: Toxic | None) -> None:
        pause = 0.0
        bw = self._find(Bandwidth, direction)
        if isinstance(bw, Bandwidth):
            pause += nbytes * 8 / bw.rate_bps
        if isinstance(slicer, Slicer):
            pause += slicer.delay_ms / 1000
        if pause > 0:
            await asyncio.sleep(pause)

    async def control(self) -> None:
        """Apply the connection-wide toxics (ResetPeer, Timeout with ms > 0)."""
        for _ in range(1_000_000):  # bounded by the number of toxic changes
            reset = self._find(ResetPeer, "both")
            deadlines = [(t.ms / 1000, False) for t in self.proxy.toxics if isinstance(t, Timeout)]
            deadlines = [d for d in deadlines if d[0] > 0]
            if isinstance(reset, ResetPeer):
                deadlines.append((reset.after_ms / 1000, True))
            deadline, rst = min(deadlines) if deadlines else (None, False)
            changed = asyncio.ensure_future(self.proxy.changed())
            try:
                await asyncio.wait_for(asyncio.shield(changed), deadline)
            except TimeoutError:
                self.close(rst=rst)
                return
            finally:
                changed.cancel()


class FaultProxy:
    """Async context manager: a fault-injecting TCP proxy on ``listen_host:.port``."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        toxics: tuple[Toxic, ...] = (),
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        max_connections: int = 64,
    ) -> None:
        if not isinstance(target_port, int) or not 0 < target_port < 65536:
            raise ConfigError(f"target_port: expected 1..65535, got {target_port!r}")
        if not isinstance(max_connections, int) or max_connections < 1:
            raise ConfigError(f"max_connections: expected >= 1, got {max_connections!r}")
        self.target = (target_host, target_port)
        self._listen = (listen_host, listen_port)
        self._max_conns = max_connections
        self.toxics: tuple[Toxic, ...] = ()
        self._changed: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._tasks = TaskSet()
        self._conns: set[_Conn] = set()
        self._totals = {"connections": 0, "up": 0, "down": 0}
        self.port = 0
        self.set_toxics(*toxics)

    # -- run-time control -------------------------------------------------------------
    def set_toxics(self, *toxics: Toxic) -> None:
        """Replace every toxic; open connections follow from their next chunk on."""
        for toxic in toxics:
            if not isinstance(toxic, _TOXIC_TYPES):
                raise ConfigError(f"set_toxics: expected toxic values, got {toxic!r}")
        self.toxics = tuple(toxics)
        if self._changed is not None:
            self._changed.set()
        self._changed = None

    def add_toxic(self, toxic: Toxic) -> None:
        self.set_toxics(*self.toxics, toxic)

    def clear_toxics(self) -> None:
        self.set_toxics()

    def cut_all(self, *, rst: bool = False) -> int:
        """Close every open connection (FIN, or RST with ``rst=True``); returns how many."""
        conns = list(self._conns)
        for conn in conns:
            conn.close(rst)
        return len(conns)

    async def changed(self) -> None:
        """Wait until the toxics change."""
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()

    def stats(self) -> FaultStats:
        live = list(self._conns)
        return FaultStats(
            connections=self._totals["connections"],
            active=len(live),
            bytes_up=self._totals["up"] + sum(c.forwarded["up"] for c in live),
            bytes_down=self._totals["down"] + sum(c.forwarded["down"] for c in live),
        )

    # -- lifecycle --------------------------------------------------------------------
    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._on_connect, *self._listen)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        self.cut_all(rst=True)
        await self._tasks.cancel_all()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._conns) >= self._max_conns:
            writer.transport.abort()
            return
        self._totals["connections"] += 1
        self._tasks.spawn(self._serve(reader, writer))

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            target = await asyncio.wait_for(asyncio.open_connection(*self.target), 5)
        except (OSError, TimeoutError):
            abort_with_rst(cwriter)
            return
        conn = _Conn(self, (creader, cwriter), target)
        for w in conn.writers:
            set_nodelay(w)
        self._conns.add(conn)
        queues: dict[str, asyncio.Queue[tuple[float, bytes] | None]] = {
            d: asyncio.Queue(_QUEUE_CHUNKS) for d in ("up", "down")
        }
        tasks = [asyncio.ensure_future(conn.control())]
        tasks += [asyncio.ensure_future(conn.reader(d, queues[d])) for d in queues]
        tasks += [asyncio.ensure_future(conn.writer(d, queues[d])) for d in queues]
        closed = asyncio.ensure_future(conn.closed.wait())
        try:
            # Done when both writers finished (EOF both ways), on the first error, or
            # when a toxic or cut_all closed the connection.
            pending: set[asyncio.Future[Any]] = {*tasks, closed}
            for _ in range(len(pending)):
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                failed = any(not t.cancelled() and t.exception() is not None for t in done)
                writers_done = all(t.done() for t in tasks[3:])
                if closed.done() or failed or writers_done:
                    break
        finally:
            for task in [*tasks, closed]:
                task.cancel()
            await asyncio.gather(*tasks, closed, return_exceptions=True)
            self._conns.discard(conn)
            self._totals["up"] += conn.forwarded["up"]
            self._totals["down"] += conn.forwarded["down"]
            conn.close(rst=False)
