"""protocol.md §4: the frame table, HEADERS, RESET, SETTINGS, PING, GOAWAY and CREDIT."""

from __future__ import annotations

import pytest
from tests.conformance.harness import CoreUnderTest, Outcome, check_invalid_vector, core_outcome
from tests.conformance.vectors import category, vid
from tests.refpeer import wire as rw

from ionn_net.config import Setting
from ionn_net.proto import events as ev
from ionn_net.proto.errors import UsageError


def _open(sid: int = 1, body_len: int = 1 << 20, **head: object) -> bytes:
    return rw.headers_frame(sid, {"m": "echo", "body_len": body_len, **head})


@pytest.mark.spec("4")
@pytest.mark.parametrize("vector", category("invalid", "4"), ids=vid)
def test_stream_zero_rules_of_the_frame_table(vector: dict[str, object]) -> None:
    check_invalid_vector(vector)


@pytest.mark.spec("4")
@pytest.mark.parametrize("sid", [0, 1])
def test_credit_is_allowed_on_any_stream(sid: int) -> None:
    prefix = _open(1) if sid else b""
    outcome, core = core_outcome(prefix, [rw.credit_frame(sid, 1 << 40)])
    assert outcome == Outcome("ignored") and not core.conn.closed


@pytest.mark.spec("4.2")
@pytest.mark.parametrize("vector", category("invalid", "4.2"), ids=vid)
def test_malformed_headers(vector: dict[str, object]) -> None:
    check_invalid_vector(vector)


@pytest.mark.spec("4.2")
def test_stream_error_on_headers_leaves_other_streams_working() -> None:
    core = CoreUnderTest().handshake()
    core.feed(rw.headers_frame(1, {"m": "x"}, urgency=9, end_stream=True))
    assert core.resets() == [(1, 1)]
    assert not core.conn.closed
    core.feed(rw.headers_frame(3, {"m": "fine"}, urgency=0, incremental=True, end_stream=True))
    heads = [e for e in core.events if isinstance(e, ev.HeadersReceived)]
    assert [(h.stream_id, h.head["m"], h.urgency, h.incremental) for h in heads] == [
        (3, "fine", 0, True)
    ]


@pytest.mark.spec("4.2")
def test_unknown_priority_bits_and_reserved_bytes_are_ignored() -> None:
    payload = bytes([4, 0xFF, 0xAA, 0x55]) + b'{"m":"x"}'
    core = CoreUnderTest().handshake()
    core.feed(rw.build_frame(rw.T.HEADERS, rw.END_STREAM, 1, payload))
    (head,) = [e for e in core.events if isinstance(e, ev.HeadersReceived)]
    assert head.urgency == 4 and head.incremental and head.end_stream
    assert core.outcome() == Outcome("ignored")


@pytest.mark.spec("4.3")
def test_no_frame_follows_a_received_reset_on_that_stream() -> None:
    core = CoreUnderTest().handshake()
    core.feed(_open(1, 10) + rw.data_frame(1, b"0123456789", end_stream=True))
    core.conn.send_headers(1, {"m": "big", "body_len": 3 << 20})
    core.conn.send_data(1, b"\x07" * (3 << 20), end_stream=True)
    first = core.pull_one()  # some of the response is on the wire already
    assert first is not None
    core.feed(rw.reset_frame(1, rw.Code.CANCEL))
    core.frames.clear()
    core.drain()
    assert [f for f in core.frames if f.stream_id == 1] == []
    resets = [e for e in core.events if isinstance(e, ev.StreamReset)]
    assert [(r.stream_id, r.remote) for r in resets] == [(1, True)]
    with pytest.raises(UsageError):  # §6.2.4: the stream is closed locally too
        core.conn.send_data(1, b"more")
    core.drain()
    assert [f for f in core.frames if f.stream_id == 1] == []


@pytest.mark.spec("4.4")
@pytest.mark.parametrize("vector", category("invalid", "4.4"), ids=vid)
def test_settings_sizes_and_ranges(vector: dict[str, object]) -> None:
    check_invalid_vector(vector)


@pytest.mark.spec("4.4")
def test_settings_apply_in_order_and_ignore_unknown_ids() -> None:
    core = CoreUnderTest().handshake()
    entries = [(1, 100_000), (0x77, 5), (1, 200_000), (3, 7), (0xFFFF, 2**32 - 1)]
    core.feed(rw.settings_frame(entries))
    peer = core.conn.peer_settings
    assert peer[Setting.MAX_FRAME_SIZE] == 200_000  # the later entry wins
    assert peer[Setting.MAX_CONCURRENT_STREAMS] == 7
    assert core.outcome() == Outcome("ignored")


