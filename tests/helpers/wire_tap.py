"""A TCP relay that records, frame by frame, what a client's bytes look like on the wire.

:class:`WireTap` listens on loopback and forwards every accepted connection to a target
unchanged, in both directions, with backpressure (it reads the next chunk only once the
previous one is written). On the client-to-target direction it parses the IONN-NET framing
(the 8-byte preface, then 16-byte frame headers, protocol.md §2 and §3.1) and records each
frame with the time its last byte arrived. Placed in front of a server, its record is the
order in which the server receives the frames: tests assert on it instead of on the
sender's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from types import TracebackType

from tests.refpeer import wire as rw

__all__ = ["TapFrame", "WireTap"]

_READ = 65536


@dataclass(frozen=True, slots=True)
class TapFrame:
    """One frame the client sent: its header fields, and for HEADERS the message type."""

    conn: int
    t: float
    type: int
    flags: int
    stream_id: int
    length: int
    urgency: int | None = None
    message: str | None = None

    @property
    def end_stream(self) -> bool:
        return bool(self.flags & rw.END_STREAM)


class _Parser:
    """Incremental parser of one connection's client-to-server bytes."""

    def __init__(self, conn: int, out: list[TapFrame]) -> None:
        self.conn = conn
        self.out = out
        self.buffer = bytearray()
        self.preface_left = rw.PREFACE_SIZE

    def feed(self, data: bytes, now: float) -> None:
        self.buffer += data
        if self.preface_left:
            taken = min(self.preface_left, len(self.buffer))
            del self.buffer[:taken]
            self.preface_left -= taken
        while len(self.buffer) >= rw.HEADER_SIZE:
            ftype, flags, _codec, _res, sid, length, _dlen = rw.HEADER.unpack_from(self.buffer)
            if len(self.buffer) < rw.HEADER_SIZE + length:
                return
            payload = bytes(self.buffer[rw.HEADER_SIZE : rw.HEADER_SIZE + length])
            del self.buffer[: rw.HEADER_SIZE + length]
            urgency = message = None
            if ftype == rw.T.HEADERS and len(payload) >= 4:
                urgency = payload[0]
                with contextlib.suppress(ValueError, UnicodeDecodeError):
                    head = json.loads(payload[4:])
                    message = head.get("m") if isinstance(head, dict) else None
            sid &= rw.STREAM_ID_MASK
            self.out.append(TapFrame(self.conn, now, ftype, flags, sid, length, urgency, message))


class WireTap:
    """Forwards ``127.0.0.1:port`` to ``target``; :attr:`frames` is what clients sent."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.frames: list[TapFrame] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._conns = 0

    async def __aenter__(self) -> WireTap:
        self._server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
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
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self._writers.append(cwriter)
        try:
            treader, twriter = await asyncio.open_connection(*self.target)
        except OSError:
            cwriter.close()
            return
        self._writers.append(twriter)
        parser = _Parser(self._conns, self.frames)
        self._conns += 1
        up = asyncio.ensure_future(self._pump(creader, twriter, parser))
        down = asyncio.ensure_future(self._pump(treader, cwriter, None))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            twriter.close()
            cwriter.close()

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parser: _Parser | None
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(_READ):
                if parser is not None:
                    parser.feed(data, time.monotonic())
                writer.write(data)
                await writer.drain()
