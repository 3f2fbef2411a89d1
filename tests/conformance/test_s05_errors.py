"""protocol.md §5: error codes, connection errors (GOAWAY) and stream errors (RESET), plus fuzzing.

The fuzz tests feed random and mutated bytes after a valid preface: the core may only answer with
documented outcomes (events, a GOAWAY or RESET carrying a §5.1 code), never raise, and its decoder
never buffers more than one header plus one maximal payload.
"""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conformance.harness import CoreUnderTest, Outcome, core_outcome
from tests.conformance.vectors import category, vid
from tests.refpeer import wire as rw

from ionn_net.config import Limits
from ionn_net.proto import events as ev
from ionn_net.proto.errors import ErrorCode, ProtocolError


def _open(sid: int, body_len: int = 1 << 20) -> bytes:
    return rw.headers_frame(sid, {"m": "echo", "body_len": body_len})


@pytest.mark.spec("5.1")
@pytest.mark.parametrize("code", [0x10, 0xFF, 2**32 - 1])
def test_unknown_codes_in_reset_and_goaway_mean_internal_error(code: int) -> None:
    core = CoreUnderTest().handshake()
    core.feed(_open(1) + rw.reset_frame(1, code))
    (reset,) = [e for e in core.events if isinstance(e, ev.StreamReset)]
    assert reset.remote and reset.error_code == ErrorCode.INTERNAL_ERROR
    core.feed(rw.goaway_frame(1, code, b"x"))
    (goaway,) = [e for e in core.events if isinstance(e, ev.GoAwayReceived)]
    assert goaway.error_code == ErrorCode.INTERNAL_ERROR
    term = core.terminated()
    assert term is not None and term.remote and term.error_code == ErrorCode.INTERNAL_ERROR


@pytest.mark.spec("5.1")
def test_every_code_of_the_table_has_its_exception() -> None:
    from ionn_net.proto.errors import exception_for

    for code in ErrorCode:
        if code is ErrorCode.NO_ERROR:
            continue
        assert exception_for(code).error_code is code


@pytest.mark.spec("5.2")
def test_goaway_carries_the_code_and_the_highest_processed_peer_stream() -> None:
    core = CoreUnderTest().handshake()
    core.feed(b"".join(rw.headers_frame(s, {"m": "x"}, end_stream=True) for s in (1, 3, 7)))
    core.feed(rw.build_frame(rw.T.PING, 0, 0, b"\0" * 7))  # FRAME_SIZE_ERROR
    assert core.goaways() == [(7, ErrorCode.FRAME_SIZE_ERROR)]
    term = core.terminated()
    assert term is not None and not term.remote and term.error is not None
    assert term.error.error_code == ErrorCode.FRAME_SIZE_ERROR and term.error.stream_id is None


@pytest.mark.spec("5.2")
def test_nothing_is_processed_after_a_connection_error() -> None:
    core = CoreUnderTest().handshake()
    bad = rw.build_frame(rw.T.DATA, 0, 0, b"x")  # DATA on stream 0
    after = rw.ping_frame(b"after!!!") + rw.headers_frame(1, {"m": "late"}, end_stream=True)
    core.feed(bad + after)
    assert core.outcome() == Outcome("connection", "PROTOCOL_ERROR")
    assert not core.sent(rw.T.PING), "the PING after the error was processed"
    assert not [e for e in core.events if isinstance(e, ev.HeadersReceived)]
    n_events, n_frames = len(core.events), len(core.frames)
    assert core.feed(rw.ping_frame(b"later!!!")) == []
    assert (len(core.events), len(core.frames)) == (n_events, n_frames)
    assert core.conn.closed


@pytest.mark.spec("5.2")
@pytest.mark.parametrize(
    "vector", [v for v in category("invalid") if v["scope"] == "connection"][::7], ids=vid
)
def test_connection_errors_end_with_exactly_one_goaway(vector: dict[str, object]) -> None:
    prefix = bytes.fromhex(str(vector["prefix_hex"]))
    outcome, core = core_outcome(prefix, [bytes.fromhex(str(vector["hex"]))])
    assert outcome.kind == "connection"
    assert len(core.goaways()) == 1 and core.frames[-1].type == rw.T.GOAWAY