@pytest.mark.spec("4.4")
@pytest.mark.parametrize("n", [1, 3])
def test_every_settings_frame_is_acknowledged(n: int) -> None:
    core = CoreUnderTest().handshake()
    for i in range(n):
        core.feed(rw.settings_frame([(3, 10 + i)]))
    acks = [f for f in core.sent(rw.T.SETTINGS) if f.ack]
    assert len(acks) == n and all(f.payload == b"" for f in acks)


@pytest.mark.spec("4.4")
def test_core_acknowledges_the_peer_settings_during_the_handshake() -> None:
    core = CoreUnderTest()
    core.feed(rw.client_preface() + rw.settings_frame([(1, 70000)]))
    kinds = [(f.type, f.ack) for f in core.frames]
    assert kinds[0] == (rw.T.SETTINGS, False)  # its own first
    assert (rw.T.SETTINGS, True) in kinds
    assert any(isinstance(e, ev.SettingsReceived) for e in core.events)


@pytest.mark.spec("4.5")
def test_ping_is_answered_with_identical_payload_ahead_of_stream_frames() -> None:
    core = CoreUnderTest().handshake()
    core.feed(_open(1, 1) + rw.data_frame(1, b"x", end_stream=True))
    core.conn.send_headers(1, {"m": "big", "body_len": 1 << 20})
    core.conn.send_data(1, b"\x01" * (1 << 20), end_stream=True)
    core.feed(rw.ping_frame(b"\x00\xffping\x01\x02"))
    after = core.frames
    assert after[0].type == rw.T.PING and after[0].ack, [f.type for f in after[:3]]
    assert after[0].payload == b"\x00\xffping\x01\x02"


@pytest.mark.spec("4.5")
def test_unsolicited_ping_ack_is_ignored() -> None:
    outcome, core = core_outcome(b"", [rw.ping_frame(b"nobodyaa", ack=True)])
    assert outcome == Outcome("ignored") and core.frames == []
    assert not [e for e in core.events if isinstance(e, ev.PingAcked)]


@pytest.mark.spec("4.6")
def test_goaway_with_debug_text_is_reported() -> None:
    core = CoreUnderTest().handshake()
    core.feed(rw.goaway_frame(0, 0, "bye ünï".encode()))
    (got,) = [e for e in core.events if isinstance(e, ev.GoAwayReceived)]
    assert got.debug == "bye ünï" and got.error_code == 0


@pytest.mark.spec("4.7")
@pytest.mark.parametrize("vector", category("invalid", "4.7"), ids=vid)
def test_credit_on_an_idle_stream(vector: dict[str, object]) -> None:
    check_invalid_vector(vector)


@pytest.mark.spec("4.7")
def test_credit_on_a_closed_stream_is_ignored() -> None:
    core = CoreUnderTest().handshake()
    core.feed(rw.headers_frame(1, {"m": "x"}, end_stream=True))
    core.conn.send_headers(1, {"m": "ok"}, end_stream=True)
    core.drain()
    core.feed(rw.credit_frame(1, 1 << 30) + rw.credit_frame(1, 1 << 31))
    assert core.outcome() == Outcome("ignored") and not core.conn.closed


@pytest.mark.spec("4.7")
def test_stream_and_connection_credit_raise_the_send_limits() -> None:
    """Stream limit 64 KiB (announced), connection limit 16 MiB (the default never lowers)."""
    mib = 1 << 20
    core = CoreUnderTest().handshake(settings=[(4, 65536)])
    core.feed(_open(1, 1) + rw.data_frame(1, b"x", end_stream=True))
    core.conn.send_headers(1, {"m": "big", "body_len": 17 * mib})
    core.conn.send_data(1, b"\x02" * (17 * mib), end_stream=True)
    core.drain()

    def sent() -> int:
        return sum(len(f.payload) for f in core.sent(rw.T.DATA))

    assert sent() == 65536
    core.feed(rw.credit_frame(1, 40 * mib))  # the stream allows all, the connection does not
    assert sent() == 16 * mib
    core.feed(rw.credit_frame(0, 16 * mib + 100_000))
    assert sent() == 16 * mib + 100_000
