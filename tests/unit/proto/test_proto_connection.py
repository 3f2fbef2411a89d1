"""proto.connection: handshake, stream rules, credit, errors, GOAWAY, floods and timers."""

from __future__ import annotations

import math

import pytest
from proto_pair import (
    PREFACE,
    Pair,
    credit,
    data,
    goaway,
    headers,
    parse,
    ping,
    raw_frame,
    reset,
    server_after_handshake,
    settings,
)

from ionn_net.config import Limits, Setting
from ionn_net.proto import (
    Connection,
    ConnectionState,
    ConnectionTerminated,
    CreditFrame,
    DataFrame,
    DataReceived,
    ErrorCode,
    GoAwayFrame,
    GoAwayReceived,
    HeadersReceived,
    InternalError,
    PingAcked,
    PingFrame,
    PingReceived,
    PrefaceReceived,
    ResetFrame,
    SettingsAcked,
    SettingsFrame,
    SettingsReceived,
    StreamReset,
    StreamState,
    UsageError,
)

Q = {"m": "query", "body_len": 4}


def _terminated(events: list[object]) -> ConnectionTerminated:
    assert events and isinstance(events[-1], ConnectionTerminated), events
    return events[-1]


def _goaway(conn: Connection) -> GoAwayFrame:
    frames = parse(conn.data_to_send())
    assert isinstance(frames[-1], GoAwayFrame), frames
    return frames[-1]


# ----------------------------------------------------------------------------- handshake


def test_handshake_events_on_both_sides() -> None:
    pair = Pair()
    for side in ("client", "server"):
        evs = pair.client_events if side == "client" else pair.server_events
        assert [type(e) for e in evs] == [PrefaceReceived, SettingsReceived, SettingsAcked]
    assert pair.client.version == pair.server.version == 1
    assert pair.client.state is pair.server.state is ConnectionState.OPEN
    assert pair.server.peer_settings[Setting.MAX_FRAME_SIZE] == 65536


def test_server_picks_the_highest_common_version() -> None:
    server = Connection(client=False, versions=(1, 3))
    evs = server.receive_data(b"IONN\x02\x05\x00\x00", 0.0)
    assert evs == [PrefaceReceived(version=3)]
    assert server.data_to_send()[:8] == b"IONN\x03\x03\x00\x00"


def test_version_mismatch_sends_own_range_then_goaway() -> None:
    server = Connection(client=False, versions=(2, 3))
    term = _terminated(server.receive_data(b"IONN\x01\x01\x00\x00", 0.0))
    assert term.error_code is ErrorCode.VERSION_MISMATCH and not term.remote
    wire = server.data_to_send()
    assert wire[:8] == b"IONN\x02\x03\x00\x00"
    assert parse(wire[8:])[-1].error_code == ErrorCode.VERSION_MISMATCH  # type: ignore[union-attr]


def test_client_refuses_a_version_outside_its_offer() -> None:
    client = Connection(client=True, versions=(1, 1))
    client.initiate()
    client.data_to_send()
    term = _terminated(client.receive_data(b"IONN\x02\x02\x00\x00", 0.0))
    assert term.error_code is ErrorCode.VERSION_MISMATCH
    assert _goaway(client).error_code == ErrorCode.VERSION_MISMATCH


def test_server_sends_nothing_to_a_peer_with_the_wrong_magic() -> None:
    server = Connection(client=False)
    term = _terminated(server.receive_data(b"GET / HTTP/1.1\r\n", 0.0))
    assert term.error_code is ErrorCode.PROTOCOL_ERROR
    assert server.closed and server.data_to_send() == b""
    assert server.receive_data(b"more", 0.0) == []


def test_magic_is_checked_byte_by_byte() -> None:
    server = Connection(client=False)
    assert server.receive_data(b"IO", 0.0) == []
    assert _terminated(server.receive_data(b"X", 0.0)).error_code is ErrorCode.PROTOCOL_ERROR


