"""Link measurement: delivered rate (bulk transfer) and round trip (small ping-pong).

Owns :class:`ProbeServer` (the far end), :func:`probe_link` (the near end) and
:class:`ProbeResult` (configured and measured values side by side). Both ends are
also command lines (``python -m ionn_net.netem.probe serve|client``) so the probe
can run inside network namespaces.

Wire format (private to this module): the client sends one mode byte, then
* ``P`` + u32 count: ``count`` rounds of a 64-byte message echoed back;
* ``U`` + u32 warmup_ms + u32 window_ms: the client sends bulk data; the server
  measures and answers one JSON line, then discards until the client resets;
* ``D`` + u32 warmup_ms + u32 window_ms: the server sends bulk data; the client
  measures and resets the connection.

Rate is measured by the *receiver* over a window that starts ``warmup`` after the
first byte (skipping slow start and the filling of queues), from read timestamps,
so sender-side buffering does not inflate it. The value is TCP goodput: on a
packet link it is below the configured line rate by the header overhead (about
4.5% for 1500-byte frames), on the userspace proxy it is the configured rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import statistics
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Literal

from ionn_net.errors import ConfigError
from ionn_net.netem.base import (
    NetemError,
    TaskSet,
    abort_with_rst,
    check_positive,
    set_nodelay,
)

__all__ = ["PING_SIZE", "ProbeResult", "ProbeServer", "main", "probe_link"]

PING_SIZE = 64
_CHUNK = 65536
_HDR = struct.Struct(">cII")
_GRACE_S = 5.0
_MAX_PINGS = 10_000
_MAX_WINDOW_MS = 60_000


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Configured and measured values of one link probe."""

    backend: str
    direction: str
    configured_rate_bps: float | None
    configured_rtt_ms: float | None
    measured_rate_bps: float | None
    rtt_ms_p50: float | None
    rtt_ms_min: float | None
    rtt_ms_max: float | None
    window_s: float
    bytes_in_window: int

    def rate_ratio(self) -> float | None:
        """Measured / configured rate (None when either is unknown)."""
        if self.configured_rate_bps is None or self.measured_rate_bps is None:
            return None
        return self.measured_rate_bps / self.configured_rate_bps

    def rtt_error_ms(self) -> float | None:
        """Measured median round trip minus the configured one."""
        if self.configured_rtt_ms is None or self.rtt_ms_p50 is None:
            return None
        return self.rtt_ms_p50 - self.configured_rtt_ms

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def describe(self) -> str:
        """One line for logs and benchmark output."""

        def fmt(v: float | None, scale: float, unit: str) -> str:
            return "-" if v is None else f"{v / scale:.2f} {unit}"

        return (
            f"[{self.backend}] {self.direction}: rate configured "
            f"{fmt(self.configured_rate_bps, 1e6, 'Mbit/s')} measured "
            f"{fmt(self.measured_rate_bps, 1e6, 'Mbit/s')}; rtt configured "
            f"{fmt(self.configured_rtt_ms, 1, 'ms')} measured p50 {fmt(self.rtt_ms_p50, 1, 'ms')}"
        )


async def _measure_receive(
    reader: asyncio.StreamReader, warmup_s: float, window_s: float
) -> tuple[int, float]:
    """Bytes received in the window and the window's exact length (read timestamps)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + warmup_s + window_s + _GRACE_S
    start = end = base = last = None
    counted = 0
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise NetemError("probe: the bulk transfer stalled past its deadline")
        data = await asyncio.wait_for(reader.read(_CHUNK), remaining)
        now = loop.time()
        if not data:
            break
        if start is None or end is None:
            start = now + warmup_s
            end = start + window_s
        if now <= start:
            base = now  # bytes up to here belong to the warm-up
            continue
        if base is None:
            base = now
            continue
        counted += len(data)
        last = now
        if now >= end:
            break
    if base is None or last is None or last <= base:
        raise NetemError("probe: the transfer ended before the measuring window")
    return counted, last - base


async def _send_bulk(writer: asyncio.StreamWriter, until: asyncio.Event, limit_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    block = bytes(_CHUNK)
    while not until.is_set() and loop.time() < deadline:
        writer.write(block)
        await writer.drain()


class ProbeServer:
    """Async context manager: the far end of :func:`probe_link` on ``host:.port``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._addr = (host, port)
        self._server: asyncio.Server | None = None
        self._conns = TaskSet()
        self.port = 0

    async def __aenter__(self) -> ProbeServer:
        self._server = await asyncio.start_server(
            lambda r, w: self._conns.spawn(self._handle(r, w)), *self._addr
        )
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
        await self._conns.cancel_all()
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        set_nodelay(writer)
        try:
            mode, a, b = _HDR.unpack(await asyncio.wait_for(reader.readexactly(_HDR.size), 10))
            if mode == b"P":
                for _ in range(min(a, _MAX_PINGS)):
                    writer.write(await asyncio.wait_for(reader.readexactly(PING_SIZE), 10))
                    await writer.drain()
            elif mode == b"U":
                count, span = await _measure_receive(reader, a / 1000, b / 1000)
                writer.write(json.dumps({"bytes": count, "window_s": span}).encode() + b"\n")
                await writer.drain()
                # Discard until the client resets; bounded by the client's own deadline.
                while await asyncio.wait_for(reader.read(_CHUNK), _GRACE_S):
                    pass
            elif mode == b"D":
                stop = asyncio.Event()
                await _send_bulk(writer, stop, (a + b) / 1000 + _GRACE_S)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, NetemError):
            pass  # the client went away or misbehaved: drop this connection only
        finally:
            writer.transport.abort()


