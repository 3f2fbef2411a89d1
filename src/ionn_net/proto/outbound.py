"""Outbound side of a connection: queued frames, send credit and frame cutting (§7, §8, §12.4).

This module owns what a connection has *to send*: the control-frame FIFO and the stream
queues (through :class:`.Scheduler`), the peer-granted send credit (connection level here,
stream level on each :class:`.Stream`), and the emission of frames in scheduler order:
HEADERS as queued, DATA cut from the queued body into frames of at most ``chunk`` bytes,
within credit, encoded with the requested codec at emission time (falling back to RAW when
compression does not pay, §12.4). Cutting late keeps priorities effective: nothing is
committed to a frame before the scheduler picks it. :meth:`Outbound.fill` emits a batch
(for one vectored write) in exactly the order single frames would leave.
"""

from __future__ import annotations

from ionn_net.config import SETTING_DEFAULTS, Limits, Setting
from ionn_net.proto.codecs import Codec, encode_if_smaller
from ionn_net.proto.scheduler import URGENCY_LEVELS, Scheduler
from ionn_net.proto.streams import HalfState, OutChunk, Stream
from ionn_net.proto.wire import FLAG_END_STREAM, FRAME_HEADER, HEADER_SIZE

__all__ = ["FrameParts", "Outbound"]

#: A frame as (header or whole control frame, payload) -- two writes, no join needed.
FrameParts = tuple[bytes, bytes | memoryview]


