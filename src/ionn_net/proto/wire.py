"""Frame layout of protocol.md §2-§4: preface, 16-byte header, typed frames, decoder.

This module owns the bytes: :func:`serialize` turns a typed frame into wire bytes and
:class:`FrameDecoder` turns a byte stream back into typed frames. The decoder checks each
header against the receiver's :class:`~ionn_net.config.Limits` as soon as its 16 bytes are
available, *before* any payload is buffered (§3.2), so it never holds more than one header
plus the current frame's payload. Parsing is one ``struct.unpack_from`` per frame and one
copy of the payload region; there is no per-byte Python work. A connection's decoder joins
runs of RAW DATA frames of one stream (``coalesce_data``, up to 64 KiB per item).

Connection-level framing errors (sizes, codec byte, stream-0 rules) raise the typed
:class:`~ionn_net.proto.errors.ProtocolError`. Stream-level problems of a HEADERS frame
(urgency > 7, a head that is not a valid JSON object with a string ``"m"``, §4.2) do not
raise: the frame is returned with ``stream_error`` set so that the connection answers with
RESET instead of GOAWAY. DATA payloads are not decoded here (see :mod:`.codecs`).
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ionn_net.config import Limits
from ionn_net.proto._frozen import positional_factory
from ionn_net.proto.codecs import Codec
from ionn_net.proto.errors import (
    CompressionError,
    ErrorCode,
    FrameSizeError,
    ProtocolError,
    ProtocolViolation,
    UsageError,
)

__all__ = [
    "FLAG_ACK",
    "FLAG_END_STREAM",
    "FLAG_INCREMENTAL",
    "FRAME_HEADER",
    "HEADER_SIZE",
    "MAX_CREDIT",
    "MAX_STREAM_ID",
    "PREFACE",
    "PREFACE_MAGIC",
    "CreditFrame",
    "DataFrame",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "GoAwayFrame",
    "HeadersFrame",
    "PingFrame",
    "Preface",
    "RawData",
    "ResetFrame",
    "SettingsFrame",
    "UnknownFrame",
    "encode_head",
    "encode_preface",
    "parse_head",
    "parse_preface",
    "serialize",
    "serialize_parts",
]

FRAME_HEADER = struct.Struct(">BBBBIII")
HEADER_SIZE = FRAME_HEADER.size  # 16
PREFACE = struct.Struct(">4sBBH")
PREFACE_MAGIC = b"IONN"
FLAG_END_STREAM = 0x01
FLAG_ACK = 0x01
FLAG_INCREMENTAL = 0x01  # bit 0 of the HEADERS priority-flags byte (§4.2)
MAX_STREAM_ID = 2**31 - 1
MAX_CREDIT = 2**62  # §7.3
_STREAM_MASK = 0x7FFFFFFF  # bit 31 of stream_id is reserved (§3.1)
_HEADERS_PREFIX = struct.Struct(">BBH")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_GOAWAY = struct.Struct(">II")
_SETTING = struct.Struct(">HI")


class FrameType(enum.IntEnum):
    """Frame types of §4."""

    DATA = 0x00
    HEADERS = 0x01
    RESET = 0x02
    SETTINGS = 0x03
    PING = 0x04
    GOAWAY = 0x05
    CREDIT = 0x06


# --------------------------------------------------------------------------- preface (§2)


@dataclass(frozen=True, slots=True)
class Preface:
    """An 8-byte preface: ``IONN``, min_version, max_version, two reserved bytes."""

    min_version: int
    max_version: int


def encode_preface(min_version: int, max_version: int) -> bytes:
    """The 8 preface bytes (reserved bytes zero)."""
    if not (0 <= min_version <= 255 and 0 <= max_version <= 255):
        raise UsageError(f"preface versions: expected 0-255, got {min_version}, {max_version}")
    return PREFACE.pack(PREFACE_MAGIC, min_version, max_version, 0)


def parse_preface(data: bytes | bytearray | memoryview) -> Preface:
    """Parse 8 preface bytes; a wrong magic raises :class:`ProtocolViolation` (§2.2)."""
    if len(data) != PREFACE.size:
        raise ProtocolViolation(f"preface: expected {PREFACE.size} bytes, got {len(data)}")
    magic, lo, hi, _reserved = PREFACE.unpack(data)
    if magic != PREFACE_MAGIC:
        raise ProtocolViolation(f"preface: expected magic b'IONN', got {bytes(magic)!r}")
    return Preface(lo, hi)


# ------------------------------------------------------------------------- frames (§4)


@dataclass(frozen=True, slots=True, kw_only=True)
class DataFrame:
    """DATA (§4.1). ``data`` is the wire payload, still encoded with ``codec``."""

    stream_id: int
    data: bytes
    codec: int = Codec.RAW
    decoded_length: int = -1  # -1 at construction: len(data), as RAW requires (§3.3)
    end_stream: bool = False

    def __post_init__(self) -> None:
        if self.decoded_length < 0:
            object.__setattr__(self, "decoded_length", len(self.data))


@dataclass(frozen=True, slots=True, kw_only=True)
class HeadersFrame:
    """HEADERS (§4.2).

    ``raw`` keeps the exact head bytes received (for a byte-exact round trip); when empty,
    :func:`serialize` encodes ``head`` compactly. ``stream_error`` is set by the decoder when
    the urgency or the head is invalid (a stream error, §4.2); ``head`` is then ``{}``.
    """

    stream_id: int
    urgency: int = 3
    incremental: bool = False
    head: Mapping[str, Any] = field(default_factory=dict)
    end_stream: bool = False
    raw: bytes = field(default=b"", compare=False, repr=False)
    stream_error: ProtocolError | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResetFrame:
    """RESET (§4.3). ``error_code`` is the raw u32 (an :class:`ErrorCode` when known)."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SettingsFrame:
    """SETTINGS (§4.4): ``entries`` are ``(id, value)`` pairs in wire order."""

    ack: bool = False
    entries: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PingFrame:
    """PING (§4.5): exactly 8 opaque bytes."""

    ack: bool = False
    payload: bytes = b"\x00" * 8


