"""proto.streams: the §6.2 half-stream table, derived stream states, the Stream record."""

from __future__ import annotations

import itertools

import pytest

from ionn_net.proto import (
    HALF_TABLE,
    ErrorCode,
    FrameKind,
    HalfState,
    ProtocolViolation,
    Stream,
    StreamClosedError,
    StreamState,
    UsageError,
    derive_state,
    frame_kind,
)

H, B, E = HalfState.EXPECT_HEADERS, HalfState.BODY, HalfState.ENDED
EXPECTED = {
    (H, FrameKind.HEADERS): B,
    (H, FrameKind.HEADERS_END): E,
    (H, FrameKind.DATA): ErrorCode.PROTOCOL_ERROR,
    (H, FrameKind.DATA_END): ErrorCode.PROTOCOL_ERROR,
    (B, FrameKind.HEADERS): ErrorCode.PROTOCOL_ERROR,
    (B, FrameKind.HEADERS_END): ErrorCode.PROTOCOL_ERROR,
    (B, FrameKind.DATA): B,
    (B, FrameKind.DATA_END): E,
    **{(E, k): ErrorCode.STREAM_CLOSED for k in FrameKind},
}


def test_table_is_complete_and_matches_section_6_2() -> None:
    assert set(HALF_TABLE) == set(itertools.product(HalfState, FrameKind))
    assert dict(HALF_TABLE) == EXPECTED


def test_frame_kind_inputs() -> None:
    assert frame_kind(headers=True, end_stream=False) is FrameKind.HEADERS
    assert frame_kind(headers=False, end_stream=True) is FrameKind.DATA_END


def test_derived_states() -> None:
    assert derive_state(H, B) is StreamState.OPEN
    assert derive_state(E, B) is StreamState.HALF_CLOSED_LOCAL
    assert derive_state(B, E) is StreamState.HALF_CLOSED_REMOTE
    assert derive_state(E, E) is StreamState.CLOSED
    for local, remote in itertools.product(HalfState, HalfState):
        assert derive_state(local, remote, reset=True) is StreamState.CLOSED


def _stream() -> Stream:
    return Stream(
        1, local_initiated=True, urgency=3, incremental=False, seq=1, send_limit=10, recv_limit=10
    )


@pytest.mark.parametrize(("state", "kind"), list(EXPECTED))
def test_remote_half_applies_the_table(state: HalfState, kind: FrameKind) -> None:
    stream = _stream()
    stream.remote = state
    outcome = EXPECTED[state, kind]
    if isinstance(outcome, HalfState):
        stream.apply_remote(kind, "X")
        assert stream.remote is outcome
        return
    error = ProtocolViolation if outcome is ErrorCode.PROTOCOL_ERROR else StreamClosedError
    with pytest.raises(error) as info:
        stream.apply_remote(kind, "X")
    assert info.value.stream_id == 1 and "stream 1" in str(info.value)
    assert stream.remote is state


@pytest.mark.parametrize(("state", "kind"), list(EXPECTED))
def test_local_half_errors_are_usage_errors(state: HalfState, kind: FrameKind) -> None:
    stream = _stream()
    stream.local = state
    outcome = EXPECTED[state, kind]
    if isinstance(outcome, HalfState):
        assert stream.check_local(kind) is outcome
    else:
        with pytest.raises(UsageError):
            stream.check_local(kind)
    stream.reset = True
    with pytest.raises(UsageError, match="reset"):
        stream.check_local(kind)


def test_finished_needs_both_ends_or_a_reset() -> None:
    stream = _stream()
    stream.remote = E
    assert not stream.finished
    stream.end_emitted = True
    assert stream.finished
    other = _stream()
    other.reset = True
    assert other.finished and other.state is StreamState.CLOSED