class Outbound:
    """Control FIFO + stream queues + connection send credit of one endpoint."""

    __slots__ = (
        "body_bytes",
        "chunk",
        "level",
        "min_gain",
        "opened_sent",
        "opening",
        "scheduler",
        "send_limit",
        "sent",
        "sent_by_urgency",
    )

    def __init__(self, limits: Limits) -> None:
        self.scheduler = Scheduler()
        self.level = limits.compression_level
        self.min_gain = limits.min_compression_gain
        self.chunk = limits.max_chunk
        self.send_limit = SETTING_DEFAULTS[Setting.INITIAL_CONNECTION_CREDIT]
        self.sent = 0  # cumulative DATA wire bytes sent (§7)
        self.body_bytes = 0  # queued, not yet framed body bytes of all streams
        # Cumulative wire bytes of stream frames (HEADERS and DATA, header included) per
        # urgency: what a pacer of some urgencies sent, as against everything else. Body
        # sizes say nothing of it once frames are compressed (§12.4).
        self.sent_by_urgency = [0] * URGENCY_LEVELS
        # Our streams whose opening HEADERS is still queued, in id order. §6.1.1 makes the
        # peer refuse an id lower than one it has seen, so opening HEADERS leave in id
        # order, ahead of all stream DATA (they are tens of bytes): a query opened behind an
        # upload's unsent HEADERS then waits for those HEADERS only, not for upload DATA.
        self.opening: dict[int, Stream] = {}
        # Highest id of our streams whose opening HEADERS is no longer queued (emitted, or
        # dropped unseen by a reset).
        self.opened_sent = 0

    # -- control frames

    def push_control(self, frame: bytes) -> None:
        self.scheduler.push_control(frame)

    @property
    def control_frames(self) -> int:
        return len(self.scheduler.control)

    @property
    def buffered_bytes(self) -> int:
        return self.scheduler.control_bytes + self.body_bytes

    def clear_streams(self) -> None:
        """Drop all stream output (a connection error). Control frames already queued stay,
        so a preface and SETTINGS not yet written still precede the GOAWAY (§2, §5.2)."""
        self.scheduler.clear_streams()
        self.opening.clear()
        self.body_bytes = 0

    # -- streams

    def queue_headers(self, stream: Stream, frame: bytes, *, opening: bool = False) -> None:
        stream.pending_headers = frame
        if opening:
            self.opening[stream.stream_id] = stream
        self.scheduler.add(stream)

    def queue_data(
        self, stream: Stream, data: memoryview, codec: Codec, end_stream: bool, align: int
    ) -> None:
        if not data and not end_stream:
            return
        if not data and stream.outq:
            stream.outq[-1].end_stream = True  # no extra empty frame needed
        else:
            stream.outq.append(OutChunk(data, codec, end_stream, align))
        stream.out_bytes += len(data)
        self.body_bytes += len(data)
        self.scheduler.add(stream)

    def drop(self, stream: Stream) -> None:
        """Forget the pending output of a reset stream."""
        self.body_bytes -= stream.out_bytes
        stream.out_bytes = 0
        stream.outq.clear()
        stream.pending_headers = None
        sid = stream.stream_id
        if self.opening.pop(sid, None) is not None and sid > self.opened_sent:
            self.opened_sent = sid  # never seen by the peer: nothing left to wait for
        self.scheduler.remove(stream)

    def credit(self, stream: Stream) -> int:
        return max(0, min(stream.send_limit - stream.sent, self.send_limit - self.sent))

    def eligible(self, stream: Stream) -> bool:
        """A frame is ready and, for non-empty DATA, stream and connection credit remain."""
        if stream.pending_headers is not None:
            return stream.stream_id not in self.opening  # opening ones go first, in order
        chunk = stream.outq[0]
        if chunk.offset == len(chunk.data):
            return True  # an empty END_STREAM frame needs no credit
        return stream.send_limit > stream.sent and self.send_limit > self.sent

    def has_output(self, streams_allowed: bool) -> bool:
        if self.scheduler.control:
            return True
        if streams_allowed and self.opening:
            return True
        return streams_allowed and self.scheduler.any_eligible(self.eligible)

    def next_parts(self, streams_allowed: bool) -> tuple[FrameParts, Stream | None] | None:
        """The next frame and the stream it belongs to (``None`` for control frames)."""
        scheduler = self.scheduler
        if scheduler.control:
            control = scheduler.pop_control()
            assert control is not None
            return (control, b""), None
        if not streams_allowed:
            return None
        if self.opening:
            stream: Stream | None = next(iter(self.opening.values()))
        else:
            stream = scheduler.pick(self.eligible)
        if stream is None:
            return None
        headers = stream.pending_headers
        if headers is not None:
            stream.pending_headers = None
            sid = stream.stream_id
            if self.opening.pop(sid, None) is not None and sid > self.opened_sent:
                self.opened_sent = sid
            if not stream.outq and stream.local is HalfState.ENDED:
                stream.end_emitted = True
            self.sent_by_urgency[stream.urgency] += len(headers)
            parts: FrameParts = (headers, b"")
        else:
            parts = self._emit_data(stream)
        if not stream.outq and stream.pending_headers is None:
            scheduler.remove(stream)
        return parts, stream

    def fill(
        self, out: list[bytes | memoryview], budget: int, streams_allowed: bool
    ) -> tuple[int, bool, Stream | None]:
        """Append frames to ``out`` (header, payload, ...) in :meth:`next_parts` order.

        Stops once ``budget`` bytes are taken, when nothing is ready, or right after a
        stream emitted its last queued frame (returned, for the connection's bookkeeping,
        which may queue a RESET that must come next). Returns (bytes taken, whether a
        stream frame was taken, that stream or ``None``).
        """
        total = 0
        streamed = False
        scheduler = self.scheduler
        eligible = self.eligible
        emit = self._emit_data
        while total < budget:
            opening = bool(self.opening)  # then the frame is an opening HEADERS, not a pick
            nxt = self.next_parts(streams_allowed)
            if nxt is None:
                break
            (head, payload), stream = nxt
            out.append(head)
            total += len(head)
            if payload:
                out.append(payload)
                total += len(payload)
            if stream is None:
                continue
            streamed = True
            if not stream.scheduled:
                return total, True, stream  # its output ended
            if (
                opening
                or self.opening
                or stream.pending_headers is not None
                or (stream.incremental and not scheduler.alone(stream))
            ):
                continue
            # With no opening HEADERS queued (they go first), the stream the scheduler
            # picked stays its pick while it is eligible: within one call nothing else becomes
            # eligible (no input, no new control frames), a FIFO stream keeps its place and
            # a round-robin stream alone in its class has no one to rotate with. So its next
            # frames are cut without asking the scheduler (§8.2).
            while total < budget and eligible(stream):
                chunk = stream.outq[0]
                if chunk.codec is Codec.RAW and chunk.offset < len(chunk.data):
                    total += self._emit_raw_run(stream, chunk, budget - total, out)
                else:
                    head, payload = emit(stream)
                    out.append(head)
                    total += len(head)
                    if payload:
                        out.append(payload)
                        total += len(payload)
                if not stream.outq:
                    scheduler.remove(stream)
                    return total, True, stream
        return total, streamed, None

    def _emit_raw_run(
        self, stream: Stream, chunk: OutChunk, budget: int, out: list[bytes | memoryview]
    ) -> int:
        """Cut RAW frames from ``chunk`` (the stream's first) while budget, credit and the
        chunk last: the frames :meth:`_emit_data` would cut one call at a time, with the
        bookkeeping done once. Returns the bytes appended to ``out``."""
        data = chunk.data
        n = len(data)
        start = off = chunk.offset
        credit = min(stream.send_limit - stream.sent, self.send_limit - self.sent)
        frame = self.chunk
        align = chunk.align
        sid = stream.stream_id
        end_flag = FLAG_END_STREAM if chunk.end_stream else 0
        pack = FRAME_HEADER.pack
        append = out.append
        taken = 0
        while taken < budget and credit > 0 and off < n:
            size = min(n - off, frame, credit)
            if size < n - off and size >= align:
                size -= size % align  # keep frames on element boundaries
            stop = off + size
            append(pack(0, end_flag if stop == n else 0, 0, 0, sid, size, size))
            append(data[off:stop])
            off = stop
            credit -= size
            taken += size + HEADER_SIZE
        sent = off - start
        self.sent_by_urgency[stream.urgency] += taken
        chunk.offset = off
        stream.sent += sent
        self.sent += sent
        stream.out_bytes -= sent
        self.body_bytes -= sent
        if off == n:
            stream.outq.popleft()
            if chunk.end_stream:
                stream.end_emitted = True
        return taken

    def _emit_data(self, stream: Stream) -> FrameParts:
        chunk = stream.outq[0]
        remaining = len(chunk.data) - chunk.offset
        size = min(
            remaining, self.chunk, stream.send_limit - stream.sent, self.send_limit - self.sent
        )
        if size < remaining and size >= chunk.align:
            size -= size % chunk.align  # keep frames on element boundaries (shuffle)
        piece = chunk.data[chunk.offset : chunk.offset + size]
        chunk.offset += size
        end = chunk.end_stream and chunk.offset == len(chunk.data)
        if chunk.offset == len(chunk.data):
            stream.outq.popleft()
        payload: bytes | memoryview = piece
        codec = Codec.RAW
        if chunk.codec is not Codec.RAW:
            # Never longer than ``piece``, so the credit reserved above is enough.
            codec, payload = encode_if_smaller(piece, chunk.codec, self.level, self.min_gain)
        wire = len(payload)
        self.sent_by_urgency[stream.urgency] += HEADER_SIZE + wire
        stream.sent += wire
        self.sent += wire
        stream.out_bytes -= size
        self.body_bytes -= size
        if end:
            stream.end_emitted = True
        flags = FLAG_END_STREAM if end else 0
        return FRAME_HEADER.pack(0, flags, codec, 0, stream.stream_id, wire, size), payload
