"""protocol.md §11: the settings table, defaults before the peer's SETTINGS, raised limits."""

from __future__ import annotations

import pytest
from tests.conformance.harness import CoreUnderTest, Outcome
from tests.refpeer import wire as rw

from ionn_net.config import SETTING_DEFAULTS, SETTING_RANGES, Limits, Setting
from ionn_net.proto import events as ev
from ionn_net.proto.errors import ErrorCode, UsageError

MIB = 1 << 20


@pytest.mark.spec("11")
def test_settings_table_matches_the_reference_transcription() -> None:
    for sid, (default, low, high) in rw.SETTINGS_TABLE.items():
        assert SETTING_DEFAULTS[Setting(sid)] == default
        assert SETTING_RANGES[Setting(sid)] == (low, high)


@pytest.mark.spec("11")
def test_core_announces_its_limits_in_its_first_settings() -> None:
    limits = Limits(max_frame_size=131072, max_concurrent_streams=7, max_message_size=2 * MIB)
    core = CoreUnderTest(client=True, limits=limits)
    first = core.frames[0]
    entries = dict(rw.parse_settings(first.payload))
    assert entries[rw.S.MAX_FRAME_SIZE] == 131072
    assert entries[rw.S.MAX_CONCURRENT_STREAMS] == 7
    assert entries[rw.S.MAX_MESSAGE_SIZE] == 2 * MIB


@pytest.mark.spec("11.1")
def test_defaults_apply_until_the_peer_settings_arrive() -> None:
    core = CoreUnderTest(client=True, limits=Limits(max_chunk=MIB))
    sid = core.conn.open_stream({"m": "u", "body_len": 3 * MIB})
    core.conn.send_data(sid, b"\x03" * (3 * MIB), end_stream=True)
    core.drain()
    sizes = [len(f.payload) for f in core.sent(rw.T.DATA)]
    assert sum(sizes) == MIB  # default INITIAL_STREAM_CREDIT
    assert max(sizes) == 65536  # default MAX_FRAME_SIZE, although max_chunk is 1 MiB
    core.feed(rw.server_preface() + core.announce([(1, MIB), (4, 4 * MIB)]))
    sizes = [len(f.payload) for f in core.sent(rw.T.DATA)]
    assert sum(sizes) == 3 * MIB and max(sizes) == MIB


@pytest.mark.spec("11.1")
def test_default_concurrency_applies_before_settings() -> None:
    core = CoreUnderTest(client=True)
    for _ in range(100):
        core.conn.open_stream({"m": "q"}, end_stream=True)
    with pytest.raises(UsageError):
        core.conn.open_stream({"m": "q"}, end_stream=True)


@pytest.mark.spec("11.1")
def test_own_raised_size_limits_are_enforced_at_once() -> None:
    core = CoreUnderTest(limits=Limits(max_frame_size=200_000)).handshake()
    core.feed(rw.headers_frame(1, {"m": "q", "body_len": 150_000}))
    core.feed(rw.data_frame(1, b"\0" * 150_000, end_stream=True))
    assert core.outcome() == Outcome("ignored")
    got = [e for e in core.events if isinstance(e, ev.DataReceived)]
    assert sum(len(e.data) for e in got) == 150_000


@pytest.mark.spec("11.1")
def test_lowered_concurrency_refuses_with_refused_stream() -> None:
    core = CoreUnderTest(limits=Limits(max_concurrent_streams=1))
    core.feed(rw.client_preface() + rw.settings_frame())  # our SETTINGS not yet acknowledged
    core.feed(rw.headers_frame(1, {"m": "q", "body_len": 4}) + rw.headers_frame(3, {"m": "q"}))
    assert core.resets() == [(3, ErrorCode.REFUSED_STREAM)]
    assert not core.conn.closed


@pytest.mark.spec("11")
def test_peer_settings_are_reported_and_applied() -> None:
    core = CoreUnderTest(client=True)
    core.feed(rw.server_preface() + rw.settings_frame([(3, 5), (7, 2 * MIB)]))
    (got,) = [e for e in core.events if isinstance(e, ev.SettingsReceived)]
    assert got.settings[3] == 5 and got.settings[7] == 2 * MIB
    assert core.conn.peer_settings[Setting.MAX_CONCURRENT_STREAMS] == 5
    with pytest.raises(UsageError):  # MAX_MESSAGE_SIZE of the peer bounds what we may send
        core.conn.open_stream({"m": "big", "body_len": 3 * MIB})
