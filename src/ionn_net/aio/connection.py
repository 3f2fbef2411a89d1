"""One IONN-NET connection in the asyncio idiom: streams, ping, graceful close.

Owns the stream table of the application side and the concrete stream classes
(:class:`Stream`, :class:`ServerStream`), the dispatch of core events to streams (a dict from
event type to handler), the waiting of senders for outbound room and credit, the accounting of
outbound bytes held outside the core (§14.3), pacing of upload-urgency streams,
``ping()``/``rtt``, and the shutdown paths: graceful (GOAWAY, let open streams finish, flush,
close -- under one deadline, §13.3) and abort. Socket-level behaviour (writer, timers,
backpressure) is in :mod:`ionn_net.aio.protocol`.

Streams reach the connection only through :class:`~ionn_net.aio.stream.StreamHost` (one
:class:`_StreamLink` per stream), and the connection reaches a stream only through its
``deliver_*`` methods and public properties: see :mod:`ionn_net.aio.stream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

from ionn_net.aio.errors import ConnectionClosedError, StreamResetError
from ionn_net.aio.options import TransportOptions
from ionn_net.aio.pacing import Pacer
from ionn_net.aio.protocol import IonnProtocol, logger
from ionn_net.aio.stream import BaseStream, Buffer
from ionn_net.config import Limits, Setting
from ionn_net.proto import (
    Codec,
    Connection,
    ConnectionTerminated,
    DataReceived,
    ErrorCode,
    Event,
    GoAwayReceived,
    HeadersReceived,
    PingAcked,
    ProtocolError,
    SettingsReceived,
    StreamReset,
    UsageError,
)

__all__ = ["AioConnection", "Handler", "ServerStream", "Stream"]


class Stream(BaseStream):
    """A stream this endpoint opened (:meth:`AioConnection.open_stream`)."""

    def __init__(
        self,
        conn: AioConnection,
        stream_id: int,
        *,
        urgency: int,
        incremental: bool,
        end_stream: bool,
    ) -> None:
        link = _StreamLink(conn, stream_id, urgency)
        super().__init__(
            link, stream_id, urgency=urgency, incremental=incremental, local_ended=end_stream
        )
        self._connection = conn

    @property
    def connection(self) -> AioConnection:
        """The connection this stream belongs to."""
        return self._connection


class ServerStream(BaseStream):
    """A stream the peer opened; ``head`` is the request head.

    The handler reads the body (``async for chunk in stream`` / ``read_body``) and answers
    with :meth:`respond` (or ``send_headers`` + ``send_data``).
    """

    def __init__(
        self,
        conn: AioConnection,
        stream_id: int,
        head: Mapping[str, Any],
        *,
        urgency: int,
        incremental: bool,
        end_stream: bool,
    ) -> None:
        link = _StreamLink(conn, stream_id, urgency)
        super().__init__(link, stream_id, urgency=urgency, incremental=incremental)
        self._connection = conn
        self._request_head = head
        self.deliver_head(head, end_stream)

    @property
    def connection(self) -> AioConnection:
        """The connection this stream arrived on (read-only)."""
        return self._connection

    @property
    def head(self) -> Mapping[str, Any]:
        """The request head."""
        return self._request_head

    async def respond(
        self,
        head: Mapping[str, Any],
        body: Buffer = b"",
        *,
        codec: Codec | None = None,
        element_width: int = 1,
    ) -> None:
        """Send the response message: HEADERS, then the body (if any) ending the stream.

        ``"body_len"`` (§10.1.2) is added to the head when a body is given without it; the
        body counts against the outbound cap from the start (§14.3, ``send_message``).
        """
        await self.send_message(head, body, codec=codec, element_width=element_width)


Handler = Callable[[ServerStream], Awaitable[None]]


class AioConnection:
    """A connection; use :func:`ionn_net.aio.connect` or a ``serve()`` handler to get one.

    Usable as ``async with``: leaving the block closes gracefully (:meth:`aclose`).
    """

    def __init__(
        self,
        *,
        client: bool,
        limits: Limits,
        options: TransportOptions,
        handler: Handler | None = None,
        on_made: Callable[[AioConnection], None] | None = None,
        on_closed: Callable[[AioConnection], None] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.limits = limits
        self.options = options
        self.client = client
        self.core = Connection(client=client, limits=limits, now=self.loop.time())
        self.protocol = IonnProtocol(self.core, self, limits, options)
        self.send_chunk = options.send_chunk or limits.max_chunk * 8
        self.pacer: Pacer | None = None
        if options.pacing is not None:
            self.pacer = Pacer(options.pacing, self.protocol.tcp_info, self.loop.time())
        self.rtt: float | None = None
        self.pings_acked = 0  # every answered PING, ours and the core's keepalive
        #: Called with each stream this endpoint opens, right after its HEADERS is queued in
        #: the core (before it is written): an observer for tracing, not a policy hook.
        self.on_stream_opened: Callable[[Stream], None] | None = None
        self._handler = handler
        self._on_made = on_made
        self._on_closed = on_closed
        self._streams: dict[int, BaseStream] = {}
        self._held = 0  # outbound bytes held by streams outside the core (§14.3)
        self._tasks: set[asyncio.Task[None]] = set()
        self._pings: dict[bytes, tuple[float, asyncio.Future[float]]] = {}
        # One future per task waiting for send room: a shared one would be cancelled under
        # every waiter when one of them is cancelled (they would take it for their own).
        self._room_waiters: list[asyncio.Future[None]] = []
        self._ready: asyncio.Future[None] = self.loop.create_future()
        self._closed: asyncio.Future[None] = self.loop.create_future()
        self._error: ConnectionClosedError | None = None
        self._goaway: GoAwayReceived | None = None
        self._closing = False
        self._last_opened = 0
        self._dispatch: dict[type[Any], Callable[[Any], None]] = {
            SettingsReceived: self._on_settings,
            HeadersReceived: self._on_headers,
            DataReceived: self._on_data,
            StreamReset: self._on_stream_reset,
            PingAcked: self._on_ping_acked,
            GoAwayReceived: self._on_goaway,
            ConnectionTerminated: self._on_terminated,
        }

    # ------------------------------------------------------------------ public API

    @property
    def closed(self) -> bool:
        return self._closed.done()

    @property
    def error(self) -> ConnectionClosedError | None:
        """Why the connection ended (None while open or after a clean close)."""
        return self._error

    @property
    def open_stream_count(self) -> int:
        return len(self._streams)

    @property
    def peer_settings(self) -> Mapping[Setting, int]:
        """The peer's settings in force (§11; the defaults until its SETTINGS arrives)."""
        return MappingProxyType(self.core.peer_settings)

    @property
    def outbound_bytes(self) -> int:
        """Bytes held for the peer and not yet written to the socket (§14.3): frames queued
        in the core, the transport's buffer, and bodies given to ``send_data`` (or room
        reserved with ``reserve_outbound``) not yet queued in the core."""
        return self.protocol.outbound_bytes + self._held

    @property
    def bytes_sent(self) -> int:
        """Bytes written to the transport so far: every stream's frames and control frames."""
        return self.protocol.bytes_written

    @property
    def bytes_received(self) -> int:
        """Bytes read from the transport so far."""
        return self.protocol.bytes_received

    @property
    def local_address(self) -> Any:
        return self.protocol.extra("sockname")

    @property
    def remote_address(self) -> Any:
        return self.protocol.extra("peername")

    async def wait_ready(self, timeout: float) -> None:
        """Wait for the peer's SETTINGS (the handshake), raising ConnectionClosedError."""
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            self.abort(ErrorCode.TIMEOUT, f"no SETTINGS from the peer within {timeout} s")
            raise self._closed_error() from None

    async def open_stream(
        self,
        head: Mapping[str, Any],
        *,
        urgency: int = 3,
        incremental: bool = False,
        end_stream: bool = False,
    ) -> Stream:
        """Open a stream by sending HEADERS with ``head``; waits for a free stream slot."""
        while True:
            self._check_open()
            if self._goaway is not None:
                raise ConnectionClosedError(
                    "the peer sent GOAWAY: no new streams on this connection",
                    error_code=self._goaway.error_code,
                    remote=True,
                )
            # An earlier stream's opening HEADERS still queued in the core could be emitted
            # after this one's (the core orders stream frames by urgency), which the peer
            # must refuse (§6.1.1): open only once it has been written.
            in_order = self.protocol.headers_sent_own >= self._last_opened
            if in_order and self._stream_slot_free() and self.protocol.send_room > 0:
                break
            await self._wait_room()
        stream_id = self.core.open_stream(
            head, urgency=urgency, incremental=incremental, end_stream=end_stream
        )
        self._last_opened = stream_id
        stream = Stream(
            self, stream_id, urgency=urgency, incremental=incremental, end_stream=end_stream
        )
        self._track(stream)
        if self.on_stream_opened is not None:
            self.on_stream_opened(stream)
        self.protocol.after_send()  # written with the first body bytes, if any follow now
        return stream

    async def request(
        self,
        head: Mapping[str, Any],
        body: Buffer = b"",
        *,
        urgency: int = 1,
        incremental: bool = False,
        codec: Codec | None = None,
        element_width: int = 1,
        limit: int | None = None,
    ) -> tuple[Mapping[str, Any], bytes]:
        """Send one request message and return the response (head, body).

        ``head`` is sent as given (a body needs ``"body_len"``, §10.1.2; it is added when
        missing). Cancelling the awaiting task resets the stream with CANCEL.
        """
        if body and "body_len" not in head:
            head = {**head, "body_len": memoryview(body).nbytes}
        stream = await self.open_stream(
            head, urgency=urgency, incremental=incremental, end_stream=not body
        )
        try:
            if body:
                await stream.send_data(
                    body, end_stream=True, codec=codec, element_width=element_width
                )
        except StreamResetError:
            # The peer may answer early and reset the rest of our upload: keep the answer.
            if not stream.message_received:
                raise
        response = await stream.receive_head()
        data = await stream.read_body(limit)
        return response, data

    async def ping(self, timeout: float | None = None) -> float:
        """Send PING and return the round trip in seconds (also stored in ``rtt``)."""
        self._check_open()
        payload = os.urandom(8)
        future: asyncio.Future[float] = self.loop.create_future()
        # perf_counter, not loop.time(): uvloop's clock has millisecond resolution.
        self._pings[payload] = (time.perf_counter(), future)
        self.core.ping(payload)
        self._after_send()
        try:
            return await asyncio.wait_for(
                asyncio.shield(future), timeout or self.limits.heartbeat_timeout_s
            )
        finally:
            self._pings.pop(payload, None)

    def close(self, error_code: ErrorCode = ErrorCode.NO_ERROR, debug: str = "") -> None:
        """Start a graceful close: GOAWAY, let open streams finish, flush, close.

        Bounded by ``TransportOptions.close_timeout_s``; afterwards the socket is aborted.
        """
        if self._closing or self.closed:
            return
        self._closing = True
        code = ErrorCode(error_code)
        if code is not ErrorCode.NO_ERROR and self._error is None:
            # Any other code is a connection error (§13.3): the core ends at once.
            self._error = ConnectionClosedError(
                f"closed locally with {code.name}: {debug}", error_code=code, remote=False
            )
        if not self.core.closed:
            self.core.close(code, debug)  # GOAWAY now: no new peer stream slips in
            self._after_send()
        if self._error is not None:
            self._fail_unfinished(self._error)
        task = self.loop.create_task(self._drain_and_close())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """:meth:`close` and wait until the socket is closed."""
        self.close()
        await self.wait_closed()

    def abort(self, error_code: ErrorCode = ErrorCode.CANCEL, reason: str = "aborted") -> None:
        """Drop the connection now (best-effort GOAWAY); streams fail at once."""
        if self.closed:
            return
        if self._error is None:
            self._error = ConnectionClosedError(reason, error_code=error_code, remote=False)
        self.protocol.abort(error_code, reason)
        if self.protocol.transport is None:
            self.transport_lost(None, reason)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> AioConnection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ graceful close

    async def _drain_and_close(self) -> None:
        deadline = self.loop.time() + self.options.close_timeout_s
        try:
            while self._unfinished() and not self.closed and self.loop.time() < deadline:
                await asyncio.wait_for(self._wait_room(), deadline - self.loop.time())
            self.protocol.flush()
            self.protocol.close_transport()
            await asyncio.wait_for(asyncio.shield(self._closed), deadline - self.loop.time())
        except (TimeoutError, ConnectionClosedError):
            pass
        if not self.closed:
            self.abort(
                ErrorCode.TIMEOUT, f"graceful close exceeded {self.options.close_timeout_s} s"
            )

    # ------------------------------------------------------------------ sink (from protocol)

    def transport_made(self) -> None:
        if self._on_made is not None:
            self._on_made(self)

    def events_received(self, events: list[Event]) -> None:
        dispatch = self._dispatch
        for event in events:
            handler = dispatch.get(type(event))
            if handler is not None:
                handler(event)
        # CREDIT frames raise send limits without an event: let blocked senders re-check.
        self._wake_room()

    def send_room(self) -> None:
        self._wake_room()

    def transport_lost(self, exc: BaseException | None, reason: str | None) -> None:
        if self.closed:
            return
        unfinished = self._unfinished()
        if self._error is None and (exc is not None or reason is not None or unfinished):
            code = ErrorCode.TIMEOUT if reason else ErrorCode.INTERNAL_ERROR
            text = reason or (f"connection lost: {exc}" if exc else "connection closed by peer")
            self._error = ConnectionClosedError(
                text, error_code=code, remote=reason is None, cause=exc
            )
        error = self._closed_error()
        self._fail_unfinished(error)
        for _, future in self._pings.values():
            if not future.done():
                future.set_exception(error)
        if not self._ready.done():
            self._ready.set_exception(error)
            self._ready.exception()  # mark retrieved: wait_ready may never be called
        self._wake_room()
        # Cancel what is left of the handlers only after the wake-ups above ran: a handler
        # blocked on its stream first sees ConnectionClosedError and may handle it.
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                self.loop.call_soon(task.cancel)
        self._closed.set_result(None)
        logger.debug("connection closed: %s", error)
        if self._on_closed is not None:
            self._on_closed(self)

    # ------------------------------------------------------------------ event handlers

    def _on_settings(self, event: SettingsReceived) -> None:
        if not self._ready.done():
            self._ready.set_result(None)

    def _on_headers(self, event: HeadersReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream.deliver_head(event.head, event.end_stream)
            return
        new = ServerStream(
            self,
            event.stream_id,
            event.head,
            urgency=event.urgency,
            incremental=event.incremental,
            end_stream=event.end_stream,
        )
        self._track(new)
        if self._handler is None or self._closing:
            new.reset(ErrorCode.REFUSED_STREAM)
            return
        task = self.loop.create_task(self._run_handler(new, self._handler))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_data(self, event: DataReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None or stream.failed:
            # Nobody will read it: give the credit back at once.
            self.core.acknowledge_received_data(event.stream_id, event.wire_length)
            return
        self.protocol.add_unconsumed(len(event.data))
        stream.deliver_data(event.data, event.wire_length, event.end_stream)

    def _on_stream_reset(self, event: StreamReset) -> None:
        stream = self._streams.pop(event.stream_id, None)
        if stream is None:
            return
        side = "the peer" if event.remote else "us after a stream error"
        stream.deliver_error(
            StreamResetError(
                f"stream {event.stream_id} reset by {side} with {event.error_code.name}",
                stream_id=event.stream_id,
                error_code=event.error_code,
                remote=event.remote,
            )
        )

    def _on_ping_acked(self, event: PingAcked) -> None:
        self.pings_acked += 1
        entry = self._pings.pop(event.payload, None)
        if entry is None:
            return  # a keepalive PING of the core
        start, future = entry
        self.rtt = time.perf_counter() - start
        if not future.done():
            future.set_result(self.rtt)

    def _on_goaway(self, event: GoAwayReceived) -> None:
        logger.debug(
            "GOAWAY received: last_stream_id=%d %s", event.last_stream_id, event.error_code
        )
        # The core reports our streams above last_stream_id as reset with REFUSED_STREAM
        # (§13.2: not processed, safe to retry); the others may finish.
        self._goaway = event
        self.close()

    def _on_terminated(self, event: ConnectionTerminated) -> None:
        who = "the peer" if event.remote else "us"
        error = ConnectionClosedError(
            f"connection ended by {who} with {event.error_code.name}: {event.reason}",
            error_code=event.error_code,
            remote=event.remote,
            cause=event.error,
        )
        if event.error is not None and self._error is None:
            self._error = error
        self._fail_unfinished(self._error or error)

    # ------------------------------------------------------------------ handlers

    async def _run_handler(self, stream: ServerStream, handler: Handler) -> None:
        try:
            await handler(stream)
        except asyncio.CancelledError:
            stream.reset(ErrorCode.CANCEL)
            return
        except (StreamResetError, ConnectionClosedError) as exc:
            logger.debug("handler of stream %d ended: %s", stream.id, exc)
            return
        except Exception:
            logger.exception("handler of stream %d failed", stream.id)
            stream.reset(ErrorCode.INTERNAL_ERROR)
            return
        if not stream.local_ended:
            logger.warning("handler of stream %d returned without ending its response", stream.id)
            stream.reset(ErrorCode.INTERNAL_ERROR)
        elif not stream.remote_ended:
            # Answered early: the rest of the request is unwanted, but the answer must reach
            # the peer first (the RESET waits for the response's last frame, §10.1.1).
            self._reset(stream.id, ErrorCode.CANCEL, after_pending=True)
        else:
            self._stream_maybe_done(stream.id)

    # ------------------------------------------------------------------ helpers for streams

    def _unfinished(self) -> bool:
        """Some stream is still exchanging (completed ones may hold unread chunks)."""
        return any(not stream.finished for stream in self._streams.values())

    def _fail_unfinished(self, error: ConnectionClosedError) -> None:
        """Fail streams still exchanging; completed ones keep their unread chunks."""
        for stream in list(self._streams.values()):
            if not stream.finished:
                stream.deliver_error(error)
        self._streams.clear()

    def _track(self, stream: BaseStream) -> None:
        self._streams[stream.id] = stream

    def _check_open(self) -> None:
        if self.closed or self.core.closed or self._error is not None:
            raise self._closed_error()

    def _closed_error(self) -> ConnectionClosedError:
        if self._error is not None:
            return self._error
        return ConnectionClosedError(
            "the connection is closed", error_code=ErrorCode.NO_ERROR, remote=False
        )

    def _stream_slot_free(self) -> bool:
        return self.core.available_streams > 0

    def _wake_room(self) -> None:
        waiters, self._room_waiters = self._room_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_room(self) -> None:
        waiter = self.loop.create_future()
        self._room_waiters.append(waiter)
        self.protocol.note_blocked_sender()
        await waiter

    def _send_allowance(self, stream_id: int, n: int, *, paced: bool) -> int | None:
        """How many of ``n`` bytes stream ``stream_id`` may hand the core now (None: wait).

        An unpaced stream keeps up to one more piece queued in the core while the writer
        drains the previous one (so feeding and writing overlap); a paced stream hands over
        its next release only once the previous one has left, so releases keep their timing.
        """
        self._check_open()
        want = min(n, self.limits.max_chunk)
        ahead = max(want, 1) if paced else 2 * self.send_chunk
        room = self.protocol.send_room
        queued = self.core.stream_outbound_bytes(stream_id)
        if room >= want and queued < ahead and self.protocol.writable:
            return min(n, room) if n else 0
        return None

    def _outbound_fits(self, nbytes: int) -> bool:
        self._check_open()
        held = self.outbound_bytes
        return held == 0 or held + nbytes <= self.limits.max_outbound_bytes

    def _hold(self, delta: int) -> None:
        self._held += delta
        if delta < 0:
            self._wake_room()

    def _paced(self, urgency: int) -> bool:
        pacer = self.pacer
        return pacer is not None and urgency >= pacer.config.min_urgency

    def _chunk_size(self, paced: bool) -> int:
        if paced and self.pacer is not None:
            # A few milliseconds of link time per release (see PacingConfig).
            return self.pacer.chunk_size(self.send_chunk)
        return self.send_chunk

    async def _pace(self, n: int) -> None:
        pacer = self.pacer
        assert pacer is not None
        while True:
            now = self.loop.time()
            paced = self.core.stream_bytes_sent(pacer.config.min_urgency)
            pacer.account(self.protocol.bytes_written, now, paced_written=paced)
            delay = pacer.delay(n, now)
            if delay <= 0:
                break
            await asyncio.sleep(delay)
        # The chunk itself is charged at the next call, once the writer has sent it.

    def _after_send(self) -> None:
        self.protocol.after_core_call([])

    def _consumed(self, stream_id: int, nbytes: int, wire_length: int) -> None:
        self.protocol.consumed(nbytes)
        if wire_length and not self.core.closed:
            with contextlib.suppress(UsageError, ProtocolError):
                # The time lets the core grow the receive windows while we keep up (§7.3).
                self.core.acknowledge_received_data(stream_id, wire_length, now=self.loop.time())
            self.protocol.after_send()

    def _reset(self, stream_id: int, error_code: ErrorCode, *, after_pending: bool = False) -> None:
        self._streams.pop(stream_id, None)
        if not self.core.closed:
            with contextlib.suppress(UsageError):
                self.core.reset_stream(stream_id, error_code, after_pending=after_pending)
            self.protocol.after_send()
        self._wake_room()

    def _stream_maybe_done(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and stream.drained:
            del self._streams[stream_id]
            self._wake_room()


class _StreamLink:
    """The :class:`~ionn_net.aio.stream.StreamHost` of one stream: what the stream may ask of
    its connection, bound to the stream's id."""

    __slots__ = ("_conn", "_id", "_urgency")

    def __init__(self, conn: AioConnection, stream_id: int, urgency: int) -> None:
        self._conn = conn
        self._id = stream_id
        self._urgency = urgency

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._conn.loop

    def send_allowance(self, n: int, *, paced: bool) -> int | None:
        return self._conn._send_allowance(self._id, n, paced=paced)

    def chunk_size(self, paced: bool) -> int:
        return self._conn._chunk_size(paced)

    def is_paced(self) -> bool:
        return self._conn._paced(self._urgency)

    async def wait_room(self) -> None:
        await self._conn._wait_room()

    async def wait_paced(self, n: int) -> None:
        await self._conn._pace(n)

    def queue_headers(self, head: Mapping[str, Any], *, end_stream: bool) -> None:
        conn = self._conn
        conn.core.send_headers(self._id, head, end_stream=end_stream)
        conn.protocol.after_send()

    def queue_data(
        self, data: memoryview, *, end_stream: bool, codec: Codec | None, element_width: int
    ) -> None:
        conn = self._conn
        conn.core.send_data(
            self._id, data, end_stream=end_stream, codec=codec, element_width=element_width
        )
        conn.protocol.after_send()

    def consumed(self, nbytes: int, wire_length: int) -> None:
        self._conn._consumed(self._id, nbytes, wire_length)

    def reset(self, error_code: ErrorCode) -> None:
        self._conn._reset(self._id, error_code)

    def settled(self) -> None:
        self._conn._stream_maybe_done(self._id)

    def outbound_fits(self, nbytes: int) -> bool:
        return self._conn._outbound_fits(nbytes)

    def hold(self, delta: int) -> None:
        self._conn._hold(delta)