@dataclass(frozen=True, slots=True, kw_only=True)
class GoAwayFrame:
    """GOAWAY (§4.6). Undecodable debug bytes are replaced (U+FFFD): it is diagnostic text."""

    last_stream_id: int
    error_code: int
    debug: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CreditFrame:
    """CREDIT (§4.7): absolute limit; stream 0 is the connection."""

    stream_id: int
    limit: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownFrame:
    """A frame of a type this version does not define (§3.4); ignored by receivers."""

    type: int
    flags: int
    stream_id: int
    payload: bytes
    codec: int = field(default=0, compare=False)
    decoded_length: int = field(default=-1, compare=False)


# Per-frame construction without the frozen-dataclass __init__ cost (see _frozen).
_make_data = positional_factory(DataFrame)

Frame = (
    DataFrame
    | HeadersFrame
    | ResetFrame
    | SettingsFrame
    | PingFrame
    | GoAwayFrame
    | CreditFrame
    | UnknownFrame
)


# ------------------------------------------------------------------------ JSON heads (§4.2)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-JSON constant {name}")


def _depth_exceeds(obj: object, max_depth: int) -> bool:
    """True when containers nest deeper than ``max_depth`` (the head object is level 1)."""
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        children = node.values() if isinstance(node, dict) else node
        for child in children:  # type: ignore[attr-defined]
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def parse_head(raw: bytes, *, stream_id: int, max_depth: int = 32) -> dict[str, Any]:
    """Parse and validate a HEADERS head; raises a stream-level :class:`ProtocolViolation`."""
    try:
        text = raw.decode("utf-8")
        obj = json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolViolation(
            f"HEADERS on stream {stream_id}: expected a UTF-8 JSON object, got invalid JSON "
            f"({type(exc).__name__})",
            stream_id=stream_id,
        ) from None
    if not isinstance(obj, dict):
        raise ProtocolViolation(
            f"HEADERS on stream {stream_id}: expected a JSON object, got {type(obj).__name__}",
            stream_id=stream_id,
        )
    # Counting brackets is C-speed; only heads that could be too deep are walked.
    if text.count("{") + text.count("[") > max_depth and _depth_exceeds(obj, max_depth):
        raise ProtocolViolation(
            f"HEADERS on stream {stream_id}: expected JSON nesting <= {max_depth}, got deeper",
            stream_id=stream_id,
        )
    if not isinstance(obj.get("m"), str):
        raise ProtocolViolation(
            f"HEADERS on stream {stream_id}: expected a string member 'm', "
            f"got {type(obj.get('m')).__name__}",
            stream_id=stream_id,
        )
    return obj


