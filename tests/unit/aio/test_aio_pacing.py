"""Unit tests of ionn_net.aio.pacing: token bucket, rate estimator, pacer (time passed in)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from ionn_net.aio.pacing import LinkRateMeter, Pacer, PacingConfig, RateEstimator, TokenBucket
from ionn_net.aio.sockopts import TcpInfo
from ionn_net.errors import ConfigError


def _info(
    rate: float,
    *,
    app_limited: bool = False,
    acked: int = 0,
    rtt_s: float = 0.01,
    min_rtt_s: float = 0.01,
) -> TcpInfo:
    return TcpInfo(
        rtt_s=rtt_s,
        rttvar_s=0.001,
        min_rtt_s=min_rtt_s,
        cwnd_segments=10,
        bytes_acked=acked,
        notsent_bytes=0,
        delivery_rate=rate,
        app_limited=app_limited,
    )


def _release_times(bucket: TokenBucket, chunks: int, size: int) -> list[float]:
    """Simulate a sender that sleeps exactly as told; return when each chunk left."""
    now = 0.0
    times = []
    for _ in range(chunks):
        now += bucket.delay(now)
        bucket.consume(size, now)
        times.append(now)
    return times


def test_token_bucket_holds_the_average_rate() -> None:
    bucket = TokenBucket(rate=1_000_000.0, burst=0.0, now=0.0)
    times = _release_times(bucket, 101, 10_000)
    # 100 chunks of 10 kB after the first at 1 MB/s take exactly 1 s.
    assert times[-1] == pytest.approx(1.0, rel=1e-9)


def test_token_bucket_burst_is_capped_after_idle() -> None:
    bucket = TokenBucket(rate=1000.0, burst=500.0, now=0.0)
    # After a long idle period only `burst` bytes of credit exist: the second chunk waits.
    assert bucket.delay(100.0) == 0.0
    bucket.consume(1000, 100.0)
    assert bucket.delay(100.0) == pytest.approx(0.5)


def test_token_bucket_rate_change_keeps_debt() -> None:
    bucket = TokenBucket(rate=1000.0, burst=0.0, now=0.0)
    bucket.consume(1000, 0.0)
    bucket.set_rate(2000.0, 0.0, 0.0)
    assert bucket.delay(0.0) == pytest.approx(0.5)


def test_token_bucket_rejects_bad_rate() -> None:
    with pytest.raises(ConfigError, match="rate"):
        TokenBucket(rate=0.0, burst=1.0, now=0.0)


def test_estimator_windowed_max_expires() -> None:
    est = RateEstimator(window_s=1.0)
    assert est.estimate(0.0) is None
    est.add(100.0, 0.0, app_limited=False)
    est.add(50.0, 0.5, app_limited=False)
    assert est.estimate(0.9) == 100.0
    assert est.estimate(1.2) == 50.0  # the 100 sample left the window
    assert est.estimate(2.0) is None


def test_estimator_ignores_app_limited_samples_below_max() -> None:
    est = RateEstimator(window_s=10.0)
    est.add(100.0, 0.0, app_limited=False)
    est.add(80.0, 0.1, app_limited=True)
    est.add(150.0, 0.2, app_limited=True)  # a lower bound above the max still counts
    assert est.estimate(0.3) == 150.0
    est.add(0.0, 0.4, app_limited=False)  # empty samples are dropped
    assert est.estimate(0.4) == 150.0


def test_pacer_with_given_rate_paces_at_gain() -> None:
    config = PacingConfig(rate_bps=8_000_000.0, gain=0.5, burst_s=0.0)
    pacer = Pacer(config, lambda: None, now=0.0)
    assert pacer.pacing_rate == pytest.approx(500_000.0)
    now = 0.0
    for _ in range(11):
        now += pacer.delay(10_000, now)
        pacer.consume(10_000, now)
    # 10 chunks of 10 kB at 0.5 x 1 MB/s; the burst floor is two chunks (catch-up room).
    assert 0.15 <= now <= 0.2 + 1e-9


def test_pacer_estimates_at_startup_then_steers_by_queueing_delay() -> None:
    clock = [0.0]
    rate = 2_000_000.0  # bytes/s acknowledged by the path
    slow_from = [1e9]  # from then on the path delivers only 1.5 MB/s
    rtt = [0.010]

    def acked(t: float) -> int:
        cut = min(t, slow_from[0])
        return int(rate * cut + 1_500_000.0 * max(0.0, t - cut))

    def info() -> TcpInfo:
        return _info(0.0, acked=acked(clock[0]), rtt_s=rtt[0], min_rtt_s=0.010)

    config = PacingConfig(
        gain=0.9,
        startup_s=0.2,
        sample_interval_s=0.01,
        min_span_s=0.05,
        control_interval_s=0.05,
        queue_low_s=0.001,
        queue_high_s=0.004,
        increase=0.01,
        decrease=0.03,
    )
    pacer = Pacer(config, info, now=0.0)
    for step in range(19):  # startup: unpaced while the rate is measured
        clock[0] = step * 0.01
        assert pacer.delay(1000, clock[0]) == 0.0
    assert pacer.pacing_rate is None
    clock[0] = 0.2
    pacer.delay(1000, clock[0])
    assert pacer.bottleneck_rate == pytest.approx(rate)
    assert pacer.pacing_rate == pytest.approx(0.9 * rate)
    # No queue while sending: the estimate creeps up, one step per control interval.
    clock[0] = 0.26
    pacer.delay(1000, clock[0])
    assert pacer.bottleneck_rate == pytest.approx(rate * 1.01)
    clock[0] = 0.28  # within the same interval: unchanged
    pacer.delay(1000, clock[0])
    assert pacer.bottleneck_rate == pytest.approx(rate * 1.01)
    # A longer RTT while everything sent is delivered: not our queue, hold.
    rtt[0] = 0.018
    clock[0] = 0.32
    pacer.delay(1000, clock[0])
    assert pacer.queue_delay_s == pytest.approx(0.008)
    assert pacer.bottleneck_rate == pytest.approx(rate * 1.01)
    # The path now delivers less than we send and the queue grows: back off.
    slow_from[0] = 0.32
    clock[0] = 0.38
    pacer.delay(1000, clock[0])
    assert pacer.bottleneck_rate == pytest.approx(rate * 1.01 * 0.97)
    assert pacer.pacing_rate == pytest.approx(0.9 * rate * 1.01 * 0.97)
    # Between the thresholds: hold.
    rtt[0] = 0.012
    clock[0] = 0.44
    pacer.delay(1000, clock[0])
    assert pacer.bottleneck_rate == pytest.approx(rate * 1.01 * 0.97)


def test_startup_does_not_end_on_app_limited_samples_alone() -> None:
    """Blobs sent request by request leave the path idle between them: every sample is a
    lower bound (app-limited). Pacing at such a rate would throttle the next large blob
    far below the path, so the pacer stays unpaced until a sample measures the path."""
    clock = [0.0]
    limited = [True]

    def info() -> TcpInfo:  # 40 kB/s acknowledged while the sender mostly waits
        return _info(0.0, acked=int(40_000 * clock[0]), app_limited=limited[0])

    config = PacingConfig(startup_s=0.2, sample_interval_s=0.01, min_span_s=0.05)
    pacer = Pacer(config, info, now=0.0)
    for step in range(100):  # a whole second of app-limited samples
        clock[0] = step * 0.01
        assert pacer.delay(1000, clock[0]) == 0.0
    assert pacer.samples > 0 and pacer.pacing_rate is None
    limited[0] = False  # a large blob keeps the path busy: now the samples measure it
    for step in range(100, 110):
        clock[0] = step * 0.01
        pacer.delay(1000, clock[0])
    assert pacer.bottleneck_rate == pytest.approx(40_000, rel=0.05)


def test_rate_meter_sample_spans_several_rtts() -> None:
    # A burst of ACKs within one RTT must not be taken as the link rate.
    meter = LinkRateMeter(window_s=10.0, min_span_s=0.01)
    meter.update(_info(0.0, acked=0, rtt_s=0.1), 0.0)
    meter.update(_info(0.0, acked=1_000_000, rtt_s=0.1), 0.01)  # a burst right after
    assert meter.samples == 0  # span below 2 x RTT: no sample yet
    meter.update(_info(0.0, acked=1_000_000, rtt_s=0.1), 0.2)
    assert meter.samples == 1
    assert meter.estimate(0.2) == pytest.approx(1_000_000 / 0.2)


def test_pacer_without_tcp_info_stays_unpaced() -> None:
    pacer = Pacer(PacingConfig(startup_s=0.0), lambda: None, now=0.0)
    for t in range(10):
        assert pacer.delay(1000, t * 0.1) == 0.0
    assert pacer.pacing_rate is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("gain", 0.0),
        ("rate_bps", -1.0),
        ("min_urgency", 9),
        ("decrease", 1.0),
        ("queue_low_s", 1.0),
    ],
)
def test_pacing_config_validates(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        PacingConfig(**{field: value})


def test_discarded_bytes_count_the_rate_lost_to_the_burst_cap() -> None:
    # 1 MB/s, burst 6 ms (6 kB). A 16 kB query leaves at t=1.000 while the upload waits
    # for the socket until t=1.016. Charged when written, the bucket is in debt through
    # the wait and loses nothing; charged when the upload next asks (what the connection
    # does, see BENCHMARKS.md: the difference is headroom around slow queries), the
    # bucket refills past its cap in between and the counter shows it.
    def run(charge_at_write: bool) -> float:
        pacer = Pacer(PacingConfig(rate_bps=8e6, gain=1.0, burst_s=0.006), lambda: None, 0.0)
        pacer.delay(4000, 1.0)  # the upload's chunk size sets the burst floor
        pacer.account(0, 1.0)
        idle = pacer.discarded_bytes  # the second before the scenario
        assert idle == pytest.approx(1_000_000 - 8000, rel=0.01)  # capped at 2 chunks
        if charge_at_write:
            pacer.account(16_000, 1.0)
        pacer.account(16_000, 1.016)
        return pacer.discarded_bytes - idle

    assert run(charge_at_write=True) == pytest.approx(0.0, abs=1.0)
    assert run(charge_at_write=False) > 9_000


def test_token_bucket_forgives_debt_beyond_max_debt() -> None:
    bucket = TokenBucket(rate=1_000_000.0, burst=0.0, now=0.0, max_debt=100_000.0)
    bucket.consume(5_000_000, 0.0)  # five seconds of link time at once
    assert bucket.delay(0.0) == pytest.approx(0.1)
    assert bucket.forgiven == pytest.approx(4_900_000)  # what was never charged
    with pytest.raises(ConfigError, match="max_debt"):
        TokenBucket(rate=1.0, burst=0.0, now=0.0, max_debt=-1.0)


def _paced_bytes(config: PacingConfig, unpaced_per_s: float, seconds: float) -> int:
    """A sender asking every millisecond to release 5 kB chunks while ``unpaced_per_s``
    bytes/s of other traffic is charged in 10 ms lumps; what left paced."""
    pacer = Pacer(config, lambda: None, now=0.0)
    released = 0
    for step in range(int(seconds * 1000)):
        now = step / 1000
        if step % 10 == 0 and unpaced_per_s:
            pacer.account(0, now)  # the writer charges what it wrote...
            pacer.consume(int(unpaced_per_s / 100), now)  # ...including the queries
        if pacer.delay(5_000, now) <= 0:
            released += 5_000
            pacer.consume(5_000, now)
    return released


def test_queries_above_the_pacing_rate_leave_the_upload_its_min_share() -> None:
    # 1 MB/s link, queries charging 1.5 MB/s: without a floor for the upload it would
    # never leave. It gets min_share (10%) of the rate, and nothing like the full rate.
    config = PacingConfig(rate_bps=8e6, gain=1.0, burst_s=0.0)
    paced = _paced_bytes(config, 1_500_000.0, 2.0)
    assert 0.09 * 2e6 <= paced <= 0.2 * 2e6
    starved = _paced_bytes(PacingConfig(rate_bps=8e6, gain=1.0, min_share=0.0), 1.5e6, 2.0)
    assert starved == 0
    # Alone, the upload gets the whole rate.
    assert _paced_bytes(config, 0.0, 2.0) == pytest.approx(2e6, rel=0.02)


def test_a_burst_of_unpaced_bytes_delays_the_upload_at_most_max_debt() -> None:
    config = PacingConfig(rate_bps=8e6, gain=1.0, max_debt_s=0.05, min_share=0.0)
    pacer = Pacer(config, lambda: None, now=0.0)
    pacer.consume(3_000_000, 1.0)  # three seconds of link time of query tensors
    assert pacer.delay(5_000, 1.0) == pytest.approx(0.05)


def _estimate_after_startup(
    info_at: Callable[[float], TcpInfo], unpaced: int = 0, every: int = 1
) -> float:
    """The estimate after 0.6 s of an upload asking every 10 ms, startup 0.2 s, path as
    ``info_at(t)`` says, ``unpaced`` bytes written every ``every`` steps."""
    clock = [0.0]
    config = PacingConfig(
        startup_s=0.2, min_span_s=0.05, control_interval_s=0.05, sample_interval_s=0.01
    )
    pacer = Pacer(config, lambda: info_at(clock[0]), now=0.0)
    for step in range(60):
        clock[0] = step * 0.01
        pacer.delay(1000, clock[0])
        if unpaced and step % every == 0:
            pacer.consume(unpaced, clock[0])  # unpaced bytes written
    assert pacer.bottleneck_rate is not None
    return pacer.bottleneck_rate


def test_pacer_does_not_back_off_on_queues_of_heavy_unpaced_traffic() -> None:
    def info(t: float) -> TcpInfo:
        # Acked grows at 1 MB/s until startup ends, then at 0.5 MB/s (less than is sent),
        # and the RTT shows 20 ms of queue: a reason to back off, unless the queue is the
        # queries'.
        acked = int(1e6 * min(t, 0.2) + 0.5e6 * max(0.0, t - 0.2))
        return _info(0.0, acked=acked, rtt_s=0.03 if t > 0.2 else 0.01, min_rtt_s=0.01)

    calm = _estimate_after_startup(info)
    assert calm < 0.95e6  # backed off: the queue is the upload's
    # 0.5 MB/s of queries: held
    assert _estimate_after_startup(info, 5_000) == pytest.approx(1e6, rel=0.02)
    # The same rate as a 100 kB tensor every 200 ms: most control intervals see none
    # of it written, but its queue outlives them.
    assert _estimate_after_startup(info, 100_000, every=20) == pytest.approx(1e6, rel=0.02)
    assert _estimate_after_startup(info, 5_000, every=20) < 0.95e6  # 25 kB/s: not heavy


def test_the_upload_waits_out_a_single_query_instead_of_using_its_share() -> None:
    # One 16 kB query on a 1 MB/s link leaves 16 ms of debt, under half of max_debt_s:
    # the upload waits rather than queue a chunk right behind the query.
    pacer = Pacer(PacingConfig(rate_bps=8e6, gain=1.0, burst_s=0.0), lambda: None, 0.0)
    pacer.consume(16_000, 1.0)
    assert pacer.delay(5_000, 1.0) == pytest.approx(0.016)


def test_pacer_does_not_back_off_on_unsent_bytes_a_slow_reader_holds_back() -> None:
    def info(reader_stalls: bool) -> Callable[[float], TcpInfo]:
        def at(t: float) -> TcpInfo:
            # After startup: 100 kB unsent in the socket at a minimal RTT. Either the peer's
            # receive window held it back (the reader was busy) or the kernel did.
            base = _info(0.0, acked=int(1e6 * t), rtt_s=0.01, min_rtt_s=0.01)
            unsent = 100_000 if t > 0.2 else 0
            limited = max(0.0, t - 0.2) if reader_stalls else 0.0
            return replace(base, notsent_bytes=unsent, rwnd_limited_s=limited)

        return at

    assert _estimate_after_startup(info(False)) < 0.9e6  # our own backlog: back off
    # the reader's: hold
    assert _estimate_after_startup(info(True)) == pytest.approx(1e6, rel=0.02)


def _estimate_with_a_large_query(*, path_rate: float, query: int = 80_000) -> float:
    """The estimate 0.3 s after an 80 kB query (80 ms of a 1 MB/s link, so the upload runs
    on its reserve share meanwhile) was written at t = 0.3. The upload sends 4 kB chunks
    whenever the pacer lets it; the path drains the socket at 1 MB/s until startup ends,
    then at ``path_rate``, and reports what it has not sent as unsent."""
    config = PacingConfig(
        startup_s=0.2, min_span_s=0.05, control_interval_s=0.05, sample_interval_s=0.01
    )
    clock = [0.0]
    unsent = [0.0]
    acked = [0.0]
    pacer = Pacer(
        config,
        lambda: replace(_info(0.0, acked=int(acked[0])), notsent_bytes=int(unsent[0])),
        now=0.0,
    )
    for step in range(600):  # 1 ms steps
        now = clock[0] = step * 0.001
        if step == 300 and query:
            unsent[0] += query
            pacer.consume(query, now)
        if pacer.delay(4000, now) <= 0 and unsent[0] < 20_000:  # room below the low-water
            unsent[0] += 4000
            pacer.consume(4000, now)
        drained = min(unsent[0], (1e6 if now < 0.2 else path_rate) * 0.001)
        unsent[0] -= drained
        acked[0] += drained
    assert pacer.bottleneck_rate is not None
    return pacer.bottleneck_rate


def test_the_queue_the_startup_left_is_owed_not_taken_for_a_slow_path() -> None:
    # The unpaced startup leaves ~19 kB (19 ms) unsent in the socket; the first paced
    # chunks wait for it to drain instead of the control loop backing off on it.
    assert _estimate_with_a_large_query(path_rate=1e6, query=0) >= 1e6


def test_unsent_bytes_the_bucket_already_owes_for_are_no_reason_to_back_off() -> None:
    # A path as fast as the estimate: the query's bytes sit in the socket while the bucket
    # is in debt for them, and drain before it is repaid: hold (or creep up).
    assert _estimate_with_a_large_query(path_rate=1e6) >= 1e6 * 0.999
    # A path slower than the pacing rate: unsent bytes beyond the debt pile up: back off.
    assert _estimate_with_a_large_query(path_rate=0.8e6) < 0.95e6


def test_settle_counts_an_idle_spell_as_discarded_before_it_is_read() -> None:
    pacer = Pacer(PacingConfig(rate_bps=8e6, burst_s=0.0), lambda: None, 0.0)
    assert pacer.discarded_bytes == 0.0  # lazily refilled: the idle second is not seen yet
    pacer.settle(1.0)
    # One idle second at 0.95 MB/s, less the burst the bucket may keep (two 4 KiB chunks).
    assert pacer.discarded_bytes == pytest.approx(950_000, abs=10_000)
    pacer.settle(1.0)
    assert pacer.discarded_bytes == pytest.approx(950_000, abs=10_000)  # idempotent
