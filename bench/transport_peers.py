"""The processes of ``bench/transport.py``: servers and clients of every transport compared.

Run by the orchestrator as ``python bench/transport_peers.py --role server|client --kind K``
(in a network namespace or on loopback); a server prints ``PORT <n>`` and serves until its
stdin closes, a client prints one JSON line of results. Kinds: ``raw`` (uvloop socket, bulk
only), ``ionn`` (ionn_net, optionally paced), ``fifo`` (naive framing on one connection),
``second`` (the upload on a second connection), ``grpc`` (grpcio aio).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

from ionn_net.messages import ProbeQuery, ProbeResult, ProbeUpload, ProbeUploadOk, parse_probe

QUERY_BYTES = 16 * 1024
CHUNK = 64 * 1024
BLOCK = 4 * 1024 * 1024
FIFO_HEADER = 5  # u8 kind + u32 length
K_UPLOAD, K_UPLOAD_END, K_QUERY, K_REPLY, K_DONE = 1, 2, 3, 4, 5


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[index]


def _block() -> memoryview:
    return memoryview(random.Random(7).randbytes(BLOCK))


def _pieces(total: int, size: int) -> list[int]:
    full, rest = divmod(total, size)
    return [size] * full + ([rest] if rest else [])


def _limits(profile: str) -> Any:
    """Limits of both ionn_net endpoints for a named profile."""
    from ionn_net.config import Limits

    if profile == "frames64":  # frames as large as the default MAX_FRAME_SIZE allows
        return Limits(max_chunk=64 * 1024)
    if profile == "wide":  # stream credit above the bandwidth-delay product of 200 Mbit/s x 40 ms
        return Limits(initial_stream_credit=4 << 20, initial_connection_credit=32 << 20)
    if profile == "fixed":  # no receive-window auto-tuning: the window stays at 1 MiB
        return Limits(max_stream_credit=1 << 20)
    return Limits()


def _ionn_options(params: dict[str, Any]) -> Any:
    from ionn_net.aio import PacingConfig, TransportOptions

    extra = dict(params.get("transport", {}))
    pacing = params.get("pacing")
    if pacing is not None:
        gain = {"gain": float(params["pacing_gain"])} if "pacing_gain" in params else {}
        rate = None if pacing == "auto" else float(pacing)
        extra["pacing"] = PacingConfig(rate_bps=rate, **gain)
    return TransportOptions(**extra)


# --------------------------------------------------------------------------- servers


class _RawSink(asyncio.BufferedProtocol):
    """Counts bytes; after ``expected`` bytes (first 8 bytes announce it) answers one byte."""

    def __init__(self) -> None:
        self.buf = bytearray(1 << 20)
        self.view = memoryview(self.buf)
        self.total = 0
        self.expected = -1
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        if self.expected < 0 and self.total == 0 and nbytes >= 8:
            self.expected = int.from_bytes(self.buf[:8], "big")
        self.total += nbytes
        if self.total == self.expected + 8 and self.transport is not None:
            self.transport.write(b"!")
            self.total, self.expected = 0, -1


async def _serve_raw(host: str, port: int) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(_RawSink, host, port)


async def _fifo_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    received = 0
    reply = bytes(QUERY_BYTES)
    try:
        while True:
            head = await reader.readexactly(FIFO_HEADER)
            kind, length = head[0], int.from_bytes(head[1:], "big")
            if length:
                await reader.readexactly(length)
            if kind == K_UPLOAD:
                received += length
            elif kind == K_UPLOAD_END:
                writer.write(bytes([K_DONE]) + (8).to_bytes(4, "big") + received.to_bytes(8, "big"))
                received = 0
            elif kind == K_QUERY:
                writer.write(bytes([K_REPLY]) + QUERY_BYTES.to_bytes(4, "big") + reply)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def _serve_fifo(host: str, port: int) -> asyncio.AbstractServer:
    return await asyncio.start_server(_fifo_session, host, port)


async def _serve_grpc(host: str, port: int) -> tuple[Any, int]:
    import grpc

    reply = bytes(QUERY_BYTES)

    async def upload(requests: AsyncIterator[bytes], context: Any) -> bytes:
        total = 0
        async for chunk in requests:
            total += len(chunk)
        return total.to_bytes(8, "big")

    async def query(request: bytes, context: Any) -> bytes:
        return reply

    handler = grpc.method_handlers_generic_handler(
        "bench.Bench",
        {
            "Upload": grpc.stream_unary_rpc_method_handler(upload),
            "Query": grpc.unary_unary_rpc_method_handler(query),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound


class _LoopLag:
    """How late this process's event loop ran a 5 ms timer (a stall of the whole process
    or of the loop), as the largest lateness since the last :meth:`take`."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            due = time.monotonic() + 0.005
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, time.monotonic() - due)

    def take(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst


_LAG = _LoopLag()


async def _ionn_handler(stream: Any) -> None:
    head = stream.head
    began = time.monotonic()  # the clock is the host's: comparable with the client's
    total = 0
    async for chunk in stream:
        total += len(chunk)
    if isinstance(parse_probe(head), ProbeQuery):
        _LAG.start()
        result = ProbeResult(
            body_len=QUERY_BYTES, t_head=began, t_body=time.monotonic(), lag_s=_LAG.take()
        )
        await stream.respond(result.to_head(), bytes(QUERY_BYTES))
    else:
        await stream.respond(ProbeUploadOk(received=total).to_head())


async def _server_main(kind: str, host: str, port: int, profile: str) -> None:
    """Serve until stdin closes; print the bound port first."""
    closer: Callable[[], Awaitable[None]]
    if kind == "raw":
        server = await _serve_raw(host, port)
        bound = server.sockets[0].getsockname()[1]
        closer = server.wait_closed
    elif kind in ("fifo", "second"):
        server = await _serve_fifo(host, port)
        bound = server.sockets[0].getsockname()[1]
        closer = server.wait_closed
    elif kind == "grpc":
        gserver, bound = await _serve_grpc(host, port)

        async def closer() -> None:
            await gserver.stop(0.5)
    else:
        from ionn_net.aio import serve

        iserver = await serve(_ionn_handler, host, port, limits=_limits(profile))
        bound = iserver.port

        async def closer() -> None:
            iserver.close()
            await iserver.wait_closed()

    print(f"PORT {bound}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await closer()


# --------------------------------------------------------------------------- clients


class _RawSource(asyncio.Protocol):
    def __init__(self) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.can_write = asyncio.Event()
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _bulk_raw(host: str, port: int, total: int) -> float:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(_RawSource, host, port)
    block = _block()
    start = time.perf_counter()
    transport.write(total.to_bytes(8, "big"))
    sent = 0
    for size in _pieces(total, CHUNK):
        offset = sent % BLOCK
        if offset + size > BLOCK:
            offset = 0
        transport.write(block[offset : offset + size])
        sent += size
        if not proto.can_write.is_set():
            await proto.can_write.wait()
    await proto.done
    elapsed = time.perf_counter() - start
    transport.close()
    return total / elapsed


async def _send_body(stream: Any, total: int, block: memoryview) -> None:
    remaining = total
    while remaining > 0:
        size = min(BLOCK, remaining)
        remaining -= size
        await stream.send_data(block[:size], end_stream=remaining == 0)


async def _bulk_ionn(host: str, port: int, total: int, params: dict[str, Any]) -> float:
    from ionn_net.aio import connect

    block = _block()
    limits, options = _limits(params.get("profile", "default")), _ionn_options(params)
    async with connect(host, port, limits=limits, options=options) as conn:
        start = time.perf_counter()
        stream = await conn.open_stream(ProbeUpload(body_len=total).to_head(), urgency=5)
        await _send_body(stream, total, block)
        received = ProbeUploadOk.parse(await stream.receive_head()).received
        elapsed = time.perf_counter() - start
        if received != total:
            raise RuntimeError(f"server received {received} of {total} bytes")
    return total / elapsed


class _Querier(Protocol):
    async def query(self, payload: bytes) -> None: ...


class _Client(_Querier, Protocol):
    async def upload(self, total: int) -> None: ...

    async def close(self) -> None: ...


class _FifoConn:
    """Naive framing over asyncio streams: every write goes to one FIFO byte stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        # Query answers and the upload's completion come back on one byte stream.
        self.replies: dict[int, asyncio.Queue[int]] = {
            K_REPLY: asyncio.Queue(),
            K_DONE: asyncio.Queue(),
        }
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, host: str, port: int) -> _FifoConn:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def _read(self) -> None:
        while True:
            head = await self.reader.readexactly(FIFO_HEADER)
            await self.reader.readexactly(int.from_bytes(head[1:], "big"))
            self.replies[head[0]].put_nowait(head[0])

    async def query(self, payload: bytes) -> None:
        self.writer.write(bytes([K_QUERY]) + len(payload).to_bytes(4, "big") + payload)
        await self.replies[K_REPLY].get()

    async def upload(self, total: int) -> None:
        block = _block()
        sent = 0
        for size in _pieces(total, CHUNK):
            offset = sent % BLOCK if sent % BLOCK + size <= BLOCK else 0
            self.writer.write(bytes([K_UPLOAD]) + size.to_bytes(4, "big"))
            self.writer.write(block[offset : offset + size])
            sent += size
            await self.writer.drain()
        self.writer.write(bytes([K_UPLOAD_END]) + bytes(4))
        await self.replies[K_DONE].get()

    async def close(self) -> None:
        self.task.cancel()
        self.writer.close()


class _FifoClient:
    def __init__(self, queries: _FifoConn, uploads: _FifoConn) -> None:
        self.queries, self.uploads = queries, uploads

    async def query(self, payload: bytes) -> None:
        await self.queries.query(payload)

    async def upload(self, total: int) -> None:
        await self.uploads.upload(total)

    async def close(self) -> None:
        await self.queries.close()
        if self.uploads is not self.queries:
            await self.uploads.close()


class _GrpcClient:
    def __init__(self, host: str, port: int) -> None:
        import grpc

        self.channel = grpc.aio.insecure_channel(f"{host}:{port}")
        self._query = self.channel.unary_unary("/bench.Bench/Query")
        self._upload = self.channel.stream_unary("/bench.Bench/Upload")

    async def query(self, payload: bytes) -> None:
        reply = await self._query(payload)
        if len(reply) != QUERY_BYTES:
            raise RuntimeError("grpc: short reply")

    async def upload(self, total: int) -> None:
        block = _block()

        async def chunks() -> AsyncIterator[bytes]:
            sent = 0
            for size in _pieces(total, CHUNK):
                offset = sent % BLOCK if sent % BLOCK + size <= BLOCK else 0
                sent += size
                yield bytes(block[offset : offset + size])

        reply = await self._upload(chunks())
        if int.from_bytes(reply, "big") != total:
            raise RuntimeError("grpc: upload size mismatch")

    async def close(self) -> None:
        await self.channel.close()


# struct tcp_info (include/uapi/linux/tcp.h) fields the HOL diagnostics read (around each
# query and when its head is written): (name, offset, format). ionn_net.aio.sockopts reads
# only what the pacer needs; these are more. Times are microseconds, windows bytes, counts segments.
_TCP_RAW_FIELDS = (
    ("ca_state", 1, "B"),  # 0 open, 1 disorder, 2 CWR, 3 recovery, 4 loss
    ("mss", 16, "I"),
    ("unacked", 24, "I"),
    ("lost", 32, "I"),
    ("last_ack_recv_ms", 56, "I"),
    ("rtt_us", 68, "I"),  # smoothed
    ("ssthresh", 76, "I"),
    ("cwnd", 80, "I"),
    ("total_retrans", 100, "I"),
    ("pacing_rate", 104, "Q"),
    ("notsent", 144, "I"),
    ("busy_us", 168, "Q"),
    ("rwnd_limited_us", 176, "Q"),
    ("sndbuf_limited_us", 184, "Q"),
    ("snd_wnd", 228, "I"),
)


def _tcp_raw(sock: Any) -> dict[str, int]:
    """The fields above from a live socket (those past the kernel's struct are left out;
    none where the platform has no ``TCP_INFO``)."""
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return {}
    raw = sock.getsockopt(socket.IPPROTO_TCP, option, 256)
    return {
        name: struct.unpack_from("=" + fmt, raw, offset)[0]
        for name, offset, fmt in _TCP_RAW_FIELDS
        if offset + struct.calcsize(fmt) <= len(raw)
    }


class _IonnClient:
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        #: when the writer last handed a HEADERS of ours to the transport, and the socket's
        #: state right after: splits a late head into "held by us" and "held by the kernel"
        self.head_written: tuple[float, dict[str, int]] | None = None
        self.opened_at = 0.0  # when the query's stream was opened in the core
        self._trace_heads()
        self.discarded: float | None = None
        self.forgiven: float | None = None
        self.pacer_trace: list[tuple[Any, ...]] = []
        self.pacer_events: dict[str, int] = {}
        #: the server's clock (host monotonic) when the last query's head and body arrived
        self.server_stamps = (0.0, 0.0)
        self.server_lag_s = 0.0  # the server loop's worst lateness since its previous answer

    def _trace_heads(self) -> None:
        protocol = self.conn.protocol
        flush = protocol.flush

        def opened(stream: Any) -> None:
            self.opened_at = time.monotonic()

        self.conn.on_stream_opened = opened

        def traced_flush() -> None:
            sent = protocol.headers_sent_own
            flush()
            if protocol.headers_sent_own != sent and protocol.socket is not None:
                self.head_written = (time.monotonic(), _tcp_raw(protocol.socket))

        protocol.flush = traced_flush  # the instance attribute wins over the method

    def writer_state(self) -> dict[str, Any]:
        """The writer's state as a query begins: is it waiting for the transport to drain,
        bytes in the transport and in the core, room under the outbound cap."""
        protocol = self.conn.protocol
        transport = protocol.transport
        return {
            "paused": not protocol.writable,
            "transport": 0 if transport is None else transport.get_write_buffer_size(),
            "core": int(self.conn.core.outbound_buffered_bytes),
            "room": protocol.send_room,
        }

    async def query(self, payload: bytes) -> None:
        self.head_written = None
        self.opened_at = 0.0
        head, body = await self.conn.request(
            ProbeQuery(body_len=len(payload)).to_head(), payload, urgency=1
        )
        if len(body) != QUERY_BYTES:
            raise RuntimeError("ionn: short reply")
        result = ProbeResult.parse(head)
        self.server_stamps = (result.t_head, result.t_body)
        self.server_lag_s = result.lag_s

    async def upload(self, total: int) -> None:
        stream = await self.conn.open_stream(
            ProbeUpload(body_len=total).to_head(), urgency=5, incremental=True
        )
        pacer = self.conn.pacer
        if pacer is None:
            await _send_body(stream, total, _block())
        else:  # rate lost, and bytes never charged, while the upload ran (not before it)
            pacer.settle(asyncio.get_running_loop().time())
            discarded, forgiven = pacer.discarded_bytes, pacer.forgiven_bytes
            watch = asyncio.create_task(self._watch_pacer(pacer))
            try:
                await _send_body(stream, total, _block())
            finally:
                watch.cancel()
            self.discarded = pacer.discarded_bytes - discarded
            self.forgiven = pacer.forgiven_bytes - forgiven
            self.pacer_events = dict(getattr(pacer, "events", {}))
        if ProbeUploadOk.parse(await stream.receive_head()).received != total:
            raise RuntimeError("ionn: upload size mismatch")

    async def _watch_pacer(self, pacer: Any) -> None:
        """Every 20 ms: (s since the upload began, pacing rate, bottleneck estimate, both
        bytes/s or None, the queueing delay the pacer last saw in ms, whether it ramps)."""
        began = time.monotonic()
        while True:
            queue = pacer.queue_delay_s
            self.pacer_trace.append(
                (
                    round(time.monotonic() - began, 3),
                    pacer.pacing_rate,
                    pacer.bottleneck_rate,
                    None if queue is None else round(queue * 1e3, 2),
                    getattr(pacer, "ramping", None),
                )
            )
            await asyncio.sleep(0.02)

    def tcp_raw(self) -> dict[str, int] | None:
        """The socket's ``_TCP_RAW_FIELDS`` now (None: no socket, or no TCP_INFO here)."""
        sock = self.conn.protocol.socket
        raw = None if sock is None else _tcp_raw(sock)
        return raw if raw and "total_retrans" in raw else None

    async def close(self) -> None:
        self.conn.close()
        await self.conn.wait_closed()


async def _open_client(kind: str, host: str, port: int, params: dict[str, Any]) -> _Client:
    if kind == "fifo":
        conn = await _FifoConn.open(host, port)
        return _FifoClient(conn, conn)
    if kind == "second":
        return _FifoClient(await _FifoConn.open(host, port), await _FifoConn.open(host, port))
    if kind == "grpc":
        return _GrpcClient(host, port)
    from ionn_net.aio import connect

    conn = await connect(
        host, port, limits=_limits(params.get("profile", "default")), options=_ionn_options(params)
    )
    return _IonnClient(conn)


async def _timed_queries(
    client: _Querier,
    payload: bytes,
    count: int,
    until: Callable[[], bool],
    rng: random.Random,
    *,
    gap_s: float,
    starts: list[float] | None = None,
) -> list[float]:
    """Sequential queries with random gaps (mean ``gap_s``) so they sample every phase;
    ``starts`` (if given) receives when each was issued (``time.perf_counter``)."""
    rtts: list[float] = []
    for _ in range(count):
        if until():
            break
        start = time.perf_counter()
        await client.query(payload)
        rtts.append(time.perf_counter() - start)
        if starts is not None:
            starts.append(start)
        pause = rng.uniform(0.0, 2 * gap_s)
        deadline = time.perf_counter() + pause
        while not until() and time.perf_counter() < deadline:  # stop early when done
            await asyncio.sleep(min(0.005, pause))
    return rtts


class _TracedQueries:
    """Wraps a client's query to record what each one met (ionn clients only).

    Attributes a slow query to what the sending socket saw meanwhile (retransmitted segments,
    unsent bytes queued ahead of it), to where its time went by the server's clock (head,
    whole query, answer back) or to an event loop that ran late on either side.
    """

    def __init__(self, client: _Client) -> None:
        self.client = client
        probe = getattr(client, "tcp_raw", None)
        self.probe: Callable[[], dict[str, int] | None] = probe or (lambda: None)
        self.start = time.monotonic()
        self.first = self.probe()
        self.rows: list[dict[str, Any]] = []

    async def query(self, payload: bytes) -> None:
        _LAG.start()
        _LAG.take()
        before = self.probe()
        writer = getattr(self.client, "writer_state", dict)()
        start = time.monotonic()
        await self.client.query(payload)
        end = time.monotonic()
        after = self.probe()
        if before is None or after is None:
            return
        head, body = getattr(self.client, "server_stamps", (0.0, 0.0))
        written = getattr(self.client, "head_written", None)
        self.rows.append(
            {
                "t_s": round(start - self.start, 2),
                "rtt_ms": round((end - start) * 1e3, 1),
                # up: until the server had the whole query; down: its answer's way back
                "head_ms": round((head - start) * 1e3, 1),
                "up_ms": round((body - start) * 1e3, 1),
                "down_ms": round((end - body) * 1e3, 1),
                "retrans": after["total_retrans"] - before["total_retrans"],
                # worst event-loop lateness meanwhile: here, and at the server since its last
                "client_lag_ms": round(_LAG.take() * 1e3, 1),
                "server_lag_ms": round(getattr(self.client, "server_lag_s", 0.0) * 1e3, 1),
                "notsent_before": before["notsent"],
                "srtt_before_ms": round(before["rtt_us"] / 1e3, 1),
            }
            | self._kernel_view(start, written, before, after)
            | {"writer": writer}
        )
        opened = getattr(self.client, "opened_at", 0.0)
        if opened:
            self.rows[-1]["opened_ms"] = round((opened - start) * 1e3, 1)

    @staticmethod
    def _kernel_view(
        start: float,
        written: tuple[float, dict[str, int]] | None,
        before: dict[str, int],
        after: dict[str, int],
    ) -> dict[str, Any]:
        """When the head reached the socket, the socket's state then, and how long the
        congestion window, the peer's window or the send buffer held sending meanwhile."""
        view: dict[str, Any] = {}
        if written is not None:
            view["written_ms"] = round((written[0] - start) * 1e3, 1)
            view["at_write"] = written[1]
        for name in ("busy_us", "rwnd_limited_us", "sndbuf_limited_us"):
            if name in before and name in after:
                view["d_" + name] = after[name] - before[name]
        return view

    def summary(self) -> dict[str, Any]:
        last = self.probe()
        if self.first is None or last is None:
            return {}
        return {
            "retrans_during_busy": last["total_retrans"] - self.first["total_retrans"],
            "queries_with_retrans": sum(1 for row in self.rows if row["retrans"] > 0),
            "slowest": sorted(self.rows, key=lambda row: row["rtt_ms"], reverse=True)[:8],
        }


class _CwndWatch:
    """Samples the client socket's congestion state every 2 ms while the upload runs:
    how long it spent in each ``tcpi_ca_state`` and the moments its window fell below
    ten segments (with no loss, a window that small is the kernel's own doing)."""

    def __init__(self, client: _Client) -> None:
        self.probe: Callable[[], dict[str, int] | None] | None = getattr(client, "tcp_raw", None)
        self.start = time.monotonic()
        self.states: dict[int, int] = {}
        self.events: list[dict[str, Any]] = []
        self.smallest: dict[str, Any] | None = None

    async def run(self, stop: Callable[[], bool]) -> None:
        if self.probe is None:
            return
        last = (0, False)
        while not stop():
            raw = self.probe()
            if raw is None:
                return
            state, small = raw.get("ca_state", 0), raw.get("cwnd", 99) < 10
            self.states[state] = self.states.get(state, 0) + 1
            sample = {"t_s": round(time.monotonic() - self.start, 3)} | raw
            if (state, small) != last and len(self.events) < 40:
                self.events.append(sample)
            if self.smallest is None or raw.get("cwnd", 0) < self.smallest.get("cwnd", 0):
                self.smallest = sample
            last = (state, small)
            await asyncio.sleep(0.002)

    def summary(self) -> dict[str, Any]:
        if not self.states:
            return {}
        return {"ca_states": self.states, "cwnd_events": self.events, "cwnd_min": self.smallest}


async def _timed(work: Awaitable[None]) -> float:
    start = time.perf_counter()
    await work
    return time.perf_counter() - start


async def _hol(kind: str, host: str, port: int, params: dict[str, Any]) -> dict[str, Any]:
    client = await _open_client(kind, host, port, params)
    rng = random.Random(11)
    payload = rng.randbytes(QUERY_BYTES)
    try:
        gap = params.get("gap_s", 0.005)
        await _timed_queries(client, payload, 10, lambda: False, rng, gap_s=0.002)
        idle = await _timed_queries(
            client, payload, params["idle_queries"], lambda: False, rng, gap_s=0.005
        )
        total = params["upload_bytes"]
        began = time.perf_counter()
        upload = asyncio.create_task(_timed(client.upload(total)))
        deadline = time.perf_counter() + params["deadline_s"]
        await asyncio.wait([upload], timeout=params["warmup_s"])

        def stop() -> bool:
            return upload.done() or time.perf_counter() > deadline

        traced = _TracedQueries(client)
        watch = _CwndWatch(client)
        watching = asyncio.create_task(watch.run(stop))
        starts: list[float] = []
        busy = await _timed_queries(traced, payload, 100_000, stop, rng, gap_s=gap, starts=starts)
        trace = traced.summary()  # while the socket is still open
        await watching
        trace |= watch.summary()
        elapsed = await asyncio.wait_for(upload, max(0.1, deadline - time.perf_counter()))
    except TimeoutError:  # say where a paced upload stood (the orchestrator shows stderr)
        tail = getattr(client, "pacer_trace", [])[-20:]
        print(f"upload past its deadline; pacer trace tail: {tail}", file=sys.stderr)
        raise
    finally:
        await client.close()
    # Queries issued in the upload's first second (its start, before any rate is known)
    # and after it.
    first = [rtt for rtt, at in zip(busy, starts, strict=True) if at - began < 1.0]
    rest = busy[len(first) :]
    return trace | {
        "first_p99": _pct(first, 99),
        "first_n": len(first),
        "first_all": [round(x * 1e3, 1) for x in first],
        "rest_p99": _pct(rest, 99),
        "rest_n": len(rest),
        "idle_p50": _pct(idle, 50),
        "idle_p99": _pct(idle, 99),
        "busy_p50": _pct(busy, 50),
        "busy_p99": _pct(busy, 99),
        "busy_p90": _pct(busy, 90),
        "busy_all": sorted(round(x * 1e3, 1) for x in busy),
        "busy_n": len(busy),
        "upload_rate": total / elapsed,
        "upload_bytes": total,
        "pacer_discarded": getattr(client, "discarded", None),
        "pacer_forgiven": getattr(client, "forgiven", None),
        "pacer_trace": getattr(client, "pacer_trace", None),
        "pacer_events": getattr(client, "pacer_events", None),
    }


async def _client_main(kind: str, host: str, port: int, params: dict[str, Any]) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = await _client_test(kind, host, port, params)
    after = resource.getrusage(resource.RUSAGE_SELF)
    result["client_user_s"] = after.ru_utime - before.ru_utime
    result["client_sys_s"] = after.ru_stime - before.ru_stime
    return result


async def _client_test(kind: str, host: str, port: int, params: dict[str, Any]) -> dict[str, Any]:
    if params["test"] == "bulk":
        if kind == "raw":
            rate = await _bulk_raw(host, port, params["bytes"])
        else:
            rate = await _bulk_ionn(host, port, params["bytes"], params)
        return {"rate": rate}
    return await _hol(kind, host, port, params)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("server", "client"), required=True)
    parser.add_argument("--kind", default="ionn")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--params", default="{}")
    args = parser.parse_args(argv)
    from ionn_net.aio.loop import run

    if args.role == "server":
        run(_server_main(args.kind, args.host, args.port, args.profile))
        return
    result = run(_client_main(args.kind, args.host, args.port, json.loads(args.params)))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
