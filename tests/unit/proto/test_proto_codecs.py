"""proto.codecs: raw/zstd/shuffled codecs (§12) and bomb-proof decoding."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest
import zstandard
from tests.conformance.harness import Outcome, core_outcome
from tests.conformance.vectors import category
from tests.refpeer import wire as rw

from ionn_net.proto import CompressionError, UsageError, choose_codec, decode, encode
from ionn_net.proto.codecs import MAX_WINDOW_SIZE, Codec, encode_if_smaller, shuffle, unshuffle

MIB = 1 << 20
RNG = np.random.default_rng(1)
FLOATS = RNG.normal(0, 0.02, 8192).astype(np.float32).tobytes()


@pytest.mark.parametrize("codec", list(Codec))
def test_round_trip_each_codec(codec: Codec) -> None:
    payload = encode(FLOATS, codec)
    assert decode(payload, codec, len(FLOATS), MIB) == FLOATS
    if codec is not Codec.RAW:
        assert zstandard.frame_content_size(payload) == len(FLOATS)  # §12.1: size written


def test_shuffle_matches_the_formula_and_inverts() -> None:
    data = bytes(range(12))
    out = shuffle(data, 4)
    n = 3
    for i in range(n):
        for j in range(4):
            assert out[j * n + i] == data[i * 4 + j]
    assert unshuffle(out, 4) == data
    with pytest.raises(UsageError):
        shuffle(b"abc", 2)


def test_shuffling_helps_structured_floats() -> None:
    smooth = np.linspace(0, 1, 16384, dtype=np.float32).tobytes()
    assert len(encode(smooth, Codec.ZSTD_SHUFFLE4)) < len(encode(smooth, Codec.ZSTD))


def _frame(data: bytes, **kw: object) -> bytes:
    return zstandard.ZstdCompressor(**kw).compress(data)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("payload", "codec", "length", "limit", "text"),
    [
        (b"abc", 0, 4, MIB, "decoded_length == length"),
        (b"abc", 9, 3, MIB, "codec"),
        (_frame(b"x" * 100), 1, 99, MIB, "Frame_Content_Size 99"),
        (_frame(b"x" * 100), 1, 101, MIB, "101"),  # declares less: output would be short
        (_frame(b"x" * 100, write_content_size=False), 1, 100, MIB, "Frame_Content_Size"),
        (_frame(bytes(2 * MIB)), 1, 2 * MIB, MIB, "decoded_length <= 1048576"),
        (_frame(b"x" * 100) + b"\0", 1, 100, MIB, "corrupt"),
        (_frame(b"x" * 100) * 2, 1, 100, MIB, "corrupt"),
        (b"\x50\x2a\x4d\x18\x04\0\0\0abcd", 1, 4, MIB, "magic"),
        (b"\x28\xb5\x2f", 1, 4, MIB, "magic"),
        (b"\x28\xb5\x2f\xfd" + b"\x20\x64" + b"\xff" * 10, 1, 100, MIB, "corrupt"),
        (encode(b"x" * 100, Codec.ZSTD), 2, 99, MIB, "multiple of 4"),
        (encode(b"x" * 100, Codec.ZSTD), 3, 99, MIB, "multiple of 2"),
    ],
)
def test_violations_are_compression_errors(
    payload: bytes, codec: int, length: int, limit: int, text: str
) -> None:
    with pytest.raises(CompressionError, match=text):
        decode(payload, codec, length, limit)


def test_declared_size_is_capped_before_decompressing() -> None:
    """A tiny frame declaring 2^40 bytes is refused without an allocation attempt."""
    header = bytearray(_frame(b"x" * 10))
    bomb = _frame(bytes(64 * MIB))
    assert len(bomb) < 64 * 1024
    with pytest.raises(CompressionError, match="decoded_length <="):
        decode(bomb, 1, 64 * MIB, MIB)
    with pytest.raises(CompressionError):
        decode(bytes(header), 1, 2**40, 2**41)  # content size says 10, not 2^40


def _declaring_more(vector: dict[str, Any]) -> tuple[bytes, int, int] | None:
    """(payload, codec, decoded_length) of a §12.1 vector whose zstd frame declares at least
    1 MiB more content than its DATA header's decoded_length; None for other vectors."""
    frame = bytes.fromhex(str(vector["hex"]))
    ftype, _, codec, _, _, length, dlen = rw.HEADER.unpack_from(frame)
    payload = frame[rw.HEADER_SIZE : rw.HEADER_SIZE + length]
    if ftype != rw.T.DATA or codec == 0:
        return None
    try:
        declared = zstandard.get_frame_parameters(payload).content_size
    except zstandard.ZstdError:
        return None
    if declared == zstandard.CONTENTSIZE_UNKNOWN or declared < dlen + MIB:
        return None
    return payload, codec, dlen


