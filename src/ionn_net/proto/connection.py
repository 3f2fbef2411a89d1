"""The sans-I/O IONN-NET/1 connection: bytes in, events and bytes out (protocol.md).

This module owns :class:`Connection`, the class the I/O layer uses: the receive path (the
preface and version negotiation of §2, one handler per frame type in a dispatch dict, the
stream rules of §6, credit checks of §7, the envelope checks of §10.1.2) and the public
sending API (streams, HEADERS, DATA, RESET, PING, CREDIT via acknowledgements, GOAWAY).
Shared state, the connection state table, error exits, drain, output and timers live in
:mod:`.endpoint` (:class:`~.endpoint.ConnectionBase`); queued output and frame cutting in
:mod:`.outbound`. Nothing here performs I/O or reads a clock: time arrives as ``now``
(monotonic seconds).

Events: every :class:`.DataReceived` must be handed back through
:meth:`Connection.acknowledge_received_data` once consumed (even if its stream was reset
meanwhile): that is what returns flow-control credit to the peer. A local ``close()`` or
``reset_stream()`` produces no event.

Three-call contract (for the I/O layer):

1. feed input with :meth:`Connection.receive_data` (or fire timers with
   :meth:`Connection.handle_timer`, or call any ``send_*``/``open_stream``/``close``);
2. then drain the output: :meth:`Connection.data_to_send` (or :meth:`Connection.next_frame`
   one frame at a time, which keeps priorities effective below the socket);
3. then handle the events the call returned, in order, and re-arm the timer from
   :meth:`Connection.get_timer`.

Once :attr:`Connection.closed` is true and nothing is left to send, close the transport.
``receive_data`` never raises for anything the peer sends: a connection error queues
GOAWAY and ends the returned events with :class:`.ConnectionTerminated` carrying the typed
exception; a stream error queues RESET and reports :class:`.StreamReset` (``remote=False``).
Local misuse raises :class:`.UsageError` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ionn_net.config import SETTING_RANGES, Limits, Setting
from ionn_net.proto._frozen import positional_factory
from ionn_net.proto.codecs import SHUFFLE_WIDTH, Codec, decode
from ionn_net.proto.endpoint import (
    CONNECTION_TRANSITIONS,
    DEFAULT_LIMITS,
    FRAME_KINDS,
    MAX_OUTSTANDING_PINGS,
    ConnectionBase,
    ConnectionState,
)
from ionn_net.proto.envelope import received_body_len, sendable_body_len, sendable_head
from ionn_net.proto.errors import (
    EnhanceYourCalm,
    ErrorCode,
    FlowControlError,
    InternalError,
    MessageTooLarge,
    ProtocolError,
    ProtocolViolation,
    RefusedStream,
    UsageError,
    VersionMismatch,
    error_code_from_wire,
    exception_for,
)
from ionn_net.proto.events import (
    DataReceived,
    Event,
    GoAwayReceived,
    HeadersReceived,
    PingAcked,
    PingReceived,
    PrefaceReceived,
    SettingsAcked,
    SettingsReceived,
    StreamReset,
)
from ionn_net.proto.flowtune import grown_window
from ionn_net.proto.streams import FrameKind, HalfState, Stream
from ionn_net.proto.wire import (
    MAX_CREDIT,
    MAX_STREAM_ID,
    PREFACE,
    PREFACE_MAGIC,
    CreditFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    Preface,
    RawData,
    ResetFrame,
    SettingsFrame,
    UnknownFrame,
    encode_preface,
    parse_preface,
    serialize,
)

__all__ = ["CONNECTION_TRANSITIONS", "Connection", "ConnectionState"]

_S = ConnectionState
_BODY = HalfState.BODY
_data_event = positional_factory(DataReceived)  # hot path: see proto._frozen


class Connection(ConnectionBase):
    """One endpoint of an IONN-NET/1 connection, without I/O (see the module docstring).

    ``client`` selects stream-id parity and who speaks first. ``versions`` is the offered
    range (client) or the supported range (server). ``now`` starts the handshake timer.
    """

    def __init__(
        self,
        *,
        client: bool,
        limits: Limits = DEFAULT_LIMITS,
        now: float = 0.0,
        versions: tuple[int, int] = (1, 1),
    ) -> None:
        super().__init__(client=client, limits=limits, now=now, versions=versions)
        self._handlers: dict[type, Callable[[Any], None]] = {
            DataFrame: self._on_data,
            tuple: self._on_raw_data,
            HeadersFrame: self._on_headers,
            ResetFrame: self._on_reset,
            SettingsFrame: self._on_settings,
            PingFrame: self._on_ping,
            GoAwayFrame: self._on_goaway,
            CreditFrame: self._on_credit,
            UnknownFrame: self._on_unknown,
        }
        self._receivers: dict[ConnectionState, Callable[[memoryview], None]] = {
            _S.AWAIT_PREFACE: self._recv_preface,
            _S.AWAIT_SETTINGS: self._recv_frames,
            _S.OPEN: self._recv_frames,
            _S.CLOSING: self._recv_frames,
        }

    # ----------------------------------------------------------------------- input

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> list[Event]:
        """Process bytes from the peer; never raises for peer misbehaviour (see module doc)."""
        if self._state is ConnectionState.CLOSED:
            return []
        events: list[Event] = []
        self._events = events
        self._now = now
        self._last_recv = now
        # Replies are capped only while earlier ones are still undrained (§14.3).
        self._reply_cap_active = self._out.control_frames > 0
        try:
            self._receivers[self._state](memoryview(data).cast("B"))
            self._finish_drain(report=True)
        except ProtocolError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug in the core must not escape for peer bytes
            self._fail(InternalError(f"internal error while processing peer bytes: {exc!r}"))
        return events

    def _recv_preface(self, mv: memoryview) -> None:
        need = PREFACE.size - len(self._preface_buf)
        self._preface_buf += mv[:need]
        got = bytes(self._preface_buf[:4])
        if not PREFACE_MAGIC.startswith(got):
            # §2.2: a server sends nothing to a peer that does not speak the protocol.
            raise ProtocolViolation(f"preface: expected b'IONN', got {got!r}")
        if len(self._preface_buf) < PREFACE.size:
            return
        self._on_preface(parse_preface(self._preface_buf))
        self._preface_buf = bytearray()
        if len(mv) > need:
            self._recv_frames(mv[need:])

    def _on_preface(self, pre: Preface) -> None:
        lo, hi = self._versions
        if self.client:
            if pre.min_version != pre.max_version or not lo <= pre.min_version <= hi:
                raise VersionMismatch(
                    f"server preface: expected one version in [{lo}, {hi}], "
                    f"got [{pre.min_version}, {pre.max_version}]"
                )
            self.version = pre.min_version
        else:
            best = min(hi, pre.max_version)
            if best < max(lo, pre.min_version):
                # §2.4: our own range, then GOAWAY VERSION_MISMATCH (queued by _fail).
                self._out.push_control(encode_preface(lo, hi))
                self._preface_sent = True
                raise VersionMismatch(
                    f"client preface: expected a range overlapping [{lo}, {hi}], "
                    f"got [{pre.min_version}, {pre.max_version}]"
                )
            self.version = best
            self._out.push_control(encode_preface(best, best))
            self._preface_sent = True
            self._queue_settings()
        self._set_state(ConnectionState.AWAIT_SETTINGS)
        self._events.append(PrefaceReceived(version=self.version))

    def _recv_frames(self, mv: memoryview) -> None:
        dec = self._decoder
        dec.push(mv)
        handlers = self._handlers
        while (frame := dec.pop_item()) is not None:
            if self._state is ConnectionState.AWAIT_SETTINGS:
                self._first_frame(frame)
            try:
                handlers[type(frame)](frame)
            except ProtocolError as exc:
                if exc.stream_id is None:
                    raise
                self._stream_error(exc)
            if self._state is ConnectionState.CLOSED:
                dec.close()
                return

    def _first_frame(self, frame: Frame | RawData) -> None:
        if not isinstance(frame, SettingsFrame) or frame.ack:
            name = "DataFrame" if isinstance(frame, tuple) else type(frame).__name__
            raise ProtocolViolation(
                f"first frame: expected SETTINGS without ACK, got {name}"
                f"{' with ACK' if isinstance(frame, SettingsFrame) else ''}"
            )
        self._set_state(ConnectionState.OPEN)

    def _on_data(self, f: DataFrame) -> None:
        self._on_raw_data((f.stream_id, f.end_stream, f.codec, f.decoded_length, f.data))

    def _on_raw_data(self, item: RawData) -> None:
        sid, end, codec, _, payload = item
        n = len(payload)
        stream = self._streams.get(sid)
        if stream is None:
            self._on_data_closed(sid, n)
            return
        self._recv_conn += n
        stream.received += n
        if self._recv_conn > self._recv_conn_limit or stream.received > stream.recv_limit:
            raise FlowControlError(
                f"DATA frame on stream {sid}: credit exceeded (stream {stream.received} of "
                f"{stream.recv_limit}, connection {self._recv_conn} of {self._recv_conn_limit})"
            )
        total = stream.body_received + n
        if not end and stream.remote is _BODY and codec == 0 and n > 0 and total < stream.body_len:
            # Fast path: a RAW middle frame of a body (no table change, nothing to check).
            stream.body_received = total
            data = payload
        else:
            try:
                data = self._accept_body(stream, item)
            except ProtocolError as exc:
                if exc.stream_id is not None:
                    self._consume_conn(n)  # not delivered, so the application will not ack it
                raise
        self._last_activity = self._now
        if not data and not end:  # nothing to deliver: return its credit ourselves
            self.acknowledge_received_data(sid, n)
            return
        self._events.append(_data_event(sid, data, n, end))
        if end and stream.finished:
            self._forget(stream)

    def _on_data_closed(self, sid: int, n: int) -> None:
        if self._is_idle(sid):
            raise ProtocolViolation(f"DATA frame on stream {sid}: stream is idle (no HEADERS)")
        self._recv_conn += n
        if self._recv_conn > self._recv_conn_limit:
            raise FlowControlError(
                f"DATA frame on stream {sid}: connection credit {self._recv_conn_limit} "
                f"exceeded ({self._recv_conn} bytes)"
            )
        self._consume_conn(n)  # a closed stream's DATA is ignored; its credit returns (§5.3)

    def _accept_body(self, stream: Stream, item: RawData) -> bytes:
        sid, end, codec, dlen, payload = item
        if not payload and not end:
            self._useless_frame(f"empty DATA on stream {sid}")
        stream.apply_remote(FrameKind.DATA_END if end else FrameKind.DATA, "DATA")
        data = (
            payload
            if codec == Codec.RAW
            else decode(payload, codec, dlen, self.limits.max_decoded_frame_size)
        )
        stream.body_received += len(data)
        expected = stream.body_len
        if stream.body_received > expected:
            raise MessageTooLarge(
                f"DATA frame on stream {sid}: body exceeds its body_len {expected} "
                f"({stream.body_received} bytes)",
                stream_id=sid,
            )
        if end and stream.body_received < expected:
            raise ProtocolViolation(
                f"DATA+END_STREAM on stream {sid}: body ends at {stream.body_received} bytes, "
                f"short of body_len {expected}",
                stream_id=sid,
            )
        return data

    def _on_headers(self, f: HeadersFrame) -> None:
        sid = f.stream_id
        stream = self._streams.get(sid)
        if stream is None:
            if sid & 1 == self._local_parity:
                if sid > self._last_local_id:
                    raise ProtocolViolation(
                        f"HEADERS frame on stream {sid}: a peer may not open a stream of our parity"
                    )
                return  # a stream of ours that is closed: ignored (§6.2.2)
            if sid <= self._last_peer_id:
                raise ProtocolViolation(
                    f"HEADERS frame on stream {sid}: expected a new stream id greater than "
                    f"{self._last_peer_id} (§6.1.1)"
                )
            self._open_peer_stream(f)
            return
        if f.stream_error is not None:
            raise f.stream_error
        stream.apply_remote(FrameKind.HEADERS_END if f.end_stream else FrameKind.HEADERS, "HEADERS")
        stream.body_len = (
            received_body_len(sid, f.head, f.end_stream, self.limits.max_message_size) or 0
        )
        self._last_activity = self._now
        self._events.append(self._headers_event(f))
        if f.end_stream and stream.finished:
            self._forget(stream)

    @staticmethod
    def _headers_event(f: HeadersFrame) -> HeadersReceived:
        return HeadersReceived(
            stream_id=f.stream_id,
            head=f.head,
            urgency=f.urgency,
            incremental=f.incremental,
            end_stream=f.end_stream,
        )

    def _open_peer_stream(self, f: HeadersFrame) -> None:
        sid = f.stream_id
        self._last_peer_id = sid
        if self._goaway_sent is not None:
            raise RefusedStream(
                f"HEADERS frame on stream {sid}: GOAWAY sent with last stream {self._goaway_sent}",
                stream_id=sid,
            )
        if self._peer_count >= self.limits.max_concurrent_streams:
            raise RefusedStream(
                f"HEADERS frame on stream {sid}: MAX_CONCURRENT_STREAMS "
                f"{self.limits.max_concurrent_streams} reached",
                stream_id=sid,
            )
        if f.stream_error is not None:
            raise f.stream_error
        body_len = received_body_len(sid, f.head, f.end_stream, self.limits.max_message_size)
        stream = self._new_stream(sid, urgency=f.urgency, incremental=f.incremental, local=False)
        stream.remote = HalfState.ENDED if f.end_stream else HalfState.BODY
        stream.body_len = body_len or 0
        self._last_accepted_peer_id = sid
        self._events.append(self._headers_event(f))

    def _on_reset(self, f: ResetFrame) -> None:
        if not self._reset_bucket.allow(self._now):
            raise EnhanceYourCalm(
                f"RESET frames: expected at most {self.limits.reset_burst} then "
                f"{self.limits.reset_rate_per_s}/s, got more"
            )
        sid = f.stream_id
        stream = self._streams.get(sid)
        if stream is None:
            if self._is_idle(sid):
                raise ProtocolViolation(f"RESET frame on stream {sid}: stream is idle")
            return
        self._drop_stream(stream)
        code = error_code_from_wire(f.error_code)
        self._events.append(StreamReset(stream_id=sid, error_code=code, remote=True))

    def _on_settings(self, f: SettingsFrame) -> None:
        if f.ack:
            if not self._settings_pending:
                self._useless_frame("SETTINGS ACK without pending SETTINGS")
                return
            sent_at = self._settings_pending.popleft()
            self._rtt.update(self._now - sent_at)  # a round-trip sample for credit tuning
            self._own_settings_acked = True
            self._events.append(SettingsAcked())
            return
        self._count_control("SETTINGS")
        for ident, value in f.entries:
            self._apply_setting(ident, value)
        self._reply(serialize(SettingsFrame(ack=True)))
        applied = dict(f.entries)  # in order: a repeated id keeps its last value
        self._events.append(SettingsReceived(settings=dict(sorted(applied.items()))))

    def _apply_setting(self, ident: int, value: int) -> None:
        try:
            setting = Setting(ident)
        except ValueError:
            return  # unknown ids are ignored (§4.4)
        lo, hi = SETTING_RANGES[setting]
        if not lo <= value <= hi:
            raise ProtocolViolation(
                f"SETTINGS {setting.name}: expected a value in [{lo}, {hi}], got {value}"
            )
        self._peer[setting] = value
        if setting is Setting.INITIAL_STREAM_CREDIT:  # §7.4
            for stream in self._streams.values():
                stream.send_limit = max(stream.send_limit, value)
        elif setting is Setting.INITIAL_CONNECTION_CREDIT:
            self._out.send_limit = max(self._out.send_limit, value)
        self._out.chunk = self._chunk_size()

    def _on_ping(self, f: PingFrame) -> None:
        if f.ack:
            sent_at = self._pings.pop(f.payload, None)
            if sent_at is None:
                self._useless_frame("PING ACK matching no PING")
                return
            if f.payload == self._keepalive:
                # Sent with the time of its timer, so a round-trip sample (ping() is not:
                # the core learns the time only from its inputs).
                self._rtt.update(self._now - sent_at)
                self._keepalive = None
            self._events.append(PingAcked(payload=f.payload))
            return
        self._count_control("PING")
        self._reply(serialize(PingFrame(ack=True, payload=f.payload)))
        self._events.append(PingReceived(payload=f.payload))

    def _on_goaway(self, f: GoAwayFrame) -> None:
        last = f.last_stream_id
        if self._goaway_received is not None and last > self._goaway_received:
            raise ProtocolViolation(
                f"GOAWAY: expected last_stream_id <= {self._goaway_received}, got {last}"
            )
        self._goaway_received = last
        code = error_code_from_wire(f.error_code)
        self._events.append(GoAwayReceived(last_stream_id=last, error_code=code, debug=f.debug))
        if code is not ErrorCode.NO_ERROR:  # §13.3: a connection error reported by the peer
            exc = exception_for(code)(f"peer sent GOAWAY {code.name}: {f.debug}")
            self._shutdown(exc, remote=True, send_goaway=False)
            return
        # §13.2: our streams above last_stream_id were not processed (safe to retry).
        for stream in [s for s in self._streams.values() if s.local_initiated]:
            if stream.stream_id > last:
                self._drop_stream(stream)
                self._events.append(
                    StreamReset(
                        stream_id=stream.stream_id,
                        error_code=ErrorCode.REFUSED_STREAM,
                        remote=True,
                    )
                )
        if self._state is ConnectionState.OPEN:
            self._closing_remote = True
            self._set_state(ConnectionState.CLOSING)

    def _on_credit(self, f: CreditFrame) -> None:
        sid = f.stream_id
        if f.limit > MAX_CREDIT:
            raise ProtocolViolation(
                f"CREDIT frame on stream {sid}: expected a limit <= 2^62, got {f.limit}"
            )
        if sid == 0:
            if f.limit > self._out.send_limit:
                self._out.send_limit = f.limit
            else:
                self._useless_frame("CREDIT not raising the connection limit")
            return
        stream = self._streams.get(sid)
        if stream is None:
            if self._is_idle(sid):
                raise ProtocolViolation(f"CREDIT frame on stream {sid}: stream is idle")
            return
        if f.limit > stream.send_limit:
            stream.send_limit = f.limit
        else:
            self._useless_frame(f"CREDIT not raising the limit of stream {sid}")

    def _on_unknown(self, f: UnknownFrame) -> None:
        self._useless_frame(f"unknown frame type 0x{f.type:02x}")

    def close(self, error_code: ErrorCode = ErrorCode.NO_ERROR, debug: str = "") -> None:
        """Send GOAWAY (§13). NO_ERROR drains accepted streams first; other codes end now.

        Before the handshake completes there is nothing to drain: the connection closes at
        once. A local close is not reported as an event; watch :attr:`closed`.
        """
        if self._state is ConnectionState.CLOSED:
            return
        code = ErrorCode(error_code)
        if code is not ErrorCode.NO_ERROR:
            self._events = []
            self._shutdown(
                exception_for(code)(debug or f"closed locally with {code.name}"),
                remote=False,
                send_goaway=True,
            )
            return
        if self._state is not ConnectionState.OPEN and self._state is not _S.CLOSING:
            self._abandon_all()
            if self._preface_sent:
                self._push_goaway(code, debug)
            self._set_state(ConnectionState.CLOSED)
            return
        if self._goaway_sent is None:
            self._push_goaway(code, debug)
        if self._state is ConnectionState.OPEN:
            self._set_state(ConnectionState.CLOSING)
        self._finish_drain(report=False)

    # ---------------------------------------------------------------- flow control

    def acknowledge_received_data(
        self, stream_id: int, wire_length: int, *, now: float | None = None
    ) -> None:
        """The application consumed ``wire_length`` bytes of DATA (a DataReceived's).

        Every :class:`.DataReceived` must be acknowledged exactly once, even when the stream
        was reset meanwhile; bytes never reported as events are returned by the core. CREDIT
        (absolute: consumed + window) is queued once half a window has been consumed (§7.3).

        ``now`` (monotonic seconds, when the application consumed the data) enables window
        auto-tuning: a stream or connection window whose previous half was consumed within
        about two round trips doubles, up to ``Limits.max_stream_credit`` /
        ``max_connection_credit`` (see :mod:`.flowtune`). Without it windows stay fixed.
        """
        if self._state is ConnectionState.CLOSED:
            return
        outstanding = self._recv_conn - self._consumed_conn
        if not 0 <= wire_length <= outstanding:
            raise UsageError(
                f"acknowledge_received_data: expected 0..{outstanding} bytes, got {wire_length}"
            )
        self._consume_conn(wire_length, now)
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote is HalfState.ENDED:
            return
        consumed = stream.consumed = min(stream.consumed + wire_length, stream.received)
        window = stream.window
        if consumed + window - stream.recv_limit >= window >> 1:
            if now is not None:
                window = stream.window = grown_window(
                    window, self._max_stream_window, stream.credit_at, now, self._rtt.value
                )
                stream.credit_at = now
            stream.recv_limit = target = min(consumed + window, MAX_CREDIT)
            self._out.push_control(serialize(CreditFrame(stream_id=stream_id, limit=target)))

    # ---------------------------------------------------------------- sending API

    def _headers_bytes(self, stream: Stream, raw: bytes, end_stream: bool) -> bytes:
        frame = HeadersFrame(
            stream_id=stream.stream_id,
            urgency=stream.urgency,
            incremental=stream.incremental,
            end_stream=end_stream,
            raw=raw,
        )
        return serialize(frame)

    def open_stream(
        self,
        head: Mapping[str, object],
        *,
        urgency: int = 3,
        incremental: bool = False,
        end_stream: bool = False,
    ) -> int:
        """Open a stream with a HEADERS frame carrying ``head``; returns its id (§6.1)."""
        if self._goaway_received is not None:
            raise UsageError("open_stream: the peer sent GOAWAY; open a new connection")
        if self._state is _S.CLOSED or self._state is _S.CLOSING:
            raise UsageError(f"open_stream: connection is {self._state.value}")
        if self.client and not self._preface_sent:
            raise UsageError("open_stream: call initiate() first")
        if type(urgency) is not int or not 0 <= urgency <= 7:
            raise UsageError(f"open_stream: expected urgency 0-7, got {urgency!r}")
        if self.available_streams <= 0:
            raise UsageError(
                f"open_stream: the peer allows {self._peer[Setting.MAX_CONCURRENT_STREAMS]} "
                "concurrent streams; wait for one to close"
            )
        sid = self._next_local_id
        if sid > MAX_STREAM_ID:
            raise UsageError("open_stream: stream ids exhausted; open a new connection (§6.1.2)")
        raw = sendable_head(head, self._peer[Setting.MAX_HEADER_SIZE])
        body_len = sendable_body_len(head, end_stream, self._peer[Setting.MAX_MESSAGE_SIZE])
        stream = self._new_stream(sid, urgency=urgency, incremental=incremental, local=True)
        stream.local = stream.check_local(FRAME_KINDS[True, end_stream])
        stream.send_body_len = body_len
        self._last_local_id = sid
        self._next_local_id += 2
        self._out.queue_headers(stream, self._headers_bytes(stream, raw, end_stream), opening=True)
        return sid

    def _sendable(self, stream_id: int) -> Stream:
        stream = self._streams.get(stream_id)
        if stream is None or self._state is ConnectionState.CLOSED:
            raise UsageError(
                f"stream {stream_id}: cannot send, stream is {self.stream_state(stream_id).value}"
            )
        return stream

    def send_headers(
        self, stream_id: int, head: Mapping[str, object], *, end_stream: bool = False
    ) -> None:
        """Send the HEADERS of our message on an existing (peer-opened) stream."""
        stream = self._sendable(stream_id)
        nxt = stream.check_local(FRAME_KINDS[True, end_stream])
        raw = sendable_head(head, self._peer[Setting.MAX_HEADER_SIZE])
        body_len = sendable_body_len(head, end_stream, self._peer[Setting.MAX_MESSAGE_SIZE])
        stream.local = nxt
        stream.send_body_len = body_len
        self._out.queue_headers(stream, self._headers_bytes(stream, raw, end_stream))

    def send_data(
        self,
        stream_id: int,
        data: bytes | memoryview,
        *,
        end_stream: bool = False,
        codec: Codec | None = None,
        element_width: int = 1,
    ) -> None:
        """Queue body bytes; frames are cut and encoded when emitted (§8.3, §12.4).

        Frames are at most ``min(limits.max_chunk, peer MAX_FRAME_SIZE)`` bytes before
        encoding and are cut on multiples of ``element_width`` (or of the codec's shuffle
        width). ``codec=None`` sends RAW; a codec falls back to RAW per frame when it saves
        less than ``limits.min_compression_gain``. Read-only buffers are referenced, not
        copied: do not modify them until sent; writable buffers are copied.
        """
        stream = self._sendable(stream_id)
        nxt = stream.check_local(FRAME_KINDS[False, end_stream])
        mv = memoryview(data).cast("B")
        if not mv.readonly:
            mv = memoryview(bytes(mv))
        queued = stream.send_body_queued + len(mv)
        limit = stream.send_body_len if stream.send_body_len is not None else 0
        if queued > limit or (end_stream and queued != limit):
            raise UsageError(
                f"send_data on stream {stream_id}: body_len is {limit}, "
                f"got {queued} bytes{' at end_stream' if end_stream else ''}"
            )
        chosen = Codec.RAW if codec is None else Codec(codec)
        align = SHUFFLE_WIDTH[chosen] or max(1, int(element_width))
        stream.local = nxt
        stream.send_body_queued = queued
        self._out.queue_data(stream, mv, chosen, end_stream, align)

    def reset_stream(
        self,
        stream_id: int,
        error_code: ErrorCode = ErrorCode.CANCEL,
        *,
        after_pending: bool = False,
    ) -> None:
        """Abort a stream with RESET (§4.3); a stream already closed is left alone.

        A stream we opened whose HEADERS has not been sent yet is simply dropped: the peer
        has never seen it, and a RESET on a stream idle to the peer is a PROTOCOL_ERROR
        (§6.2.2). Skipping its id is allowed (ids only need to increase, §6.1.1).

        ``after_pending`` (for a response queued before the request body was read, §10.1.1):
        when our whole message is queued (END_STREAM), the RESET is sent only after its
        last frame, so the peer gets the answer first and then learns that the rest of its
        own message is not wanted. Control frames go first (§8.2), so an immediate RESET
        would overtake and void the queued answer.
        """
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._is_idle(stream_id):
                raise UsageError(f"reset_stream: stream {stream_id} is idle")
            return
        if self._state is ConnectionState.CLOSED:
            return
        if after_pending and stream.local is HalfState.ENDED and stream.has_output:
            stream.reset_after = int(error_code)
            return
        unseen = stream.local_initiated and stream.pending_headers is not None
        self._drop_stream(stream)
        if not unseen:
            frame = ResetFrame(stream_id=stream_id, error_code=ErrorCode(error_code))
            self._out.push_control(serialize(frame))
        self._finish_drain(report=False)

    def ping(self, payload: bytes) -> None:
        """Send a PING with 8 opaque bytes; a matching ACK is reported as :class:`.PingAcked`."""
        if self._state is ConnectionState.CLOSED or not self._preface_sent:
            raise UsageError(f"ping: connection is {self._state.value}")
        if not isinstance(payload, bytes) or len(payload) != 8:
            raise UsageError(f"ping: expected 8 bytes, got {payload!r}")
        if payload in self._pings or len(self._pings) >= MAX_OUTSTANDING_PINGS:
            raise UsageError(
                f"ping: payload already outstanding or {MAX_OUTSTANDING_PINGS} PINGs unanswered"
            )
        self._pings[payload] = self._now
        self._out.push_control(serialize(PingFrame(payload=payload)))
