"""protocol.md §13: keepalive, GOAWAY semantics and graceful drain."""

from __future__ import annotations

import pytest
from tests.conformance.harness import CoreUnderTest, Outcome
from tests.refpeer import wire as rw

from ionn_net.config import Limits
from ionn_net.proto import events as ev
from ionn_net.proto.errors import ErrorCode, UsageError
from ionn_net.proto.streams import StreamState


def _open(sid: int, body_len: int = 10) -> bytes:
    return rw.headers_frame(sid, {"m": "q", "body_len": body_len})


@pytest.mark.spec("13.2")
def test_after_sending_goaway_new_peer_streams_are_refused() -> None:
    core = CoreUnderTest().handshake()
    core.feed(_open(1) + _open(3))
    core.conn.close()
    core.drain()
    assert core.goaways() == [(3, ErrorCode.NO_ERROR)]
    core.feed(rw.headers_frame(5, {"m": "late"}, end_stream=True))
    heads = [e.stream_id for e in core.events if isinstance(e, ev.HeadersReceived)]
    assert 5 not in heads, "a stream above last_stream_id was processed"
    assert core.resets() in ([], [(5, ErrorCode.REFUSED_STREAM)])  # RESET REFUSED_STREAM or ignore
    assert not core.conn.closed  # streams 1 and 3 are still being served


@pytest.mark.spec("13.2")
def test_after_sending_goaway_accepted_streams_finish() -> None:
    core = CoreUnderTest().handshake()
    core.feed(_open(1))
    core.conn.close()
    core.feed(rw.data_frame(1, b"0123456789", end_stream=True))
    data = [e for e in core.events if isinstance(e, ev.DataReceived)]
    assert b"".join(d.data for d in data) == b"0123456789"
    core.conn.send_headers(1, {"m": "done", "body_len": 3})
    core.conn.send_data(1, b"abc", end_stream=True)
    core.drain()
    assert core.sent(rw.T.DATA)[-1].end_stream
    assert core.conn.closed  # drained: closed after the last stream finished


@pytest.mark.spec("13.2")
def test_after_receiving_goaway_no_new_streams_are_opened() -> None:
    core = CoreUnderTest(client=True).handshake()
    sid = core.conn.open_stream({"m": "q"}, end_stream=True)
    core.feed(rw.goaway_frame(sid, 0))
    with pytest.raises(UsageError):
        core.conn.open_stream({"m": "q"}, end_stream=True)
    core.drain()
    assert [f.stream_id for f in core.sent(rw.T.HEADERS)] == [sid]
    core.feed(rw.headers_frame(sid, {"m": "r"}, end_stream=True))  # stream 1 still completes
    assert [e.stream_id for e in core.events if isinstance(e, ev.HeadersReceived)] == [sid]


@pytest.mark.spec("13.2")
def test_streams_above_last_stream_id_are_reported_unprocessed() -> None:
    core = CoreUnderTest(client=True).handshake()
    ids = [core.conn.open_stream({"m": "q"}, end_stream=True) for _ in range(3)]
    core.drain()
    core.feed(rw.goaway_frame(ids[0], 0))
    assert core.conn.stream_state(ids[2]) is StreamState.CLOSED
    assert core.conn.stream_state(ids[0]) is not StreamState.CLOSED
    reset = {e.stream_id: e for e in core.events if isinstance(e, ev.StreamReset)}
    assert set(reset) == set(ids[1:])  # the application learns what it may retry
    assert all(r.error_code == ErrorCode.REFUSED_STREAM for r in reset.values())


@pytest.mark.spec("13.2")
def test_later_goaway_frames_never_raise_last_stream_id() -> None:
    core = CoreUnderTest().handshake()
    core.feed(_open(1))
    core.conn.close()
    core.feed(_open(3))
    core.conn.close()
    core.drain()
    lasts = [last for last, _ in core.goaways()]
    assert lasts and lasts == sorted(lasts, reverse=True) and lasts[0] == 1


@pytest.mark.spec("13.3")
def test_goaway_with_an_error_code_is_a_connection_error() -> None:
    core = CoreUnderTest().handshake()
    core.feed(_open(1))
    core.feed(rw.goaway_frame(1, ErrorCode.ENHANCE_YOUR_CALM, b"slow down"))
    term = core.terminated()
    assert term is not None and term.remote and term.error_code == ErrorCode.ENHANCE_YOUR_CALM
    assert core.conn.closed
    assert core.goaways() == [], "the receiver of an error GOAWAY closes without its own"


@pytest.mark.spec("13.3")
def test_graceful_drain_with_nothing_open_closes_at_once() -> None:
    core = CoreUnderTest().handshake()
    core.conn.close()
    core.drain()
    assert core.goaways() == [(0, ErrorCode.NO_ERROR)] and core.conn.closed
    assert core.outcome() == Outcome("ignored")


@pytest.mark.spec("13.1")
def test_keepalive_ping_then_timeout_when_unanswered() -> None:
    limits = Limits(keepalive_interval_s=15.0, heartbeat_timeout_s=30.0, idle_timeout_s=1e9)
    core = CoreUnderTest(limits=limits).handshake()
    timer = core.conn.get_timer()
    assert timer is not None and timer <= 15.0
    core.timer(15.0)
    pings = [f for f in core.sent(rw.T.PING) if not f.ack]
    assert len(pings) == 1
    core.timer(15.0 + 30.0)
    assert core.outcome() == Outcome("connection", "TIMEOUT")


@pytest.mark.spec("13.1")
def test_answered_keepalive_keeps_the_connection() -> None:
    limits = Limits(keepalive_interval_s=15.0, heartbeat_timeout_s=30.0, idle_timeout_s=1e9)
    core = CoreUnderTest(limits=limits).handshake()
    core.timer(15.0)
    (ping,) = [f for f in core.sent(rw.T.PING) if not f.ack]
    core.feed(rw.ping_frame(ping.payload, ack=True), now=16.0)
    core.timer(50.0)
    assert not core.conn.closed and core.outcome() == Outcome("ignored")