def test_first_frame_must_be_settings_and_earlier_frames_are_processed() -> None:
    server = Connection(client=False)
    evs = server.receive_data(PREFACE + ping(), 0.0)
    assert _terminated(evs).error_code is ErrorCode.PROTOCOL_ERROR
    wire = server.data_to_send()
    assert wire[:8] == b"IONN\x01\x01\x00\x00"  # the preface still precedes the GOAWAY
    frames = parse(wire[8:])
    assert isinstance(frames[0], SettingsFrame) and isinstance(frames[-1], GoAwayFrame)


def test_client_single_version_may_send_before_the_server_preface() -> None:
    client = Connection(client=True)
    client.initiate()
    client.open_stream({"m": "hello"}, end_stream=True)
    frames = parse(client.data_to_send()[8:])
    assert [type(f).__name__ for f in frames] == ["SettingsFrame", "HeadersFrame"]
    ranged = Connection(client=True, versions=(1, 2))
    ranged.initiate()
    ranged.open_stream({"m": "hello"}, end_stream=True)
    assert [type(f).__name__ for f in parse(ranged.data_to_send()[8:])] == ["SettingsFrame"]
    ranged.receive_data(b"IONN\x02\x02\x00\x00" + settings(), 0.0)
    assert any(type(f).__name__ == "HeadersFrame" for f in parse(ranged.data_to_send()))


# ------------------------------------------------------------------------------ settings


def test_settings_are_applied_acknowledged_and_unknown_ids_ignored() -> None:
    server = server_after_handshake()
    evs = server.receive_data(settings((1, 1 << 20), (0x42, 7), (4, 65536)), 0.0)
    assert evs == [SettingsReceived(settings={1: 1 << 20, 4: 65536, 0x42: 7})]
    assert parse(server.data_to_send()) == [SettingsFrame(ack=True)]
    assert server.peer_settings[Setting.MAX_FRAME_SIZE] == 1 << 20


@pytest.mark.parametrize(("ident", "value"), [(1, 65535), (2, 1 << 27), (4, 2**31), (7, 1000)])
def test_settings_out_of_range_are_protocol_errors(ident: int, value: int) -> None:
    server = server_after_handshake()
    term = _terminated(server.receive_data(settings((ident, value)), 0.0))
    assert term.error_code is ErrorCode.PROTOCOL_ERROR and str(value) in term.reason


def test_new_initial_stream_credit_raises_open_streams() -> None:
    pair = Pair()
    sid = pair.client.open_stream(Q)
    pair.pump()
    assert pair.client.available_credit(sid) == 1 << 20
    pair.client.receive_data(settings((4, 4 << 20)), 0.0)
    assert pair.client.available_credit(sid) == 4 << 20


def test_settings_timeout_and_handshake_timeout() -> None:
    client = Connection(client=True, now=0.0)
    client.initiate()
    client.data_to_send()
    assert client.get_timer() == 10.0
    assert client.handle_timer(5.0) == []
    term = _terminated(client.handle_timer(10.0))
    assert term.error_code is ErrorCode.TIMEOUT  # no preface at all: handshake timeout first
    client2 = Connection(client=True, limits=Limits(handshake_timeout_s=math.inf))
    client2.initiate()
    client2.receive_data(b"IONN\x01\x01\x00\x00" + settings(), 1.0)
    assert client2.get_timer() == 10.0
    assert _terminated(client2.handle_timer(10.0)).error_code is ErrorCode.SETTINGS_TIMEOUT
    frames = parse(client2.data_to_send(), skip_preface=True)
    assert frames[-1].error_code == ErrorCode.SETTINGS_TIMEOUT  # type: ignore[union-attr]


def test_server_handshake_timeout_sends_nothing() -> None:
    server = Connection(client=False, now=100.0)
    assert server.get_timer() == 110.0
    assert _terminated(server.handle_timer(110.0)).error_code is ErrorCode.TIMEOUT
    assert server.data_to_send() == b"" and server.get_timer() is None


