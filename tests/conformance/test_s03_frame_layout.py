"""protocol.md §3 (frame layout): golden vectors both ways, split feeding, header-first checks."""

from __future__ import annotations

import pytest
from tests.conformance.harness import (
    Outcome,
    check_invalid_vector,
    core_frame,
    core_outcome,
    decode_all,
    splits,
)
from tests.conformance.vectors import category, vid
from tests.refpeer import wire as rw

from ionn_net.config import Limits
from ionn_net.proto import codecs, wire
from ionn_net.proto.errors import CompressionError, FrameSizeError, ProtocolError

VALID = category("valid")


@pytest.mark.spec("3.1")
@pytest.mark.parametrize("vector", VALID, ids=vid)
def test_valid_vector_parses_to_its_fields_under_every_split(vector: dict[str, object]) -> None:
    data = bytes.fromhex(str(vector["hex"]))
    expected = core_frame(vector["frame"])  # type: ignore[arg-type]
    for chunks in splits(data, every_offset=len(data) < 1024):
        frames = decode_all(chunks)
        assert frames == [expected]
        if isinstance(expected, wire.HeadersFrame):
            assert isinstance(frames[0], wire.HeadersFrame)
            assert frames[0].raw == expected.raw


@pytest.mark.spec("3.1")
@pytest.mark.parametrize("vector", [v for v in VALID if v["roundtrip"]], ids=vid)
def test_valid_vector_serializes_to_its_bytes(vector: dict[str, object]) -> None:
    frame = core_frame(vector["frame"])  # type: ignore[arg-type]
    assert wire.serialize(frame) == bytes.fromhex(str(vector["hex"]))


@pytest.mark.spec("3.1")
def test_every_offset_split_of_many_frames() -> None:
    """All valid vectors back to back, cut at every offset, decode to the same frames."""
    small = [v for v in VALID if len(str(v["hex"])) < 2048]
    data = b"".join(bytes.fromhex(str(v["hex"])) for v in small)
    expected = [core_frame(v["frame"]) for v in small]  # type: ignore[arg-type]
    for chunks in splits(data):
        assert decode_all(chunks) == expected


@pytest.mark.spec("12.1")
@pytest.mark.parametrize("vector", category("decode_only"), ids=vid)
def test_compressed_vectors_decode(vector: dict[str, object]) -> None:
    data = bytes.fromhex(str(vector["hex"]))
    for chunks in splits(data, every_offset=False):
        (frame,) = decode_all(chunks)
        assert isinstance(frame, wire.DataFrame)
        assert frame.codec == vector["codec"]
        out = codecs.decode(frame.data, frame.codec, frame.decoded_length, 1 << 20)
        assert out == bytes.fromhex(str(vector["decoded_hex"]))


@pytest.mark.spec("3.2")
def test_oversized_data_header_fails_before_any_payload_is_buffered() -> None:
    """§3.2: the 16 header bytes alone must trigger FRAME_SIZE_ERROR (no payload sent)."""
    header = rw.HEADER.pack(0, 0, 0, 0, 1, 2**32 - 1, 2**32 - 1)
    decoder = wire.FrameDecoder(Limits())
    with pytest.raises(FrameSizeError):
        for i in range(len(header)):
            decoder.feed(header[i : i + 1])
            assert decoder.buffered <= rw.HEADER_SIZE
    outcome, core = core_outcome(rw.headers_frame(1, {"m": "x", "body_len": 9}), [header])
    assert outcome == Outcome("connection", "FRAME_SIZE_ERROR")
    assert core.conn.closed


@pytest.mark.spec("3.2")
@pytest.mark.parametrize("vector", category("invalid", "3.2"), ids=vid)
def test_size_limits_are_connection_frame_size_errors(vector: dict[str, object]) -> None:
    check_invalid_vector(vector)


@pytest.mark.spec("3.2")
def test_decoded_length_limit_follows_local_limits() -> None:
    """A receiver enforces its own MAX_DECODED_FRAME_SIZE: raised limits accept more."""
    header = rw.HEADER.pack(0, 0, 1, 0, 1, 100, 2 << 20)
    with pytest.raises(FrameSizeError):
        wire.FrameDecoder(Limits()).feed(header)
    big = Limits(max_decoded_frame_size=4 << 20)
    assert wire.FrameDecoder(big).feed(header) == []  # waits for the payload


