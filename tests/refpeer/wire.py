"""IONN-NET/1 framing for the reference peer, written from protocol.md alone.

Owns the constants of protocol.md (§2 preface, §3 header, §4 frame table, §5 codes, §11 settings,
§12 codecs), frame building, an incremental validating frame reader and the codec functions. It
imports nothing from ``ionn_net`` on purpose: two implementations that agree are what make the
specification real, so this one must not share code with the library it checks.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass

import zstandard

PREFACE_MAGIC = b"IONN"
PREFACE_SIZE = 8
HEADER = struct.Struct(">BBBBIII")  # §3.1
HEADER_SIZE = HEADER.size
STREAM_ID_MASK = 0x7FFF_FFFF  # bit 31 reserved: receivers ignore it (§3.1)
MAX_STREAM_ID = 2**31 - 1


class T(enum.IntEnum):
    """Frame types of §4."""

    DATA = 0x00
    HEADERS = 0x01
    RESET = 0x02
    SETTINGS = 0x03
    PING = 0x04
    GOAWAY = 0x05
    CREDIT = 0x06


END_STREAM = 0x01
ACK = 0x01


class Code(enum.IntEnum):
    """Error codes of §5.1."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    ENHANCE_YOUR_CALM = 0xA
    VERSION_MISMATCH = 0xB
    MESSAGE_TOO_LARGE = 0xC
    TIMEOUT = 0xD
    AUTH_FAILED = 0xE
    APPLICATION_ERROR = 0xF


def code_from_wire(value: int) -> Code:
    """§5.1: an unknown code received in RESET or GOAWAY is treated as INTERNAL_ERROR."""
    try:
        return Code(value)
    except ValueError:
        return Code.INTERNAL_ERROR


class S(enum.IntEnum):
    """Setting ids of §11."""

    MAX_FRAME_SIZE = 0x1
    MAX_DECODED_FRAME_SIZE = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_STREAM_CREDIT = 0x4
    INITIAL_CONNECTION_CREDIT = 0x5
    MAX_HEADER_SIZE = 0x6
    MAX_MESSAGE_SIZE = 0x7


# id -> (default, minimum, maximum), the table of §11.
SETTINGS_TABLE: dict[int, tuple[int, int, int]] = {
    S.MAX_FRAME_SIZE: (65536, 65536, 16777215),
    S.MAX_DECODED_FRAME_SIZE: (1048576, 1048576, 67108864),
    S.MAX_CONCURRENT_STREAMS: (100, 0, 2**31 - 1),
    S.INITIAL_STREAM_CREDIT: (1048576, 65536, 2**31 - 1),
    S.INITIAL_CONNECTION_CREDIT: (16777216, 65536, 2**31 - 1),
    S.MAX_HEADER_SIZE: (65536, 65536, 1048576),
    S.MAX_MESSAGE_SIZE: (268435456, 1048576, 2**32 - 1),
}
DEFAULT_SETTINGS: dict[int, int] = {k: v[0] for k, v in SETTINGS_TABLE.items()}
MAX_SETTINGS_PAYLOAD = 192  # 32 entries of 6 bytes (§4.4)
MAX_GOAWAY_DEBUG = 1024  # §4.6
MAX_JSON_DEPTH = 32  # §4.2
MAX_CREDIT = 2**62  # §7.3


class Codec(enum.IntEnum):
    """Codecs of §12."""

    RAW = 0
    ZSTD = 1
    ZSTD_SHUFFLE4 = 2
    ZSTD_SHUFFLE2 = 3


SHUFFLE_WIDTH = {Codec.ZSTD_SHUFFLE4: 4, Codec.ZSTD_SHUFFLE2: 2}
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_ZSTD_WINDOW = 8 * 1024 * 1024  # §12.1


