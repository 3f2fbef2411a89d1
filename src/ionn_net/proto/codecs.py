"""DATA payload codecs of protocol.md §12: raw, zstd, byte-shuffled zstd.

This module owns encoding and *bomb-proof* decoding of one DATA payload. Decoding never
trusts the compressed bytes: the zstd frame header must declare a content size equal to the
frame's ``decoded_length`` and within the caller's limit *before* anything is decompressed,
the frame must be exactly one zstd frame without dictionary, with a window of at most 8 MiB
and without trailing bytes, and the output must have exactly ``decoded_length`` bytes
(§12.1). ``decompressobj`` and uncapped ``decompress`` are never used: python-zstandard
ignores ``max_output_size`` when a frame declares its size.

Compressor and decompressor contexts are cached per thread (they are not thread-safe).
"""

from __future__ import annotations

import enum
import threading

import numpy as np
import zstandard

from ionn_net.proto.errors import CompressionError, UsageError

__all__ = [
    "MAX_WINDOW_SIZE",
    "MIN_COMPRESS_SIZE",
    "Codec",
    "choose_codec",
    "decode",
    "encode",
    "encode_if_smaller",
    "shuffle",
    "unshuffle",
]

#: Largest zstd window a receiver accepts (§12.1).
MAX_WINDOW_SIZE = 8 * 1024 * 1024
#: Payloads smaller than this are always sent RAW (§12.4: "or the frame is small").
MIN_COMPRESS_SIZE = 256

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Codec(enum.IntEnum):
    """The ``codec`` byte of a DATA frame header (§12)."""

    RAW = 0
    ZSTD = 1
    ZSTD_SHUFFLE4 = 2
    ZSTD_SHUFFLE2 = 3


#: Element width of the byte shuffle applied before zstd (0 = no shuffle).
SHUFFLE_WIDTH: dict[Codec, int] = {
    Codec.RAW: 0,
    Codec.ZSTD: 0,
    Codec.ZSTD_SHUFFLE4: 4,
    Codec.ZSTD_SHUFFLE2: 2,
}

_CODEC_FOR_WIDTH: dict[int, Codec] = {4: Codec.ZSTD_SHUFFLE4, 2: Codec.ZSTD_SHUFFLE2}


class _Contexts(threading.local):
    def __init__(self) -> None:
        self.compressors: dict[int, zstandard.ZstdCompressor] = {}
        self.decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE)


_CTX = _Contexts()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    comp = _CTX.compressors.get(level)
    if comp is None:
        comp = zstandard.ZstdCompressor(level=level, write_content_size=True)
        _CTX.compressors[level] = comp
    return comp


def shuffle(data: bytes | bytearray | memoryview, width: int) -> bytes:
    """Byte-shuffle (§12.2): input byte ``i*w + j`` goes to output byte ``j*n + i``."""
    if width < 1 or len(data) % width:
        raise UsageError(f"shuffle: expected a length multiple of {width}, got {len(data)}")
    arr = np.frombuffer(data, dtype=np.uint8)
    return arr.reshape(-1, width).T.tobytes()


def unshuffle(data: bytes | bytearray | memoryview, width: int) -> bytes:
    """Inverse of :func:`shuffle`."""
    if width < 1 or len(data) % width:
        raise UsageError(f"unshuffle: expected a length multiple of {width}, got {len(data)}")
    arr = np.frombuffer(data, dtype=np.uint8)
    return arr.reshape(width, -1).T.tobytes()


def encode(data: bytes | bytearray | memoryview, codec: Codec, level: int = 1) -> bytes:
    """Encode one DATA payload; zstd frames always carry their content size (§12.1)."""
    codec = Codec(codec)
    if codec is Codec.RAW:
        return bytes(data)
    width = SHUFFLE_WIDTH[codec]
    src: bytes | bytearray | memoryview = shuffle(data, width) if width else data
    return _compressor(level).compress(src)


