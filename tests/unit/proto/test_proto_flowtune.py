"""Receive-window auto-tuning (proto/flowtune.py): the pure policy and the core applying it.

Time is passed in as numbers (a fake clock): the core never reads one.
"""

from __future__ import annotations

import math

import pytest
from proto_pair import PREFACE, data, headers, parse, settings

from ionn_net.config import Limits
from ionn_net.errors import ConfigError
from ionn_net.proto import (
    Connection,
    CreditFrame,
    DataReceived,
    PingFrame,
    SettingsFrame,
    serialize,
)
from ionn_net.proto.flowtune import GROWTH_RTTS, RTT_FLOOR_S, RttEstimator, grown_window

MIB = 1 << 20


# ----------------------------------------------------------------------------- the policy


def test_window_doubles_when_half_was_drained_within_two_rtts() -> None:
    assert grown_window(MIB, 8 * MIB, last_credit=10.0, now=10.079, rtt=0.04) == 2 * MIB


def test_window_stays_when_the_application_is_slower_than_two_rtts() -> None:
    assert grown_window(MIB, 8 * MIB, last_credit=10.0, now=10.08, rtt=0.04) == MIB
    assert grown_window(MIB, 8 * MIB, last_credit=10.0, now=15.0, rtt=0.04) == MIB


def test_window_never_exceeds_the_maximum() -> None:
    assert grown_window(6 * MIB, 8 * MIB, last_credit=1.0, now=1.0, rtt=0.04) == 8 * MIB
    assert grown_window(8 * MIB, 8 * MIB, last_credit=1.0, now=1.0, rtt=0.04) == 8 * MIB
    # A maximum below the window (tuning disabled) leaves it alone; it never shrinks.
    assert grown_window(2 * MIB, MIB, last_credit=1.0, now=1.0, rtt=0.04) == 2 * MIB


def test_no_growth_without_a_previous_credit_or_a_round_trip_estimate() -> None:
    assert grown_window(MIB, 8 * MIB, last_credit=None, now=1.0, rtt=0.04) == MIB
    assert grown_window(MIB, 8 * MIB, last_credit=1.0, now=1.0, rtt=None) == MIB


def test_round_trips_below_the_floor_count_as_the_floor() -> None:
    # Loopback: 20 us RTT, half a window drained within 2 ms still grows it (a clock that
    # ticks in ms cannot tell shorter intervals apart), a slower drain does not.
    limit = GROWTH_RTTS * RTT_FLOOR_S
    assert grown_window(MIB, 8 * MIB, 0.0, limit * 0.9, rtt=20e-6) == 2 * MIB
    assert grown_window(MIB, 8 * MIB, 0.0, limit * 1.1, rtt=20e-6) == MIB


def test_rtt_estimator_smooths_and_ignores_nonsense() -> None:
    est = RttEstimator()
    assert est.value is None
    for bad in (-1.0, math.nan, math.inf):
        est.update(bad)
    assert est.value is None
    est.update(0.040)
    assert est.value == pytest.approx(0.040)
    est.update(0.080)  # RFC 6298: srtt += (sample - srtt) / 8
    assert est.value == pytest.approx(0.045)