def test_frames_declaring_more_than_decoded_length_allocate_nothing() -> None:
    """§12.1: the declared content size is checked against decoded_length before anything is
    decompressed. Measured directly (tracemalloc sees the decoder's output buffer): a decoder
    that only checked its output length would allocate what the frame declares first."""
    vectors = [(v, _declaring_more(v)) for v in category("invalid", "12.1")]
    found = {str(v["name"]): d for v, d in vectors if d is not None}
    assert {"zstd_content_size_above_decoded_length", "zstd_declares_2_pow_40_bytes"} <= set(found)
    by_name = {str(v["name"]): v for v, _ in vectors}
    for name, (payload, codec, dlen) in found.items():
        vector = by_name[name]
        tracemalloc.start()
        try:
            with pytest.raises(CompressionError):
                decode(payload, codec, dlen, MIB)
            decoder_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            prefix = bytes.fromhex(str(vector["prefix_hex"]))
            outcome, _ = core_outcome(prefix, [bytes.fromhex(str(vector["hex"]))])
            core_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert outcome == Outcome("connection", "COMPRESSION_ERROR"), name
        assert decoder_peak < MIB and core_peak < 2 * MIB, (name, decoder_peak, core_peak)


def test_window_above_8_mib_is_refused() -> None:
    params = zstandard.ZstdCompressionParameters.from_level(1, window_log=24)
    big = (bytes(range(256)) * 40_000)[: 9 * MIB]
    frame = zstandard.ZstdCompressor(compression_params=params).compress(big)
    params_seen = zstandard.get_frame_parameters(frame)
    assert params_seen.window_size > MAX_WINDOW_SIZE
    with pytest.raises(CompressionError, match="window"):
        decode(frame, 1, len(big), 64 * MIB)


def test_dictionary_frames_are_refused() -> None:
    samples = [f"sample {i} payload {i * 7} tail".encode() * 4 for i in range(400)]
    dictionary = zstandard.train_dictionary(1024, samples)
    frame = zstandard.ZstdCompressor(dict_data=dictionary).compress(samples[0])
    with pytest.raises(CompressionError, match="dictionary"):
        decode(frame, 1, len(samples[0]), MIB)


def test_encode_if_smaller_falls_back_to_raw() -> None:
    noise = RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert encode_if_smaller(noise, Codec.ZSTD, 1, 0.05) == (Codec.RAW, noise)
    assert encode_if_smaller(b"tiny", Codec.ZSTD, 1, 0.05)[0] is Codec.RAW
    zeros = bytes(4096)
    codec, payload = encode_if_smaller(zeros, Codec.ZSTD_SHUFFLE4, 1, 0.05)
    assert codec is Codec.ZSTD_SHUFFLE4 and len(payload) < 100
    codec, payload = encode_if_smaller(bytes(4097), Codec.ZSTD_SHUFFLE4, 1, 0.05)
    assert codec is Codec.ZSTD  # ragged length: plain zstd
    assert decode(payload, codec, 4097, MIB) == bytes(4097)


def test_choose_codec() -> None:
    noise = RNG.integers(0, 256, 65536, dtype=np.uint8).tobytes()
    assert choose_codec(noise, 1) is Codec.RAW
    smooth = np.linspace(0, 1, 16384, dtype=np.float32).tobytes()
    assert choose_codec(smooth, 4) is Codec.ZSTD_SHUFFLE4
    assert choose_codec(bytes(1000), 1) is Codec.ZSTD
    assert choose_codec(b"x" * 10, 4) is Codec.RAW