def encode_if_smaller(
    data: bytes | memoryview, codec: Codec, level: int, min_gain: float
) -> tuple[Codec, bytes | memoryview]:
    """Encode with ``codec`` unless that saves less than ``min_gain`` (§12.4); then RAW.

    Returns the codec actually used and the wire payload, which is never longer than
    ``data`` (so a sender may reserve flow-control credit for ``len(data)``).
    """
    if codec is Codec.RAW or len(data) < MIN_COMPRESS_SIZE:
        return Codec.RAW, data
    width = SHUFFLE_WIDTH[codec]
    if width and len(data) % width:
        codec = Codec.ZSTD  # a ragged tail cannot be shuffled; plain zstd still may help
    payload = encode(data, codec, level)
    if len(payload) > len(data) * (1.0 - min_gain):
        return Codec.RAW, data
    return codec, payload


def decode(
    payload: bytes | bytearray | memoryview, codec: int, decoded_length: int, limit: int
) -> bytes:
    """Decode one DATA payload per §12, raising :class:`CompressionError` on any violation."""
    try:
        known = Codec(codec)
    except ValueError:
        raise CompressionError(f"DATA codec: expected one of 0-3, got {codec}") from None
    if known is Codec.RAW:
        if len(payload) != decoded_length:
            raise CompressionError(
                f"RAW DATA: expected decoded_length == length {len(payload)}, got {decoded_length}"
            )
        return bytes(payload)
    width = SHUFFLE_WIDTH[known]
    if width and decoded_length % width:
        raise CompressionError(
            f"{known.name}: expected decoded_length multiple of {width}, got {decoded_length}"
        )
    raw = _zstd_decode(payload, decoded_length, limit)
    return unshuffle(raw, width) if width else raw


def _zstd_decode(payload: bytes | bytearray | memoryview, decoded_length: int, limit: int) -> bytes:
    if decoded_length > limit:
        raise CompressionError(
            f"zstd DATA: expected decoded_length <= {limit}, got {decoded_length}"
        )
    if bytes(payload[:4]) != _ZSTD_MAGIC:
        raise CompressionError("zstd DATA: expected a zstd frame magic number, got other bytes")
    try:
        params = zstandard.get_frame_parameters(payload)
    except zstandard.ZstdError as exc:
        raise CompressionError(f"zstd DATA: unreadable frame header ({exc})") from None
    if params.content_size != decoded_length:
        raise CompressionError(
            f"zstd DATA: expected Frame_Content_Size {decoded_length}, "
            f"got {params.content_size} (absent or different)"
        )
    if params.dict_id != 0:
        raise CompressionError(f"zstd DATA: expected no dictionary, got dict id {params.dict_id}")
    if params.window_size > MAX_WINDOW_SIZE:
        raise CompressionError(
            f"zstd DATA: expected window <= {MAX_WINDOW_SIZE}, got {params.window_size}"
        )
    try:
        # The declared size (already capped above) bounds the allocation; extra data
        # after the single frame is refused by zstandard itself.
        out = _CTX.decompressor.decompress(payload, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise CompressionError(f"zstd DATA: corrupt frame ({exc})") from None
    if len(out) != decoded_length:
        raise CompressionError(
            f"zstd DATA: expected {decoded_length} decoded bytes, got {len(out)}"
        )
    return out


def choose_codec(
    sample: bytes | bytearray | memoryview,
    dtype_width: int,
    min_gain: float = 0.05,
    level: int = 1,
) -> Codec:
    """Pick the codec that compresses ``sample`` best, or RAW if none saves ``min_gain``.

    ``dtype_width`` is the element size of the data (4 for float32, 2 for float16, 1 for
    opaque bytes); shuffled variants are tried only for widths 2 and 4.
    """
    n = len(sample)
    if n < MIN_COMPRESS_SIZE:
        return Codec.RAW
    candidates = [Codec.ZSTD]
    shuffled = _CODEC_FOR_WIDTH.get(dtype_width)
    if shuffled is not None and n % dtype_width == 0:
        candidates.append(shuffled)
    best, best_size = Codec.RAW, n * (1.0 - min_gain)
    for codec in candidates:
        size = len(encode(sample, codec, level))
        if size < best_size:
            best, best_size = codec, size
    return best
