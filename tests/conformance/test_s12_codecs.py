"""protocol.md §12: zstd codecs, byte shuffle, bomb-proof decoding, and the core's encoder."""

from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest
from tests.conformance.harness import CoreUnderTest, Outcome, check_invalid_vector, core_outcome
from tests.conformance.vectors import category, vid
from tests.refpeer import wire as rw

from ionn_net.proto import codecs
from ionn_net.proto import events as ev
from ionn_net.proto.codecs import Codec
from ionn_net.proto.errors import CompressionError

MIB = 1 << 20


@pytest.mark.spec("12.1")
@pytest.mark.parametrize("vector", category("invalid", "12.1"), ids=vid)
def test_zstd_payload_rules(vector: dict[str, object]) -> None:
    check_invalid_vector(vector, every_offset=False)


@pytest.mark.spec("12.1")
@pytest.mark.parametrize("vector", category("decode_only"), ids=vid)
def test_compressed_vectors_are_delivered_decoded(vector: dict[str, object]) -> None:
    data = bytes.fromhex(str(vector["hex"]))
    want = bytes.fromhex(str(vector["decoded_hex"]))
    prefix = rw.headers_frame(1, {"m": "echo", "body_len": len(want)})  # exact, see §10.1.2
    for cut in (len(data), 1, 17):
        core = CoreUnderTest().handshake()
        core.feed(prefix)
        core.feed_chunks([data[i : i + cut] for i in range(0, len(data), cut)])
        got = b"".join(e.data for e in core.events if isinstance(e, ev.DataReceived))
        assert got == want and core.outcome() == Outcome("ignored")


@pytest.mark.spec("12.1")
def test_declared_size_is_checked_before_decompressing() -> None:
    """A 27-byte frame declaring 2^40 bytes must fail without allocating anything large."""
    (vector,) = [
        v for v in category("invalid", "12.1") if v["name"] == "zstd_declares_2_pow_40_bytes"
    ]
    prefix = bytes.fromhex(str(vector["prefix_hex"]))
    tracemalloc.start()
    try:
        outcome, _ = core_outcome(prefix, [bytes.fromhex(str(vector["hex"]))])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert outcome == Outcome("connection", "COMPRESSION_ERROR")
    assert peak < 8 * MIB


@pytest.mark.spec("12.1")
def test_decoder_output_length_is_exact_and_bounded() -> None:
    payload = codecs.encode(b"\x09" * 5000, Codec.ZSTD)
    assert codecs.decode(payload, Codec.ZSTD, 5000, MIB) == b"\x09" * 5000
    with pytest.raises(CompressionError):
        codecs.decode(payload, Codec.ZSTD, 5001, MIB)
    with pytest.raises(CompressionError):
        codecs.decode(payload, Codec.ZSTD, 5000, 4999)  # above the receiver's limit


@pytest.mark.spec("12.1")
@pytest.mark.parametrize("codec", [Codec.ZSTD, Codec.ZSTD_SHUFFLE4, Codec.ZSTD_SHUFFLE2])
def test_core_output_obeys_the_zstd_rules(codec: Codec) -> None:
    """Every compressed frame the core emits passes the reference peer's strict decoder."""
    body = np.linspace(0, 1, MIB // 4, dtype="<f4").tobytes()
    core = CoreUnderTest().handshake()
    core.feed(rw.headers_frame(1, {"m": "q"}, end_stream=True))
    core.conn.send_headers(1, {"m": "r", "body_len": len(body)})
    core.conn.send_data(1, body, end_stream=True, codec=codec, element_width=4)
    core.drain()
    frames = core.sent(rw.T.DATA)
    assert any(f.codec == codec for f in frames)
    out = b"".join(rw.decode_payload(f.payload, f.codec, f.decoded_length, MIB) for f in frames)
    assert out == body


@pytest.mark.spec("12.2")
@pytest.mark.parametrize("vector", category("invalid", "12.2"), ids=vid)
def test_shuffle_lengths_must_be_multiples_of_the_width(vector: dict[str, object]) -> None:
    check_invalid_vector(vector, every_offset=False)


@pytest.mark.spec("12.2")
@pytest.mark.parametrize("width", [2, 4])
def test_shuffle_is_the_specified_permutation(width: int) -> None:
    data = os.urandom(width * 777)
    n = len(data) // width
    expected = bytearray(len(data))
    for i in range(n):
        for j in range(width):
            expected[j * n + i] = data[i * width + j]  # §12.2, literally
    assert codecs.shuffle(data, width) == bytes(expected) == rw.shuffle(data, width)
    assert codecs.unshuffle(bytes(expected), width) == data


@pytest.mark.spec("12.3")
@pytest.mark.parametrize("vector", category("invalid", "12.3"), ids=vid)
def test_unknown_codec_on_data(vector: dict[str, object]) -> None:
    check_invalid_vector(vector)


@pytest.mark.spec("12.4")
def test_incompressible_frames_are_sent_raw() -> None:
    core = CoreUnderTest().handshake()
    core.feed(rw.headers_frame(1, {"m": "q"}, end_stream=True))
    core.conn.send_headers(1, {"m": "r", "body_len": 200_000})
    core.conn.send_data(1, os.urandom(200_000), end_stream=True, codec=Codec.ZSTD)
    core.drain()
    assert {f.codec for f in core.sent(rw.T.DATA)} == {Codec.RAW}
