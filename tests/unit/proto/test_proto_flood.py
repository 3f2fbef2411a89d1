"""proto.flood: the rate primitives of §14.3 driven by the caller's clock."""

from __future__ import annotations

from ionn_net.proto.flood import EventBucket, WindowCounter


def test_window_counter_allows_limit_per_window_then_resets() -> None:
    counter = WindowCounter(3, 10.0)
    assert [counter.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert not counter.allow(9.9)
    assert counter.allow(10.0)  # a new window starts


def test_event_bucket_burst_then_rate() -> None:
    bucket = EventBucket(rate=2.0, burst=5, now=0.0)
    assert all(bucket.allow(0.0) for _ in range(5))
    assert not bucket.allow(0.0)
    assert bucket.allow(0.5)  # one token back after 0.5 s at 2/s
    assert not bucket.allow(0.5)
    assert sum(bucket.allow(100.0) for _ in range(10)) == 5  # refill caps at the burst
