"""proto.wire: frame layout (§3-§4), serialization, the bounded incremental decoder."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ionn_net.config import Limits
from ionn_net.proto import (
    CompressionError,
    CreditFrame,
    DataFrame,
    ErrorCode,
    FrameDecoder,
    FrameSizeError,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    ProtocolError,
    ProtocolViolation,
    ResetFrame,
    SettingsFrame,
    UnknownFrame,
    UsageError,
    encode_preface,
    parse_head,
    parse_preface,
    serialize,
    serialize_parts,
)

HDR = struct.Struct(">BBBBIII")

FRAMES = [
    DataFrame(stream_id=1, data=b"hello", end_stream=True),
    DataFrame(stream_id=3, data=b""),
    DataFrame(stream_id=5, data=b"\x28\xb5\x2f\xfdzz", codec=1, decoded_length=100),
    HeadersFrame(stream_id=1, urgency=1, head={"m": "query", "a": [1, {"b": None}]}),
    HeadersFrame(stream_id=7, urgency=5, incremental=True, head={"m": "blob"}, end_stream=True),
    ResetFrame(stream_id=3, error_code=ErrorCode.CANCEL),
    ResetFrame(stream_id=3, error_code=0x1234),  # unknown codes survive parsing as ints
    SettingsFrame(entries=((1, 65536), (0x99, 3))),
    SettingsFrame(ack=True),
    PingFrame(payload=b"12345678"),
    PingFrame(ack=True, payload=b"abcdefgh"),
    GoAwayFrame(last_stream_id=5, error_code=ErrorCode.NO_ERROR, debug="bye \u00e9"),
    CreditFrame(stream_id=0, limit=2**40),
    CreditFrame(stream_id=9, limit=65536),
    UnknownFrame(type=0x20, flags=3, stream_id=7, payload=b"zz"),
]
WIRE = b"".join(serialize(f) for f in FRAMES)


def test_golden_bytes_of_a_data_frame_and_a_headers_frame() -> None:
    assert serialize(DataFrame(stream_id=1, data=b"ab", end_stream=True)) == (
        b"\x00\x01\x00\x00" + b"\x00\x00\x00\x01" + b"\x00\x00\x00\x02" * 2 + b"ab"
    )
    wire = serialize(HeadersFrame(stream_id=3, urgency=2, incremental=True, head={"m": "x"}))
    assert wire[:16] == HDR.pack(1, 0, 0, 0, 3, 13, 13)
    assert wire[16:] == b"\x02\x01\x00\x00" + b'{"m":"x"}'
    header, payload = serialize_parts(PingFrame(payload=b"8bytes!!"))
    assert header == HDR.pack(4, 0, 0, 0, 0, 8, 8) and payload == b"8bytes!!"


def test_round_trip_in_one_feed() -> None:
    assert FrameDecoder().feed(WIRE) == FRAMES


def test_every_split_and_byte_by_byte_give_the_same_frames() -> None:
    for split in range(len(WIRE) + 1):
        dec = FrameDecoder()
        assert dec.feed(WIRE[:split]) + dec.feed(WIRE[split:]) == FRAMES
    dec = FrameDecoder()
    got = []
    for i in range(len(WIRE)):
        got += dec.feed(WIRE[i : i + 1])
        assert dec.buffered <= 16 + 65536
    assert got == FRAMES and dec.buffered == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(WIRE)), max_size=20))
def test_random_splits(cuts: list[int]) -> None:
    points = [0, *sorted(set(cuts)), len(WIRE)]
    dec = FrameDecoder()
    got = []
    for a, b in itertools.pairwise(points):
        got += dec.feed(WIRE[a:b])
    assert got == FRAMES


def test_reserialized_frames_are_byte_identical() -> None:
    for frame in FrameDecoder().feed(WIRE):
        assert serialize(frame) in WIRE


def test_raw_data_items_and_bit31_of_stream_id() -> None:
    wire = HDR.pack(0, 1, 0, 0, 0x80000005, 3, 3) + b"abc"
    dec = FrameDecoder()
    dec.push(wire)
    assert dec.pop_item() == (5, True, 0, 3, b"abc")
    assert dec.pop_item() is None
    assert FrameDecoder().feed(wire) == [DataFrame(stream_id=5, data=b"abc", end_stream=True)]


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    """§3.2: the limit is checked before any payload is buffered (only 16 bytes fed)."""
    dec = FrameDecoder()
    with pytest.raises(FrameSizeError, match="expected length <= 65536"):
        dec.feed(HDR.pack(0, 0, 0, 0, 1, 65537, 65537))
    assert dec.buffered == 0
    with pytest.raises(FrameSizeError):  # the decoder stays failed
        dec.feed(b"")


def test_partial_frame_is_buffered_only_up_to_its_length() -> None:
    dec = FrameDecoder()
    wire = serialize(DataFrame(stream_id=1, data=b"x" * 65536))
    assert dec.feed(wire[:40000]) == []
    assert dec.buffered == 40000
    assert len(dec.feed(wire[40000:] + wire[:10])) == 1
    assert dec.buffered == 10


@pytest.mark.parametrize(
    ("header", "payload", "error", "text"),
    [
        ((0, 0, 0, 0, 1, 10, 2 << 20), b"", FrameSizeError, "decoded_length"),
        ((0, 0, 4, 0, 1, 4, 4), b"", CompressionError, "codec 0-3"),
        ((0, 0, 0, 0, 1, 4, 5), b"", CompressionError, "decoded_length == length"),
        ((0, 0, 0, 0, 0, 1, 1), b"x", ProtocolViolation, "non-zero stream"),
        ((1, 0, 0, 0, 1, 3, 3), b"", FrameSizeError, ">= 4"),
        ((1, 0, 0, 0, 1, 65537, 65537), b"", FrameSizeError, "<= 65536"),
        ((1, 0, 1, 0, 1, 4, 4), b"", ProtocolViolation, "codec 0"),
        ((1, 0, 0, 0, 0, 4, 4), b"", ProtocolViolation, "non-zero stream"),
        ((2, 0, 0, 0, 1, 3, 3), b"", FrameSizeError, "length 4"),
        ((2, 0, 0, 0, 0, 4, 4), b"", ProtocolViolation, "non-zero stream"),
        ((3, 0, 0, 0, 0, 7, 7), b"", FrameSizeError, "multiple of 6"),
        ((3, 0, 0, 0, 0, 198, 198), b"", FrameSizeError, "multiple of 6"),
        ((3, 1, 0, 0, 0, 6, 6), b"", FrameSizeError, "length 0"),
        ((3, 0, 0, 0, 1, 6, 6), b"", ProtocolViolation, "stream 0"),
        ((4, 0, 0, 0, 0, 7, 7), b"", FrameSizeError, "length 8"),
        ((4, 0, 0, 0, 3, 8, 8), b"", ProtocolViolation, "stream 0"),
        ((5, 0, 0, 0, 0, 7, 7), b"", FrameSizeError, "8..1032"),
        ((5, 0, 0, 0, 0, 1033, 1033), b"", FrameSizeError, "8..1032"),
        ((5, 0, 0, 0, 1, 8, 8), b"", ProtocolViolation, "stream 0"),
        ((6, 0, 0, 0, 0, 9, 9), b"", FrameSizeError, "length 8"),
        ((6, 0, 0, 0, 0, 8, 9), b"", CompressionError, "decoded_length"),
        ((0x40, 0, 0, 0, 0, 65537, 65537), b"", FrameSizeError, "type 0x40"),
    ],
)
def test_connection_level_header_errors(
    header: tuple[int, ...], payload: bytes, error: type[ProtocolError], text: str
) -> None:
    with pytest.raises(error, match=text) as info:
        FrameDecoder().feed(HDR.pack(*header) + payload)
    assert info.value.stream_id is None


def test_limits_shape_the_decoder() -> None:
    big = Limits(max_frame_size=1 << 20, max_settings_entries=2, max_goaway_debug=4)
    dec = FrameDecoder(big)
    assert len(dec.feed(serialize(DataFrame(stream_id=1, data=bytes(1 << 20))))) == 1
    with pytest.raises(FrameSizeError):
        FrameDecoder(big).feed(serialize(SettingsFrame(entries=((1, 1), (2, 2), (3, 3)))))
    with pytest.raises(FrameSizeError):
        FrameDecoder(big).feed(
            serialize(GoAwayFrame(last_stream_id=0, error_code=0, debug="12345"))
        )


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b'{"m": 1}', "string member 'm'"),
        (b'{"n": "x"}', "string member 'm'"),
        (b"[1, 2]", "JSON object"),
        (b'{"m": "x"', "invalid JSON"),
        (b'\xff{"m": "x"}', "invalid JSON"),
        ('{"m": "x"}'.encode("utf-16"), "invalid JSON"),
        (b'{"m": "x", "v": NaN}', "invalid JSON"),
        (b'{"m": "x", "d": ' + b"[" * 32 + b"]" * 32 + b"}", "nesting <= 32"),
        (b"[" * 100_000, "invalid JSON"),
    ],
)
def test_bad_heads_are_stream_errors(raw: bytes, why: str) -> None:
    with pytest.raises(ProtocolViolation, match=why) as info:
        parse_head(raw, stream_id=9)
    assert info.value.stream_id == 9


def test_head_depth_limit_is_inclusive() -> None:
    ok = b'{"m": "x", "d": ' + b"[" * 31 + b"]" * 31 + b"}"
    assert parse_head(ok, stream_id=1)["m"] == "x"


def test_decoder_reports_head_problems_on_the_frame_not_as_exceptions() -> None:
    bad_urgency = HDR.pack(1, 0, 0, 0, 5, 13, 13) + b"\x08\x00\x00\x00" + b'{"m":"x"}'
    bad_json = HDR.pack(1, 0, 0, 0, 7, 6, 6) + b"\x00\x00\x00\x00{}"
    frames = FrameDecoder().feed(bad_urgency + bad_json)
    assert [type(f) for f in frames] == [HeadersFrame, HeadersFrame]
    for frame, sid, text in zip(frames, (5, 7), ("urgency 0-7", "'m'"), strict=True):
        assert isinstance(frame, HeadersFrame) and frame.stream_error is not None
        assert frame.stream_error.stream_id == sid and text in str(frame.stream_error)


def test_goaway_debug_text_is_decoded_leniently() -> None:
    wire = HDR.pack(5, 0, 0, 0, 0, 10, 10) + struct.pack(">II", 3, 1) + b"\xffz"
    (frame,) = FrameDecoder().feed(wire)
    assert frame == GoAwayFrame(last_stream_id=3, error_code=1, debug="\ufffdz")


def test_preface_round_trip_and_bad_magic() -> None:
    assert encode_preface(1, 2) == b"IONN\x01\x02\x00\x00"
    pre = parse_preface(b"IONN\x01\x03\xff\xff")  # reserved bytes are ignored
    assert (pre.min_version, pre.max_version) == (1, 3)
    with pytest.raises(ProtocolViolation, match="magic"):
        parse_preface(b"HTTP/1.1")
    with pytest.raises(UsageError):
        encode_preface(1, 256)


def test_serialize_refuses_what_cannot_be_encoded() -> None:
    with pytest.raises(UsageError):
        serialize(PingFrame(payload=b"short"))
    with pytest.raises(UsageError):
        serialize(CreditFrame(stream_id=1, limit=2**64))
    with pytest.raises(UsageError):
        serialize(HeadersFrame(stream_id=1, head={"m": object()}))
    with pytest.raises(UsageError):
        serialize("not a frame")  # type: ignore[arg-type]