# ------------------------------------------------------------------------------- streams


def test_request_response_and_stream_states() -> None:
    pair = Pair()
    sid = pair.client.open_stream(Q, urgency=1)
    assert sid == 1 and pair.client.stream_state(1) is StreamState.OPEN
    pair.client.send_data(sid, b"abcd", end_stream=True)
    assert pair.client.stream_state(1) is StreamState.HALF_CLOSED_LOCAL
    pair.pump()
    head = pair.events("server", HeadersReceived)[0]
    assert head == HeadersReceived(
        stream_id=1, head=Q, urgency=1, incremental=False, end_stream=False
    )
    assert pair.server.stream_state(1) is StreamState.HALF_CLOSED_REMOTE
    pair.server.send_headers(1, {"m": "result", "body_len": 2})
    pair.server.send_data(1, b"ok", end_stream=True)
    pair.pump()
    got = pair.events("client", DataReceived)
    assert [(e.data, e.end_stream) for e in got] == [(b"ok", True)]  # type: ignore[union-attr]
    assert pair.client.stream_state(1) is StreamState.CLOSED
    assert pair.server.stream_state(1) is StreamState.CLOSED
    assert pair.client.stream_state(3) is StreamState.IDLE
    assert pair.client.open_streams == pair.server.open_streams == ()


def test_responder_uses_the_request_priority() -> None:
    pair = Pair()
    sid = pair.client.open_stream({"m": "blob", "body_len": 0}, urgency=6, incremental=True)
    pair.client.send_data(sid, b"", end_stream=True)
    pair.pump()
    pair.server.send_headers(sid, {"m": "ok"}, end_stream=True)
    frame = parse(pair.server.data_to_send())[0]
    assert frame.urgency == 6 and frame.incremental  # type: ignore[union-attr]


def test_refused_stream_beyond_max_concurrent_streams() -> None:
    pair = Pair(server_limits=Limits(max_concurrent_streams=1))
    assert pair.client.available_streams == 1
    pair.client.open_stream(Q)
    with pytest.raises(UsageError, match="concurrent"):
        pair.client.open_stream(Q)
    # A peer ignoring the limit gets REFUSED_STREAM for the extra stream.
    evs = pair.server.receive_data(headers(1, Q) + headers(3, Q), 0.0)
    assert StreamReset(stream_id=3, error_code=ErrorCode.REFUSED_STREAM, remote=False) in evs
    assert ResetFrame(stream_id=3, error_code=ErrorCode.REFUSED_STREAM) in parse(
        pair.server.data_to_send()
    )
    assert pair.server.stream_state(3) is StreamState.CLOSED


@pytest.mark.parametrize(
    ("wire", "text"),
    [
        (headers(2, Q), "parity"),
        (headers(3, Q) + headers(1, Q), "greater than 3"),
        (data(1, b"x"), "idle"),
        (reset(5, 8), "idle"),
        (credit(7, 1 << 30), "idle"),
        (credit(0, 2**62 + 1), "2^62"),
        (goaway(0, 0) + goaway(1, 0), "last_stream_id <= 0"),
    ],
)
def test_connection_level_stream_rule_violations(wire: bytes, text: str) -> None:
    server = server_after_handshake()
    term = _terminated(server.receive_data(wire, 0.0))
    assert term.error_code is ErrorCode.PROTOCOL_ERROR and text in term.reason
    assert isinstance(term.error, Exception) and term.error.error_code is ErrorCode.PROTOCOL_ERROR