async def _ping(host: str, port: int, count: int) -> list[float]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    set_nodelay(writer)
    try:
        writer.write(_HDR.pack(b"P", count, 0))
        msg = bytes(PING_SIZE)
        rtts = []
        for _ in range(count):
            t0 = time.perf_counter()
            writer.write(msg)
            await asyncio.wait_for(reader.readexactly(PING_SIZE), 10)
            rtts.append((time.perf_counter() - t0) * 1000)
        return rtts
    finally:
        writer.transport.abort()


async def _bulk(
    host: str, port: int, direction: str, warmup_s: float, window_s: float
) -> tuple[int, float]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    mode = b"U" if direction == "up" else b"D"
    try:
        writer.write(_HDR.pack(mode, round(warmup_s * 1000), round(window_s * 1000)))
        if direction == "down":
            return await _measure_receive(reader, warmup_s, window_s)
        done = asyncio.Event()
        sender = asyncio.ensure_future(_send_bulk(writer, done, warmup_s + window_s + _GRACE_S))
        try:
            line = await asyncio.wait_for(reader.readline(), warmup_s + window_s + _GRACE_S)
        finally:
            done.set()
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        if not line:
            raise NetemError("probe: the server closed without reporting a measurement")
        report = json.loads(line)
        return int(report["bytes"]), float(report["window_s"])
    finally:
        abort_with_rst(writer)


async def probe_link(
    host: str,
    port: int,
    *,
    duration_s: float = 1.0,
    warmup_s: float | None = None,
    pings: int = 20,
    direction: Literal["up", "down"] = "up",
    backend: str = "unknown",
    configured_rate_bps: float | None = None,
    configured_rtt_ms: float | None = None,
) -> ProbeResult:
    """Measure round trip (``pings`` idle ping-pongs) then rate (bulk for ``duration_s``).

    ``host:port`` must reach a :class:`ProbeServer`, directly or through the link
    under test. ``direction`` "up" sends towards the server. ``pings=0`` skips the
    round trip, ``duration_s=0`` skips the rate.
    """
    if duration_s:
        check_positive("duration_s", duration_s)
    if not isinstance(pings, int) or not 0 <= pings <= _MAX_PINGS:
        raise ConfigError(f"pings: expected 0..{_MAX_PINGS}, got {pings!r}")
    if direction not in ("up", "down"):
        raise ConfigError(f"direction: expected 'up' or 'down', got {direction!r}")
    warm = min(0.3, duration_s / 4) if warmup_s is None else warmup_s
    if duration_s and not 0 <= (warm + duration_s) * 1000 <= _MAX_WINDOW_MS:
        raise ConfigError(f"warmup_s + duration_s: expected <= 60 s, got {warm + duration_s}")
    rtts = await _ping(host, port, pings) if pings else []
    rate = None
    counted, span = 0, 0.0
    if duration_s:
        counted, span = await _bulk(host, port, direction, warm, duration_s)
        rate = counted * 8 / span
    return ProbeResult(
        backend=backend,
        direction=direction,
        configured_rate_bps=configured_rate_bps,
        configured_rtt_ms=configured_rtt_ms,
        measured_rate_bps=rate,
        rtt_ms_p50=statistics.median(rtts) if rtts else None,
        rtt_ms_min=min(rtts) if rtts else None,
        rtt_ms_max=max(rtts) if rtts else None,
        window_s=span,
        bytes_in_window=counted,
    )


async def _serve_forever(host: str, port: int, duration_s: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with ProbeServer(host, port) as server:
        print(f"listening {host} {server.port}", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration_s)


def main(argv: Sequence[str] | None = None) -> int:
    """``serve`` prints ``listening HOST PORT``; ``client`` prints a JSON ProbeResult."""
    p = argparse.ArgumentParser(prog="python -m ionn_net.netem.probe")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run a probe server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--duration-s", type=float, default=None, help="exit after this long")
    c = sub.add_parser("client", help="probe a server, print JSON")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--duration-s", type=float, default=1.0)
    c.add_argument("--warmup-s", type=float, default=None)
    c.add_argument("--pings", type=int, default=20)
    c.add_argument("--direction", choices=("up", "down"), default="up")
    c.add_argument("--backend", default="unknown")
    c.add_argument("--configured-rate-bps", type=float, default=None)
    c.add_argument("--configured-rtt-ms", type=float, default=None)
    args = p.parse_args(argv)
    try:
        if args.cmd == "serve":
            asyncio.run(_serve_forever(args.host, args.port, args.duration_s))
            return 0
        result = asyncio.run(
            probe_link(
                args.host,
                args.port,
                duration_s=args.duration_s,
                warmup_s=args.warmup_s,
                pings=args.pings,
                direction=args.direction,
                backend=args.backend,
                configured_rate_bps=args.configured_rate_bps,
                configured_rtt_ms=args.configured_rtt_ms,
            )
        )
    except (ConfigError, NetemError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