@pytest.mark.spec("3.2")
def test_frame_and_header_size_limits_follow_local_limits() -> None:
    data = rw.build_frame(rw.T.DATA, 0, 1, b"\0" * 70000)
    head = rw.headers_frame(1, {"m": "x", "pad": "p" * 70000})
    for raw in (data, head):
        with pytest.raises(FrameSizeError):
            wire.FrameDecoder(Limits()).feed(raw)
    raised = Limits(max_frame_size=1 << 17, max_header_size=1 << 17)
    assert len(wire.FrameDecoder(raised).feed(data + head)) == 2


@pytest.mark.spec("3.3")
@pytest.mark.parametrize("vector", category("invalid", "3.3"), ids=vid)
def test_codec_rules_of_non_data_and_raw_frames(vector: dict[str, object]) -> None:
    check_invalid_vector(vector)


@pytest.mark.spec("3.3")
def test_decoder_raises_typed_errors_for_codec_rules() -> None:
    with pytest.raises(ProtocolError) as info:
        wire.FrameDecoder().feed(rw.build_frame(rw.T.PING, 0, 0, b"\0" * 8, codec=1))
    assert info.value.error_code.name == "PROTOCOL_ERROR"
    with pytest.raises(CompressionError):
        wire.FrameDecoder().feed(rw.build_frame(rw.T.DATA, 0, 1, b"ab", decoded_length=3))


@pytest.mark.spec("3.4")
@pytest.mark.parametrize("vector", category("invalid", "3.4"), ids=vid)
def test_unknown_types_obey_data_size_limits(vector: dict[str, object]) -> None:
    check_invalid_vector(vector)


@pytest.mark.spec("3.4")
@pytest.mark.parametrize("ftype", [0x07, 0x10, 0x7F, 0xFF])
def test_unknown_types_are_ignored_and_the_connection_goes_on(ftype: int) -> None:
    junk = rw.build_frame(ftype, 0xFF, 3, b"future extension" * 100)
    outcome, core = core_outcome(b"", [junk + rw.ping_frame(b"stillok!")])
    assert outcome == Outcome("ignored")
    acks = [f for f in core.sent(rw.T.PING) if f.ack]
    assert [f.payload for f in acks] == [b"stillok!"]
    assert not core.conn.closed


@pytest.mark.spec("3.4")
@pytest.mark.parametrize("codec", [1, 2, 3, 200])
@pytest.mark.parametrize("decoded_delta", [0, 1])
def test_unknown_types_are_ignored_whatever_their_codec_fields(
    codec: int, decoded_delta: int
) -> None:
    junk = rw.build_frame(0x7E, 0, 0, b"payload", codec=codec, decoded_length=7 + decoded_delta)
    raw_mismatch = rw.build_frame(0x7E, 0, 0, b"payload", decoded_length=7 + decoded_delta)
    outcome, core = core_outcome(b"", [junk + raw_mismatch + rw.ping_frame(b"survived")])
    assert outcome == Outcome("ignored")
    assert [f.payload for f in core.sent(rw.T.PING) if f.ack] == [b"survived"]


@pytest.mark.spec("3.1")
def test_reserved_header_fields_are_ignored() -> None:
    """§3.1: reserved byte and stream-id bit 31 are ignored by receivers."""
    frame = rw.build_frame(rw.T.PING, 0, 0, b"reserved", reserved=0xAB, stream_bit31=True)
    outcome, core = core_outcome(b"", [frame])
    assert outcome == Outcome("ignored")
    assert [f.payload for f in core.sent(rw.T.PING) if f.ack] == [b"reserved"]


@pytest.mark.spec("3.1")
def test_core_output_sets_reserved_fields_to_zero() -> None:
    outcome, core = core_outcome(b"", [rw.ping_frame(b"abcdefgh")])
    assert outcome == Outcome("ignored")
    assert core.frames and all(f.reserved == 0 and not f.stream_bit31 for f in core.frames)