def test_goaway_names_the_last_processed_peer_stream() -> None:
    server = server_after_handshake()
    server.receive_data(headers(1, Q) + headers(5, Q), 0.0)
    server.data_to_send()
    server.receive_data(data(7, b"x"), 0.0)
    assert _goaway(server) == GoAwayFrame(
        last_stream_id=5,
        error_code=ErrorCode.PROTOCOL_ERROR,
        debug="DATA frame on stream 7: stream is idle (no HEADERS)",
    )


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (headers(1, Q) + headers(1, Q), ErrorCode.PROTOCOL_ERROR),  # HEADERS in BODY
        (headers(1, Q) + data(1, b"abcd", end=True) + data(1, b""), ErrorCode.STREAM_CLOSED),
        (headers(1, Q, urgency=8), ErrorCode.PROTOCOL_ERROR),
        (raw_frame(1, 1, b"\x00\x00\x00\x00[]"), ErrorCode.PROTOCOL_ERROR),
        (headers(1, {"m": "q"}), ErrorCode.PROTOCOL_ERROR),  # body announced without body_len
        (headers(1, {"m": "q", "body_len": 1 << 30}), ErrorCode.MESSAGE_TOO_LARGE),
        (headers(1, {"m": "q", "body_len": 3}, end=True), ErrorCode.PROTOCOL_ERROR),
        (headers(1, Q) + data(1, b"abcde"), ErrorCode.MESSAGE_TOO_LARGE),
        (headers(1, Q) + data(1, b"ab", end=True), ErrorCode.PROTOCOL_ERROR),
    ],
)
def test_stream_errors_reset_only_that_stream(wire: bytes, code: ErrorCode) -> None:
    server = server_after_handshake()
    evs = server.receive_data(wire, 0.0)
    assert StreamReset(stream_id=1, error_code=code, remote=False) in evs
    assert not server.closed
    assert ResetFrame(stream_id=1, error_code=code) in parse(server.data_to_send())
    # The connection still works: a new stream is accepted.
    assert isinstance(server.receive_data(headers(3, Q), 0.0)[0], HeadersReceived)


def test_data_before_the_response_headers_is_a_stream_error() -> None:
    pair = Pair()
    sid = pair.client.open_stream({"m": "ping"}, end_stream=True)
    pair.pump()
    evs = pair.client.receive_data(data(sid, b"x"), 0.0)
    assert evs == [StreamReset(stream_id=sid, error_code=ErrorCode.PROTOCOL_ERROR, remote=False)]


def test_frames_on_closed_streams_are_ignored_but_data_counts_credit() -> None:
    server = server_after_handshake()
    server.receive_data(headers(1, {"m": "q", "body_len": 16 << 20}) + reset(1, 8), 0.0)
    server.data_to_send()
    late = data(1, bytes(65536)) * 129  # in flight when the RESET crossed: 8 MiB + 64 KiB
    assert server.receive_data(late + credit(1, 1 << 30) + headers(1, Q)[:0], 0.0) == []
    # Ignored DATA still counted against the connection; the core returns it (§5.3, §7).
    frames = parse(server.data_to_send())
    assert frames == [CreditFrame(stream_id=0, limit=(8 << 20) + (16 << 20))]  # at half
    assert server.available_credit(1) == 0 and not server.closed


def test_reset_by_peer_drops_queued_output() -> None:
    pair = Pair()
    sid = pair.client.open_stream({"m": "blob", "body_len": 1 << 20})
    pair.client.send_data(sid, bytes(1 << 20), end_stream=True)
    assert pair.client.outbound_buffered_bytes >= 1 << 20
    evs = pair.client.receive_data(reset(sid, ErrorCode.CANCEL), 0.0)
    assert evs == [StreamReset(stream_id=sid, error_code=ErrorCode.CANCEL, remote=True)]
    assert pair.client.outbound_buffered_bytes == 0
    with pytest.raises(UsageError):
        pair.client.send_data(sid, b"")


def test_unknown_reset_code_is_reported_as_internal_error() -> None:
    server = server_after_handshake()
    evs = server.receive_data(headers(1, Q) + reset(1, 0x77), 0.0)
    assert evs[-1] == StreamReset(stream_id=1, error_code=ErrorCode.INTERNAL_ERROR, remote=True)


