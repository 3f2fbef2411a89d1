"""Fuzzing receive_data: random and mutated peer bytes only ever yield documented events.

Nothing may escape ``receive_data`` but events; a termination carries a typed
ProtocolError; buffering stays within one header plus one frame; whatever the core sends
back is well-formed framing.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proto_pair import PREFACE, data, headers, ping, reset
from proto_pair import settings as settings_frame

from ionn_net.config import Limits
from ionn_net.proto import (
    Codec,
    Connection,
    ConnectionTerminated,
    ErrorCode,
    Event,
    FrameDecoder,
    ProtocolError,
    encode,
)
from ionn_net.proto import events as ev_module

EVENT_TYPES = tuple(getattr(ev_module, name) for name in ev_module.__all__ if name != "Event")
LIMITS = Limits()
VALID = (
    PREFACE
    + settings_frame((1, 1 << 20))
    + headers(1, {"m": "query", "body_len": 10})
    + data(1, b"0123456789", end=True)
    + ping()
    + headers(3, {"m": "blob", "body_len": 300})
    + bytes.fromhex("0000010000000003")
    + len(z := encode(bytes(300), Codec.ZSTD)).to_bytes(4, "big")
    + (300).to_bytes(4, "big")
    + z
    + reset(3, 8)
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _feed(conn: Connection, wire: bytes, cuts: list[int]) -> list[Event]:
    points = [0, *sorted({c % (len(wire) + 1) for c in cuts}), len(wire)]
    events: list[Event] = []
    out = bytearray()
    for a, b in itertools.pairwise(points):
        events += conn.receive_data(wire[a:b], 0.0)
        assert conn.decoder_buffered_bytes <= 16 + LIMITS.max_frame_size
        out += conn.data_to_send()
    _check_events(events)
    _check_output(bytes(out), server=not conn.client)
    return events


def _check_events(events: list[Event]) -> None:
    for i, event in enumerate(events):
        assert isinstance(event, EVENT_TYPES), event
        if isinstance(event, ConnectionTerminated):
            assert i == len(events) - 1, "nothing follows a termination"
            assert event.error is None or isinstance(event.error, ProtocolError)
            assert isinstance(event.error_code, ErrorCode)


def _check_output(out: bytes, *, server: bool) -> None:
    if server and out[:4] == b"IONN":
        out = out[8:]
    FrameDecoder(Limits(max_frame_size=16777215)).feed(out)  # raises if malformed


@FUZZ
@given(st.binary(max_size=4096), st.lists(st.integers(0, 5000), max_size=8))
def test_random_bytes_after_a_valid_handshake(noise: bytes, cuts: list[int]) -> None:
    server = Connection(client=False)
    _feed(server, PREFACE + settings_frame() + noise, cuts)


@FUZZ
@given(st.binary(max_size=2048), st.lists(st.integers(0, 3000), max_size=8))
def test_random_bytes_as_a_first_contact(noise: bytes, cuts: list[int]) -> None:
    _feed(Connection(client=False), noise, cuts)
    client = Connection(client=True)
    client.initiate()
    client.data_to_send()
    _feed(client, b"IONN\x01\x01\x00\x00" + noise, cuts)


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=6),
    st.lists(st.integers(0, len(VALID)), max_size=3),
    st.lists(st.integers(0, 5000), max_size=8),
)
def test_mutated_valid_traffic(
    flips: list[tuple[int, int]], deletions: list[int], cuts: list[int]
) -> None:
    wire = bytearray(VALID)
    for pos, value in flips:
        wire[pos] = value
    for pos in sorted(deletions, reverse=True):
        del wire[pos : pos + 1]
    events = _feed(Connection(client=False), bytes(wire), cuts)
    if not flips and not deletions:
        assert not any(isinstance(e, ConnectionTerminated) for e in events)
