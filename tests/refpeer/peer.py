"""The blocking reference peer of IONN-NET/1, written from protocol.md alone.

Owns connection and stream state for one endpoint (client or server) over a :mod:`channels`
channel: preface and version choice (§2), SETTINGS with ACK (§4.4, §11), PING (§4.5), the
half-stream table (§6.2), concurrency (§6.3), absolute credit in both directions (§7), message
bodies with ``body_len`` (§10.1), zstd codecs (§12) and GOAWAY drain (§13). Every MUST a receiver
can check is checked; a connection error sends GOAWAY and raises :class:`PeerError`, a stream
error sends RESET and is reported as a ``stream_error`` :class:`Incoming`. Imports nothing from
``ionn_net``.
"""

from __future__ import annotations

import contextlib
import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from .channels import Channel, PeerTimeout
from .wire import (
    ACK,
    DEFAULT_SETTINGS,
    END_STREAM,
    HEADER_SIZE,
    MAX_CREDIT,
    PREFACE_MAGIC,
    PREFACE_SIZE,
    SHUFFLE_WIDTH,
    Code,
    Codec,
    Frame,
    FrameReader,
    PeerError,
    S,
    T,
    build_frame,
    client_preface,
    code_from_wire,
    credit_frame,
    decode_payload,
    encode_payload,
    goaway_frame,
    headers_payload,
    parse_head,
    parse_settings,
    ping_frame,
    reset_frame,
    settings_ack,
    settings_frame,
)


class PeerClosed(Exception):
    """The connection is over (EOF, GOAWAY with an error, or a connection error)."""


class UsageError(Exception):
    """The test asked the reference peer to do something its local half forbids (§6.2.4)."""


class Half(enum.Enum):
    EXPECT_HEADERS = "EXPECT_HEADERS"
    BODY = "BODY"
    ENDED = "ENDED"


# The half-stream table of §6.2: (state, (is_headers, end_stream)) -> new state or error code.
HALF_TABLE: dict[tuple[Half, tuple[bool, bool]], Half | Code] = {
    (Half.EXPECT_HEADERS, (True, False)): Half.BODY,
    (Half.EXPECT_HEADERS, (True, True)): Half.ENDED,
    (Half.EXPECT_HEADERS, (False, False)): Code.PROTOCOL_ERROR,
    (Half.EXPECT_HEADERS, (False, True)): Code.PROTOCOL_ERROR,
    (Half.BODY, (True, False)): Code.PROTOCOL_ERROR,
    (Half.BODY, (True, True)): Code.PROTOCOL_ERROR,
    (Half.BODY, (False, False)): Half.BODY,
    (Half.BODY, (False, True)): Half.ENDED,
    **{(Half.ENDED, (h, e)): Code.STREAM_CLOSED for h in (True, False) for e in (True, False)},
}


@dataclass
class StreamRec:
    sid: int
    send_limit: int
    recv_limit: int
    local: Half = Half.EXPECT_HEADERS
    remote: Half = Half.EXPECT_HEADERS
    reset_code: Code | None = None
    reset_remote: bool = False
    urgency: int = 2
    incremental: bool = False
    sent: int = 0
    received: int = 0
    head: dict[str, object] | None = None
    body: bytearray = field(default_factory=bytearray)
    delivered: bool = False

    @property
    def closed(self) -> bool:
        both = self.local is Half.ENDED and self.remote is Half.ENDED
        return both or self.reset_code is not None


@dataclass(frozen=True, slots=True)
class Incoming:
    """What one received frame meant. ``kind`` names it; the other fields depend on it."""

    kind: str
    frame: Frame | None = None
    stream_id: int = 0
    head: dict[str, object] | None = None
    data: bytes | None = None
    code: Code | None = None


@dataclass(frozen=True, slots=True)
class Message:
    stream_id: int
    head: dict[str, object]
    body: bytes