class PeerError(Exception):
    """A rule of protocol.md was broken by the other side.

    ``stream_id`` is None for a connection error (§5.2), else the stream of a stream error (§5.3).
    """

    def __init__(self, code: Code, message: str, stream_id: int | None = None) -> None:
        scope = "connection" if stream_id is None else f"stream {stream_id}"
        super().__init__(f"{code.name} ({scope}): {message}")
        self.code = code
        self.stream_id = stream_id


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame as it was on the wire (payload not decoded)."""

    type: int
    flags: int
    codec: int
    stream_id: int
    payload: bytes
    decoded_length: int
    reserved: int = 0
    stream_bit31: bool = False

    @property
    def end_stream(self) -> bool:
        return bool(self.flags & END_STREAM)

    @property
    def ack(self) -> bool:
        return bool(self.flags & ACK)


def build_frame(
    ftype: int,
    flags: int,
    stream_id: int,
    payload: bytes = b"",
    *,
    codec: int = 0,
    decoded_length: int | None = None,
    reserved: int = 0,
    stream_bit31: bool = False,
) -> bytes:
    """Encode one frame; ``decoded_length`` defaults to the payload length (RAW)."""
    sid = stream_id | (0x8000_0000 if stream_bit31 else 0)
    dlen = len(payload) if decoded_length is None else decoded_length
    return HEADER.pack(ftype, flags, codec, reserved, sid, len(payload), dlen) + payload


def encode(frame: Frame) -> bytes:
    return build_frame(
        frame.type,
        frame.flags,
        frame.stream_id,
        frame.payload,
        codec=frame.codec,
        decoded_length=frame.decoded_length,
        reserved=frame.reserved,
        stream_bit31=frame.stream_bit31,
    )


def client_preface(min_version: int = 1, max_version: int = 1, reserved: bytes = b"\0\0") -> bytes:
    return PREFACE_MAGIC + bytes([min_version, max_version]) + reserved


def server_preface(version: int = 1) -> bytes:
    return PREFACE_MAGIC + bytes([version, version, 0, 0])


# ----- control-frame payloads ---------------------------------------------------------------


def settings_payload(entries: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> bytes:
    return b"".join(struct.pack(">HI", k, v) for k, v in entries)


def settings_frame(entries: list[tuple[int, int]] | tuple[tuple[int, int], ...] = ()) -> bytes:
    return build_frame(T.SETTINGS, 0, 0, settings_payload(entries))


def settings_ack() -> bytes:
    return build_frame(T.SETTINGS, ACK, 0)


def ping_frame(payload: bytes, ack: bool = False) -> bytes:
    return build_frame(T.PING, ACK if ack else 0, 0, payload)


def goaway_frame(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return build_frame(T.GOAWAY, 0, 0, struct.pack(">II", last_stream_id, code) + debug)


def reset_frame(stream_id: int, code: int) -> bytes:
    return build_frame(T.RESET, 0, stream_id, struct.pack(">I", code))


def credit_frame(stream_id: int, limit: int) -> bytes:
    return build_frame(T.CREDIT, 0, stream_id, struct.pack(">Q", limit))


def headers_payload(
    head: dict[str, object] | bytes, urgency: int = 2, incremental: bool = False
) -> bytes:
    raw = head if isinstance(head, bytes) else json.dumps(head, separators=(",", ":")).encode()
    return bytes([urgency, 1 if incremental else 0, 0, 0]) + raw


def headers_frame(
    stream_id: int,
    head: dict[str, object] | bytes,
    *,
    urgency: int = 2,
    incremental: bool = False,
    end_stream: bool = False,
) -> bytes:
    flags = END_STREAM if end_stream else 0
    return build_frame(T.HEADERS, flags, stream_id, headers_payload(head, urgency, incremental))


def data_frame(stream_id: int, data: bytes, *, end_stream: bool = False) -> bytes:
    return build_frame(T.DATA, END_STREAM if end_stream else 0, stream_id, data)


# ----- incremental reader with the header checks of §3 and §4 -------------------------------

CONTROL_SIZES: dict[int, tuple[int, int]] = {
    T.RESET: (4, 4),
    T.PING: (8, 8),
    T.GOAWAY: (8, 8 + MAX_GOAWAY_DEBUG),
    T.CREDIT: (8, 8),
}
STREAM_TYPES = frozenset({T.DATA, T.HEADERS, T.RESET})  # stream != 0 (§4 table)
CONNECTION_TYPES = frozenset({T.SETTINGS, T.PING, T.GOAWAY})  # stream == 0


def check_header(fields: tuple[int, int, int, int, int, int], local: dict[int, int]) -> None:
    """Every check that §3.2-§3.4 and §4 allow on the 16 header bytes alone.

    ``fields`` is (type, flags, codec, stream_id, length, decoded_length).
    """
    ftype, flags, codec, stream_id, length, dlen = fields
    known = ftype in T._value2member_map_
    if ftype == T.HEADERS:
        if length > local[S.MAX_HEADER_SIZE]:
            raise PeerError(Code.FRAME_SIZE_ERROR, f"HEADERS length {length} above limit")
        if length < 4:
            raise PeerError(Code.FRAME_SIZE_ERROR, f"HEADERS payload {length} < 4 bytes")
    elif ftype == T.DATA or not known:
        if length > local[S.MAX_FRAME_SIZE]:
            raise PeerError(Code.FRAME_SIZE_ERROR, f"type {ftype} length {length} above limit")
        if dlen > local[S.MAX_DECODED_FRAME_SIZE]:
            raise PeerError(
                Code.FRAME_SIZE_ERROR, f"type {ftype} decoded_length {dlen} above limit"
            )
    elif ftype == T.SETTINGS:
        if flags & ACK and length != 0:
            raise PeerError(Code.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
        if length % 6 or length > MAX_SETTINGS_PAYLOAD:
            raise PeerError(Code.FRAME_SIZE_ERROR, f"SETTINGS payload of {length} bytes")
    else:
        low, high = CONTROL_SIZES[ftype]
        if not low <= length <= high:
            raise PeerError(Code.FRAME_SIZE_ERROR, f"{T(ftype).name} payload of {length} bytes")
    if not known:
        return  # §3.4: unknown types are ignored after the size checks
    if ftype != T.DATA and codec != 0:
        raise PeerError(Code.PROTOCOL_ERROR, f"{T(ftype).name} with codec {codec}")
    if ftype == T.DATA and codec not in Codec._value2member_map_:
        raise PeerError(Code.COMPRESSION_ERROR, f"DATA with unknown codec {codec}")
    if codec == 0 and dlen != length:
        raise PeerError(Code.COMPRESSION_ERROR, f"RAW frame with decoded_length {dlen} != {length}")
    if ftype in STREAM_TYPES and stream_id == 0:
        raise PeerError(Code.PROTOCOL_ERROR, f"{T(ftype).name} on stream 0")
    if ftype in CONNECTION_TYPES and stream_id != 0:
        raise PeerError(Code.PROTOCOL_ERROR, f"{T(ftype).name} on stream {stream_id}")


class FrameReader:
    """Incremental frame reader: checks each header before buffering its payload (§3.2).

    ``local`` holds the settings this side announced (its receive limits); it is read at every
    header so that a change applies from the next frame on. Frames that precede a violation are
    returned first; the violation is raised by the next call (and by every later one).
    """

    def __init__(self, local: dict[int, int]) -> None:
        self.local = local
        self.buffer = bytearray()
        self.error: PeerError | None = None
        self._header: tuple[int, int, int, int, int, int, int, bool] | None = None

    def feed(self, data: bytes) -> list[Frame]:
        if self.error is not None:
            raise self.error
        self.buffer += data
        frames: list[Frame] = []
        try:
            self._parse(frames)
        except PeerError as exc:
            self.error = exc
            self.buffer.clear()
            if not frames:
                raise
        return frames

    def _parse(self, frames: list[Frame]) -> None:
        while True:
            if self._header is None:
                if len(self.buffer) < HEADER_SIZE:
                    return
                ftype, flags, codec, reserved, sid, length, dlen = HEADER.unpack_from(self.buffer)
                bit31 = bool(sid & 0x8000_0000)
                sid &= STREAM_ID_MASK
                del self.buffer[:HEADER_SIZE]
                check_header((ftype, flags, codec, sid, length, dlen), self.local)
                self._header = (ftype, flags, codec, reserved, sid, length, dlen, bit31)
            ftype, flags, codec, reserved, sid, length, dlen, bit31 = self._header
            if len(self.buffer) < length:
                return
            payload = bytes(self.buffer[:length])
            del self.buffer[:length]
            self._header = None
            frames.append(Frame(ftype, flags, codec, sid, payload, dlen, reserved, bit31))


# ----- payload parsing --------------------------------------------------------------------


def _depth(obj: object) -> int:
    """Nesting depth: a scalar is 0, an object or array is 1 + the deepest member."""
    deepest = 0
    todo: list[tuple[object, int]] = [(obj, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict):
            deepest = max(deepest, level)
            todo.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, level)
            todo.extend((v, level + 1) for v in item)
    return deepest


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


def parse_head(raw: bytes, stream_id: int) -> dict[str, object]:
    """§4.2: valid UTF-8 JSON object, nested at most 32 levels, with a string member "m"."""
    try:
        text = raw.decode("utf-8")
        head = json.loads(text, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PeerError(Code.PROTOCOL_ERROR, f"head is not UTF-8 JSON: {exc}", stream_id) from None
    if not isinstance(head, dict):
        raise PeerError(Code.PROTOCOL_ERROR, f"head is a {type(head).__name__}", stream_id)
    if _depth(head) > MAX_JSON_DEPTH:
        raise PeerError(Code.PROTOCOL_ERROR, "head nests deeper than 32 levels", stream_id)
    if not isinstance(head.get("m"), str):
        raise PeerError(Code.PROTOCOL_ERROR, 'head has no string member "m"', stream_id)
    return head


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    """§4.4: entries in order; unknown ids ignored; known values checked against §11."""
    entries = []
    for off in range(0, len(payload), 6):
        sid, value = struct.unpack_from(">HI", payload, off)
        if sid in SETTINGS_TABLE:
            _, low, high = SETTINGS_TABLE[sid]
            if not low <= value <= high:
                raise PeerError(Code.PROTOCOL_ERROR, f"setting {sid:#x}={value} out of range")
            entries.append((sid, value))
    return entries


def shuffle(data: bytes, width: int) -> bytes:
    """§12.2: input byte i*w + j goes to output byte j*n + i."""
    return b"".join(data[j::width] for j in range(width))


def unshuffle(data: bytes, width: int) -> bytes:
    n = len(data) // width
    out = bytearray(len(data))
    for j in range(width):
        out[j::width] = data[j * n : (j + 1) * n]
    return bytes(out)


def encode_payload(data: bytes, codec: int, level: int = 1) -> bytes:
    """Encode a DATA payload with ``codec`` (zstd frame with its content size, §12.1)."""
    if codec == Codec.RAW:
        return data
    if codec in SHUFFLE_WIDTH:
        data = shuffle(data, SHUFFLE_WIDTH[Codec(codec)])
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


def decode_payload(payload: bytes, codec: int, decoded_length: int, limit: int) -> bytes:
    """Decode a DATA payload per §12.1-§12.3; every violation is COMPRESSION_ERROR."""
    if codec == Codec.RAW:
        return payload
    if codec not in Codec._value2member_map_:
        raise PeerError(Code.COMPRESSION_ERROR, f"unknown codec {codec}")
    width = SHUFFLE_WIDTH.get(Codec(codec), 1)
    if decoded_length % width:
        raise PeerError(Code.COMPRESSION_ERROR, f"decoded_length not a multiple of {width}")
    if payload[:4] != ZSTD_MAGIC:
        raise PeerError(Code.COMPRESSION_ERROR, "payload is not a zstd frame")
    try:
        params = zstandard.get_frame_parameters(payload)
    except zstandard.ZstdError as exc:
        raise PeerError(Code.COMPRESSION_ERROR, f"bad zstd header: {exc}") from None
    if params.content_size != decoded_length or decoded_length > limit:
        raise PeerError(Code.COMPRESSION_ERROR, f"content size {params.content_size} mismatch")
    if params.dict_id != 0 or params.window_size > MAX_ZSTD_WINDOW:
        raise PeerError(Code.COMPRESSION_ERROR, "zstd frame with a dictionary or a large window")
    try:
        out = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW).decompress(
            payload, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise PeerError(Code.COMPRESSION_ERROR, f"zstd: {exc}") from None
    if len(out) != decoded_length:
        raise PeerError(Code.COMPRESSION_ERROR, f"decoded {len(out)} != {decoded_length}")
    return unshuffle(out, width) if width > 1 else out
