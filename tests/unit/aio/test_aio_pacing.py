"""Unit tests of ionn_net.aio.pacing: rate estimator, pacer with a given rate, the bucket's
shares (time passed in); the estimated rate is in test_aio_pacing_estimate.py."""

from __future__ import annotations

import pytest

from ionn_net.aio.pacing import LinkRateMeter, Pacer, PacingConfig, RateEstimator
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
    pacer = Pacer(PacingConfig(), lambda: None, now=0.0)
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


def test_the_upload_waits_out_a_single_query_instead_of_using_its_share() -> None:
    # One 16 kB query on a 1 MB/s link leaves 16 ms of debt, under half of max_debt_s:
    # the upload waits rather than queue a chunk right behind the query.
    pacer = Pacer(PacingConfig(rate_bps=8e6, gain=1.0, burst_s=0.0), lambda: None, 0.0)
    pacer.consume(16_000, 1.0)
    assert pacer.delay(5_000, 1.0) == pytest.approx(0.016)


def test_settle_counts_an_idle_spell_as_discarded_before_it_is_read() -> None:
    pacer = Pacer(PacingConfig(rate_bps=8e6, burst_s=0.0), lambda: None, 0.0)
    assert pacer.discarded_bytes == 0.0  # lazily refilled: the idle second is not seen yet
    pacer.settle(1.0)
    # One idle second at 0.95 MB/s, less the burst the bucket may keep (two 4 KiB chunks).
    assert pacer.discarded_bytes == pytest.approx(950_000, abs=10_000)
    pacer.settle(1.0)
    assert pacer.discarded_bytes == pytest.approx(950_000, abs=10_000)  # idempotent
