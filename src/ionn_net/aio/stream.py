"""Per-stream objects of the asyncio API: :class:`Stream` (we opened it) and
:class:`ServerStream` (the peer opened it; handed to a ``serve()`` handler).

Owns the application's view of one stream: the received head, a queue of received body
chunks (bounded by the stream's receive credit, §7), and the send path that feeds the core
in pieces as credit, the outbound cap and (for upload-urgency streams) the pacer allow, so
that a large body is never copied into the core at once.

Credit goes back to the peer only as the application consumes chunks
(``acknowledge_received_data``). A task cancelled while awaiting on a stream resets it with
CANCEL, so the peer stops working on it (§4.3).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from ionn_net.aio.errors import ConnectionClosedError, StreamResetError
from ionn_net.proto import Codec, ErrorCode, UsageError

if TYPE_CHECKING:
    from ionn_net.aio.connection import AioConnection

__all__ = ["ServerStream", "Stream"]

Buffer = bytes | bytearray | memoryview
_ACK_BATCH = 256 * 1024  # return credit at least this often while a backlog is read


class _BaseStream:
    """State shared by both kinds of stream; see the module docstring."""

    def __init__(
        self, conn: AioConnection, stream_id: int, *, urgency: int, incremental: bool
    ) -> None:
        self._conn = conn
        self.id = stream_id
        self.urgency = urgency
        self.incremental = incremental
        self._head: Mapping[str, Any] | None = None
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._remote_ended = False
        self._local_ended = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._unacked = 0  # wire bytes consumed by the application, credit not yet returned
        self._unacked_bytes = 0

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

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._waiter = None

    async def _wait(self) -> None:
        if self._waiter is None:
            self._waiter = self._conn.loop.create_future()
        waiter = self._waiter
        try:
            await waiter
        except asyncio.CancelledError:
            self._cancelled()
            raise

    def _cancelled(self) -> None:
        if not self.finished:
            self.reset(ErrorCode.CANCEL)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    # ------------------------------------------------------------------ core callbacks

    def _on_head(self, head: Mapping[str, Any], end_stream: bool) -> None:
        self._head = head
        if end_stream:
            self._remote_ended = True
        self._wake()

    def _on_data(self, data: bytes, wire_length: int, end_stream: bool) -> None:
        if data or wire_length:
            self._chunks.append((data, wire_length))
        if end_stream:
            self._remote_ended = True
        self._wake()

    def _on_error(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._discard_chunks()
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
            self._conn._consumed(self.id, nbytes, wire)

    # ------------------------------------------------------------------ receiving

    async def receive_head(self) -> Mapping[str, Any]:
        """The peer's head (for a :class:`Stream`, the response head)."""
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
                    self._conn._consumed(self.id, self._unacked_bytes, self._unacked)
                    self._unacked = self._unacked_bytes = 0
                return data
            if self._error is not None:
                raise self._error
            if self._remote_ended:
                self._conn._stream_maybe_done(self)
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

    async def send_headers(self, head: Mapping[str, Any], *, end_stream: bool = False) -> None:
        """Send a HEADERS frame (a response head for a :class:`ServerStream`)."""
        self._raise_error()
        await self._conn._wait_send_room(self, 0)
        self._raise_error()
        self._conn.core.send_headers(self.id, head, end_stream=end_stream)
        if end_stream:
            self._local_ended = True
        self._conn._sent(self)

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
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        conn = self._conn
        pacer = conn.pacer
        paced = pacer is not None and self.urgency >= pacer.config.min_urgency
        total = len(view)
        offset = 0
        while True:
            if pacer is not None and paced:
                # A few milliseconds of link time per release (see PacingConfig).
                chunk = pacer.chunk_size(conn.send_chunk)
            else:
                chunk = conn.send_chunk
            n = min(total - offset, chunk)
            n = await conn._wait_send_room(self, n, paced=paced)
            if paced:
                await conn._pace(self, n)
            self._raise_error()
            last = offset + n >= total
            conn.core.send_data(
                self.id,
                view[offset : offset + n],
                end_stream=end_stream and last,
                codec=codec,
                element_width=element_width,
            )
            offset += n
            if end_stream and last:
                self._local_ended = True
            conn._sent(self)
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
        self._on_error(error)
        self._conn._reset(self, error_code)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self.id} urgency={self.urgency}>"


class Stream(_BaseStream):
    """A stream this endpoint opened (``AioConnection.open_stream``)."""


class ServerStream(_BaseStream):
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
        super().__init__(conn, stream_id, urgency=urgency, incremental=incremental)
        self._on_head(head, end_stream)

    @property
    def head(self) -> Mapping[str, Any]:
        assert self._head is not None  # set at creation
        return self._head

    @property
    def connection(self) -> AioConnection:
        """The connection this stream belongs to."""
        return self._conn

    async def respond(
        self,
        head: Mapping[str, Any],
        body: Buffer = b"",
        *,
        codec: Codec | None = None,
        element_width: int = 1,
    ) -> None:
        """Send the response message: HEADERS, then the body (if any) ending the stream.

        ``"body_len"`` (§10.1.2) is added to the head when a body is given without it.
        """
        if not body:
            await self.send_headers(head, end_stream=True)
            return
        if "body_len" not in head:
            head = {**head, "body_len": memoryview(body).nbytes}
        await self.send_headers(head)
        await self.send_data(body, end_stream=True, codec=codec, element_width=element_width)


def closed_error(message: str, code: ErrorCode, remote: bool) -> ConnectionClosedError:
    """A ConnectionClosedError for streams that were still running when the connection ended."""
    return ConnectionClosedError(message, error_code=code, remote=remote)
