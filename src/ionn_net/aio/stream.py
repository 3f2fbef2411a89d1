"""Per-stream machinery of the asyncio API, and the interface between a stream and its
connection.

Owns the application's view of one stream (:class:`BaseStream`): the received head, a queue
of received body chunks (bounded by the stream's receive credit, §7), and the send path that
feeds the core in pieces as credit, the outbound cap and (for upload-urgency streams) the
pacer allow, so that a large body is never copied into the core at once. The concrete
classes (``Stream``, ``ServerStream``) live with :class:`~ionn_net.aio.AioConnection`, which
creates them; this module imports nothing from it.

The two directions of the interface are narrow and public:

* :class:`StreamHost` is everything a stream asks of its connection (send room, pacing,
  handing frames to the core, returning credit, reset, outbound accounting). The
  connection gives each stream one host object.
* The ``deliver_*`` methods and the ``drained`` / ``failed`` properties of
  :class:`BaseStream` are everything the connection tells or asks a stream.

Credit goes back to the peer only as the application consumes chunks. A task cancelled
while awaiting on a stream resets it with CANCEL, so the peer stops working on it (§4.3).
Bodies handed to :meth:`BaseStream.send_data` and not yet queued in the core, and room
reserved with :meth:`BaseStream.reserve_outbound`, count against the connection's outbound
cap (§14.3).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any, Protocol, TypeVar

from ionn_net.aio.errors import StreamResetError
from ionn_net.proto import Codec, ErrorCode, UsageError

__all__ = ["BaseStream", "Buffer", "StreamHost"]

Buffer = bytes | bytearray | memoryview
_ACK_BATCH = 256 * 1024  # return credit at least this often while a backlog is read
_T = TypeVar("_T")


def _bytes_view(data: Buffer) -> memoryview:
    view = memoryview(data)
    return view if view.ndim == 1 and view.itemsize == 1 else view.cast("B")


class StreamHost(Protocol):
    """What a stream needs from its connection (one host per stream).

    Calls that may block are the two ``wait_*`` coroutines; everything else returns at
    once. A call made after the connection ended raises
    :class:`~ionn_net.aio.ConnectionClosedError`.
    """

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The connection's event loop."""

    def send_allowance(self, n: int, *, paced: bool) -> int | None:
        """How many of ``n`` body bytes (0: a HEADERS frame) may be queued in the core now,
        or None if the stream has to :meth:`wait_room` first."""

    def chunk_size(self, paced: bool) -> int:
        """The largest piece of a body to hand over per call."""

    def is_paced(self) -> bool:
        """Whether this stream's body goes through the pacer."""

    async def wait_room(self) -> None:
        """Wait until send room, credit or the outbound backlog may have changed."""

    async def wait_paced(self, n: int) -> None:
        """Wait until the pacer lets ``n`` more bytes go."""

    def queue_headers(self, head: Mapping[str, Any], *, end_stream: bool) -> None:
        """Queue a HEADERS frame in the core (and schedule the writer)."""

    def queue_data(
        self, data: memoryview, *, end_stream: bool, codec: Codec | None, element_width: int
    ) -> None:
        """Queue body bytes in the core (and schedule the writer)."""

    def consumed(self, nbytes: int, wire_length: int) -> None:
        """The application consumed (or discarded) received bytes: return their credit."""

    def reset(self, error_code: ErrorCode) -> None:
        """Send RESET ``error_code`` (the stream already failed locally)."""

    def settled(self) -> None:
        """The stream sent or consumed something: forget it once it is drained."""

    def outbound_fits(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more outbound bytes stay within the connection's cap
        (always true while nothing is held for the peer, so one large body can go)."""

    def hold(self, delta: int) -> None:
        """Add ``delta`` (may be negative) to the bytes held for the peer outside the core."""


class BaseStream:
    """State and API shared by both kinds of stream; see the module docstring."""

    def __init__(
        self,
        host: StreamHost,
        stream_id: int,
        *,
        urgency: int,
        incremental: bool,
        local_ended: bool = False,
    ) -> None:
        self._host = host
        self.id = stream_id
        self.urgency = urgency
        self.incremental = incremental
        self._head: Mapping[str, Any] | None = None
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._remote_ended = False
        self._local_ended = local_ended
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._unacked = 0  # wire bytes consumed by the application, credit not yet returned
        self._unacked_bytes = 0
        self._reserved = 0  # outbound room reserved for a body not yet given to send_data
        self._pending = 0  # bytes of the body being sent, not yet queued in the core

    # ------------------------------------------------------------------ state

    @property
    def local_ended(self) -> bool:
        """We sent END_STREAM (or the stream was reset)."""
        return self._local_ended or self._error is not None

    @property
    def remote_ended(self) -> bool:
        """The peer's message is complete (all chunks may not be consumed yet)."""
        return self._remote_ended or self._error is not None

    @property
    def finished(self) -> bool:
        return self._error is not None or (self._local_ended and self._remote_ended)

    @property
    def failed(self) -> bool:
        """The stream was reset or its connection ended under it."""
        return self._error is not None

    @property
    def message_received(self) -> bool:
        """The peer's whole message (head and END_STREAM) arrived before any failure."""
        return self._head is not None and self._remote_ended

    @property
    def drained(self) -> bool:
        """Both directions ended and the application read every chunk."""
        return self._local_ended and self._remote_ended and not self._chunks

    @property
    def held_bytes(self) -> int:
        """Outbound bytes this stream holds outside the core (reserved or being sent)."""
        return self._reserved + self._pending

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._waiter = None

    async def _wait(self) -> None:
        if self._waiter is None:
            self._waiter = self._host.loop.create_future()
        await self._cancellable(self._waiter)

    async def _cancellable(self, awaitable: Awaitable[_T]) -> _T:
        """Await ``awaitable``; a cancelled task resets the stream with CANCEL (§4.3)."""
        try:
            return await awaitable
        except asyncio.CancelledError:
            if not self.finished:
                self.reset(ErrorCode.CANCEL)
            raise

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _set_held(self, reserved: int, pending: int) -> None:
        delta = reserved + pending - self._reserved - self._pending
        self._reserved, self._pending = reserved, pending
        if delta:
            self._host.hold(delta)

    # ------------------------------------------------------------------ from the connection

    def deliver_head(self, head: Mapping[str, Any], end_stream: bool) -> None:
        """The peer's HEADERS arrived (called by the connection)."""
        self._head = head
        if end_stream:
            self._remote_ended = True
        self._wake()

    def deliver_data(self, data: bytes, wire_length: int, end_stream: bool) -> None:
        """Body bytes (``wire_length`` bytes of credit) arrived (called by the connection)."""
        if data or wire_length:
            self._chunks.append((data, wire_length))
        if end_stream:
            self._remote_ended = True
        self._wake()

    def deliver_error(self, error: BaseException) -> None:
        """The stream failed (reset, or its connection ended): awaiting callers get
        ``error``; unread chunks and held outbound bytes are released."""
        if self._error is None:
            self._error = error
        self._discard_chunks()
        self._set_held(0, 0)
        self._wake()

    def _discard_chunks(self) -> None:
        """Give back the credit of chunks the application will never read."""
        nbytes, wire = self._unacked_bytes, self._unacked
        self._unacked = self._unacked_bytes = 0
        while self._chunks:
            data, wire_length = self._chunks.popleft()
            nbytes += len(data)
            wire += wire_length
        if nbytes or wire:
            self._host.consumed(nbytes, wire)

    # ------------------------------------------------------------------ receiving

    async def receive_head(self) -> Mapping[str, Any]:
        """The peer's head (for a stream we opened, the response head)."""
        while self._head is None:
            self._raise_error()
            await self._wait()
        return self._head

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        while True:
            chunks = self._chunks
            if chunks:
                data, wire_length = chunks.popleft()
                # Credit is returned per batch (the chunks of one read), not per chunk: the
                # batch ends when the queue drains, before this stream could wait again.
                self._unacked += wire_length
                self._unacked_bytes += len(data)
                if not chunks or self._unacked >= _ACK_BATCH:
                    self._host.consumed(self._unacked_bytes, self._unacked)
                    self._unacked = self._unacked_bytes = 0
                return data
            if self._error is not None:
                raise self._error
            if self._remote_ended:
                self._host.settled()
                raise StopAsyncIteration
            await self._wait()

    async def read_body(self, limit: int | None = None) -> bytes:
        """The whole remaining body; over ``limit`` bytes resets MESSAGE_TOO_LARGE and raises."""
        if self._head is None:
            await self.receive_head()
        parts: list[bytes] = []
        total = 0
        async for chunk in self:
            total += len(chunk)
            if limit is not None and total > limit:
                self.reset(ErrorCode.MESSAGE_TOO_LARGE)
                raise StreamResetError(
                    f"stream {self.id}: body exceeds the {limit}-byte limit",
                    stream_id=self.id,
                    error_code=ErrorCode.MESSAGE_TOO_LARGE,
                    remote=False,
                )
            parts.append(chunk)
        return b"".join(parts)

    # ------------------------------------------------------------------ sending

    async def _send_room(self, n: int, *, paced: bool) -> int:
        host = self._host
        while True:
            self._raise_error()
            allowed = host.send_allowance(n, paced=paced)
            if allowed is not None:
                return allowed
            await self._cancellable(host.wait_room())

    async def reserve_outbound(self, nbytes: int, *, timeout: float | None = None) -> bool:
        """Wait until ``nbytes`` more outbound bytes fit under the connection's outbound cap
        (§14.3), then hold that room for the body this stream will send; False when
        ``timeout`` seconds pass first (nothing is reserved then).

        The reservation counts as held for the peer until the body is given to
        :meth:`send_data` (then the body counts until it is queued in the core) or the
        stream ends; a server reserves a result's size before computing it, so finished
        results waiting to be written never take a connection past its cap.
        """
        if nbytes < 0:
            raise UsageError(f"reserve_outbound: expected nbytes >= 0, got {nbytes}")
        host = self._host
        deadline = None if timeout is None else host.loop.time() + timeout
        while True:
            self._raise_error()
            if self._local_ended:
                raise UsageError(f"stream {self.id}: END_STREAM already sent, nothing to reserve")
            if host.outbound_fits(nbytes):
                self._set_held(self._reserved + nbytes, self._pending)
                return True
            if deadline is None:
                await self._cancellable(host.wait_room())
                continue
            left = deadline - host.loop.time()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await self._cancellable(asyncio.wait_for(host.wait_room(), left))

    async def send_headers(self, head: Mapping[str, Any], *, end_stream: bool = False) -> None:
        """Send a HEADERS frame (a response head for a server stream)."""
        self._raise_error()
        await self._send_room(0, paced=False)
        self._raise_error()
        self._host.queue_headers(head, end_stream=end_stream)
        if end_stream:
            self._local_ended = True
            self._set_held(0, 0)
        self._host.settled()

    async def send_data(
        self,
        data: Buffer,
        *,
        end_stream: bool = False,
        codec: Codec | None = None,
        element_width: int = 1,
    ) -> None:
        """Send body bytes, awaiting credit, outbound room and pacing as needed.

        The body is handed to the core in pieces (``TransportOptions.send_chunk``, or one
        frame's worth for a paced stream), each only once the previous ones have left the
        core, so a large body is never buffered whole. Don't mutate ``data`` until this
        returns.
        """
        self._raise_error()
        if self._local_ended:
            raise UsageError(f"stream {self.id}: END_STREAM already sent, cannot send more data")
        view = _bytes_view(data)
        self._count_body(len(view))
        await self._send_body(view, end_stream, codec, element_width)

    async def send_message(
        self,
        head: Mapping[str, Any],
        body: Buffer = b"",
        *,
        codec: Codec | None = None,
        element_width: int = 1,
    ) -> None:
        """Send a whole message: HEADERS, then the body (if any) ending the stream.

        ``"body_len"`` (§10.1.2) is added to the head when a body is given without it. The
        body counts against the outbound cap (§14.3) from the start, also while the HEADERS
        waits for room.
        """
        if not body:
            await self.send_headers(head, end_stream=True)
            return
        view = _bytes_view(body)
        if "body_len" not in head:
            head = {**head, "body_len": len(view)}
        self._raise_error()
        self._count_body(len(view))
        await self.send_headers(head)
        await self._send_body(view, True, codec, element_width)

    def _count_body(self, n: int) -> None:
        """A body of ``n`` bytes is on its way: it replaces (as much of) the reservation
        made for it and counts as held until it is queued in the core (§14.3)."""
        self._set_held(max(0, self._reserved - n), self._pending + n)

    async def _send_body(
        self, view: memoryview, end_stream: bool, codec: Codec | None, element_width: int
    ) -> None:
        host = self._host
        paced = host.is_paced()
        total = len(view)
        offset = 0
        while True:
            n = min(total - offset, host.chunk_size(paced))
            n = await self._send_room(n, paced=paced)
            if paced:
                await self._cancellable(host.wait_paced(n))
            self._raise_error()
            last = offset + n >= total
            host.queue_data(
                view[offset : offset + n],
                end_stream=end_stream and last,
                codec=codec,
                element_width=element_width,
            )
            offset += n
            if end_stream and last:
                self._local_ended = True
                self._set_held(0, 0)
            else:
                self._set_held(self._reserved, self._pending - n)
            host.settled()
            if last:
                return

    def reset(self, error_code: ErrorCode = ErrorCode.CANCEL) -> None:
        """End the stream now with RESET ``error_code``; awaiting callers get StreamResetError."""
        if self.finished:
            return
        error = StreamResetError(
            f"stream {self.id} reset locally with {error_code.name}",
            stream_id=self.id,
            error_code=error_code,
            remote=False,
        )
        self.deliver_error(error)
        self._host.reset(error_code)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self.id} urgency={self.urgency}>"