def encode_head(head: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON of a head; refuses non-JSON values with :class:`UsageError`.

    Only the encoding is checked here (so tests can build any object); the connection
    additionally requires the string member ``"m"`` before sending (§4.2).
    """
    if not isinstance(head, Mapping):
        raise UsageError(f"head: expected a mapping, got {type(head).__name__}")
    try:
        text = json.dumps(dict(head), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"head: expected JSON-serializable values ({exc})") from None
    return text.encode("utf-8")


# ---------------------------------------------------------------------------- serialize


def _hdr(ftype: int, flags: int, sid: int, length: int, *, codec: int = 0, dlen: int = -1) -> bytes:
    return FRAME_HEADER.pack(ftype, flags, codec, 0, sid, length, length if dlen < 0 else dlen)


def _ser_data(f: DataFrame) -> tuple[bytes, bytes]:
    flags = FLAG_END_STREAM if f.end_stream else 0
    n = len(f.data)
    return _hdr(FrameType.DATA, flags, f.stream_id, n, codec=f.codec, dlen=f.decoded_length), f.data


def _ser_headers(f: HeadersFrame) -> tuple[bytes, bytes]:
    if not 0 <= f.urgency <= 255:
        raise UsageError(f"HEADERS urgency: expected 0-7, got {f.urgency}")
    raw = f.raw or encode_head(f.head)
    prefix = _HEADERS_PREFIX.pack(f.urgency, FLAG_INCREMENTAL if f.incremental else 0, 0)
    flags = FLAG_END_STREAM if f.end_stream else 0
    payload = prefix + raw
    return _hdr(FrameType.HEADERS, flags, f.stream_id, len(payload)), payload


def _ser_reset(f: ResetFrame) -> tuple[bytes, bytes]:
    return _hdr(FrameType.RESET, 0, f.stream_id, 4), _U32.pack(f.error_code)


def _ser_settings(f: SettingsFrame) -> tuple[bytes, bytes]:
    payload = b"".join(_SETTING.pack(i, v) for i, v in f.entries)
    return _hdr(FrameType.SETTINGS, FLAG_ACK if f.ack else 0, 0, len(payload)), payload


def _ser_ping(f: PingFrame) -> tuple[bytes, bytes]:
    if len(f.payload) != 8:
        raise UsageError(f"PING payload: expected 8 bytes, got {len(f.payload)}")
    return _hdr(FrameType.PING, FLAG_ACK if f.ack else 0, 0, 8), f.payload


def _ser_goaway(f: GoAwayFrame) -> tuple[bytes, bytes]:
    payload = _GOAWAY.pack(f.last_stream_id, f.error_code) + f.debug.encode("utf-8")
    return _hdr(FrameType.GOAWAY, 0, 0, len(payload)), payload


def _ser_credit(f: CreditFrame) -> tuple[bytes, bytes]:
    return _hdr(FrameType.CREDIT, 0, f.stream_id, 8), _U64.pack(f.limit)


def _ser_unknown(f: UnknownFrame) -> tuple[bytes, bytes]:
    n = len(f.payload)
    return _hdr(f.type, f.flags, f.stream_id, n, codec=f.codec, dlen=f.decoded_length), f.payload


_SERIALIZERS: dict[type, Callable[[Any], tuple[bytes, bytes]]] = {
    DataFrame: _ser_data,
    HeadersFrame: _ser_headers,
    ResetFrame: _ser_reset,
    SettingsFrame: _ser_settings,
    PingFrame: _ser_ping,
    GoAwayFrame: _ser_goaway,
    CreditFrame: _ser_credit,
    UnknownFrame: _ser_unknown,
}


def serialize_parts(frame: Frame) -> tuple[bytes, bytes]:
    """The 16 header bytes and the payload of ``frame`` (for two writes without a join)."""
    try:
        ser = _SERIALIZERS[type(frame)]
    except KeyError:
        raise UsageError(f"serialize: expected a frame, got {type(frame).__name__}") from None
    try:
        return ser(frame)
    except struct.error as exc:
        raise UsageError(f"serialize {type(frame).__name__}: field out of range ({exc})") from None


def serialize(frame: Frame) -> bytes:
    """The wire bytes of ``frame`` (§3.1)."""
    header, payload = serialize_parts(frame)
    return header + payload


# ------------------------------------------------------------------------------ decoder

_Payload = bytes | memoryview
#: A DATA frame as ``(stream_id, end_stream, codec, decoded_length, payload)``.
RawData = tuple[int, bool, int, int, bytes]
_NAMES = {int(t): t.name for t in FrameType}
# Largest payload a run of DATA frames is joined into. Joining a whole read (up to 1 MiB)
# saved more events but measured slower: such short-lived large objects keep getting fresh
# pages from malloc (its mmap and trim thresholds), and the page faults (40k-170k per GiB
# received) cost more than the events saved; 64 KiB pieces stay in reused heap memory.
_RUN_LIMIT = 64 * 1024


def _name(ftype: int, sid: int) -> str:
    return f"{_NAMES.get(ftype, f'type 0x{ftype:02x}')} frame on stream {sid}"


class FrameDecoder:
    """Incremental frame parser bounded by ``limits`` (§3.2).

    Two ways to use it: ``feed(data) -> list[Frame]`` (raises the first framing error), or
    ``push(data)`` then ``pop()`` until it returns ``None`` -- the connection does this so
    that frames before an error are processed in order. Input passed to ``push`` is only
    referenced until ``pop`` returns ``None`` (the unparsed tail is then copied), so the
    caller may reuse its buffer afterwards. After an error the decoder stays failed.
    """

    def __init__(self, limits: Limits | None = None, *, coalesce_data: bool = False) -> None:
        lim = limits or Limits()
        self._limits = lim
        self._coalesce = coalesce_data
        self._max_settings_len = 6 * lim.max_settings_entries
        self._max_frame = lim.max_frame_size
        self._max_decoded = lim.max_decoded_frame_size
        self._buf = bytearray()  # a partial frame: its header (checked) + payload so far
        self._data: memoryview | None = None
        self._pos = 0
        self._error: ProtocolError | None = None
        self._checks: dict[int, Callable[[int, int, int, int, int], None]] = {
            FrameType.DATA: self._check_data,
            FrameType.HEADERS: self._check_headers,
            FrameType.RESET: self._check_reset,
            FrameType.SETTINGS: self._check_settings,
            FrameType.PING: self._check_ping,
            FrameType.GOAWAY: self._check_goaway,
            FrameType.CREDIT: self._check_credit,
        }
        self._builders: dict[int, Callable[[int, int, int, int, _Payload], Frame]] = {
            FrameType.DATA: _build_data,
            FrameType.HEADERS: self._build_headers,
            FrameType.RESET: _build_reset,
            FrameType.SETTINGS: _build_settings,
            FrameType.PING: _build_ping,
            FrameType.GOAWAY: _build_goaway,
            FrameType.CREDIT: _build_credit,
        }

    @property
    def buffered(self) -> int:
        """Bytes held between calls: at most one header plus one frame's payload."""
        return len(self._buf)

    @property
    def error(self) -> ProtocolError | None:
        return self._error

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Parse all complete frames in ``data`` (plus what was buffered)."""
        self.push(data)
        frames: list[Frame] = []
        pop = self.pop_item
        make = _make_data
        while (item := pop()) is not None:
            if type(item) is tuple:
                sid, end, codec, dlen, payload = item
                frames.append(make(sid, payload, codec, dlen, end))
            else:
                frames.append(item)  # type: ignore[arg-type]
        return frames

    def push(self, data: bytes | bytearray | memoryview) -> None:
        """Hand the decoder more input; parse it with :meth:`pop`."""
        if self._error is not None:
            raise self._error
        if self._data is not None:
            raise UsageError("FrameDecoder.push: previous input not fully popped")
        mv = memoryview(data)
        self._data = mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")
        self._pos = 0

    def pop(self) -> Frame | None:
        """The next complete frame, or ``None`` when more input is needed."""
        item = self.pop_item()
        if type(item) is tuple:
            sid, end, codec, dlen, data = item
            return _make_data(sid, data, codec, dlen, end)
        return item  # type: ignore[return-value]

    def pop_item(self) -> Frame | RawData | None:
        """Like :meth:`pop`, but a valid DATA frame comes as a :data:`RawData` tuple.

        The connection's hot path uses this to skip building a :class:`DataFrame` per frame.
        """
        if self._error is not None:
            raise self._error
        if self._data is None:
            return None
        try:
            return self._pop_buffered() if self._buf else self._pop_direct(self._data)
        except ProtocolError as exc:
            self._fail(exc)
            raise

    def close(self) -> None:
        """Drop buffered and referenced input: the connection is over."""
        self._data = None
        self._buf = bytearray()

    def _fail(self, exc: ProtocolError) -> None:
        self._error = exc
        self._data = None
        self._buf = bytearray()

    def _pop_direct(self, data: memoryview) -> Frame | RawData | None:
        pos = self._pos
        end = len(data)
        if end - pos < HEADER_SIZE:
            self._stash(data, pos)
            return None
        ftype, flags, codec, _, sid, length, dlen = FRAME_HEADER.unpack_from(data, pos)
        sid &= _STREAM_MASK
        stop = pos + HEADER_SIZE + length
        if (
            ftype == 0
            and length <= self._max_frame
            and sid
            and (dlen == length if codec == 0 else codec <= 3 and dlen <= self._max_decoded)
        ):
            # Fast path: a valid DATA header (the general checks below say the same).
            if stop > end:
                self._stash(data, pos)
                return None
            self._pos = stop
            end_stream = flags & FLAG_END_STREAM == FLAG_END_STREAM
            if self._coalesce and codec == 0 and length and not end_stream:
                return self._data_run(data, sid, pos + HEADER_SIZE, stop)
            return sid, end_stream, codec, dlen, bytes(data[pos + HEADER_SIZE : stop])
        self._check(ftype, flags, codec, sid, length, dlen=dlen)
        if stop > end:
            self._stash(data, pos)
            return None
        self._pos = stop
        return self._build(ftype, flags, codec, sid, dlen, payload=data[pos + HEADER_SIZE : stop])

    def _data_run(self, data: memoryview, sid: int, first: int, stop: int) -> RawData:
        """A RAW DATA frame (``data[first:stop]``, no END_STREAM) and the complete RAW DATA
        frames of the same stream that directly follow it in this input, as one item.

        ``coalesce_data`` mode: a bulk body arrives as a run of frames per read, and fewer
        items (one copy and one event for the application each) than frames save much of
        the per-frame receive cost. Only frames that pass the same header checks as
        the fast path join (non-empty, within MAX_FRAME_SIZE, RAW); the run ends after a
        frame with END_STREAM, or before the joined payload would pass :data:`_RUN_LIMIT`.
        The item's length is the sum of the frames' lengths.
        """
        pieces = [data[first:stop]]
        wire = stop - first
        pos = stop
        end = len(data)
        end_stream = False
        max_frame = self._max_frame
        unpack = FRAME_HEADER.unpack_from
        while end - pos >= HEADER_SIZE:
            ftype, flags, codec, _, fsid, length, dlen = unpack(data, pos)
            nxt = pos + HEADER_SIZE + length
            if (
                wire + length > _RUN_LIMIT
                or ftype != 0
                or codec != 0
                or fsid & _STREAM_MASK != sid
                or not 0 < length <= max_frame
                or dlen != length
                or nxt > end
            ):
                break
            pieces.append(data[pos + HEADER_SIZE : nxt])
            wire += length
            pos = nxt
            if flags & FLAG_END_STREAM:
                end_stream = True
                break
        self._pos = pos
        payload = bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces)
        return sid, end_stream, 0, wire, payload

    def _stash(self, data: memoryview, pos: int) -> None:
        self._buf += data[pos:]
        self._data = None

    def _pop_buffered(self) -> Frame | None:
        data = self._data
        assert data is not None
        buf = self._buf
        pos = self._pos
        if len(buf) < HEADER_SIZE:
            take = min(HEADER_SIZE - len(buf), len(data) - pos)
            buf += data[pos : pos + take]
            pos = self._pos = pos + take
            if len(buf) < HEADER_SIZE:
                self._data = None
                return None
        ftype, flags, codec, _, sid, length, dlen = FRAME_HEADER.unpack_from(buf, 0)
        sid &= _STREAM_MASK
        self._check(ftype, flags, codec, sid, length, dlen=dlen)
        need = HEADER_SIZE + length - len(buf)
        if len(data) - pos < need:
            buf += data[pos:]
            self._data = None
            return None
        part = memoryview(buf)[HEADER_SIZE:]
        payload = b"".join((part, data[pos : pos + need]))
        part.release()
        buf.clear()
        self._pos = pos + need
        return self._build(ftype, flags, codec, sid, dlen, payload=payload)

    # -- header checks (§3.2, §3.3, §4): run before any payload is buffered

    def _check(
        self, ftype: int, flags: int, codec: int, sid: int, length: int, *, dlen: int
    ) -> None:
        check = self._checks.get(ftype)
        if check is None:
            self._check_sizes(ftype, sid, length, dlen)  # unknown type (§3.4)
        else:
            check(flags, codec, sid, length, dlen)

    def _check_sizes(self, ftype: int, sid: int, length: int, dlen: int) -> None:
        lim = self._limits
        if length > lim.max_frame_size:
            raise FrameSizeError(
                f"{_name(ftype, sid)}: expected length <= {lim.max_frame_size}, got {length}"
            )
        if dlen > lim.max_decoded_frame_size:
            raise FrameSizeError(
                f"{_name(ftype, sid)}: expected decoded_length <= "
                f"{lim.max_decoded_frame_size}, got {dlen}"
            )

    def _check_data(self, flags: int, codec: int, sid: int, length: int, dlen: int) -> None:
        self._check_sizes(FrameType.DATA, sid, length, dlen)
        if codec > Codec.ZSTD_SHUFFLE2:
            raise CompressionError(f"{_name(0, sid)}: expected codec 0-3, got {codec}")
        if codec == Codec.RAW and dlen != length:
            raise CompressionError(
                f"{_name(0, sid)}: RAW expects decoded_length == length {length}, got {dlen}"
            )
        if sid == 0:
            raise ProtocolViolation("DATA frame on stream 0: expected a non-zero stream id")

    def _check_headers(self, flags: int, codec: int, sid: int, length: int, dlen: int) -> None:
        lim = self._limits
        if length > lim.max_header_size:
            raise FrameSizeError(
                f"{_name(1, sid)}: expected length <= {lim.max_header_size}, got {length}"
            )
        if length < 4:
            raise FrameSizeError(f"{_name(1, sid)}: expected length >= 4, got {length}")
        self._check_control(FrameType.HEADERS, codec, sid, length, dlen, stream=True)

    def _check_control(
        self, ftype: int, codec: int, sid: int, length: int, dlen: int, *, stream: bool | None
    ) -> None:
        """§3.3 (no codec on non-DATA frames) and the stream-0 rules of §4."""
        if codec != 0:
            raise ProtocolViolation(f"{_name(ftype, sid)}: expected codec 0, got {codec}")
        if dlen != length:
            raise CompressionError(
                f"{_name(ftype, sid)}: expected decoded_length == length {length}, got {dlen}"
            )
        if stream is True and sid == 0:
            raise ProtocolViolation(f"{_name(ftype, sid)}: expected a non-zero stream id")
        if stream is False and sid != 0:
            raise ProtocolViolation(f"{_name(ftype, sid)}: expected stream 0")

    def _check_exact(self, ftype: int, sid: int, length: int, size: int) -> None:
        if length != size:
            raise FrameSizeError(f"{_name(ftype, sid)}: expected length {size}, got {length}")

    def _check_reset(self, flags: int, codec: int, sid: int, length: int, dlen: int) -> None:
        self._check_exact(FrameType.RESET, sid, length, 4)
        self._check_control(FrameType.RESET, codec, sid, length, dlen, stream=True)

    def _check_settings(self, flags: int, codec: int, sid: int, length: int, dlen: int) -> None:
        if flags & FLAG_ACK:
            self._check_exact(FrameType.SETTINGS, sid, length, 0)
        elif length % 6 or length > self._max_settings_len:
            raise FrameSizeError(
                f"{_name(3, sid)}: expected a multiple of 6 up to "
                f"{self._max_settings_len} bytes, got {length}"
            )
        self._check_control(FrameType.SETTINGS, codec, sid, length, dlen, stream=False)

    def _check_ping(self, flags: int, codec: int, sid: int, length: int, dlen: int) -> None:
        self._check_exact(FrameType.PING, sid, length, 8)
        self._check_control(FrameType.PING, codec, sid, length, dlen, stream=False)

    def _check_goaway(self, flags: int, codec: int, sid: int, length: int, dlen: int) -> None:
        top = 8 + self._limits.max_goaway_debug
        if not 8 <= length <= top:
            raise FrameSizeError(f"{_name(5, sid)}: expected length 8..{top}, got {length}")
        self._check_control(FrameType.GOAWAY, codec, sid, length, dlen, stream=False)

    def _check_credit(self, flags: int, codec: int, sid: int, length: int, dlen: int) -> None:
        self._check_exact(FrameType.CREDIT, sid, length, 8)
        self._check_control(FrameType.CREDIT, codec, sid, length, dlen, stream=None)

    # -- payload parsing

    def _build(
        self, ftype: int, flags: int, codec: int, sid: int, dlen: int, *, payload: _Payload
    ) -> Frame:
        build = self._builders.get(ftype)
        if build is None:
            return UnknownFrame(
                type=ftype,
                flags=flags,
                stream_id=sid,
                payload=bytes(payload),
                codec=codec,
                decoded_length=dlen,
            )
        return build(flags, codec, sid, dlen, payload)

    def _build_headers(self, flags: int, codec: int, sid: int, dlen: int, p: _Payload) -> Frame:
        urgency = p[0]
        incremental = bool(p[1] & FLAG_INCREMENTAL)
        raw = bytes(p[4:])
        end = bool(flags & FLAG_END_STREAM)
        error: ProtocolError | None = None
        head: dict[str, Any] = {}
        if urgency > 7:
            error = ProtocolViolation(
                f"HEADERS on stream {sid}: expected urgency 0-7, got {urgency}", stream_id=sid
            )
        else:
            try:
                head = parse_head(raw, stream_id=sid, max_depth=self._limits.max_json_depth)
            except ProtocolViolation as exc:
                error = exc
        return HeadersFrame(
            stream_id=sid,
            urgency=urgency,
            incremental=incremental,
            head=head,
            end_stream=end,
            raw=raw,
            stream_error=error,
        )


def _build_data(flags: int, codec: int, sid: int, dlen: int, p: _Payload) -> Frame:
    return _make_data(sid, bytes(p), codec, dlen, bool(flags & FLAG_END_STREAM))


def _known_code(value: int) -> int:
    try:
        return ErrorCode(value)
    except ValueError:
        return value


def _build_reset(flags: int, codec: int, sid: int, dlen: int, p: _Payload) -> Frame:
    return ResetFrame(stream_id=sid, error_code=_known_code(_U32.unpack_from(p)[0]))


def _build_settings(flags: int, codec: int, sid: int, dlen: int, p: _Payload) -> Frame:
    entries = tuple(_SETTING.iter_unpack(p))
    return SettingsFrame(ack=bool(flags & FLAG_ACK), entries=entries)


def _build_ping(flags: int, codec: int, sid: int, dlen: int, p: _Payload) -> Frame:
    return PingFrame(ack=bool(flags & FLAG_ACK), payload=bytes(p))


def _build_goaway(flags: int, codec: int, sid: int, dlen: int, p: _Payload) -> Frame:
    last, code = _GOAWAY.unpack_from(p)
    debug = bytes(p[8:]).decode("utf-8", errors="replace")
    return GoAwayFrame(last_stream_id=last, error_code=_known_code(code), debug=debug)


def _build_credit(flags: int, codec: int, sid: int, dlen: int, p: _Payload) -> Frame:
    return CreditFrame(stream_id=sid, limit=_U64.unpack_from(p)[0])
