"""protocol.md §14: framing, flood and timeout limits of the core (tenancy is in test_s10).

Every limit is a field of :class:`ionn_net.config.Limits`; each test drives the core just past one
budget and checks the outcome the table of §14 states.
"""

from __future__ import annotations

import pytest
from tests.conformance.harness import CoreUnderTest, Outcome
from tests.refpeer import wire as rw

from ionn_net.config import Limits
from ionn_net.proto.errors import ErrorCode

EYC = Outcome("connection", "ENHANCE_YOUR_CALM")


@pytest.mark.spec("14.1")
def test_default_framing_limits_are_the_documented_ones() -> None:
    lim = Limits()
    assert (lim.max_frame_size, lim.max_decoded_frame_size, lim.max_header_size) == (
        64 << 10,
        1 << 20,
        64 << 10,
    )
    assert (lim.max_json_depth, lim.max_settings_entries, lim.max_goaway_debug) == (32, 32, 1024)
    assert (lim.max_concurrent_streams, lim.initial_stream_credit) == (100, 1 << 20)
    assert (lim.initial_connection_credit, lim.max_message_size) == (16 << 20, 256 << 20)


@pytest.mark.spec("14.1")
def test_body_above_max_message_size_is_refused_before_buffering() -> None:
    core = CoreUnderTest(limits=Limits(max_message_size=1 << 20)).handshake()
    core.feed(rw.headers_frame(1, {"m": "q", "body_len": (1 << 20) + 1}))
    assert core.outcome() == Outcome("stream", "MESSAGE_TOO_LARGE", 1)


@pytest.mark.spec("14.3")
@pytest.mark.parametrize("kind", ["ping", "settings"])
def test_ping_and_settings_floods(kind: str) -> None:
    core = CoreUnderTest().handshake()
    frame = rw.ping_frame(b"floodfld") if kind == "ping" else rw.settings_frame([(3, 100)])
    sent = 0
    for i in range(200):
        core.feed(frame, now=i * 0.04)
        sent += 1
        if core.conn.closed:
            break
    # 100 per 10 s; the handshake's own SETTINGS (and ACK) may count against the budget too
    assert 98 <= sent <= 101, sent
    assert core.outcome() == EYC


@pytest.mark.spec("14.3")
def test_control_budget_is_per_window() -> None:
    core = CoreUnderTest().handshake()
    for i in range(300):  # 30 per 10 s: well inside the budget
        core.feed(rw.ping_frame(b"slowping"), now=i / 3.0)
    assert core.outcome() == Outcome("ignored") and not core.conn.closed


@pytest.mark.spec("14.3")
def test_control_replies_for_a_peer_that_does_not_read() -> None:
    core = CoreUnderTest(limits=Limits(control_frames_per_window=10_000)).handshake()
    core.conn.ping(b"undrain!")  # leaves a control frame queued: replies are now capped
    for _ in range(100):
        core.feed(rw.ping_frame(b"noreader"), drain=False)
        if core.conn.closed:
            break
    core.drain()
    assert core.outcome() == EYC
    acks = [f for f in core.sent(rw.T.PING) if f.ack]
    assert len(acks) <= Limits().max_queued_control_replies


@pytest.mark.spec("14.3")
@pytest.mark.parametrize(
    "kind", ["empty_data", "unknown", "stray_ping_ack", "stray_settings_ack", "idle_credit"]
)
def test_useless_frames_budget(kind: str) -> None:
    core = CoreUnderTest(limits=Limits(control_frames_per_window=10_000)).handshake()
    core.feed(rw.headers_frame(1, {"m": "q", "body_len": 5}))
    frame = {
        "empty_data": rw.data_frame(1, b""),
        "unknown": rw.build_frame(0x55, 0, 0, b""),
        "stray_ping_ack": rw.ping_frame(b"nobody!!", ack=True),
        "stray_settings_ack": rw.settings_ack(),
        "idle_credit": rw.credit_frame(0, 1),  # raises no limit
    }[kind]
    core.feed(frame * 100)
    assert core.outcome() == Outcome("ignored")
    core.feed(frame)
    assert core.outcome() == EYC


@pytest.mark.spec("14.3")
def test_reset_flood_burst_then_rate() -> None:
    core = CoreUnderTest().handshake()
    burst = b"".join(
        rw.headers_frame(s, {"m": "q"}, end_stream=True) + rw.reset_frame(s, 8)
        for s in range(1, 2001, 2)
    )
    core.feed(burst, now=1.0)  # 1000 RESETs: the whole burst
    assert core.outcome() == Outcome("ignored")
    core.feed(
        rw.headers_frame(2001, {"m": "q"}, end_stream=True) + rw.reset_frame(2001, 8), now=1.0
    )
    assert core.outcome() == EYC


@pytest.mark.spec("14.3")
def test_reset_rate_refills_over_time() -> None:
    core = CoreUnderTest().handshake()
    sid = 1
    for second in range(1, 60):  # 30 per second, below the 33 per second refill
        batch = b""
        for _ in range(30):
            batch += rw.headers_frame(sid, {"m": "q"}, end_stream=True) + rw.reset_frame(sid, 8)
            sid += 2
        core.feed(batch, now=float(second))
    assert not core.conn.closed


@pytest.mark.spec("14.4")
def test_handshake_timeout() -> None:
    core = CoreUnderTest()
    core.feed(rw.client_preface(), now=1.0)  # never sends SETTINGS
    core.timer(9.9)
    assert not core.conn.closed
    core.timer(10.0)
    assert core.outcome() == Outcome("connection", "TIMEOUT")


@pytest.mark.spec("14.4")
def test_settings_ack_timeout_may_close_with_settings_timeout() -> None:
    core = CoreUnderTest(limits=Limits(keepalive_interval_s=1e9, idle_timeout_s=1e9))
    core.feed(rw.client_preface() + rw.settings_frame(), now=0.0)  # no ACK for its SETTINGS
    core.timer(10.5)
    assert core.outcome().label() in ("ignored", "SETTINGS_TIMEOUT")


@pytest.mark.spec("14.4")
def test_idle_connection_timeout() -> None:
    limits = Limits(keepalive_interval_s=1e9)
    core = CoreUnderTest(limits=limits).handshake()
    core.timer(119.0)
    assert not core.conn.closed
    core.timer(121.0)
    assert core.outcome() == Outcome("connection", "TIMEOUT")
    assert core.goaways()[-1][1] == ErrorCode.TIMEOUT