def test_local_reset_and_usage_errors() -> None:
    pair = Pair()
    sid = pair.client.open_stream(Q)
    pair.pump()
    pair.client.reset_stream(sid)
    assert parse(pair.client.data_to_send()) == [ResetFrame(stream_id=sid, error_code=8)]
    pair.client.reset_stream(sid)  # already closed: nothing
    unsent = pair.client.open_stream(Q)
    pair.client.reset_stream(unsent)  # the peer never saw it: no RESET on an idle stream
    assert pair.client.data_to_send() == b""
    assert pair.client.stream_state(unsent) is StreamState.CLOSED
    with pytest.raises(UsageError):
        pair.client.reset_stream(99)
    s2 = pair.client.open_stream(Q)
    with pytest.raises(UsageError, match="body_len is 4"):
        pair.client.send_data(s2, b"12345")
    with pytest.raises(UsageError, match="at end_stream"):
        pair.client.send_data(s2, b"12", end_stream=True)
    with pytest.raises(UsageError, match="'m'"):
        pair.client.open_stream({"x": 1})
    with pytest.raises(UsageError, match="body_len"):
        pair.client.open_stream({"m": "x"})
    with pytest.raises(UsageError, match="urgency"):
        pair.client.open_stream(Q, urgency=8)
    with pytest.raises(UsageError):
        pair.client.send_headers(s2, {"m": "again"}, end_stream=True)
    with pytest.raises(UsageError):
        pair.client.ping(b"short")


# --------------------------------------------------------------------------- flow control


def test_sender_stops_at_the_credit_and_resumes_on_credit() -> None:
    pair = Pair(auto_ack=False)
    size = 3 << 20
    sid = pair.client.open_stream({"m": "blob", "body_len": size})
    pair.client.send_data(sid, bytes(size), end_stream=True)
    pair.pump()
    received = sum(e.wire_length for e in pair.events("server", DataReceived))  # type: ignore[union-attr]
    assert received == 1 << 20  # INITIAL_STREAM_CREDIT
    assert pair.client.available_credit(sid) == 0
    assert not pair.client.has_data_to_send()
    for ev in pair.events("server", DataReceived):
        pair.server.acknowledge_received_data(ev.stream_id, ev.wire_length)  # type: ignore[union-attr]
    pair.auto_ack = True
    pair.pump()
    received = sum(e.wire_length for e in pair.events("server", DataReceived))  # type: ignore[union-attr]
    assert received == size
    assert pair.client.stream_state(sid) is StreamState.HALF_CLOSED_LOCAL


def test_credit_is_absolute_and_idempotent() -> None:
    pair = Pair()
    sid = pair.client.open_stream(Q)
    pair.pump()
    assert pair.client.receive_data(credit(sid, 2 << 20) + credit(sid, 2 << 20), 0.0) == []
    assert pair.client.available_credit(sid) == 2 << 20
    pair.client.receive_data(credit(sid, 5), 0.0)  # lower: ignored, limits never decrease
    assert pair.client.available_credit(sid) == 2 << 20


def test_exceeding_credit_is_a_flow_control_error() -> None:
    server = server_after_handshake(Limits(initial_stream_credit=65536))
    server.receive_data(headers(1, {"m": "b", "body_len": 1 << 20}), 0.0)
    server.receive_data(settings()[:0], 0.0)
    wire = b"".join(data(1, bytes(65536)) for _ in range(17))  # 17 * 64 KiB > 1 MiB
    term = _terminated(server.receive_data(wire, 0.0))
    assert term.error_code is ErrorCode.FLOW_CONTROL_ERROR