class RefPeer:
    """One endpoint of IONN-NET/1 over a blocking channel (see module docstring)."""

    def __init__(
        self,
        channel: Channel,
        *,
        client: bool,
        settings: dict[int, int] | None = None,
        versions: tuple[int, int] = (1, 1),
        timeout: float = 5.0,
        max_chunk: int = 65536,
        auto_credit: bool = True,
    ) -> None:
        self.channel = channel
        self.client = client
        self.versions = versions
        self.timeout = timeout
        self.max_chunk = max_chunk
        self.auto_credit = auto_credit
        self.announced = dict(settings or {})
        self.local = {**DEFAULT_SETTINGS, **self.announced}
        self.peer = dict(DEFAULT_SETTINGS)  # §11.1: defaults until the peer's SETTINGS arrive
        self.reader = FrameReader(self.local)
        self.version: int | None = None
        self.streams: dict[int, StreamRec] = {}
        self.next_sid = 1 if client else 2
        self.last_peer_sid = 0
        self.conn_send_limit = self.peer[S.INITIAL_CONNECTION_CREDIT]
        self.conn_sent = 0
        self.conn_recv_limit = max(self.local[S.INITIAL_CONNECTION_CREDIT], DEFAULT_SETTINGS[5])
        self.conn_received = 0
        self.settings_received = False
        self.settings_acked = False
        self.pings: set[bytes] = set()
        self.goaway_sent: int | None = None
        self.goaway_received: tuple[int, Code, str] | None = None
        self.closed = False
        self.eof = False
        self.log: list[Incoming] = []
        self._pre = bytearray()
        self._frames: list[Frame] = []
        self._cork: bytearray | None = None

    # ----- raw output -----------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        if self._cork is not None:
            self._cork += data
            return
        self.channel.send(data)

    @contextlib.contextmanager
    def corked(self) -> Iterator[None]:
        """Coalesce everything sent inside into one write (flushed before waiting to read)."""
        self._cork = bytearray()
        try:
            yield
        finally:
            self.flush()

    def flush(self) -> None:
        pending, self._cork = self._cork, None
        if pending:
            self.channel.send(bytes(pending))

    def send_settings(self, entries: dict[int, int] | None = None) -> None:
        entries = self.announced if entries is None else entries
        self.send_raw(settings_frame(list(entries.items())))

    def credit(self, stream_id: int, limit: int) -> None:
        self.send_raw(credit_frame(stream_id, limit))

    def reset(self, stream_id: int, code: Code = Code.CANCEL) -> None:
        rec = self.streams.get(stream_id)
        if rec is None:
            raise UsageError(f"RESET on idle stream {stream_id}")
        self.send_raw(reset_frame(stream_id, code))
        rec.reset_code = rec.reset_code or code

    def goaway(self, code: Code = Code.NO_ERROR, debug: str = "") -> None:
        last = self.last_peer_sid if self.goaway_sent is None else self.goaway_sent
        self.goaway_sent = last
        self.send_raw(goaway_frame(last, code, debug.encode()))
        if code != Code.NO_ERROR:
            self.closed = True
            self.channel.close()

    # ----- input --------------------------------------------------------------------------

    def _recv(self) -> bytes:
        self.flush()  # never wait for the peer while holding back our own bytes
        if self.eof:
            raise PeerClosed("the peer closed the connection")
        data = self.channel.recv(1 << 20, self.timeout)
        if not data:
            self.eof = True
            raise PeerClosed("the peer closed the connection")
        return data

    def read_exact(self, n: int) -> bytes:
        """Raw bytes before framing starts (the preface)."""
        while len(self._pre) < n:
            self._pre += self._recv()
        out = bytes(self._pre[:n])
        del self._pre[:n]
        return out

    def next_frame(self) -> Frame:
        """The next frame, checked at framing level only; a violation is a connection error."""
        while not self._frames:
            if self.reader.error is not None:
                self._connection_error(self.reader.error)
            data = bytes(self._pre) if self._pre else self._recv()  # preface leftovers first
            self._pre.clear()
            try:
                self._frames.extend(self.reader.feed(data))
            except PeerError as exc:
                self._connection_error(exc)
        return self._frames.pop(0)

    def poll(self) -> Incoming:
        """Read and fully process one frame; raises PeerError (connection) or PeerClosed."""
        if self.closed:
            raise PeerClosed("the connection is closed")
        frame = self.next_frame()
        try:
            inc = self._process(frame)
        except PeerError as exc:
            if exc.stream_id is None:
                self._connection_error(exc)
            self._stream_error(exc)
            inc = Incoming("stream_error", frame, exc.stream_id, code=exc.code)
        self.log.append(inc)
        return inc

    def _connection_error(self, exc: PeerError) -> None:
        """§5.2: GOAWAY with the code and the last peer stream processed, then stop."""
        if not self.closed:
            debug = str(exc)[:200].encode()
            with contextlib.suppress(OSError):
                self.send_raw(goaway_frame(self.last_peer_sid, exc.code, debug))
            self.closed = True
            self.channel.close()
        raise exc

    def _stream_error(self, exc: PeerError) -> None:
        """§5.3: RESET with the code; the stream becomes closed."""
        assert exc.stream_id is not None
        rec = self.streams.get(exc.stream_id)
        if rec is not None:
            rec.reset_code = exc.code
        self.send_raw(reset_frame(exc.stream_id, exc.code))

    # ----- frame processing -----------------------------------------------------------------

    def _process(self, f: Frame) -> Incoming:
        if not self.settings_received and not (f.type == T.SETTINGS and not f.ack):
            raise PeerError(Code.PROTOCOL_ERROR, f"first frame is type {f.type}, not SETTINGS")
        handler = self._handlers.get(f.type)
        if handler is None:
            return Incoming("unknown", f, f.stream_id)  # §3.4
        return handler(self, f)

    def _on_settings(self, f: Frame) -> Incoming:
        if f.ack:
            self.settings_acked = True
            return Incoming("settings_ack", f)
        for key, value in parse_settings(f.payload):
            self._apply_peer_setting(key, value)
        self.settings_received = True
        self.send_raw(settings_ack())
        return Incoming("settings", f)

    def _apply_peer_setting(self, key: int, value: int) -> None:
        self.peer[key] = value
        if key == S.INITIAL_STREAM_CREDIT:  # §7.4
            for rec in self.streams.values():
                rec.send_limit = max(rec.send_limit, value)
        elif key == S.INITIAL_CONNECTION_CREDIT:
            self.conn_send_limit = max(self.conn_send_limit, value)

    def _on_ping(self, f: Frame) -> Incoming:
        if f.ack:
            self.pings.discard(f.payload)
            return Incoming("ping_ack", f, data=f.payload)
        self.send_raw(ping_frame(f.payload, ack=True))  # §4.5: ahead of any stream frame
        return Incoming("ping", f, data=f.payload)

    def _on_goaway(self, f: Frame) -> Incoming:
        last, raw_code = struct.unpack_from(">II", f.payload)
        code = code_from_wire(raw_code)
        debug = f.payload[8:].decode("utf-8", "replace")
        self.goaway_received = (last, code, debug)
        for rec in self.streams.values():  # §13.2: ours above last were not processed
            if self._ours(rec.sid) and rec.sid > last and not rec.closed:
                rec.reset_code = Code.REFUSED_STREAM
        if code != Code.NO_ERROR:
            self.closed = True
        return Incoming("goaway", f, last, code=code, data=f.payload[8:])

    def _on_credit(self, f: Frame) -> Incoming:
        (limit,) = struct.unpack(">Q", f.payload)
        if limit > MAX_CREDIT:  # §7.3: limits are at most 2^62
            raise PeerError(Code.PROTOCOL_ERROR, f"CREDIT {limit} above 2^62")
        if f.stream_id == 0:
            self.conn_send_limit = max(self.conn_send_limit, limit)  # §7.3: never decreases
            return Incoming("credit", f, 0)
        rec = self._existing(f, T.CREDIT)
        if rec is not None and not rec.closed:
            rec.send_limit = max(rec.send_limit, limit)
        return Incoming("credit", f, f.stream_id)

    def _on_reset(self, f: Frame) -> Incoming:
        (raw,) = struct.unpack(">I", f.payload)
        code = code_from_wire(raw)
        rec = self._existing(f, T.RESET)
        if rec is None or rec.closed:
            return Incoming("ignored", f, f.stream_id, code=code)
        rec.reset_code, rec.reset_remote = code, True
        return Incoming("reset", f, f.stream_id, code=code)

    def _on_data(self, f: Frame) -> Incoming:
        self.conn_received += len(f.payload)  # §5.3: counts even on closed streams
        if self.conn_received > self.conn_recv_limit:
            raise PeerError(Code.FLOW_CONTROL_ERROR, "connection credit exceeded")
        rec = self._existing(f, T.DATA)
        if rec is None or rec.closed:
            self._consume(None, len(f.payload))
            return Incoming("ignored", f, f.stream_id)
        rec.received += len(f.payload)
        if rec.received > rec.recv_limit:
            raise PeerError(Code.FLOW_CONTROL_ERROR, f"stream {rec.sid} credit exceeded")
        data = decode_payload(f.payload, f.codec, f.decoded_length, self.local[2])
        self._advance_remote(rec, False, f.end_stream)
        rec.body += data
        self._check_body(rec, f.end_stream)
        self._consume(rec, len(f.payload))
        return Incoming("data", f, f.stream_id, data=data)

    def _on_headers(self, f: Frame) -> Incoming:
        rec = self.streams.get(f.stream_id)
        if rec is None:
            rec = self._open_peer_stream(f)
            if rec is None:
                return Incoming("refused", f, f.stream_id, code=Code.REFUSED_STREAM)
        elif rec.closed:
            if not self._ours(rec.sid):  # §6.2.2: a peer id is never reopened
                raise PeerError(Code.PROTOCOL_ERROR, f"HEADERS reopening stream {rec.sid}")
            return Incoming("ignored", f, f.stream_id)
        self._advance_remote(rec, True, f.end_stream)
        urgency, pflags = f.payload[0], f.payload[1]
        if urgency > 7:
            raise PeerError(Code.PROTOCOL_ERROR, f"urgency {urgency} > 7", f.stream_id)
        head = parse_head(f.payload[4:], f.stream_id)
        if not self._ours(rec.sid):
            rec.urgency, rec.incremental = urgency, bool(pflags & 1)
        rec.head = head
        self._check_body_len(rec, f.end_stream)
        return Incoming("headers", f, f.stream_id, head=head)

    _handlers = {
        T.SETTINGS: _on_settings,
        T.PING: _on_ping,
        T.GOAWAY: _on_goaway,
        T.CREDIT: _on_credit,
        T.RESET: _on_reset,
        T.DATA: _on_data,
        T.HEADERS: _on_headers,
    }

    def _ours(self, sid: int) -> bool:
        return (sid % 2 == 1) == self.client

    def _existing(self, f: Frame, ftype: T) -> StreamRec | None:
        """§6.2.2: DATA/RESET/CREDIT on an idle stream is a connection PROTOCOL_ERROR.

        A stream id of the peer's parity not above the last one opened but never seen (skipped)
        is treated as closed: such a stream can never open (§6.1.1).
        """
        rec = self.streams.get(f.stream_id)
        if rec is not None:
            return rec
        idle = (
            f.stream_id >= self.next_sid
            if self._ours(f.stream_id)
            else (f.stream_id > self.last_peer_sid)
        )
        if idle:
            raise PeerError(Code.PROTOCOL_ERROR, f"{ftype.name} on idle stream {f.stream_id}")
        return None

    def _open_peer_stream(self, f: Frame) -> StreamRec | None:
        sid = f.stream_id
        if self._ours(sid) or sid <= self.last_peer_sid:  # §6.1.1
            raise PeerError(Code.PROTOCOL_ERROR, f"HEADERS cannot open stream {sid}")
        self.last_peer_sid = sid
        initial = self.local[S.INITIAL_STREAM_CREDIT]
        if not self.settings_acked:  # the peer may still assume the default (§11.1)
            initial = max(initial, DEFAULT_SETTINGS[S.INITIAL_STREAM_CREDIT])
        rec = StreamRec(sid, self.peer[S.INITIAL_STREAM_CREDIT], initial)
        self.streams[sid] = rec
        active = sum(1 for r in self.streams.values() if not self._ours(r.sid) and not r.closed)
        refuse = active > self.local[S.MAX_CONCURRENT_STREAMS]  # §6.3
        refuse = refuse or (self.goaway_sent is not None and sid > self.goaway_sent)  # §13.2
        if refuse:
            rec.reset_code = Code.REFUSED_STREAM
            self.send_raw(reset_frame(sid, Code.REFUSED_STREAM))
            return None
        return rec

    def _advance_remote(self, rec: StreamRec, headers: bool, end: bool) -> None:
        new = HALF_TABLE[(rec.remote, (headers, end))]  # §6.2.1
        if isinstance(new, Code):
            raise PeerError(new, f"frame in remote half {rec.remote.value}", rec.sid)
        rec.remote = new

    def _check_body_len(self, rec: StreamRec, end: bool) -> None:
        """§10.1.2: a head announcing a body carries body_len, refused above MAX_MESSAGE_SIZE.

        A HEADERS with END_STREAM whose body_len is not 0 ends short of it (PROTOCOL_ERROR).
        """
        assert rec.head is not None
        body_len = rec.head.get("body_len")
        if end:
            if body_len not in (None, 0):
                raise PeerError(Code.PROTOCOL_ERROR, f"no body but body_len {body_len}", rec.sid)
            return
        if type(body_len) is not int or body_len < 0:
            raise PeerError(Code.PROTOCOL_ERROR, f"body announced, body_len {body_len!r}", rec.sid)
        if body_len > self.local[S.MAX_MESSAGE_SIZE]:
            raise PeerError(Code.MESSAGE_TOO_LARGE, f"body_len {body_len} too large", rec.sid)

    def _check_body(self, rec: StreamRec, end: bool) -> None:
        assert rec.head is not None
        body_len = rec.head.get("body_len")
        cap = self.local[S.MAX_MESSAGE_SIZE]
        if isinstance(body_len, int):
            cap = min(cap, body_len)
        if len(rec.body) > cap:
            raise PeerError(Code.MESSAGE_TOO_LARGE, f"body above {cap} bytes", rec.sid)
        if end and isinstance(body_len, int) and len(rec.body) < body_len:
            raise PeerError(Code.PROTOCOL_ERROR, f"body ended short of {body_len}", rec.sid)

    def _consume(self, rec: StreamRec | None, n: int) -> None:
        """Data consumed at once; raise limits (absolute CREDIT) after half a window (§7.3)."""
        if not self.auto_credit:
            return
        window = self.local[S.INITIAL_CONNECTION_CREDIT]
        if self.conn_recv_limit - self.conn_received <= window // 2:
            self.conn_recv_limit = self.conn_received + window
            self.send_raw(credit_frame(0, self.conn_recv_limit))
        window = self.local[S.INITIAL_STREAM_CREDIT]
        if rec is None or rec.closed or rec.remote is Half.ENDED:
            return
        if rec.recv_limit - rec.received <= window // 2:
            rec.recv_limit = rec.received + window
            self.send_raw(credit_frame(rec.sid, rec.recv_limit))

    # ----- handshake (§2) -------------------------------------------------------------------

    def handshake(self, wait_ack: bool = True) -> None:
        """Preface exchange and SETTINGS both ways; returns once the link is usable."""
        if self.client:
            self.send_raw(client_preface(*self.versions))
            if self.versions[0] == self.versions[1]:  # §2.5: MAY send SETTINGS without waiting
                self.send_settings()
                self.read_server_preface()
            else:
                self.read_server_preface()
                self.send_settings()
        else:
            if not self.accept_client_preface():
                raise PeerClosed("client preface refused")
            self.send_settings()
        while not self.settings_received or (wait_ack and not self.settings_acked):
            self.poll()

    def read_server_preface(self) -> int:
        raw = self.read_exact(PREFACE_SIZE)
        low, high = self.versions
        if raw[:4] != PREFACE_MAGIC or raw[4] != raw[5] or not low <= raw[4] <= high:
            self._connection_error(PeerError(Code.VERSION_MISMATCH, f"server preface {raw!r}"))
        self.version = raw[4]
        return raw[4]

    def accept_client_preface(self) -> bool:
        """§2.2-§2.4 on the server side; False when the connection was refused."""
        raw = self.read_exact(PREFACE_SIZE)
        if raw[:4] != PREFACE_MAGIC:
            self.closed = True
            self.channel.close()  # §2.2: without sending anything
            return False
        low, high = max(raw[4], self.versions[0]), min(raw[5], self.versions[1])
        if low > high:
            self.send_raw(PREFACE_MAGIC + bytes([*self.versions, 0, 0]))
            self.send_raw(goaway_frame(0, Code.VERSION_MISMATCH, b"no common version"))
            self.closed = True
            self.channel.close()
            return False
        self.version = high  # §2.3: the highest version both support
        self.send_raw(PREFACE_MAGIC + bytes([high, high, 0, 0]))
        return True

    # ----- sending messages ----------------------------------------------------------------

    def open_stream(
        self,
        head: dict[str, object],
        *,
        urgency: int = 2,
        incremental: bool = False,
        end_stream: bool = False,
    ) -> int:
        if self.goaway_received is not None:
            raise UsageError("GOAWAY received: no new streams (§13.2)")
        active = sum(1 for r in self.streams.values() if self._ours(r.sid) and not r.closed)
        if active >= self.peer[S.MAX_CONCURRENT_STREAMS]:
            raise UsageError("the peer's MAX_CONCURRENT_STREAMS is reached (§6.3)")
        sid = self.next_sid
        self.next_sid += 2
        rec = StreamRec(sid, self.peer[S.INITIAL_STREAM_CREDIT], self.local[4])
        rec.urgency, rec.incremental = urgency, incremental
        self.streams[sid] = rec
        self.send_headers(sid, head, end_stream=end_stream)
        return sid

    def send_headers(self, sid: int, head: dict[str, object], *, end_stream: bool = False) -> None:
        rec = self._sendable(sid, True, end_stream)
        flags = END_STREAM if end_stream else 0
        payload = headers_payload(head, rec.urgency, rec.incremental)
        if len(payload) > self.peer[S.MAX_HEADER_SIZE]:
            raise UsageError(f"head of {len(payload)} bytes above the peer's MAX_HEADER_SIZE")
        self.send_raw(build_frame(T.HEADERS, flags, sid, payload))

    def _sendable(self, sid: int, headers: bool, end: bool) -> StreamRec:
        rec = self.streams.get(sid)
        if rec is None or rec.reset_code is not None:
            raise UsageError(f"stream {sid} is idle or reset")
        new = HALF_TABLE[(rec.local, (headers, end))]
        if isinstance(new, Code):  # §6.2.4
            raise UsageError(f"local half {rec.local.value} forbids this frame on stream {sid}")
        rec.local = new
        return rec

    def send_body(self, sid: int, body: bytes, *, codec: int = Codec.RAW, end: bool = True) -> None:
        """DATA frames within the peer's MAX_FRAME_SIZE and credit (§7.2, §8.3)."""
        view = memoryview(body)
        if not body:
            self._send_data(sid, b"", Codec.RAW, 0, end)
            return
        off = 0
        width = SHUFFLE_WIDTH.get(Codec(codec), 1) if codec else 1
        while off < len(body):
            avail = self._wait_credit(sid)
            cap = min(self.max_chunk, self.peer[S.MAX_FRAME_SIZE], avail, len(body) - off)
            piece = bytes(view[off : off + cap])
            wire, used = piece, Codec.RAW
            if codec != Codec.RAW and len(piece) % width == 0:
                encoded = encode_payload(piece, codec)
                if len(encoded) <= cap:
                    wire, used = encoded, Codec(codec)
            off += len(piece)
            self._send_data(sid, wire, used, len(piece), end and off == len(body))

    def _send_data(self, sid: int, wire: bytes, codec: int, dlen: int, end: bool) -> None:
        rec = self._sendable(sid, False, end)
        rec.sent += len(wire)
        self.conn_sent += len(wire)
        assert rec.sent <= rec.send_limit and self.conn_sent <= self.conn_send_limit
        flags = END_STREAM if end else 0
        self.send_raw(build_frame(T.DATA, flags, sid, wire, codec=codec, decoded_length=dlen))

    def _wait_credit(self, sid: int) -> int:
        """Bytes that may be sent now on ``sid``; reads frames (CREDIT) until positive."""
        rec = self.streams[sid]
        for _ in range(100_000):
            if rec.reset_code is not None:
                raise PeerClosed(f"stream {sid} was reset with {rec.reset_code.name}")
            avail = min(rec.send_limit - rec.sent, self.conn_send_limit - self.conn_sent)
            if avail > 0:
                return avail
            self.poll()
        raise PeerTimeout(f"no credit for stream {sid}")

    def send_message(
        self, sid: int, head: dict[str, object], body: bytes = b"", codec: int = Codec.RAW
    ) -> None:
        """Response side: HEADERS (+ body) on a stream the peer opened."""
        if body:
            head = {**head, "body_len": len(body)}
        self.send_headers(sid, head, end_stream=not body)
        if body:
            self.send_body(sid, body, codec=codec)

    # ----- receiving messages ---------------------------------------------------------------

    def read_message(self, sid: int) -> Message:
        """Poll until the peer's message on ``sid`` is complete; PeerClosed if it was reset."""
        rec = self.streams[sid]
        for _ in range(1_000_000):
            if rec.remote is Half.ENDED:  # complete, even if a RESET followed it
                assert rec.head is not None
                rec.delivered = True
                return Message(sid, rec.head, bytes(rec.body))
            if rec.reset_code is not None:
                raise PeerClosed(f"stream {sid} reset with {rec.reset_code.name}")
            self.poll()
        raise PeerTimeout(f"message on stream {sid} never completed")

    def request(
        self,
        head: dict[str, object],
        body: bytes = b"",
        *,
        codec: int = Codec.RAW,
        urgency: int = 2,
        incremental: bool = False,
    ) -> Message:
        """Client exchange of §10.1: a request message, then the response message."""
        if body:
            head = {**head, "body_len": len(body)}
        with self.corked():  # HEADERS and a small body leave in one write
            sid = self.open_stream(
                head, urgency=urgency, incremental=incremental, end_stream=not body
            )
            if body:
                try:
                    self.send_body(sid, body, codec=codec)
                except (PeerClosed, UsageError):  # the peer answered early and reset the upload
                    if self.streams[sid].reset_code is None:
                        raise
        return self.read_message(sid)

    def accept_request(self) -> Message:
        """Server side: the next complete request from the peer."""
        for _ in range(1_000_000):
            for rec in self.streams.values():
                done = rec.remote is Half.ENDED and rec.reset_code is None
                if done and not rec.delivered and not self._ours(rec.sid):
                    rec.delivered = True
                    assert rec.head is not None
                    return Message(rec.sid, rec.head, bytes(rec.body))
            self.poll()
        raise PeerTimeout("no request arrived")

    def ping(self, payload: bytes = b"refpeer!") -> None:
        """Send PING and wait for the ACK with the identical payload (§4.5)."""
        self.pings.add(payload)
        self.send_raw(ping_frame(payload))
        for _ in range(100_000):
            if payload not in self.pings:
                return
            self.poll()

    def drain(self) -> list[Incoming]:
        """Read until the peer closes; returns what arrived (EOF or GOAWAY error ends it)."""
        seen: list[Incoming] = []
        try:
            while not self.closed:
                seen.append(self.poll())
        except (PeerClosed, PeerTimeout):
            pass
        return seen


__all__ = [
    "ACK",
    "END_STREAM",
    "HALF_TABLE",
    "HEADER_SIZE",
    "Half",
    "Incoming",
    "Message",
    "PeerClosed",
    "RefPeer",
    "StreamRec",
    "UsageError",
]
