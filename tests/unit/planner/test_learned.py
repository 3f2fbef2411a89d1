"""LearnedCosts: moving averages of what queries measure, fading back to the priors;
BandwidthMeter: the link rate over a window of upload samples."""

from __future__ import annotations

import pytest

from ionn_net.errors import PlannerError
from ionn_net.planner.learned import BandwidthMeter, LearnedCosts


def test_observations_move_the_estimates_by_a_third() -> None:
    c = LearnedCosts()
    c.set_ping(0.010)
    c.observe(overhead_s=0.110, scale_ratio=5.0, now=1.0)
    assert c.rtt_s == pytest.approx(0.7 * 0.010 + 0.3 * 0.110)
    assert c.server_scale == pytest.approx(0.7 + 0.3 * 5.0)
    c.observe(overhead_s=0.0, scale_ratio=None, now=2.0)  # below the ping: the ping counts
    assert c.rtt_s == pytest.approx(0.7 * (0.7 * 0.010 + 0.3 * 0.110) + 0.3 * 0.010)
    assert c.server_scale == pytest.approx(0.7 + 0.3 * 5.0)  # no ratio: unchanged
    c.observe(overhead_s=0.010, scale_ratio=1e6, now=3.0)  # clamped at 20
    assert c.server_scale == pytest.approx(0.7 * (0.7 + 0.3 * 5.0) + 0.3 * 20.0)


def test_what_nothing_measures_fades_to_the_prior_at_the_half_life() -> None:
    c = LearnedCosts(half_life_s=5.0)
    c.set_ping(0.010)
    assert c.fade(100.0) is False  # nothing learned yet
    c.server_scale, c.rtt_s, c.observed_at = 9.0, 0.210, 0.0
    assert c.fade(0.1) is False  # 1.4% of the way: not worth a re-plan, nothing changes
    assert c.server_scale == 9.0
    assert c.fade(5.0) is True  # one half-life
    assert c.server_scale == pytest.approx(1.0 + 8.0 / 2)
    assert c.rtt_s == pytest.approx(0.010 + 0.200 / 2)
    assert c.fade(10.0) is True  # and another, from the last fade
    assert c.server_scale == pytest.approx(1.0 + 8.0 / 4)
    c.observe(overhead_s=0.010, scale_ratio=3.0, now=10.0)
    assert c.fade(10.0) is False  # just measured: nothing to fade


def test_bad_values_are_refused() -> None:
    with pytest.raises(PlannerError, match="half_life_s"):
        LearnedCosts(half_life_s=0.0)


def test_bandwidth_meter_waits_for_a_mebibyte_then_keeps_a_window() -> None:
    meter = BandwidthMeter(window_bytes=4 << 20, min_bytes=1 << 20)
    assert meter.add(512 << 10, 0.5) is None  # too little measured
    assert meter.add(512 << 10, 0.5) == pytest.approx((1 << 20) / 1.0)
    for _ in range(8):  # the link doubles its rate: the old samples leave the window
        rate = meter.add(1 << 20, 0.5)
    assert rate == pytest.approx((1 << 20) / 0.5)
    assert meter.add(1 << 20, 0.0) is None  # no time: no sample
    with pytest.raises(PlannerError, match="min_bytes"):
        BandwidthMeter(window_bytes=1, min_bytes=2)