def test_acknowledged_data_is_credited_back_at_half_a_window() -> None:
    server = server_after_handshake()
    server.receive_data(headers(1, {"m": "b", "body_len": 2 << 20}), 0.0)
    server.receive_data(b"".join(data(1, bytes(65536)) for _ in range(8)), 0.0)
    server.acknowledge_received_data(1, 7 * 65536)
    assert parse(server.data_to_send()) == []
    server.acknowledge_received_data(1, 65536)
    assert parse(server.data_to_send()) == [CreditFrame(stream_id=1, limit=(1 << 20) + (1 << 19))]
    with pytest.raises(UsageError):
        server.acknowledge_received_data(1, 1)  # more than was received


# ---------------------------------------------------------------------------- ping, goaway


def test_ping_round_trip_and_unmatched_ack() -> None:
    pair = Pair()
    pair.client.ping(b"abcdefgh")
    pair.pump()
    assert PingReceived(payload=b"abcdefgh") in pair.server_events
    assert PingAcked(payload=b"abcdefgh") in pair.client_events
    assert pair.client.receive_data(ping(b"unknown!", ack=True), 0.0) == []


def test_graceful_goaway_drains_accepted_streams() -> None:
    pair = Pair()
    sid = pair.client.open_stream(Q)
    pair.pump()
    late = pair.client.open_stream(Q)  # not yet delivered when the server says GOAWAY
    pair.server.close()
    assert pair.server.state is ConnectionState.CLOSING
    wire = pair.server.data_to_send()
    evs = pair.client.receive_data(wire, 0.0)
    assert GoAwayReceived(last_stream_id=sid, error_code=ErrorCode.NO_ERROR, debug="") in evs
    assert StreamReset(stream_id=late, error_code=ErrorCode.REFUSED_STREAM, remote=True) in evs
    with pytest.raises(UsageError, match="GOAWAY"):
        pair.client.open_stream(Q)
    pair.client.send_data(sid, b"abcd", end_stream=True)
    pair.pump()
    pair.server.send_headers(sid, {"m": "r"}, end_stream=True)
    pair.pump()
    assert pair.server.closed and pair.client.closed
    term = pair.events("client", ConnectionTerminated)[-1]
    assert term == ConnectionTerminated(
        error_code=ErrorCode.NO_ERROR, reason="graceful shutdown complete", remote=True, error=None
    )


def test_new_peer_streams_after_our_goaway_are_refused() -> None:
    server = server_after_handshake()
    server.receive_data(headers(1, Q), 0.0)
    server.close()
    server.data_to_send()
    evs = server.receive_data(headers(3, Q), 0.0)
    assert evs == [StreamReset(stream_id=3, error_code=ErrorCode.REFUSED_STREAM, remote=False)]


def test_goaway_with_an_error_ends_the_connection() -> None:
    server = server_after_handshake()
    evs = server.receive_data(goaway(0, ErrorCode.ENHANCE_YOUR_CALM, "slow down"), 0.0)
    term = _terminated(evs)
    assert term.remote and term.error_code is ErrorCode.ENHANCE_YOUR_CALM
    assert term.error is not None and "slow down" in str(term.error)
    assert server.closed and server.data_to_send() == b""


def test_local_close_with_an_error_code() -> None:
    pair = Pair()
    pair.client.open_stream(Q)
    pair.client.close(ErrorCode.INTERNAL_ERROR, "bug")
    assert pair.client.closed and isinstance(pair.client.error, InternalError)
    frames = parse(pair.client.data_to_send())
    assert frames == [
        GoAwayFrame(last_stream_id=0, error_code=ErrorCode.INTERNAL_ERROR, debug="bug")
    ]


# -------------------------------------------------------------------------------- floods


def test_ping_flood() -> None:
    server = server_after_handshake()
    for i in range(99):  # + the handshake SETTINGS = 100 in the window
        server.receive_data(ping(), 0.1 * i / 99)
        server.data_to_send()
    term = _terminated(server.receive_data(ping(), 1.0))
    assert term.error_code is ErrorCode.ENHANCE_YOUR_CALM
    calm = server_after_handshake()
    for i in range(150):
        calm.receive_data(ping(), 0.2 * i)
        calm.data_to_send()
    assert not calm.closed  # 150 PINGs over 30 s stay within 100 per 10 s


