"""proto.flood: the rate primitives of §14.3 driven by the caller's clock; the token bucket
also in bytes with debt, as the pacer of ionn_net.aio.pacing uses it."""

from __future__ import annotations

import pytest

from ionn_net.errors import ConfigError
from ionn_net.proto.flood import TokenBucket, WindowCounter


def test_window_counter_allows_limit_per_window_then_resets() -> None:
    counter = WindowCounter(3, 10.0)
    assert [counter.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert not counter.allow(9.9)
    assert counter.allow(10.0)  # a new window starts


def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=5, now=0.0, full=True)
    assert all(bucket.allow(0.0) for _ in range(5))
    assert not bucket.allow(0.0)
    assert bucket.allow(0.5)  # one token back after 0.5 s at 2/s
    assert not bucket.allow(0.5)
    assert sum(bucket.allow(100.0) for _ in range(10)) == 5  # refill caps at the burst


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


def test_token_bucket_forgives_debt_beyond_max_debt() -> None:
    bucket = TokenBucket(rate=1_000_000.0, burst=0.0, now=0.0, max_debt=100_000.0)
    bucket.consume(5_000_000, 0.0)  # five seconds of link time at once
    assert bucket.delay(0.0) == pytest.approx(0.1)
    assert bucket.forgiven == pytest.approx(4_900_000)  # what was never charged
    with pytest.raises(ConfigError, match="max_debt"):
        TokenBucket(rate=1.0, burst=0.0, now=0.0, max_debt=-1.0)


def test_token_bucket_admission_and_debt_share_one_balance() -> None:
    # One argument order for both uses: rate first, then burst.
    bucket = TokenBucket(rate=10.0, burst=4.0, now=0.0)  # starts empty unless full=True
    assert not bucket.allow(0.0)
    assert bucket.allow(0.3, cost=3.0)  # 3 tokens refilled, 3 taken: never into debt
    assert not bucket.allow(0.3, cost=0.5)
    bucket.consume(5.0, 0.3)  # a pacing charge may go into debt...
    assert bucket.debt(0.3) == pytest.approx(5.0)
    assert not bucket.allow(0.7)  # ...and admission waits until it is repaid
    assert bucket.allow(0.9)
    assert TokenBucket(rate=1.0, burst=2.5, now=0.0, full=True).burst == 2.5
