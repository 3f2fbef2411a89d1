"""Connection state shared by the receive and send paths (protocol.md §2, §5, §6, §7, §13, §14).

This module owns :class:`ConnectionBase`: the connection state machine
(:data:`CONNECTION_TRANSITIONS`), the stream table and id bookkeeping (§6.1, §6.3), receive
credit accounting (§7), error exits (GOAWAY/RESET, §5.2-§5.3), graceful drain (§13.3), the
flood budgets (§14.3), output draining and timers (§13.1, §14.4). The frame handlers and the
public sending API live in :mod:`.connection`, whose :class:`~.connection.Connection` is the
class to use.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Mapping
from types import MappingProxyType

from ionn_net.config import SETTING_DEFAULTS, Limits, Setting
from ionn_net.proto.errors import (
    EnhanceYourCalm,
    ErrorCode,
    InternalError,
    ProtocolError,
    ProtocolTimeout,
    SettingsTimeout,
    UsageError,
)
from ionn_net.proto.events import (
    ConnectionTerminated,
    Event,
    StreamReset,
)
from ionn_net.proto.flood import EventBucket, WindowCounter
from ionn_net.proto.flowtune import RttEstimator, grown_window
from ionn_net.proto.outbound import FrameParts, Outbound
from ionn_net.proto.streams import FrameKind, Stream, StreamState
from ionn_net.proto.wire import (
    MAX_CREDIT,
    CreditFrame,
    FrameDecoder,
    GoAwayFrame,
    PingFrame,
    ResetFrame,
    SettingsFrame,
    encode_preface,
    serialize,
)

__all__ = ["CONNECTION_TRANSITIONS", "ConnectionBase", "ConnectionState"]


class ConnectionState(enum.Enum):
    """Connection lifecycle; see :data:`CONNECTION_TRANSITIONS`."""

    AWAIT_PREFACE = "await_preface"  # waiting for the peer's 8-byte preface (§2)
    AWAIT_SETTINGS = "await_settings"  # preface done; the first frame must be SETTINGS (§2.5)
    OPEN = "open"
    CLOSING = "closing"  # GOAWAY NO_ERROR sent or received: draining accepted streams (§13.3)
    CLOSED = "closed"  # nothing more is processed; flush what is queued, then close


_S = ConnectionState
#: Allowed state changes; anything else is a bug in the core (reported as INTERNAL_ERROR).
CONNECTION_TRANSITIONS: Mapping[ConnectionState, frozenset[ConnectionState]] = MappingProxyType(
    {
        _S.AWAIT_PREFACE: frozenset({_S.AWAIT_SETTINGS, _S.CLOSED}),
        _S.AWAIT_SETTINGS: frozenset({_S.OPEN, _S.CLOSED}),
        _S.OPEN: frozenset({_S.CLOSING, _S.CLOSED}),
        _S.CLOSING: frozenset({_S.CLOSED}),
        _S.CLOSED: frozenset(),
    }
)

DEFAULT_LIMITS = Limits()
MAX_OUTSTANDING_PINGS = 16
_MAX_DEBUG_SENT = 1024  # §4.6
FRAME_KINDS = {
    (True, False): FrameKind.HEADERS,
    (True, True): FrameKind.HEADERS_END,
    (False, False): FrameKind.DATA,
    (False, True): FrameKind.DATA_END,
}


def _truncate_utf8(text: str, limit: int) -> str:
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


class ConnectionBase:
    """State and bookkeeping shared by the receive and send paths of ``Connection``."""

    def __init__(
        self,
        *,
        client: bool,
        limits: Limits = DEFAULT_LIMITS,
        now: float = 0.0,
        versions: tuple[int, int] = (1, 1),
    ) -> None:
        lo, hi = versions
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 < lo <= hi <= 255):
            raise UsageError(f"versions: expected 0 < min <= max <= 255, got {versions!r}")
        self.client = client
        self.limits = limits
        self.version: int | None = None
        self.error: ProtocolError | None = None
        self._versions = (lo, hi)
        self._state = ConnectionState.AWAIT_PREFACE
        self._now = self._created = self._last_recv = self._last_activity = now
        # Runs of RAW DATA frames of one stream in one input become one event (wire.py).
        self._decoder = FrameDecoder(limits, coalesce_data=True)
        self._out = Outbound(limits)
        self._events: list[Event] = []
        self._preface_buf = bytearray()
        self._preface_sent = False
        self._settings_pending: deque[float] = deque()
        self._own_settings_acked = False
        self._peer: dict[Setting, int] = dict(SETTING_DEFAULTS)
        self._local: dict[Setting, int] = limits.settings()
        self._out.chunk = self._chunk_size()
        self._init_streams(client)
        self._init_flow()
        self._goaway_sent: int | None = None
        self._goaway_received: int | None = None
        self._closing_remote = False
        self._reply_cap_active = False
        self._control_budget = WindowCounter(
            limits.control_frames_per_window, limits.control_window_s
        )
        self._reset_bucket = EventBucket(limits.reset_rate_per_s, limits.reset_burst, now)
        self._useless = 0
        self._pings: dict[bytes, float] = {}
        self._keepalive: bytes | None = None
        self._keepalive_seq = 0

    def _init_streams(self, client: bool) -> None:
        self._streams: dict[int, Stream] = {}
        self._local_parity = 1 if client else 0
        self._next_local_id = 1 if client else 2
        self._last_local_id = 0
        self._last_peer_id = 0
        self._last_accepted_peer_id = 0
        self._local_count = 0
        self._peer_count = 0
        self._seq = 0

    def _init_flow(self) -> None:
        # Cumulative wire bytes of DATA (§7). Until the peer acknowledges our SETTINGS it may
        # still use the defaults, so our receive limits start at the larger of both (§11.1).
        conn_default = SETTING_DEFAULTS[Setting.INITIAL_CONNECTION_CREDIT]
        self._recv_conn_limit = max(conn_default, self.limits.initial_connection_credit)
        self._recv_conn = 0
        self._consumed_conn = 0
        self._conn_window = self.limits.initial_connection_credit
        self._stream_window = self.limits.initial_stream_credit
        # Auto-tuning (flowtune.py): windows grow up to these while the application keeps up.
        self._max_conn_window = max(self._conn_window, self.limits.max_connection_credit)
        self._max_stream_window = max(self._stream_window, self.limits.max_stream_credit)
        self._conn_credit_at: float | None = None
        self._rtt = RttEstimator()

    # ------------------------------------------------------------------ introspection

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def closed(self) -> bool:
        """True once the connection is over (flush :meth:`data_to_send`, then close)."""
        return self._state is ConnectionState.CLOSED

    @property
    def peer_settings(self) -> dict[Setting, int]:
        return dict(self._peer)

    @property
    def local_settings(self) -> dict[Setting, int]:
        return dict(self._local)

    @property
    def open_streams(self) -> tuple[int, ...]:
        """Ids of the streams still tracked (not closed), in id order."""
        return tuple(sorted(self._streams))

    @property
    def available_streams(self) -> int:
        """How many more streams the peer's MAX_CONCURRENT_STREAMS lets us open now."""
        return max(0, self._peer[Setting.MAX_CONCURRENT_STREAMS] - self._local_count)

    @property
    def last_peer_stream_id(self) -> int:
        return self._last_accepted_peer_id

    @property
    def outbound_buffered_bytes(self) -> int:
        """Bytes queued in the core (control frames + unsent stream bodies)."""
        return self._out.buffered_bytes

    @property
    def rtt(self) -> float | None:
        """Smoothed round trip in seconds the credit auto-tuning uses (None: no sample yet)."""
        return self._rtt.value

    def observe_rtt(self, rtt_s: float) -> None:
        """A round-trip sample from the I/O layer (e.g. the kernel's TCP estimate).

        The core samples its own SETTINGS and keepalive PING round trips; the I/O layer can
        add better ones. Negative or non-finite samples are ignored.
        """
        self._rtt.update(rtt_s)

    def receive_windows(self, stream_id: int) -> tuple[int, int]:
        """(stream, connection) receive windows: the credit granted beyond consumed bytes.

        They start at the INITIAL_*_CREDIT we announce and grow with auto-tuning, never
        beyond ``Limits.max_stream_credit`` / ``max_connection_credit`` (0 for a stream
        that is not tracked).
        """
        stream = self._streams.get(stream_id)
        return (0 if stream is None else stream.window), self._conn_window

    @property
    def opened_streams_sent(self) -> int:
        """Highest id of our streams whose opening HEADERS has left the core (0: none).

        Streams reset before their HEADERS was emitted count as left (the peer never sees
        them). An I/O layer that writes everything it takes knows from this which opening
        HEADERS the peer may already have.
        """
        return self._out.opened_sent

    @property
    def decoder_buffered_bytes(self) -> int:
        return self._decoder.buffered + len(self._preface_buf)

    def stream_state(self, stream_id: int) -> StreamState:
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream.state
        return StreamState.IDLE if self._is_idle(stream_id) else StreamState.CLOSED

    def available_credit(self, stream_id: int) -> int:
        """DATA bytes we may send on ``stream_id`` now (stream and connection credit)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        return self._out.credit(stream)

    # ------------------------------------------------------------------- handshake

    def initiate(self) -> None:
        """Client: queue the preface and SETTINGS (§2.1, §2.5). Server: nothing to do."""
        if not self.client:
            return
        if self._preface_sent:
            raise UsageError("initiate: already called")
        self._out.push_control(encode_preface(*self._versions))
        self._preface_sent = True
        self._queue_settings()

    def _queue_settings(self) -> None:
        entries = tuple((int(s), v) for s, v in self._local.items())
        self._out.push_control(serialize(SettingsFrame(entries=entries)))
        self._settings_pending.append(self._now)

    def _set_state(self, new: ConnectionState) -> None:
        if new not in CONNECTION_TRANSITIONS[self._state]:
            raise InternalError(f"connection state: {self._state.name} -> {new.name} not allowed")
        self._state = new

    # ------------------------------------------------------------ frame handlers

    def _is_idle(self, sid: int) -> bool:
        if sid & 1 == self._local_parity:
            return sid > self._last_local_id
        return sid > self._last_peer_id

    def _useless_frame(self, what: str) -> None:
        self._useless += 1
        if self._useless > self.limits.max_useless_frames:
            raise EnhanceYourCalm(
                f"useless frames: expected at most {self.limits.max_useless_frames}, "
                f"got {self._useless} (last: {what})"
            )

    def _new_stream(self, sid: int, *, urgency: int, incremental: bool, local: bool) -> Stream:
        recv_initial = self.limits.initial_stream_credit
        if not self._own_settings_acked:
            recv_initial = max(recv_initial, SETTING_DEFAULTS[Setting.INITIAL_STREAM_CREDIT])
        self._seq += 1
        stream = Stream(
            sid,
            local_initiated=local,
            urgency=urgency,
            incremental=incremental,
            seq=self._seq,
            send_limit=self._peer[Setting.INITIAL_STREAM_CREDIT],
            recv_limit=recv_initial,
            window=self._stream_window,
        )
        self._streams[sid] = stream
        if local:
            self._local_count += 1
        else:
            self._peer_count += 1
        self._last_activity = self._now
        return stream

    def _chunk_size(self) -> int:
        return min(
            self.limits.max_chunk,
            self._peer[Setting.MAX_FRAME_SIZE],
            self._peer[Setting.MAX_DECODED_FRAME_SIZE],
        )

    def _count_control(self, what: str) -> None:
        if not self._control_budget.allow(self._now):
            raise EnhanceYourCalm(
                f"{what} frames: expected at most {self.limits.control_frames_per_window} "
                f"PING/SETTINGS per {self.limits.control_window_s} s, got more"
            )

    # --------------------------------------------------------- errors and closing

    def _reply(self, frame: bytes) -> None:
        cap = self.limits.max_queued_control_replies
        if self._reply_cap_active and self._out.control_frames >= cap:
            raise EnhanceYourCalm(
                f"control replies: expected at most {cap} queued for a peer that does not "
                f"read, got {self._out.control_frames + 1}"
            )
        self._out.push_control(frame)

    def _stream_error(self, exc: ProtocolError) -> None:
        sid = exc.stream_id
        assert sid is not None
        stream = self._streams.get(sid)
        if stream is not None:
            self._drop_stream(stream)
        self._reply(serialize(ResetFrame(stream_id=sid, error_code=exc.error_code)))
        self._events.append(StreamReset(stream_id=sid, error_code=exc.error_code, remote=False))

    def _fail(self, exc: ProtocolError) -> None:
        """A connection error detected locally (§5.2)."""
        if exc.stream_id is not None:  # a stream error raised outside a frame handler
            exc = InternalError(f"unhandled stream error: {exc.message}")
        self._shutdown(exc, remote=False, send_goaway=True)

    def _shutdown(self, exc: ProtocolError, *, remote: bool, send_goaway: bool) -> None:
        if self._state is ConnectionState.CLOSED:
            return
        self.error = exc
        self._abandon_all()
        if send_goaway and self._preface_sent:
            self._push_goaway(exc.error_code, exc.message)
        self._set_state(ConnectionState.CLOSED)
        self._decoder.close()
        self._events.append(
            ConnectionTerminated(
                error_code=exc.error_code, reason=exc.message, remote=remote, error=exc
            )
        )

    def _abandon_all(self) -> None:
        self._out.clear_streams()
        for stream in self._streams.values():
            stream.reset = True
            stream.outq.clear()
        self._streams.clear()
        self._local_count = self._peer_count = 0

    def _push_goaway(self, code: ErrorCode, debug: str) -> None:
        last = self._last_accepted_peer_id
        if self._goaway_sent is not None:
            last = min(last, self._goaway_sent)  # §13.2: never greater than before
        self._goaway_sent = last
        frame = GoAwayFrame(
            last_stream_id=last, error_code=code, debug=_truncate_utf8(debug, _MAX_DEBUG_SENT)
        )
        self._out.push_control(serialize(frame))

    def _finish_drain(self, *, report: bool) -> None:
        """§13.3: once a closing connection has no streams left, it is closed."""
        if self._state is not ConnectionState.CLOSING or self._streams:
            return
        if self._goaway_sent is None:
            self._push_goaway(ErrorCode.NO_ERROR, "")
        self._set_state(ConnectionState.CLOSED)
        self._decoder.close()
        if report:
            self._events.append(
                ConnectionTerminated(
                    error_code=ErrorCode.NO_ERROR,
                    reason="graceful shutdown complete",
                    remote=self._closing_remote,
                    error=None,
                )
            )

    def _consume_conn(self, n: int, now: float | None = None) -> None:
        """``n`` received DATA bytes are consumed; grant CREDIT past half a window (§7.3).

        ``now``: the application consumed them then (auto-tuning, see flowtune.py); None for
        bytes the core discards itself, which say nothing about the application's pace.
        """
        consumed = self._consumed_conn = self._consumed_conn + n
        window = self._conn_window
        if (
            consumed + window - self._recv_conn_limit >= window >> 1
            and self._state is not _S.CLOSED
        ):
            if now is not None:
                window = self._conn_window = grown_window(
                    window, self._max_conn_window, self._conn_credit_at, now, self._rtt.value
                )
                self._conn_credit_at = now
            self._recv_conn_limit = target = min(consumed + window, MAX_CREDIT)
            self._out.push_control(serialize(CreditFrame(stream_id=0, limit=target)))

    # ---------------------------------------------------------------- output

    def stream_outbound_bytes(self, stream_id: int) -> int:
        """Body bytes of ``stream_id`` queued in the core and not yet cut into frames."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.out_bytes

    def _streams_may_send(self) -> bool:
        if not self._preface_sent or self._state is ConnectionState.CLOSED:
            return False
        # §2.5: only a client offering exactly one version may send before the server preface.
        return self.version is not None or self._versions[0] == self._versions[1]

    def next_frame_parts(self) -> FrameParts | None:
        """The next frame as (header or whole frame, payload) for two writes, or ``None``."""
        nxt = self._out.next_parts(self._streams_may_send())
        if nxt is None:
            return None
        parts, stream = nxt
        if stream is not None:
            self._last_activity = self._now
            if not stream.has_output:
                self._stream_output_done(stream)
        return parts

    def _stream_output_done(self, stream: Stream) -> None:
        """``stream`` has emitted its last queued frame: a deferred RESET, or forget it."""
        if stream.reset_after is not None:
            # The deferred RESET of reset_stream(after_pending=True): the answer is out.
            self._drop_stream(stream)
            frame = ResetFrame(stream_id=stream.stream_id, error_code=ErrorCode(stream.reset_after))
            self._out.push_control(serialize(frame))
            self._finish_drain(report=False)
        elif stream.finished:
            self._forget(stream)
            self._finish_drain(report=False)

    def frames_to_send(self, budget: int) -> tuple[list[bytes | memoryview], int]:
        """Frames in priority order, as buffers for one vectored write, and their size.

        Emits frames (exactly as :meth:`next_frame_parts` would, one after the other) until
        at least ``budget`` bytes are taken; returns ``([], 0)`` when nothing is ready.
        The buffers alternate frame header and payload (empty payloads are left out);
        payloads may be memoryviews of bodies given to :meth:`send_data` (not copied).
        """
        out: list[bytes | memoryview] = []
        total = 0
        allowed = self._streams_may_send()
        fill = self._out.fill
        while total < budget:
            taken, streamed, ended = fill(out, budget - total, allowed)
            total += taken
            if streamed:
                self._last_activity = self._now
            if ended is None:
                break
            self._stream_output_done(ended)
            allowed = self._streams_may_send()  # a drain may have closed the connection
        return out, total

    def stream_bytes_sent(self, min_urgency: int) -> int:
        """Wire bytes (frame headers included) that streams of urgency ``min_urgency`` or
        less urgent have emitted so far: with the total a transport wrote, it tells a
        pacer of those streams what it sent from what the others did (compressed frames
        are shorter than the body a sender released, §12.4)."""
        return sum(self._out.sent_by_urgency[max(0, min_urgency) :])

    def next_frame(self) -> bytes | None:
        """Exactly one frame (or the preface), highest priority first, or ``None``."""
        parts = self.next_frame_parts()
        if parts is None:
            return None
        head, payload = parts
        return head + payload if payload else head

    def data_to_send(self, budget: int | None = None) -> bytes:
        """Frames in priority order until at least ``budget`` bytes (all if ``None``)."""
        out, _ = self.frames_to_send(MAX_CREDIT if budget is None else budget)
        return b"".join(out)

    def has_data_to_send(self) -> bool:
        return self._out.has_output(self._streams_may_send())

    # ---------------------------------------------------------- stream removal

    def _drop_stream(self, stream: Stream) -> None:
        """Close ``stream`` by RESET (sent or received): drop its pending output (§6.2.3)."""
        stream.reset = True
        self._out.drop(stream)
        self._forget(stream)

    def _forget(self, stream: Stream) -> None:
        if self._streams.pop(stream.stream_id, None) is None:
            return
        if stream.local_initiated:
            self._local_count -= 1
        else:
            self._peer_count -= 1

    # ---------------------------------------------------------------- timers

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next be called (``None``: no timer)."""
        if self._state is ConnectionState.CLOSED:
            return None
        lim = self.limits
        deadlines = [math.inf]
        if self._state is _S.AWAIT_PREFACE or self._state is _S.AWAIT_SETTINGS:
            deadlines.append(self._created + lim.handshake_timeout_s)
        if self._settings_pending:
            deadlines.append(self._settings_pending[0] + lim.settings_timeout_s)
        if self._keepalive is not None:
            deadlines.append(self._pings[self._keepalive] + lim.heartbeat_timeout_s)
        elif self._state is _S.OPEN or self._state is _S.CLOSING:
            deadlines.append(self._last_recv + lim.keepalive_interval_s)
        if self._idle_applies():
            deadlines.append(self._last_activity + lim.idle_timeout_s)
        when = min(deadlines)
        return None if when == math.inf else when

    def handle_timer(self, now: float) -> list[Event]:
        """Fire due timers: keepalive PING, heartbeat/idle/handshake/SETTINGS timeouts."""
        if self._state is ConnectionState.CLOSED:
            return []
        events: list[Event] = []
        self._events = events
        self._now = now
        try:
            self._check_timers(now)
        except ProtocolError as exc:
            self._fail(exc)
        return events

    def _check_timers(self, now: float) -> None:
        lim = self.limits
        if self._state in (_S.AWAIT_PREFACE, _S.AWAIT_SETTINGS) and now >= (
            self._created + lim.handshake_timeout_s
        ):
            raise ProtocolTimeout(
                f"handshake: expected preface and SETTINGS within "
                f"{lim.handshake_timeout_s} s, got {self._state.value}"
            )
        if self._settings_pending and now >= self._settings_pending[0] + lim.settings_timeout_s:
            raise SettingsTimeout(
                f"SETTINGS: expected an ACK within {lim.settings_timeout_s} s, got none"
            )
        if self._keepalive is not None:
            if now >= self._pings[self._keepalive] + lim.heartbeat_timeout_s:
                raise ProtocolTimeout(
                    f"heartbeat: expected a PING ACK within {lim.heartbeat_timeout_s} s, got none"
                )
        elif self._state in (_S.OPEN, _S.CLOSING) and now >= self._last_recv + (
            lim.keepalive_interval_s
        ):
            self._keepalive_seq += 1
            payload = b"KA" + self._keepalive_seq.to_bytes(6, "big")
            self._pings[payload] = now
            self._keepalive = payload
            self._out.push_control(serialize(PingFrame(payload=payload)))
        if self._idle_applies() and now >= self._last_activity + lim.idle_timeout_s:
            raise ProtocolTimeout(f"idle: no stream activity for {lim.idle_timeout_s} s; closing")

    def _idle_applies(self) -> bool:
        # An open connection without streams, or a drain (§13.3) that stopped progressing.
        return (self._state is _S.OPEN and not self._streams) or self._state is _S.CLOSING

    def report_transport_backlog(self, nbytes: int, now: float) -> list[Event]:
        """The I/O layer reports bytes taken from :meth:`data_to_send` but not yet written.

        Above ``limits.max_outbound_bytes`` the peer is not reading: the connection closes
        with TIMEOUT (§14.3). Returns the events (a :class:`.ConnectionTerminated` or none).
        """
        if self._state is ConnectionState.CLOSED or nbytes <= self.limits.max_outbound_bytes:
            return []
        events: list[Event] = []
        self._events = events
        self._now = now
        self._fail(
            ProtocolTimeout(
                f"outbound backlog: expected at most {self.limits.max_outbound_bytes} unsent "
                f"bytes, got {nbytes} (the peer does not read)"
            )
        )
        return events
