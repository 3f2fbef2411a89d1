"""The estimated pacing rate of ionn_net.aio.pacing, driven with the TCP_INFO a sender in
front of a FIFO bottleneck would read (tests/helpers/bottleneck.py): its start from the first
byte, its steady state, and how it follows a path that changes. Queries are written from the
upload's first byte on, 16 KiB at 4% of the link, as in bench/transport.py."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace

import pytest
from tests.helpers.bottleneck import BottleneckPath, Run, simulate

from ionn_net.aio.pacing import Pacer, PacingConfig
from ionn_net.aio.sockopts import TcpInfo

MBIT = 1e6 / 8

Event = tuple[float, Callable[[BottleneckPath, float], None]]


def _run(
    rate_mbit: float,
    delay_s: float,
    seconds: float,
    *,
    config: PacingConfig | None = None,
    events: Sequence[Event] = (),
    query_bytes: int = 16 * 1024,
    query_every_s: float | None = None,
    host_rate: float | None = None,
    rtt_noise: Callable[[float], float] | None = None,
) -> tuple[Run, Pacer]:
    """An upload of ``seconds`` of the link, paced at an estimated rate."""
    rate = rate_mbit * MBIT
    made: list[Pacer] = []

    def pacer_for(info: Callable[[], TcpInfo]) -> Pacer:
        made.append(Pacer(config or PacingConfig(), info, 0.0))
        return made[0]

    run = simulate(
        pacer_for,
        rate=rate,
        delay_s=delay_s,
        upload=int(rate * seconds),
        query_every_s=query_every_s or query_bytes / (0.04 * rate),
        query_bytes=query_bytes,
        events=events,
        host_rate=host_rate,
        rtt_noise=rtt_noise,
    )
    return run, made[0]


def _pacing(run: Run, start: float, end: float = float("inf")) -> float:
    """The median pacing rate (bytes/s) of the releases between two moments."""
    return statistics.median(rate for at, rate in run.rates if start <= at < end and rate)


def _info(*, min_rtt_s: float, cwnd: int = 10, mss: int = 1448) -> TcpInfo:
    return TcpInfo(
        rtt_s=min_rtt_s,
        rttvar_s=0.0,
        min_rtt_s=min_rtt_s,
        cwnd_segments=cwnd,
        bytes_acked=1,
        notsent_bytes=0,
        delivery_rate=0.0,
        app_limited=True,
        mss=mss,
    )


# ---------------------------------------------------------------------------- the start


def test_an_estimated_rate_paces_from_the_first_chunk() -> None:
    # One initial window per handshake RTT: what TCP itself would send in the first round
    # trip, not a burst that fills the bottleneck before any rate is known.
    pacer = Pacer(PacingConfig(), lambda: _info(min_rtt_s=0.04), now=0.0)
    assert pacer.pacing_rate is None
    assert pacer.chunk_size(256 * 1024) == 10 * 1448  # the first chunk: one initial window
    assert pacer.delay(10 * 1448, 0.0) == 0.0
    assert pacer.pacing_rate == pytest.approx(10 * 1448 / 0.04)
    assert pacer.ramping
    # A window that earlier traffic opened is TCP's own rate too.
    warm = Pacer(PacingConfig(), lambda: _info(min_rtt_s=0.1, cwnd=30), now=0.0)
    warm.delay(10 * 1448, 0.0)
    assert warm.pacing_rate == pytest.approx(30 * 1448 / 0.1)
    # A short round trip makes that fast: initial_rate_bps bounds it.
    near = Pacer(PacingConfig(initial_rate_bps=8e6), lambda: _info(min_rtt_s=0.0002), now=0.0)
    near.delay(10 * 1448, 0.0)
    assert near.pacing_rate == pytest.approx(1e6)


@pytest.mark.parametrize(
    ("rate_mbit", "delay_s", "first_wait_ms"),
    [(20, 0.02, 15.0), (200, 0.0001, 3.0), (20, 0.0001, 10.0)],
)
def test_the_start_leaves_the_first_queries_no_long_queue(
    rate_mbit: float, delay_s: float, first_wait_ms: float
) -> None:
    run, pacer = _run(rate_mbit, delay_s, 4.0)
    first = run.extra(0.0, 1.0)
    assert len(first) >= 5
    # Every query issued in the upload's first second waits at most this long behind it.
    assert max(first) * 1e3 <= first_wait_ms
    # ...and the start found the link's rate: the upload runs at about the gain after it.
    assert 0.9 <= _pacing(run, 2.0) / (rate_mbit * MBIT) <= 1.0
    assert not pacer.ramping


def test_a_start_that_grows_too_fast_is_what_fills_the_queue() -> None:
    # The same start with the ramp's bounds lifted (no gain cap, a doubling per millisecond,
    # no exit on a queue) overshoots the link before the path's answer comes back.
    reckless = PacingConfig(
        initial_rate_bps=1e12, ramp_gain=4.0, ramp_min_s=0.001, ramp_rtts=0.5, ramp_exit_s=10.0
    )
    for rate_mbit, delay_s in ((20, 0.02), (200, 0.0001)):
        run, _ = _run(rate_mbit, delay_s, 3.0, config=reckless)
        assert max(run.extra(0.0, 1.0)) > 0.02


def test_the_ramp_grows_no_further_than_this_host_sends() -> None:
    # A busy host that releases at most 70% of the link: the ramp is never held back by its
    # rate, so it does not grow past what the host uses (a rate the upload cannot fill yet
    # would be a burst later).
    run, _ = _run(20, 0.0001, 4.0, host_rate=0.7 * 20 * MBIT)
    assert max(rate for _, rate in run.rates if rate) <= 1.25 * 0.7 * 20 * MBIT
    assert run.share() == pytest.approx(0.7, abs=0.03)


# ---------------------------------------------------------------------------- steady state


def test_the_estimate_settles_at_the_gain_not_at_the_link() -> None:
    # Paced below the bottleneck nothing tells a faster path from this one; an estimate that
    # crept up while no queue showed settled where its pacing rate filled the link (96-97%
    # at 200 Mbit/s, a standing queue). Here it stays at the gain between probes.
    run, pacer = _run(200, 0.0001, 12.0)
    assert 0.93 <= _pacing(run, 2.0) / (200 * MBIT) <= 0.97
    later = run.extra(1.0)
    assert sorted(later)[int(0.99 * len(later))] * 1e3 <= 3.0  # p99 of the queries' wait
    assert run.share() >= 0.88  # the upload's own share: the queries take 4%
    assert pacer.events.get("probe", 0) >= 2


def test_a_probe_finds_a_faster_path() -> None:
    def faster(path: BottleneckPath, now: float) -> None:
        path.rate *= 1.6

    # (the next probe comes within probe_interval_s, and then takes a few seconds: a path
    # that gets faster is rare, the queue a probe leaves is not free)
    run, _ = _run(20, 0.0001, 20.0, events=[(4.0, faster)])
    assert _pacing(run, 2.0, 4.0) / (20 * MBIT) == pytest.approx(0.95, abs=0.03)
    assert _pacing(run, 17.0) / (1.6 * 20 * MBIT) >= 0.9


@pytest.mark.parametrize("delay_s", [0.0001, 0.02])
def test_the_estimate_follows_a_slower_path_and_drains_its_queue(delay_s: float) -> None:
    def slower(path: BottleneckPath, now: float) -> None:
        path.rate *= 0.6

    run, _ = _run(20, delay_s, 8.0, events=[(3.0, slower)])
    assert _pacing(run, 5.0) / (0.6 * 20 * MBIT) <= 1.0
    assert max(run.extra(5.0, 9.0)) * 1e3 <= 3.0  # the queue it left drained (until a probe)


def test_a_query_the_bucket_owes_for_is_no_reason_to_back_off() -> None:
    # A 200 KB tensor (83 ms of a 20 Mbit/s link) written at once: the bytes it leaves in
    # the socket and on the path are owed, and the upload waits them out; the estimate
    # stays. On a path that got slower at that moment, it goes down.
    def tensor(path: BottleneckPath, now: float) -> None:
        path.write(200_000, now)

    def tensor_and_slower(path: BottleneckPath, now: float) -> None:
        tensor(path, now)
        path.rate *= 0.8

    run, _ = _run(20, 0.0001, 6.0, events=[(3.0, tensor)])
    assert _pacing(run, 3.5) >= 0.97 * _pacing(run, 2.0, 3.0)
    run, _ = _run(20, 0.0001, 6.0, events=[(3.0, tensor_and_slower)])
    assert _pacing(run, 4.0) <= 0.85 * _pacing(run, 2.0, 3.0)


def test_heavy_queries_are_not_taken_for_a_slower_path() -> None:
    # 100 KB queries every 200 ms, a fifth of the link, each queueing for 42 ms: that queue
    # is theirs, not the rate's (ionn-bench: ResNet50 inputs sank the estimate to a quarter).
    run, _ = _run(20, 0.0001, 6.0, query_bytes=100_000, query_every_s=0.2)
    assert _pacing(run, 2.0) / (20 * MBIT) >= 0.9


def _after_a_held_socket(*, reader: bool) -> float:
    """The estimate of a pacer that estimated a 20 Mbit/s path, after 1 s in which the
    socket holds 100 kB unsent while the path delivers all it is sent at the pacing rate:
    either the peer's receive window held them (``reader``: a reader that stopped) or
    the kernel did. Relative to the estimate before."""
    source: list[Callable[[], TcpInfo]] = []
    made: list[Pacer] = []

    def current() -> TcpInfo:  # what TCP_INFO says: the path's, then the scenario's
        return source[-1]()

    def pacer_for(info: Callable[[], TcpInfo]) -> Pacer:
        source.append(info)
        made.append(Pacer(PacingConfig(), current, 0.0))
        return made[0]

    rate = 20 * MBIT
    run = simulate(pacer_for, rate=rate, delay_s=0.0001, upload=int(3 * rate), query_every_s=0.171)
    pacer, start, last = made[0], run.upload_s, run.path.info(run.upload_s)
    before = pacer.bottleneck_rate
    assert before is not None and pacer.pacing_rate is not None
    rate, clock = pacer.pacing_rate, [start]  # (from now on: the pacing rate)

    def held() -> TcpInfo:
        elapsed = clock[0] - start
        return replace(
            last,
            rtt_s=last.min_rtt_s,
            bytes_acked=last.bytes_acked + int(rate * elapsed),
            notsent_bytes=100_000,
            rwnd_limited_s=last.rwnd_limited_s + (elapsed if reader else 0.0),
        )

    source.append(held)
    written = run.path.bytes_written
    for step in range(1000):  # the upload asks every millisecond and writes what it may
        clock[0] = start + step * 0.001
        if pacer.delay(4096, clock[0]) <= 0:
            written += 4096
            pacer.account(written, clock[0])
    assert pacer.bottleneck_rate is not None
    return pacer.bottleneck_rate / before


def test_unsent_bytes_a_slow_reader_holds_back_are_no_reason_to_back_off() -> None:
    # An edge server busy loading a partition stops reading: the unsent bytes are its
    # doing, not the path's (ionn-bench: 70 -> 49 Mbit/s on a 76 Mbit/s link otherwise).
    assert _after_a_held_socket(reader=True) == pytest.approx(1.0, abs=0.02)
    # Held by the kernel (its own pacing, a window after a loss): ours to back off on.
    assert _after_a_held_socket(reader=False) < 0.9


@pytest.mark.parametrize(
    ("rate_mbit", "delay_s", "at_s", "stall_s"), [(80, 0.0005, 0.3, 0.03), (20, 0.02, 0.6, 0.1)]
)
def test_a_stall_as_the_ramp_nears_the_link_does_not_end_it_at_the_stalls_rate(
    rate_mbit: float, delay_s: float, at_s: float, stall_s: float
) -> None:
    # The path stops for a moment (a host stopped by CPU contention: the link emulator,
    # the edge server loading) while the ramp grows: its queue would end the ramp, and
    # what the path delivered meanwhile, a fraction of the ramp's rate, was taken for the
    # estimate (a quarter to two thirds of the link for seconds; ionn-bench, ResNet50 over
    # 80 Mbit/s Wi-Fi: 15 Mbit/s for 15 s). The ramp holds through the stall instead.
    def stall(path: BottleneckPath, now: float) -> None:
        path.stall(now, stall_s)

    run, pacer = _run(rate_mbit, delay_s, 4.0, events=[(at_s, stall)])
    assert pacer.events.get("ramp held through a stall", 0) >= 1
    assert _pacing(run, 1.0, 2.0) / (rate_mbit * MBIT) >= 0.9


def _slow_reader(start: float, end: float, *, closed_s: float, every_s: float) -> list[Event]:
    """A reader that stops for ``closed_s`` of every ``every_s`` from ``start`` to ``end``
    (an edge server loading a partition): its receive window closes meanwhile."""

    def close(path: BottleneckPath, now: float) -> None:
        path.rwnd_closed_until = now + closed_s

    count = round((end - start) / every_s)
    return [(start + k * every_s, close) for k in range(count)]


def test_what_a_slow_reader_took_is_not_measured_as_the_path() -> None:
    # For 1.5 s the reader takes half of an 80 Mbit/s path, and its busy host adds 1 ms to
    # the RTT. What the path delivered meanwhile was the reader's: taken for the path's
    # rate, it held the estimate at ~70% of the link until the next probe (ionn-bench,
    # ResNet50 over Wi-Fi: 106 -> 19 Mbit/s for 13 s).
    def noise(now: float) -> float:
        return 0.001 if 2.0 <= now < 3.5 else 0.0

    events = _slow_reader(2.0, 3.5, closed_s=0.02, every_s=0.04)
    run, _ = _run(80, 0.0005, 8.0, events=events, rtt_noise=noise)
    assert _pacing(run, 5.0) / (80 * MBIT) >= 0.9 * 0.95


def test_a_ramp_estimate_the_first_probe_could_not_measure_is_probed_again_soon() -> None:
    # The ramp's estimate is a few percent above a 20 Mbit/s path (its bottleneck's burst
    # allowance) and a slow reader cuts its first probe short: the next probe follows a
    # few intervals on (not 10 s on) until one measures the path, and the upload is paced
    # at the gain times the path, not above it (0.99 of the link otherwise).
    events = _slow_reader(2.0, 3.5, closed_s=0.01, every_s=0.04)
    run, pacer = _run(20, 0.02, 12.0, events=events)
    assert pacer.events["probe"] >= 3
    assert _pacing(run, 9.0) / (20 * MBIT) <= 0.96


@pytest.mark.parametrize("delay_s", [0.0001, 0.02])
def test_the_estimate_comes_back_after_the_path_stalls(delay_s: float) -> None:
    # The path delivers nothing for 0.3 s (a host stopped by CPU contention) while the queue
    # shows, then the link's full rate again: a stall is not a slower path. Taking what was
    # delivered meanwhile for the path's rate sank the estimate to a quarter of the link, and
    # a later probe that measured only its own low rate kept it there for minutes
    # (bench/transport.py at 20 Mbit/s: the upload at 26% of the link).
    def stall(path: BottleneckPath, now: float) -> None:
        path.stall(now, 0.3)

    run, _ = _run(20, delay_s, 10.0, events=[(3.0, stall)])
    assert _pacing(run, 2.0, 3.0) / (20 * MBIT) >= 0.9
    # Within 5 s of the stall's end the estimate is back at 90% of the link or more (the
    # upload is paced at the gain, 0.95, times the estimate), and stays there.
    assert _pacing(run, 7.3, 8.3) / (20 * MBIT) >= 0.9 * 0.95
    # ...and stays there, not past the link (the gain's 95% of it, within a sample's error).
    assert 0.9 * 0.95 <= _pacing(run, 7.3) / (20 * MBIT) <= 0.97


def test_a_probe_after_a_stall_does_not_take_the_hosts_noise_for_the_path() -> None:
    # For a second after the stall the RTT carries 3 ms of scheduling noise (the host that
    # stalled is still busy): a queue to the probe that rises from the step's low rate.
    # What the path delivered meanwhile is all that was written, the probe's own rate, not
    # the path's: the rise goes on.
    def stall(path: BottleneckPath, now: float) -> None:
        path.stall(now, 0.3)

    def noise(now: float) -> float:
        return 0.003 if 4.3 <= now < 5.3 else 0.0

    run, pacer = _run(20, 0.02, 10.0, events=[(3.0, stall)], rtt_noise=noise)
    assert pacer.events.get("probe's queue was not the path's", 0) >= 1
    assert _pacing(run, 7.3, 8.3) / (20 * MBIT) >= 0.9 * 0.95


def test_a_much_slower_path_is_not_taken_for_a_stall() -> None:
    # The path drops to 30% at once: its long queue takes the estimate one bounded step
    # down, and the queue's drain, steady at the new rate, takes it the rest of the way
    # (bounded steps alone left a 25 ms queue for two seconds).
    def slower(path: BottleneckPath, now: float) -> None:
        path.rate *= 0.3

    run, _ = _run(20, 0.02, 8.0, events=[(3.0, slower)])
    assert _pacing(run, 5.0) / (0.3 * 20 * MBIT) <= 1.0
    assert max(run.extra(5.0, 9.0)) * 1e3 <= 3.0


# ---------------------------------------------------------------------------- app-limited


def _blobs_then_bulk(
    rate_mbit: float,
    delay_s: float,
    *,
    small: int,
    count: int,
    reply_s: float,
    bulk_s: float,
    kernel_samples: float = 0.0,
) -> tuple[Run, Pacer]:
    """``count`` blobs of ``small`` bytes sent request by request (the writer waits for each
    reply: an application-limited sender, as the client with a model's small layers), then
    one blob of ``bulk_s`` seconds of the link. ``kernel_samples``: the kernel's
    per-flight delivery samples read that many times the link (0: none)."""
    rate = rate_mbit * MBIT
    made: list[Pacer] = []

    def pacer_for(info: Callable[[], TcpInfo]) -> Pacer:
        def sampled() -> TcpInfo:
            return replace(info(), delivery_rate=kernel_samples * rate)

        made.append(Pacer(PacingConfig(), sampled, 0.0))
        return made[0]

    run = simulate(
        pacer_for,
        rate=rate,
        delay_s=delay_s,
        upload=0,
        query_every_s=16 * 1024 / (0.04 * rate),
        blobs=[small] * count + [int(rate * bulk_s)],
        reply_s=reply_s,
    )
    return run, made[0]


def test_an_app_limited_start_does_not_hold_the_ramp_down() -> None:
    # A model's small layers first: 40 blobs of 20 kB, each waiting for its reply (a way
    # back and 20 ms of the server's work), so the path delivers only what was written,
    # about half the link. Those deliveries are lower bounds: the bulk blob after them is
    # paced at the link at once, not held near what the small ones happened to deliver
    # (taken for the path's rate, they held it at 0.57-0.67 of the link for two seconds).
    small, count, link = 20_000, 40, 20 * MBIT
    run, _ = _blobs_then_bulk(20, 0.0001, small=small, count=count, reply_s=0.02, bulk_s=5.0)
    bulk = run.blob_starts[count]
    assert count * small / bulk < 0.6 * link  # application-limited indeed
    assert _pacing(run, bulk, bulk + 1.0) / link >= 0.9
    assert _pacing(run, bulk + 2.0) / link >= 0.9
    # ...and the queries from the first byte on wait no longer than behind a start of the
    # bulk alone (test_the_start_leaves_the_first_queries_no_long_queue).
    assert max(run.extra(0.0, bulk + 1.0)) * 1e3 <= 10.0


def test_kernel_delivery_samples_that_read_high_do_not_keep_the_ramp_from_ending() -> None:
    # ACKs a delay line releases in bursts (the link emulation's) make the kernel's
    # per-flight delivery samples read far above the path (here 3x). Taken alone as the
    # path keeping up, they kept the ramp from ending at its queue: paced at 1.3x the link,
    # queries waited up to 106 ms. The bytes the path acknowledged show it does not.
    count = 40
    run, pacer = _blobs_then_bulk(
        20, 0.0001, small=20_000, count=count, reply_s=0.02, bulk_s=5.0, kernel_samples=3.0
    )
    bulk = run.blob_starts[count]
    assert pacer.events.get("ramp ended by a queue") == 1
    assert _pacing(run, bulk + 1.0) / (20 * MBIT) <= 0.97
    assert max(run.extra(bulk + 1.0)) * 1e3 <= 10.0


def _loopback(seconds: float, *, delivery_samples: bool = True) -> Pacer:
    """A bulk upload over a path far faster than any pacing rate whose receiver delays its
    ACKs (loopback: 64 KiB MSS, each paced chunk one segment, held until the next): the
    smoothed RTT reads 8 ms over a minimum of 10 us, nothing is unsent, everything written
    is acknowledged, and the kernel's per-flight delivery samples show the pacing rate."""
    clock, written = [0.0], [0]
    made: list[Pacer] = []

    def info() -> TcpInfo:
        rate = made[0].pacing_rate if made and made[0].pacing_rate else 0.0
        return TcpInfo(
            rtt_s=0.008,
            rttvar_s=0.004,
            min_rtt_s=0.00001,
            cwnd_segments=10,
            bytes_acked=written[0],
            notsent_bytes=0,
            delivery_rate=rate if delivery_samples else 0.0,
            app_limited=True,
            mss=65483,
            bytes_sent=written[0],
        )

    made.append(Pacer(PacingConfig(), info, 0.0))
    pacer = made[0]
    for _ in range(200_000):  # (bounded: the writer's own time moves the clock too)
        if clock[0] >= seconds:
            break
        chunk = pacer.chunk_size(256 * 1024)
        wait = pacer.delay(chunk, clock[0])
        clock[0] += max(wait, 0.0) + 0.0002
        if wait > 0:
            continue
        written[0] += chunk
        pacer.account(written[0], clock[0])
    return pacer


def test_a_receivers_delayed_acks_are_no_queue_that_ends_the_ramp() -> None:
    # On loopback through a proxy the first-byte pacer settled at 1.9 Mbit/s, and clients
    # stopped offloading: the ACK the receiver holds for a lone segment read as a queue.
    # With the path keeping up with all that is released (the kernel's samples), the ramp
    # goes on far past its first rate, 8 Mbit/s.
    pacer = _loopback(1.5)
    assert pacer.pacing_rate is not None and pacer.pacing_rate >= 100 * MBIT
    assert not pacer.events.get("decrease")


def test_what_the_path_delivered_keeps_a_low_measurement_from_pulling_the_estimate_down() -> None:
    # A busy host's RTT ends the ramp early (a low measurement); a probe then rises past it
    # but meets only queues that are not the path's (here: RTT spikes in a third of the
    # intervals, as a query's result coming down delays the upload's ACKs), so nothing
    # measures the path, and each spike took the estimate a step back down towards the
    # low measurement (ionn-bench over 80 Mbit/s Wi-Fi: 79 -> 57 Mbit/s while 76 were
    # delivered). What the path delivered is a rate it has.
    def noise(now: float) -> float:
        if 0.15 < now < 0.4:
            return 0.004
        return 0.0015 if int(now * 20) % 3 == 0 else 0.0

    run, pacer = _run(20, 0.0001, 12.0, rtt_noise=noise)
    assert pacer.events.get("ramp ended by a queue") == 1
    assert _pacing(run, 0.5, 1.0) / (20 * MBIT) < 0.75  # (the ramp ended low)
    assert _pacing(run, 8.0) / (20 * MBIT) >= 0.9


def test_a_ramp_a_busy_hosts_rtt_ended_is_made_up_for_by_the_first_probe() -> None:
    # 4 ms of scheduling noise in the RTT for the first 0.2 s (the client's planner busy)
    # ends the ramp near its first rate on an 80 Mbit/s path. The first probe then grows
    # once past 1 / gain, and faster, instead of in 0.5% steps until 1.2x (ionn-bench: 5 s
    # from 8 Mbit/s back to the link; here 3.2 s).
    def noise(now: float) -> float:
        return 0.004 if now < 0.2 else 0.0

    run, pacer = _run(80, 0.0005, 5.0, rtt_noise=noise)
    assert pacer.events.get("ramp ended by a queue") == 1
    assert _pacing(run, 0.1, 0.3) / (80 * MBIT) < 0.2
    back = next(at for at, rate in run.rates if rate and rate >= 0.85 * 80 * MBIT)
    assert back <= 2.9
    assert max(run.extra(0.3, 6.0)) * 1e3 <= 5.0  # (its last step's queue)
    assert 0.93 <= _pacing(run, 3.0) / (80 * MBIT) <= 0.97