@pytest.mark.parametrize("name", ["max_stream_credit", "max_connection_credit"])
def test_limits_bound_the_maximum_windows(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Limits(**{name: 1000})
    with pytest.raises(ConfigError, match=name):
        Limits(**{name: 2**31})


# ------------------------------------------------------------------- the core applying it


def _receiver(limits: Limits, rtt: float | None = 0.04) -> Connection:
    conn = Connection(client=False, limits=limits, now=0.0)
    conn.receive_data(PREFACE + settings(), 0.0)
    conn.data_to_send()
    if rtt is not None:
        conn.observe_rtt(rtt)
    return conn


def _frames(sid: int, size: int) -> bytes:
    return b"".join(data(sid, bytes(min(32768, size - i))) for i in range(0, size, 32768))


def _drain(
    conn: Connection, sid: int, nbytes: int, start: float, step: float
) -> list[tuple[int, int]]:
    """Receive ``nbytes`` on ``sid`` in reads of up to 256 KiB, as fast as credit allows;
    the application consumes each read (its events) ``step`` seconds after the previous
    one. Returns (stream CREDIT limit, bytes consumed when it was sent) for every stream
    CREDIT."""
    credits: list[tuple[int, int]] = []
    now = start
    received = 0
    recv_limit = conn.receive_windows(sid)[0]  # the initial credit the peer may use
    while received < nbytes:
        size = min(256 * 1024, nbytes - received, recv_limit - received)
        assert size > 0, "the sender would be blocked: no CREDIT was sent"
        events = conn.receive_data(_frames(sid, size), now)
        received += size
        now += step
        for ev in events:
            assert isinstance(ev, DataReceived)
            conn.acknowledge_received_data(sid, ev.wire_length, now=now)
        for frame in parse(conn.data_to_send()):
            if isinstance(frame, CreditFrame) and frame.stream_id == sid:
                credits.append((frame.limit, received))
                recv_limit = frame.limit
    return credits


def test_a_fast_application_grows_the_stream_window_up_to_the_maximum() -> None:
    limits = Limits(max_stream_credit=4 * MIB, max_connection_credit=64 * MIB)
    conn = _receiver(limits)
    conn.receive_data(headers(1, {"m": "blob", "body_len": 64 * MIB}), 0.0)
    credits = _drain(conn, 1, 40 * MIB, start=1.0, step=0.001)  # 256 KiB/ms: ~2 Gbit/s
    window, conn_window = conn.receive_windows(1)
    assert window == 4 * MIB  # doubled 1 -> 2 -> 4 MiB and stopped at the maximum
    assert 16 * MIB < conn_window <= 64 * MIB
    grants = [limit - consumed for limit, consumed in credits]
    assert max(grants) == 4 * MIB  # never more credit ahead than the maximum window
    assert len(credits) < 40 * 2  # fewer CREDIT frames than with a fixed 1 MiB window


def test_a_slow_application_keeps_the_initial_window() -> None:
    conn = _receiver(Limits())
    conn.receive_data(headers(1, {"m": "blob", "body_len": 64 * MIB}), 0.0)
    credits = _drain(conn, 1, 8 * MIB, start=1.0, step=0.1)  # 256 KiB per 100 ms: 2.6 MB/s
    assert conn.receive_windows(1) == (MIB, 16 * MIB)
    assert {limit - consumed for limit, consumed in credits} == {MIB}


@pytest.mark.parametrize(("rtt", "with_time"), [(0.04, False), (None, True)])
def test_no_growth_without_a_time_or_a_round_trip(rtt: float | None, with_time: bool) -> None:
    conn = _receiver(Limits(), rtt=rtt)
    conn.receive_data(headers(1, {"m": "blob", "body_len": 8 * MIB}), 0.0)
    consumed = 0
    for _ in range(32):  # all consumed at the same instant: as fast as it gets
        conn.receive_data(_frames(1, 256 * 1024), 0.0)
        conn.acknowledge_received_data(1, 256 * 1024, now=0.0 if with_time else None)
        consumed += 256 * 1024
        for frame in parse(conn.data_to_send()):
            assert isinstance(frame, CreditFrame)
            window = MIB if frame.stream_id else 16 * MIB
            assert frame.limit == consumed + window
    assert conn.receive_windows(1) == (MIB, 16 * MIB)


def test_settings_and_keepalive_round_trips_are_samples() -> None:
    limits = Limits(keepalive_interval_s=1.0)
    client = Connection(client=True, limits=limits, now=5.0)
    client.initiate()
    client.data_to_send()
    assert client.rtt is None
    client.receive_data(PREFACE + settings(), 5.03)
    client.receive_data(serialize(SettingsFrame(ack=True)), 5.05)
    assert client.rtt == pytest.approx(0.05)
    client.handle_timer(6.1)  # keepalive PING sent at 6.1
    (ping,) = [f for f in parse(client.data_to_send()) if isinstance(f, PingFrame)]
    client.receive_data(serialize(PingFrame(ack=True, payload=ping.payload)), 6.23)
    assert client.rtt == pytest.approx(0.05 + (0.13 - 0.05) / 8)


def test_connection_window_grows_only_to_its_maximum() -> None:
    limits = Limits(
        initial_stream_credit=16 * MIB,
        max_stream_credit=16 * MIB,
        initial_connection_credit=MIB,
        max_connection_credit=3 * MIB,
    )
    conn = _receiver(limits)
    conn.receive_data(headers(1, {"m": "blob", "body_len": 64 * MIB}), 0.0)
    now = 1.0
    consumed = 0
    grants = []
    for _ in range(120):  # 30 MiB; the first 16 MiB are the default credit (§11.1)
        conn.receive_data(_frames(1, 256 * 1024), now)
        consumed += 256 * 1024
        now += 0.0005
        conn.acknowledge_received_data(1, 256 * 1024, now=now)
        grants += [
            f.limit - consumed
            for f in parse(conn.data_to_send())
            if isinstance(f, CreditFrame) and f.stream_id == 0
        ]
    assert conn.receive_windows(1)[1] == 3 * MIB  # 1 -> 2 -> 3 (capped) MiB
    assert grants[0] == MIB and max(grants) == 3 * MIB