@pytest.mark.spec("5.3")
def test_stream_error_resets_only_that_stream_and_later_frames_are_ignored() -> None:
    core = CoreUnderTest().handshake()
    core.feed(_open(1) + _open(3, 4))
    core.feed(_open(1))  # HEADERS in BODY: stream PROTOCOL_ERROR
    assert core.resets() == [(1, ErrorCode.PROTOCOL_ERROR)]
    resets = [e for e in core.events if isinstance(e, ev.StreamReset)]
    assert [(r.stream_id, r.remote, r.error_code) for r in resets] == [
        (1, False, ErrorCode.PROTOCOL_ERROR)
    ]
    n = len(core.events)
    core.feed(rw.data_frame(1, b"ignored", end_stream=True) + rw.reset_frame(1, 8))
    assert core.events[n:] == [] and core.resets() == [(1, ErrorCode.PROTOCOL_ERROR)]
    core.feed(rw.data_frame(3, b"okay", end_stream=True))
    data = [e for e in core.events if isinstance(e, ev.DataReceived)]
    assert [(d.stream_id, d.data) for d in data] == [(3, b"okay")]
    assert not core.conn.closed


@pytest.mark.spec("5.3")
def test_data_on_a_reset_stream_still_counts_against_connection_credit() -> None:
    """The core must account ignored DATA: it returns that connection credit (CREDIT on 0)."""
    core = CoreUnderTest().handshake()
    core.feed(_open(1, 20 << 20))
    core.feed(_open(1))  # stream error: stream 1 is now closed
    chunk = rw.data_frame(1, b"\0" * 65536)
    for _ in range(130):  # 8.1 MiB, more than half the 16 MiB connection window
        core.feed(chunk)
    assert core.outcome() == Outcome("stream", "PROTOCOL_ERROR", 1)
    credits = [f for f in core.sent(rw.T.CREDIT) if f.stream_id == 0]
    assert credits, "ignored DATA was not counted (no connection CREDIT came back)"
    assert int.from_bytes(credits[-1].payload, "big") >= (16 << 20) + (8 << 20)


# ----- fuzzing ------------------------------------------------------------------------------

LIMITS = Limits()
BOUND = rw.HEADER_SIZE + max(LIMITS.max_frame_size, LIMITS.max_header_size)


def _check_fuzzed(core: CoreUnderTest, chunks: list[bytes]) -> None:
    for chunk in chunks:
        try:  # the reference reader also checks every frame the core emits
            events = core.feed(chunk)
        except Exception as exc:  # any exception at all escaping the core is a bug
            raise AssertionError(f"receive_data raised {exc!r}") from exc
        for event in events:
            if isinstance(event, ev.ConnectionTerminated) and event.error is not None:
                assert isinstance(event.error, ProtocolError)
                assert event.error_code in set(ErrorCode)
        assert core.conn.decoder_buffered_bytes <= BOUND
    if core.conn.closed:
        assert core.conn.receive_data(b"\0" * 64, 0.0) == []


@pytest.mark.spec("5.2")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=8))
def test_fuzz_random_bytes_after_the_handshake(chunks: list[bytes]) -> None:
    _check_fuzzed(CoreUnderTest().handshake(), chunks)


_TRAFFIC = (
    _open(1, 300)
    + rw.data_frame(1, b"a" * 100)
    + rw.ping_frame(b"01234567")
    + rw.settings_frame([(1, 70000), (3, 5)])
    + rw.credit_frame(0, 1 << 30)
    + rw.headers_frame(3, {"m": "q", "x": [1, {"y": None}]}, urgency=1, end_stream=True)
    + rw.data_frame(1, b"b" * 200, end_stream=True)
    + rw.reset_frame(3, 8)
    + rw.build_frame(0x42, 0, 5, b"ext")
    + rw.goaway_frame(3, 0, b"bye")
)


@pytest.mark.spec("5.2")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, len(_TRAFFIC) - 1), st.integers(0, 255)), max_size=6),
    st.lists(st.integers(1, len(_TRAFFIC)), max_size=4),
)
def test_fuzz_mutated_valid_traffic(flips: list[tuple[int, int]], cuts: list[int]) -> None:
    data = bytearray(_TRAFFIC)
    for pos, value in flips:
        data[pos] = value
    bounds = [0, *sorted(set(cuts)), len(data)]
    chunks = [bytes(data[a:b]) for a, b in itertools.pairwise(bounds)]
    _check_fuzzed(CoreUnderTest().handshake(), chunks)


@pytest.mark.spec("5.2")
def test_fuzz_oversized_lengths_never_grow_the_buffer() -> None:
    rnd = random.Random(5)
    for _ in range(200):
        ftype = rnd.choice([0, 1, 2, 3, 4, 5, 6, 0x33])
        length = rnd.choice([0, 8, 65536, 65537, 1 << 20, 2**32 - 1])
        header = rw.HEADER.pack(ftype, rnd.randrange(256), rnd.randrange(4), 0, 1, length, length)
        core = CoreUnderTest().handshake()
        _check_fuzzed(core, [header, b"\0" * 70000, b"\0" * 70000])