def test_control_replies_for_a_peer_that_does_not_read() -> None:
    server = server_after_handshake(Limits(control_frames_per_window=1000))
    calls = 0
    while not server.closed and calls < 100:  # nothing is drained: PING ACKs pile up
        evs = server.receive_data(ping(), 0.0)
        calls += 1
    assert calls == 65 and _terminated(evs).error_code is ErrorCode.ENHANCE_YOUR_CALM
    fresh = server_after_handshake(Limits(control_frames_per_window=1000))
    evs = fresh.receive_data(ping() * 80, 0.0)  # one burst from a reading peer is fine
    assert len(evs) == 80 and not fresh.closed


def test_reset_flood_uses_a_token_bucket() -> None:
    server = server_after_handshake(Limits(reset_burst=10, reset_rate_per_s=1.0))
    server.receive_data(headers(1, Q), 0.0)
    evs = server.receive_data(b"".join(reset(1, 8) for _ in range(10)), 0.0)
    assert evs == [StreamReset(stream_id=1, error_code=ErrorCode.CANCEL, remote=True)]
    assert not server.closed
    server.receive_data(reset(1, 8), 1.0)  # one token refilled
    assert not server.closed
    term = _terminated(server.receive_data(reset(1, 8), 1.0))
    assert term.error_code is ErrorCode.ENHANCE_YOUR_CALM


def test_useless_frames_budget() -> None:
    server = server_after_handshake()
    server.receive_data(headers(1, {"m": "b", "body_len": 1}), 0.0)
    wire = data(1, b"") * 50 + raw_frame(0x33, 0, b"x") * 50
    assert not server.receive_data(wire, 0.0)
    term = _terminated(server.receive_data(raw_frame(0x33, 0, b""), 0.0))
    assert term.error_code is ErrorCode.ENHANCE_YOUR_CALM


# -------------------------------------------------------------------------------- timers


def test_keepalive_ping_and_heartbeat_timeout() -> None:
    pair = Pair()
    c = pair.client
    assert c.get_timer() == 15.0  # keepalive: nothing received for 15 s
    assert c.handle_timer(15.0) == []
    frame = parse(c.data_to_send())[0]
    assert isinstance(frame, PingFrame) and not frame.ack
    assert c.get_timer() == 45.0  # heartbeat: 30 s for the answer
    evs = c.receive_data(ping(frame.payload, ack=True), 20.0)
    assert evs == [PingAcked(payload=frame.payload)]
    assert c.get_timer() == 35.0
    c.handle_timer(35.0)
    c.data_to_send()
    assert _terminated(c.handle_timer(65.0)).error_code is ErrorCode.TIMEOUT
    assert _goaway(c).error_code == ErrorCode.TIMEOUT


def test_idle_timeout_only_without_streams() -> None:
    lim = Limits(keepalive_interval_s=math.inf, idle_timeout_s=50.0)
    pair = Pair(client_limits=lim)
    sid = pair.client.open_stream(Q)
    assert pair.client.get_timer() is None  # a stream is open: not idle
    pair.client.reset_stream(sid)
    assert pair.client.get_timer() == 50.0
    assert _terminated(pair.client.handle_timer(50.0)).error_code is ErrorCode.TIMEOUT


