"""Builds ``frames.json``, the golden frame vectors, from protocol.md using the reference peer.

Run ``python -m tests.conformance.vectors.build_vectors`` to rewrite the file; the JSON is the
source of truth for the tests (the zstd vectors are decode-only, so a different zstd version
producing other bytes would still yield valid vectors). Every vector is bytes sent by a client to
a server after a completed handshake (client preface, empty SETTINGS, SETTINGS ACK).

* ``valid``: one frame; ``frame`` holds the expected fields; ``roundtrip`` is false when the
  bytes carry reserved bits that a serializer writes as zero (parse-only).
* ``decode_only``: a compressed DATA frame (stream 1 already opened by ``prefix_hex``) and the
  body it must decode to.
* ``invalid``: ``prefix_hex`` (valid frames that set the scene) then ``hex``, the offending bytes;
  ``code`` and ``scope`` (``connection`` or ``stream``) name the required outcome.
* ``acceptable``: either outcome listed in ``outcomes`` is legal (``ignored`` or a code).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import zstandard
from tests.refpeer.wire import (
    ACK,
    END_STREAM,
    HEADER,
    Code,
    T,
    build_frame,
    credit_frame,
    goaway_frame,
    headers_frame,
    ping_frame,
    reset_frame,
    settings_frame,
    shuffle,
)

OUT = Path(__file__).resolve().parent / "frames.json"
BODY = {"m": "echo", "body_len": 16 << 20}  # announces a body (§10.1.2) below every limit
OPEN1 = headers_frame(1, BODY, urgency=2)  # opens stream 1, body follows
OPEN1_END = headers_frame(1, {"m": "echo"}, end_stream=True)
FSE, PE, CE = Code.FRAME_SIZE_ERROR, Code.PROTOCOL_ERROR, Code.COMPRESSION_ERROR


def hdr(ftype: int, codec: int, sid: int, length: int, dlen: int) -> bytes:
    """A bare 16-byte header with no flags (the payload is never needed: §3.2 checks first)."""
    return HEADER.pack(ftype, 0, codec, 0, sid, length, dlen)


def zstd(data: bytes, *, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_content_size=content_size).compress(data)


def raw_zstd_frame(descriptor: int, fields: bytes, content: bytes) -> bytes:
    """A hand-made zstd frame (RFC 8878 §3.1.1): header fields, then one last raw block."""
    block = ((len(content) << 3) | 1).to_bytes(3, "little")
    return b"\x28\xb5\x2f\xfd" + bytes([descriptor]) + fields + block + content


Adder = Callable[..., None]


def _adder(v: list[dict[str, object]]) -> Adder:
    def add(name: str, raw: bytes, frame: dict[str, object], *, roundtrip: bool = True) -> None:
        v.append({"name": name, "hex": raw.hex(), "frame": frame, "roundtrip": roundtrip})

    return add


def _valid_stream_frames() -> list[dict[str, object]]:
    head = b'{"m":"hello","n":1}'
    v: list[dict[str, object]] = []
    add = _adder(v)
    add(
        "headers_end_stream",
        headers_frame(1, head, urgency=1, end_stream=True),
        {
            "type": "HEADERS",
            "stream_id": 1,
            "end_stream": True,
            "urgency": 1,
            "incremental": False,
            "head": {"m": "hello", "n": 1},
            "head_hex": head.hex(),
        },
    )
    add(
        "headers_incremental_urgency7",
        headers_frame(3, b'{"m":"blob"}', urgency=7, incremental=True),
        {
            "type": "HEADERS",
            "stream_id": 3,
            "end_stream": False,
            "urgency": 7,
            "incremental": True,
            "head": {"m": "blob"},
            "head_hex": b'{"m":"blob"}'.hex(),
        },
    )
    deep = b'{"m":"x","a":' + b"[" * 31 + b"]" * 31 + b"}"  # 32 levels counting the head
    add(
        "headers_head_depth_32",
        headers_frame(1, deep),
        {
            "type": "HEADERS",
            "stream_id": 1,
            "end_stream": False,
            "urgency": 2,
            "incremental": False,
            "head": json.loads(deep),
            "head_hex": deep.hex(),
        },
    )
    add(
        "headers_reserved_and_priority_bits_ignored",
        build_frame(T.HEADERS, 0xF0, 5, bytes([0, 0xFE, 9, 9]) + b'{"m":"x"}', reserved=7),
        {
            "type": "HEADERS",
            "stream_id": 5,
            "end_stream": False,
            "urgency": 0,
            "incremental": False,
            "head": {"m": "x"},
            "head_hex": b'{"m":"x"}'.hex(),
        },
        roundtrip=False,
    )
    return v


def _valid_data_frames() -> list[dict[str, object]]:
    v: list[dict[str, object]] = []
    add = _adder(v)
    for name, payload, end, sid in (
        ("data_end_stream", b"abc", True, 1),
        ("data_empty_end_stream", b"", True, 7),
        ("data_max_stream_id", bytes(range(256)), False, 2**31 - 1),
    ):
        add(
            name,
            build_frame(T.DATA, END_STREAM if end else 0, sid, payload),
            {
                "type": "DATA",
                "stream_id": sid,
                "end_stream": end,
                "codec": 0,
                "decoded_length": len(payload),
                "data_hex": payload.hex(),
            },
        )
    add(
        "data_full_max_frame_size",
        build_frame(T.DATA, 0, 1, b"\x5a" * 65536),
        {
            "type": "DATA",
            "stream_id": 1,
            "end_stream": False,
            "codec": 0,
            "decoded_length": 65536,
            "data_hex": (b"\x5a" * 65536).hex(),
        },
    )
    add(
        "data_stream_bit31_ignored",
        build_frame(T.DATA, 0, 1, b"z", stream_bit31=True),
        {
            "type": "DATA",
            "stream_id": 1,
            "end_stream": False,
            "codec": 0,
            "decoded_length": 1,
            "data_hex": "7a",
        },
        roundtrip=False,
    )
    return v


def _valid_reset_settings_ping() -> list[dict[str, object]]:
    v: list[dict[str, object]] = []
    add = _adder(v)
    add(
        "reset_cancel",
        reset_frame(1, Code.CANCEL),
        {"type": "RESET", "stream_id": 1, "error_code": 8},
    )
    add(
        "settings_two_entries",
        settings_frame([(1, 131072), (3, 10)]),
        {"type": "SETTINGS", "ack": False, "entries": [[1, 131072], [3, 10]]},
    )
    add("settings_empty", settings_frame([]), {"type": "SETTINGS", "ack": False, "entries": []})
    add(
        "settings_ack",
        build_frame(T.SETTINGS, ACK, 0),
        {"type": "SETTINGS", "ack": True, "entries": []},
    )
    add(
        "settings_unknown_id_kept_by_parser",
        settings_frame([(0x99, 5)]),
        {"type": "SETTINGS", "ack": False, "entries": [[0x99, 5]]},
    )
    add(
        "settings_32_entries",
        settings_frame([(0x40 + i, i) for i in range(32)]),
        {"type": "SETTINGS", "ack": False, "entries": [[0x40 + i, i] for i in range(32)]},
    )
    add(
        "ping",
        ping_frame(b"\x00\x01\x02\x03\xfc\xfd\xfe\xff"),
        {"type": "PING", "ack": False, "payload_hex": "00010203fcfdfeff"},
    )
    add(
        "ping_ack",
        ping_frame(b"12345678", ack=True),
        {"type": "PING", "ack": True, "payload_hex": b"12345678".hex()},
    )
    return v


def _valid_goaway_credit_unknown() -> list[dict[str, object]]:
    v: list[dict[str, object]] = []
    add = _adder(v)
    add(
        "goaway_no_debug",
        goaway_frame(0, Code.NO_ERROR),
        {"type": "GOAWAY", "last_stream_id": 0, "error_code": 0, "debug": ""},
    )
    debug = "ünïcode debug".encode()
    add(
        "goaway_debug",
        goaway_frame(9, Code.ENHANCE_YOUR_CALM, debug),
        {"type": "GOAWAY", "last_stream_id": 9, "error_code": 10, "debug": "ünïcode debug"},
    )
    add(
        "goaway_max_debug",
        goaway_frame(1, Code.NO_ERROR, b"d" * 1024),
        {"type": "GOAWAY", "last_stream_id": 1, "error_code": 0, "debug": "d" * 1024},
    )
    add(
        "credit_connection",
        credit_frame(0, 2**40),
        {"type": "CREDIT", "stream_id": 0, "limit": 2**40},
    )
    add(
        "credit_stream",
        credit_frame(3, 1 << 21),
        {"type": "CREDIT", "stream_id": 3, "limit": 1 << 21},
    )
    add(
        "unknown_type",
        build_frame(0x7F, 0x33, 5, b"future"),
        {
            "type": "UNKNOWN",
            "type_code": 0x7F,
            "flags": 0x33,
            "stream_id": 5,
            "payload_hex": b"future".hex(),
        },
    )
    add(
        "unknown_type_stream0_empty",
        build_frame(0xFF, 0, 0, b""),
        {"type": "UNKNOWN", "type_code": 0xFF, "flags": 0, "stream_id": 0, "payload_hex": ""},
    )
    for name, raw in (  # §3.4: ignored whatever their codec byte (parse-only: codec dropped)
        ("unknown_type_with_codec", build_frame(0x7F, 0, 1, b"x", codec=1)),
        ("unknown_type_raw_decoded_mismatch", build_frame(0x7F, 0, 1, b"x", decoded_length=2)),
    ):
        add(
            name,
            raw,
            {"type": "UNKNOWN", "type_code": 0x7F, "flags": 0, "stream_id": 1, "payload_hex": "78"},
            roundtrip=False,
        )
    return v


def valid() -> list[dict[str, object]]:
    parts = (
        _valid_stream_frames,
        _valid_data_frames,
        _valid_reset_settings_ping,
        _valid_goaway_credit_unknown,
    )
    return [vector for part in parts for vector in part()]


def decode_only() -> list[dict[str, object]]:
    body = b"".join(struct.pack("<f", i / 7) for i in range(2048))
    out = []
    for name, codec, plain in (
        ("zstd", 1, body),
        ("zstd_shuffle4", 2, shuffle(body, 4)),
        ("zstd_shuffle2", 3, shuffle(body, 2)),
        ("zstd_empty", 1, b""),
    ):
        payload = zstd(plain)
        raw = build_frame(T.DATA, END_STREAM, 1, payload, codec=codec, decoded_length=len(plain))
        out.append(
            {
                "name": name,
                "prefix_hex": OPEN1.hex(),
                "hex": raw.hex(),
                "codec": codec,
                "decoded_hex": (body if plain else b"").hex(),
            }
        )
    return out


def _inv(
    name: str, raw: bytes, code: Code, scope: str, section: str, *, prefix: bytes = b""
) -> dict[str, object]:
    return {
        "name": name,
        "prefix_hex": prefix.hex(),
        "hex": raw.hex(),
        "code": code.name,
        "scope": scope,
        "section": section,
    }


def _invalid_sizes() -> list[dict[str, object]]:
    inv = [
        _inv(
            "data_length_above_max_frame_size",
            hdr(0, 0, 1, 65537, 65537),
            FSE,
            "connection",
            "3.2",
            prefix=OPEN1,
        ),
        _inv(
            "data_decoded_length_above_limit",
            hdr(0, 1, 1, 100, 1048577),
            FSE,
            "connection",
            "3.2",
            prefix=OPEN1,
        ),
        _inv(
            "headers_length_above_max_header_size",
            hdr(1, 0, 1, 65537, 65537),
            FSE,
            "connection",
            "3.2",
        ),
        _inv(
            "unknown_type_length_above_max_frame_size",
            hdr(0x7F, 0, 1, 65537, 65537),
            FSE,
            "connection",
            "3.4",
        ),
        _inv(
            "unknown_type_decoded_above_limit",
            hdr(0x7F, 0, 1, 10, 1048577),
            FSE,
            "connection",
            "3.4",
        ),
        _inv(
            "headers_payload_3_bytes",
            build_frame(1, 0, 1, b"\x00\x00\x00"),
            FSE,
            "connection",
            "4.2",
        ),
    ]
    return inv


def _invalid_control_sizes() -> list[dict[str, object]]:
    inv: list[dict[str, object]] = []
    for ftype, sizes in (
        (T.RESET, (0, 3, 5, 8)),
        (T.PING, (0, 7, 9, 16)),
        (T.CREDIT, (4, 7, 9)),
        (T.GOAWAY, (0, 7, 1033)),
    ):
        sid = 0 if ftype in (T.PING, T.GOAWAY) else 1
        for n in sizes:
            inv.append(
                _inv(
                    f"{ftype.name.lower()}_payload_{n}",
                    build_frame(ftype, 0, sid, b"\0" * n),
                    FSE,
                    "connection",
                    "3.2",
                    prefix=OPEN1 if sid else b"",
                )
            )
    return inv


def _invalid_codec_and_stream_zero() -> list[dict[str, object]]:
    inv: list[dict[str, object]] = []
    inv += [
        _inv(
            "settings_payload_5", build_frame(T.SETTINGS, 0, 0, b"\0" * 5), FSE, "connection", "4.4"
        ),
        _inv("settings_33_entries", settings_frame([(0x40, 0)] * 33), FSE, "connection", "4.4"),
        _inv(
            "settings_ack_with_payload",
            build_frame(T.SETTINGS, ACK, 0, b"\0\x01\0\x01\0\0"),
            FSE,
            "connection",
            "4.4",
        ),
        _inv(
            "ping_codec_1", build_frame(T.PING, 0, 0, b"\0" * 8, codec=1), PE, "connection", "3.3"
        ),
        _inv(
            "headers_codec_1",
            build_frame(T.HEADERS, 0, 1, b"\0\0\0\0{}", codec=1),
            PE,
            "connection",
            "3.3",
        ),
        _inv(
            "settings_codec_2", build_frame(T.SETTINGS, 0, 0, b"", codec=2), PE, "connection", "3.3"
        ),
        _inv(
            "credit_codec_3",
            build_frame(T.CREDIT, 0, 0, b"\0" * 8, codec=3),
            PE,
            "connection",
            "3.3",
        ),
        _inv(
            "raw_data_decoded_length_mismatch",
            build_frame(T.DATA, 0, 1, b"abc", decoded_length=4),
            CE,
            "connection",
            "3.3",
            prefix=OPEN1,
        ),
        _inv(
            "raw_ping_decoded_length_mismatch",
            build_frame(T.PING, 0, 0, b"\0" * 8, decoded_length=9),
            CE,
            "connection",
            "3.3",
        ),
        _inv("data_on_stream_0", build_frame(T.DATA, 0, 0, b"x"), PE, "connection", "4"),
        _inv("headers_on_stream_0", headers_frame(0, {"m": "x"}), PE, "connection", "4"),
        _inv("reset_on_stream_0", reset_frame(0, Code.CANCEL), PE, "connection", "4"),
        _inv("settings_on_stream_1", build_frame(T.SETTINGS, 0, 1, b""), PE, "connection", "4"),
        _inv("ping_on_stream_1", build_frame(T.PING, 0, 1, b"\0" * 8), PE, "connection", "4"),
        _inv("goaway_on_stream_1", build_frame(T.GOAWAY, 0, 1, b"\0" * 8), PE, "connection", "4"),
        _inv("headers_urgency_8", headers_frame(1, {"m": "x"}, urgency=8), PE, "stream", "4.2"),
        _inv("headers_urgency_255", headers_frame(1, {"m": "x"}, urgency=255), PE, "stream", "4.2"),
    ]
    return inv


def _invalid_heads() -> list[dict[str, object]]:
    inv: list[dict[str, object]] = []
    bad_heads = {
        "head_not_json": b"{not json",
        "head_not_utf8": b'{"m":"\xff\xfe"}',
        "head_array": b'["m"]',
        "head_string": b'"m"',
        "head_no_m": b'{"n":"x"}',
        "head_m_not_string": b'{"m":5}',
        "head_m_null": b'{"m":null}',
        "head_nan": b'{"m":"x","v":NaN}',
        "head_depth_40": b'{"m":"x","a":' + b"[" * 39 + b"]" * 39 + b"}",
        "head_depth_5000": b'{"m":"x","a":' + b"[" * 5000 + b"]" * 5000 + b"}",
        "head_empty": b"",
        "head_trailing_garbage": b'{"m":"x"}x',
    }
    inv += [_inv(n, headers_frame(1, h), PE, "stream", "4.2") for n, h in bad_heads.items()]
    return inv


def _invalid_settings() -> list[dict[str, object]]:
    inv: list[dict[str, object]] = []
    for sid, (low, high) in {
        1: (65536, 16777215),
        2: (1048576, 67108864),
        4: (65536, 2**31 - 1),
        5: (65536, 2**31 - 1),
        6: (65536, 1048576),
        7: (1048576, 2**32 - 1),
    }.items():
        inv.append(
            _inv(
                f"setting_{sid}_below_range",
                settings_frame([(sid, low - 1)]),
                PE,
                "connection",
                "4.4",
            )
        )
        if high < 2**32 - 1:
            inv.append(
                _inv(
                    f"setting_{sid}_above_range",
                    settings_frame([(sid, high + 1)]),
                    PE,
                    "connection",
                    "4.4",
                )
            )
    inv.append(_inv("setting_3_above_range", settings_frame([(3, 2**31)]), PE, "connection", "4.4"))
    return inv


def _invalid_streams() -> list[dict[str, object]]:
    inv: list[dict[str, object]] = []
    inv += [
        _inv("credit_above_2_pow_62", credit_frame(0, 2**62 + 1), PE, "connection", "7.3"),
        _inv("credit_2_pow_64_minus_1", credit_frame(0, 2**64 - 1), PE, "connection", "7.3"),
        _inv(
            "stream_credit_above_2_pow_62",
            credit_frame(1, 2**62 + 1),
            PE,
            "connection",
            "7.3",
            prefix=OPEN1,
        ),
        _inv("credit_on_idle_stream", credit_frame(1, 1 << 30), PE, "connection", "4.7"),
        _inv("data_on_idle_stream", build_frame(T.DATA, 0, 1, b"x"), PE, "connection", "6.2.2"),
        _inv("reset_on_idle_stream", reset_frame(3, Code.CANCEL), PE, "connection", "6.2.2"),
        _inv(
            "data_on_idle_stream_above_open",
            build_frame(T.DATA, 0, 3, b"x"),
            PE,
            "connection",
            "6.2.2",
            prefix=OPEN1,
        ),
        _inv(
            "headers_even_stream_from_client",
            headers_frame(2, {"m": "x"}),
            PE,
            "connection",
            "6.1.1",
        ),
        _inv(
            "headers_decreasing_stream_id",
            headers_frame(1, {"m": "x"}),
            PE,
            "connection",
            "6.1.1",
            prefix=headers_frame(3, {"m": "x"}, end_stream=True),
        ),
    ]
    return inv


def _invalid_stream_states() -> list[dict[str, object]]:
    return [
        _inv(
            "data_after_end_stream",
            build_frame(T.DATA, 0, 1, b"x"),
            Code.STREAM_CLOSED,
            "stream",
            "6.2.1",
            prefix=OPEN1_END,
        ),
        _inv(
            "headers_after_end_stream",
            headers_frame(1, {"m": "x"}),
            Code.STREAM_CLOSED,
            "stream",
            "6.2.1",
            prefix=OPEN1_END,
        ),
        _inv(
            "end_stream_with_nonzero_body_len",
            headers_frame(1, {"m": "x", "body_len": 5}, end_stream=True),
            PE,
            "stream",
            "10.1.2",
        ),
        _inv(
            "body_announced_without_body_len", headers_frame(1, {"m": "x"}), PE, "stream", "10.1.2"
        ),
        _inv(
            "headers_reopening_a_closed_peer_stream",
            headers_frame(1, {"m": "x"}, end_stream=True),
            PE,
            "connection",
            "6.2.2",
            prefix=OPEN1_END + reset_frame(1, 8),
        ),
        _inv(
            "second_headers_in_body",
            headers_frame(1, {"m": "x"}),
            PE,
            "stream",
            "6.2.1",
            prefix=OPEN1,
        ),
    ]


def _invalid_zstd() -> list[dict[str, object]]:
    body = b"\x01" * 4096
    inv: list[dict[str, object]] = [
        _inv(
            "zstd_no_content_size",
            build_frame(T.DATA, 0, 1, zstd(body, content_size=False), codec=1, decoded_length=4096),
            CE,
            "connection",
            "12.1",
            prefix=OPEN1,
        ),
        _inv(
            "zstd_content_size_mismatch",
            build_frame(T.DATA, 0, 1, zstd(body), codec=1, decoded_length=4095),
            CE,
            "connection",
            "12.1",
            prefix=OPEN1,
        ),
        _inv(
            "zstd_trailing_bytes",
            build_frame(T.DATA, 0, 1, zstd(body) + b"\0", codec=1, decoded_length=4096),
            CE,
            "connection",
            "12.1",
            prefix=OPEN1,
        ),
        _inv(
            "zstd_two_frames",
            build_frame(
                T.DATA, 0, 1, zstd(body[:2048]) + zstd(body[:2048]), codec=1, decoded_length=2048
            ),
            CE,
            "connection",
            "12.1",
            prefix=OPEN1,
        ),
        _inv(
            "zstd_skippable_frame",
            build_frame(
                T.DATA,
                0,
                1,
                struct.pack("<II", 0x184D2A50, 4) + b"\0" * 4 + zstd(body),
                codec=1,
                decoded_length=4096,
            ),
            CE,
            "connection",
            "12.1",
            prefix=OPEN1,
        ),
        _inv(
            "zstd_corrupt",
            build_frame(T.DATA, 0, 1, zstd(body)[:8] + b"\xff" * 20, codec=1, decoded_length=4096),
            CE,
            "connection",
            "12.1",
            prefix=OPEN1,
        ),
        _inv(
            "zstd_not_a_frame",
            build_frame(T.DATA, 0, 1, b"hello world", codec=1, decoded_length=11),
            CE,
            "connection",
            "12.1",
            prefix=OPEN1,
        ),
    ]
    return inv


def _invalid_zstd_bounds() -> list[dict[str, object]]:
    return [
        _inv(
            "zstd_bomb_declared_1mib_within_limit_but_truncated",
            build_frame(T.DATA, 0, 1, zstd(b"\0" * 1048576)[:-3], codec=1, decoded_length=1048576),
            CE,
            "connection",
            "12.1",
            prefix=OPEN1,
        ),
        _inv(
            "zstd_declares_2_pow_40_bytes",
            build_frame(
                T.DATA,
                0,
                1,
                raw_zstd_frame(0xE0, (2**40).to_bytes(8, "little"), b""),
                codec=1,
                decoded_length=4096,
            ),
            CE,
            "connection",
            "12.1",
            prefix=OPEN1,
        ),
        _inv(
            # A real frame declaring (and holding) 64 MiB of zeros in a few KB, sent where the
            # DATA header says 4096 bytes: the declared size must be refused before any
            # decompression, or the decoder allocates what the frame declares.
            "zstd_content_size_above_decoded_length",
            build_frame(T.DATA, 0, 1, zstd(bytes(64 << 20)), codec=1, decoded_length=4096),
            CE,
            "connection",
            "12.1",
            prefix=OPEN1,
        ),
        _inv(
            "zstd_window_16_mib",
            build_frame(
                T.DATA,
                0,
                1,
                raw_zstd_frame(0x40, bytes([14 << 3]) + (0).to_bytes(2, "little"), b"w" * 256),
                codec=1,
                decoded_length=256,
            ),
            CE,
            "connection",
            "12.1",
            prefix=OPEN1,
        ),
        _inv(
            "zstd_with_dictionary_id",
            build_frame(
                T.DATA, 0, 1, raw_zstd_frame(0x21, bytes([7, 3]), b"abc"), codec=1, decoded_length=3
            ),
            CE,
            "connection",
            "12.1",
            prefix=OPEN1,
        ),
    ]


def _invalid_codec_lengths() -> list[dict[str, object]]:
    body = b"\x01" * 4096
    return [
        _inv(
            "shuffle4_length_not_multiple",
            build_frame(T.DATA, 0, 1, zstd(body[:4094]), codec=2, decoded_length=4094),
            CE,
            "connection",
            "12.2",
            prefix=OPEN1,
        ),
        _inv(
            "shuffle2_length_not_multiple",
            build_frame(T.DATA, 0, 1, zstd(body[:4095]), codec=3, decoded_length=4095),
            CE,
            "connection",
            "12.2",
            prefix=OPEN1,
        ),
        _inv(
            "unknown_codec_4",
            build_frame(T.DATA, 0, 1, b"abc", codec=4, decoded_length=3),
            CE,
            "connection",
            "12.3",
            prefix=OPEN1,
        ),
        _inv(
            "unknown_codec_255",
            build_frame(T.DATA, 0, 1, b"abc", codec=255, decoded_length=3),
            CE,
            "connection",
            "12.3",
            prefix=OPEN1,
        ),
    ]


def invalid() -> list[dict[str, object]]:
    parts = (
        _invalid_sizes,
        _invalid_control_sizes,
        _invalid_codec_and_stream_zero,
        _invalid_heads,
        _invalid_settings,
        _invalid_streams,
        _invalid_stream_states,
        _invalid_zstd,
        _invalid_zstd_bounds,
        _invalid_codec_lengths,
    )
    return [vector for part in parts for vector in part()]


def acceptable() -> list[dict[str, object]]:
    return [
        {
            "name": "head_depth_33",
            "hex": headers_frame(
                1, b'{"m":"x","a":' + b"[" * 32 + b"]" * 32 + b"}", end_stream=True
            ).hex(),
            "prefix_hex": "",
            "outcomes": ["ignored", "PROTOCOL_ERROR"],
            "section": "4.2",
            "why": "§4.2 does not say whether the head object itself is level 0 or 1",
        },
        {
            "name": "data_on_skipped_stream_id",
            "hex": build_frame(T.DATA, 0, 1, b"x").hex(),
            "prefix_hex": headers_frame(3, {"m": "x"}, end_stream=True).hex(),
            "outcomes": ["ignored", "PROTOCOL_ERROR", "STREAM_CLOSED"],
            "section": "6.2.2",
            "why": "stream 1 was skipped by opening 3: idle or closed is not stated",
        },
    ]


def main() -> None:
    doc = {
        "description": __doc__,
        "valid": valid(),
        "decode_only": decode_only(),
        "invalid": invalid(),
        "acceptable": acceptable(),
    }
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