def test_nothing_escapes_receive_data_even_for_a_core_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    server = server_after_handshake()

    def broken(_frame: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setitem(server._handlers, PingFrame, broken)
    term = _terminated(server.receive_data(ping(), 0.0))
    assert term.error_code is ErrorCode.INTERNAL_ERROR and "boom" in term.reason
    assert isinstance(term.error, InternalError)


def test_frames_are_cut_to_max_chunk_and_peer_frame_size() -> None:
    pair = Pair(client_limits=Limits(max_chunk=10_000))
    sid = pair.client.open_stream({"m": "b", "body_len": 25_000})
    pair.client.send_data(sid, bytes(25_000), end_stream=True)
    frames = [f for f in parse(pair.client.data_to_send()) if isinstance(f, DataFrame)]
    assert [len(f.data) for f in frames] == [10_000, 10_000, 5_000]
    assert [f.end_stream for f in frames] == [False, False, True]


def test_drain_that_stops_progressing_times_out() -> None:
    pair = Pair(server_limits=Limits(keepalive_interval_s=math.inf, idle_timeout_s=60.0))
    pair.client.open_stream(Q)
    pair.pump()
    pair.server.close()
    pair.server.data_to_send()
    assert pair.server.state is ConnectionState.CLOSING and pair.server.get_timer() == 60.0
    assert _terminated(pair.server.handle_timer(60.0)).error_code is ErrorCode.TIMEOUT


def test_transport_backlog_above_the_limit_closes_with_timeout() -> None:
    pair = Pair()
    assert pair.client.report_transport_backlog(8 << 20, 1.0) == []
    term = _terminated(pair.client.report_transport_backlog((8 << 20) + 1, 1.0))
    assert term.error_code is ErrorCode.TIMEOUT and pair.client.closed


def test_repeated_setting_ids_keep_the_last_value() -> None:
    server = server_after_handshake()
    evs = server.receive_data(settings((1, 1 << 20), (1, 65536)), 0.0)
    assert evs == [SettingsReceived(settings={1: 65536})]
    assert server.peer_settings[Setting.MAX_FRAME_SIZE] == 65536


def test_reset_after_pending_sends_the_answer_before_the_reset() -> None:
    """§10.1.1: an early answer, then RESET CANCEL only after the answer's last frame."""
    from ionn_net.proto import Connection, DataReceived, HeadersReceived, StreamReset

    client, server = Connection(client=True), Connection(client=False)
    client.initiate()
    server.receive_data(client.data_to_send(), 0.0)
    client.receive_data(server.data_to_send(), 0.0)
    server.receive_data(client.data_to_send(), 0.0)
    sid = client.open_stream({"m": "blob", "body_len": 1000})
    client.send_data(sid, b"x" * 10)
    server.receive_data(client.data_to_send(), 0.0)
    server.send_headers(sid, {"m": "error", "code": "unknown_blob", "body_len": 5})
    server.send_data(sid, b"nope!", end_stream=True)
    server.reset_stream(sid, after_pending=True)
    events = client.receive_data(server.data_to_send(), 0.0)
    kinds = [type(e) for e in events]
    assert kinds.index(HeadersReceived) < kinds.index(DataReceived) < kinds.index(StreamReset)
    data = next(e for e in events if isinstance(e, DataReceived))
    assert data.data == b"nope!" and data.end_stream


def test_opening_headers_leave_in_stream_id_order_whatever_the_urgency() -> None:
    """§6.1.1: a query opened after an upload must not announce a higher id first."""
    from ionn_net.proto import Connection, HeadersReceived, ProtocolError

    client, server = Connection(client=True), Connection(client=False)
    client.initiate()
    server.receive_data(client.data_to_send(), 0.0)
    client.receive_data(server.data_to_send(), 0.0)
    server.receive_data(client.data_to_send(), 0.0)
    upload = client.open_stream({"m": "up", "body_len": 10}, urgency=5, incremental=True)
    query = client.open_stream({"m": "q"}, urgency=1, end_stream=True)
    assert query > upload
    events = server.receive_data(client.data_to_send(), 0.0)
    opened = [e.stream_id for e in events if isinstance(e, HeadersReceived)]
    assert opened == [upload, query]
    assert not server.closed and not any(
        isinstance(getattr(e, "error", None), ProtocolError) for e in events
    )
