"""Pacing of upload-urgency streams near the bottleneck rate.

Why: on a slow link the bytes in flight queue at the bottleneck (a tbf qdisc, a home router),
and a query frame queued behind them waits for all of them even when the sender's own queues
are empty (~100 ms p50 at 20 Mbit/s with TCP_NOTSENT_LOWAT alone, measured by
bench/transport.py). Releasing upload bytes at a little under the bottleneck rate keeps that
queue near empty, so a query sees about one upload frame of extra delay.

Owns pure pieces (time passed in, no clock reads) and their composition:

* :class:`TokenBucket` -- debt-based bucket: a chunk may leave whenever the balance is not
  negative, then the balance drops by its size; the average rate is exact and one chunk is
  never split.
* :class:`RateEstimator` -- windowed maximum of rate samples; app-limited samples are lower
  bounds and only count when they raise the maximum.
* :class:`LinkRateMeter` -- rate samples from the growth of the kernel's ``TCP_INFO``
  ``bytes_acked`` over a few round trips.
* :class:`Pacer` -- paces at ``gain`` x the bottleneck rate, given by the caller or
  estimated: measured during a short unpaced startup, then steered by the queueing delay
  (smoothed minus minimum RTT) the upload causes, which finds a faster path without the
  probing bursts BBR uses and backs off when the path slows.

Which streams are paced is decided by the caller (urgency >= ``PacingConfig.min_urgency``);
every byte the connection writes is charged to the bucket (:meth:`Pacer.account`), so the
paced upload fills only what queries and control frames leave of the link.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ionn_net.aio.sockopts import TcpInfo
from ionn_net.errors import ConfigError

__all__ = ["LinkRateMeter", "Pacer", "PacingConfig", "RateEstimator", "TokenBucket"]

#: Unpaced bytes above this share of the pacing rate within a control interval make its
#: queueing delay no reason to back off (see Pacer._control).
_HEAVY_UNPACED = 0.25
#: Time constant of the smoothed unpaced rate: a few back-to-back queries.
_UNPACED_SMOOTHING_S = 0.5
#: Share of a control interval held back by the peer's receive window above which unsent
#: bytes in the socket are the reader's doing (see Pacer._control).
_WINDOW_BOUND = 0.1


@dataclass(frozen=True, slots=True, kw_only=True)
class PacingConfig:
    """How upload-urgency streams are paced (see :class:`Pacer`).

    ``rate_bps`` (bits/s) fixes the bottleneck rate; None estimates it (startup measurement,
    then steering by queueing delay). Streams whose urgency is >= ``min_urgency`` are paced
    (uploads are urgency 5, §8.1) at ``gain`` x the bottleneck rate, counting every byte the
    connection writes. ``burst_s`` bounds how much sending may catch up after a late
    wake-up (at least two chunks). Each release carries about ``chunk_time_s`` of link time
    (on a slow link one smaller frame), so an urgent frame waits behind about that much
    upload at the bottleneck.

    Unpaced bytes (queries) are charged to the same bucket, but never starve the upload:
    they can put it at most ``max_debt_s`` of pacing time in debt, and while the debt is
    over half of that, paced streams still get ``min_share`` of the pacing rate. Without
    these, queries sending more than the pacing rate (ResNet50's 600 KB inputs back to back
    on an 80 Mbit/s link whose estimate had sunk) stopped an upload for minutes in
    ionn-bench.
    """

    rate_bps: float | None = None
    gain: float = 0.95
    min_urgency: int = 4
    burst_s: float = 0.006
    chunk_time_s: float = 0.003
    window_s: float = 5.0
    sample_interval_s: float = 0.01
    min_span_s: float = 0.25
    startup_s: float = 1.0
    control_interval_s: float = 0.05
    queue_low_s: float = 0.001
    queue_high_s: float = 0.004
    increase: float = 0.005
    decrease: float = 0.03
    min_fraction: float = 0.25
    min_share: float = 0.1
    max_debt_s: float = 0.1

    def __post_init__(self) -> None:
        checks: tuple[tuple[str, float | None, float, float], ...] = (
            ("rate_bps", self.rate_bps, 1e3, 1e12),
            ("gain", self.gain, 0.1, 2.0),
            ("burst_s", self.burst_s, 0.0, 1.0),
            ("chunk_time_s", self.chunk_time_s, 0.0001, 1.0),
            ("window_s", self.window_s, 0.1, 600.0),
            ("sample_interval_s", self.sample_interval_s, 0.001, 10.0),
            ("min_span_s", self.min_span_s, 0.001, 60.0),
            ("startup_s", self.startup_s, 0.0, 60.0),
            ("control_interval_s", self.control_interval_s, 0.001, 60.0),
            ("queue_low_s", self.queue_low_s, 0.0, 10.0),
            ("queue_high_s", self.queue_high_s, 0.0, 10.0),
            ("increase", self.increase, 0.0, 1.0),
            ("decrease", self.decrease, 0.0, 0.9),
            ("min_fraction", self.min_fraction, 0.0, 1.0),
            ("min_share", self.min_share, 0.0, 1.0),
            ("max_debt_s", self.max_debt_s, 0.0, 10.0),
        )
        for name, value, low, high in checks:
            if value is not None and not low <= value <= high:
                raise ConfigError(f"PacingConfig.{name}: expected {low}..{high}, got {value!r}")
        if self.queue_low_s > self.queue_high_s:
            raise ConfigError(
                f"PacingConfig.queue_low_s: expected <= queue_high_s ({self.queue_high_s}), "
                f"got {self.queue_low_s}"
            )
        if not 0 <= self.min_urgency <= 7:
            raise ConfigError(f"PacingConfig.min_urgency: expected 0..7, got {self.min_urgency}")


class TokenBucket:
    """Debt-based token bucket in bytes; ``rate`` in bytes/s; time passed in."""

    __slots__ = ("_balance", "_burst", "_last", "discarded", "forgiven", "max_debt", "rate")

    def __init__(
        self, rate: float, burst: float, now: float, *, max_debt: float = float("inf")
    ) -> None:
        if rate <= 0 or burst < 0 or not max_debt >= 0:
            raise ConfigError(
                "TokenBucket: expected rate > 0, burst >= 0 and max_debt >= 0, got "
                f"{rate}, {burst}, {max_debt}"
            )
        self.rate = rate
        self._burst = burst
        #: the balance never falls below -max_debt bytes (forgiven beyond)
        self.max_debt = max_debt
        self._balance = 0.0
        self._last = now
        #: bytes of rate lost to the burst cap: time nothing was sent although it could
        self.discarded = 0.0
        #: bytes sent but never charged: debt beyond ``max_debt``
        self.forgiven = 0.0

    def settle(self, now: float) -> None:
        """Refill up to ``now`` (done lazily otherwise, when next asked), so that
        :attr:`discarded` includes an idle spell that ends at ``now``."""
        if now > self._last:
            full = self._balance + (now - self._last) * self.rate
            self._balance = min(self._burst, full)
            self.discarded += full - self._balance
            self._last = now

    def set_rate(self, rate: float, burst: float, now: float) -> None:
        """Change the rate from ``now`` on (the debt so far is kept)."""
        self.settle(now)
        self.rate = max(rate, 1.0)
        self._burst = max(burst, 0.0)
        self._balance = min(self._balance, self._burst)

    def delay(self, now: float) -> float:
        """Seconds until the next chunk may leave (0.0: now)."""
        self.settle(now)
        return 0.0 if self._balance >= 0 else -self._balance / self.rate

    def debt(self, now: float) -> float:
        """Bytes sent ahead of the rate that the bucket is still making up for (0.0: none)."""
        self.settle(now)
        return max(0.0, -self._balance)

    def consume(self, nbytes: int, now: float) -> None:
        """Charge a chunk that was just released (debt beyond ``max_debt`` is forgiven)."""
        self.settle(now)
        owed = self._balance - nbytes
        self._balance = max(owed, -self.max_debt)
        self.forgiven += self._balance - owed


class RateEstimator:
    """Windowed maximum of delivery-rate samples (bytes/s)."""

    __slots__ = ("_samples", "_window")

    def __init__(self, window_s: float) -> None:
        self._window = window_s
        # Monotone deque (time, rate) with decreasing rates: the front is the window maximum.
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, rate: float, now: float, *, app_limited: bool) -> None:
        """Record a sample; an app-limited one counts only if it raises the maximum."""
        if rate <= 0:
            return
        current = self.estimate(now)
        if app_limited and current is not None and rate <= current:
            return
        while self._samples and self._samples[-1][1] <= rate:
            self._samples.pop()
        self._samples.append((now, rate))

    def estimate(self, now: float) -> float | None:
        """The maximum over the window, or None without samples."""
        while self._samples and self._samples[0][0] < now - self._window:
            self._samples.popleft()
        return self._samples[0][1] if self._samples else None


class LinkRateMeter:
    """Delivery rate of a TCP connection from ``TCP_INFO``: a windowed maximum of samples,
    each the growth of ``bytes_acked`` over at least ``min_span_s`` and two smoothed RTTs
    (one ACK burst on a fast path would otherwise look like a fast link)."""

    __slots__ = ("_estimator", "_history", "_min_span", "latest", "path_samples", "samples")

    def __init__(self, window_s: float, min_span_s: float) -> None:
        self._estimator = RateEstimator(window_s)
        self._min_span = min_span_s
        self._history: deque[tuple[float, int, bool]] = deque(maxlen=4096)
        self.samples = 0
        #: samples taken while the sender kept the path busy (none app-limited): only
        #: those measure the path; the others are lower bounds
        self.path_samples = 0
        self.latest: float | None = None  # the most recent sample (bytes/s)

    def update(self, info: TcpInfo, now: float) -> None:
        """Add (now, bytes_acked) and derive a sample over the span behind it."""
        history = self._history
        history.append((now, info.bytes_acked, info.app_limited))
        span = max(self._min_span, 2.0 * info.rtt_s)
        if now - history[0][0] < span:
            return
        # Drop points older than needed, keeping the newest one at least `span` back.
        while len(history) > 2 and now - history[1][0] >= span:
            history.popleft()
        t0, acked0, _ = history[0]
        app_limited = any(limited for _, _, limited in history)
        self.latest = (info.bytes_acked - acked0) / (now - t0)
        self._estimator.add(self.latest, now, app_limited=app_limited)
        self.samples += 1
        self.path_samples += not app_limited

    def estimate(self, now: float) -> float | None:
        """Bytes/s: the largest sample of the window, or None before the first."""
        return self._estimator.estimate(now)


class Pacer:
    """Releases chunks of paced streams at ``gain`` x the bottleneck rate.

    With ``PacingConfig.rate_bps`` the bottleneck rate is given. Otherwise it is estimated:

    1. *Startup*: for ``startup_s`` after the first chunk nothing is paced, and a
       :class:`LinkRateMeter` measures what the path delivers (``bytes_acked`` growth over
       ``min_span_s`` spans): the largest such rate is the first estimate, taken once at
       least one sample was not app-limited (until then nothing is paced).
    2. *Steady state*: the queueing delay the upload causes (smoothed RTT minus the minimum
       RTT, plus the kernel's unsent bytes at the paced rate, from ``TCP_INFO``) steers the
       estimate every control interval (four minimum RTTs,
       at least ``control_interval_s``): above ``queue_high_s``, if the path also delivers
       less than is sent, it shrinks by ``decrease`` (never below ``min_fraction`` of the
       startup estimate); below ``queue_low_s`` it grows by ``increase``. This finds a
       faster path without probing bursts and backs off when the path slows or other
       traffic shares it.

    ``info_source`` returns the connection's TCP_INFO (or None: then nothing is paced
    unless the rate was given).
    """

    def __init__(
        self, config: PacingConfig, info_source: Callable[[], TcpInfo | None], now: float
    ) -> None:
        self.config = config
        self._info = info_source
        self._meter = LinkRateMeter(config.window_s, config.min_span_s)
        self._bucket: TokenBucket | None = None
        self._reserve: TokenBucket | None = None  # the upload's min_share
        self._paced_pending = 0  # released paced bytes not yet charged
        self._unpaced_since_control = 0
        self._unpaced_rate = 0.0  # bytes/s, smoothed over _UNPACED_SMOOTHING_S
        self._rwnd_limited = 0.0  # TcpInfo.rwnd_limited_s at the last control step
        self._estimate: float | None = None
        self._floor = 0.0
        self._chunk = 0
        self._start: float | None = None
        self._last_sample = -1e18
        self._last_control = -1e18
        self._active_since_control = False
        self._written = 0
        self.queue_delay_s: float | None = None
        if config.rate_bps is not None:
            self._estimate = config.rate_bps / 8.0
            self._install(now)

    @property
    def bottleneck_rate(self) -> float | None:
        """The rate (bytes/s) currently taken as the bottleneck, or None before estimating."""
        return self._estimate

    @property
    def pacing_rate(self) -> float | None:
        """Bytes/s currently released, or None while unpaced."""
        return None if self._bucket is None else self._bucket.rate

    @property
    def samples(self) -> int:
        return self._meter.samples

    @property
    def discarded_bytes(self) -> float:
        """Rate the bucket could not spend (nothing was ready to send for longer than the
        burst): idle time between uploads, or stalls during one."""
        return 0.0 if self._bucket is None else self._bucket.discarded

    def settle(self, now: float) -> None:
        """Bring the counters up to ``now`` (the bucket refills lazily, when next asked): read
        :attr:`discarded_bytes` after this to exclude what an idle spell before ``now`` lost."""
        if self._bucket is not None:
            self._bucket.settle(now)

    @property
    def forgiven_bytes(self) -> float:
        """Bytes sent beyond the rate and never charged (debt over ``max_debt_s``)."""
        return 0.0 if self._bucket is None else self._bucket.forgiven

    def _burst(self, rate: float) -> float:
        return max(2.0 * self._chunk, rate * self.config.burst_s)

    def _install(self, now: float) -> None:
        assert self._estimate is not None
        cfg = self.config
        rate = self._estimate * cfg.gain
        if self._bucket is None:
            self._bucket = TokenBucket(rate, self._burst(rate), now)
        else:
            self._bucket.set_rate(rate, self._burst(rate), now)
        self._bucket.max_debt = rate * cfg.max_debt_s
        share = rate * cfg.min_share
        if share <= 0:
            self._reserve = None
        elif self._reserve is None:
            self._reserve = TokenBucket(share, 2.0 * self._chunk, now)
        else:
            self._reserve.set_rate(share, 2.0 * self._chunk, now)

    def _control(self, info: TcpInfo, now: float) -> None:
        """Steer the estimate by the queueing delay (steady state, estimated mode)."""
        assert self._estimate is not None
        cfg = self.config
        interval = max(cfg.control_interval_s, 4.0 * info.min_rtt_s)
        elapsed = now - self._last_control
        if elapsed < interval:
            return
        self._last_control = now
        active, self._active_since_control = self._active_since_control, False
        sending = self._bucket.rate if self._bucket is not None else None
        unpaced, self._unpaced_since_control = self._unpaced_since_control, 0
        # Heavy unpaced traffic (large query tensors) queues at the bottleneck in bursts
        # that pacing cannot prevent and the bucket already yields to: that queue says
        # nothing about the rate, and backing off on it starved the upload (ionn-bench,
        # ResNet50 over 80 Mbit/s: 80 -> 20 Mbit/s estimated while queries sent ~34). A
        # burst outlives the interval it was written in, so its rate is smoothed.
        weight = min(1.0, elapsed / _UNPACED_SMOOTHING_S)
        self._unpaced_rate += weight * (unpaced / elapsed - self._unpaced_rate)
        heavy = sending is not None and self._unpaced_rate > _HEAVY_UNPACED * sending
        # Our queue is in the network (RTT above its minimum) and, when the kernel's own
        # pacing (BBR) holds back what we release too fast, in the socket (not yet sent);
        # not when the peer's receive window held the socket back: then the reader is slow
        # (an edge server busy loading a partition), not the path, and backing off only
        # lowered the estimate for the rest of the upload (ionn-bench: 70 -> 49 Mbit/s on a
        # 76 Mbit/s link, every step taken on unsent bytes at a 2 ms RTT).
        window_bound = info.rwnd_limited_s - self._rwnd_limited > _WINDOW_BOUND * elapsed
        self._rwnd_limited = info.rwnd_limited_s
        # Unsent bytes up to the bucket's debt were written ahead of the rate (a query's
        # tensor, a released chunk) and the bucket already holds the upload back until the
        # link has drained them: they are not the rate's fault. Counting them backed off
        # on every large query while the upload ran on its reserve share (ionn-bench,
        # ResNet50's 600 KB inputs: the estimate sank from ~70 to 35-50 Mbit/s on 76).
        owed = self._bucket.debt(now) if self._bucket is not None else 0.0
        excess = max(0.0, info.notsent_bytes - owed)
        in_socket = excess / sending if sending and not window_bound else 0.0
        queue = max(0.0, info.rtt_s - info.min_rtt_s) + in_socket
        self.queue_delay_s = queue
        delivered = self._meter.latest
        # Unsent bytes in our socket are otherwise ours. A longer RTT is ours to drain only
        # if the path delivers less than we send: with everything delivered (a slower
        # delay line, cross traffic that left) backing off could starve the upload.
        behind = sending is None or delivered is None or delivered < 0.97 * sending
        decrease = in_socket > cfg.queue_high_s or (queue > cfg.queue_high_s and behind)
        if decrease and heavy:
            return
        if decrease:
            self._estimate = max(self._floor, self._estimate * (1.0 - cfg.decrease))
        # (an interval bound by the reader says nothing about the network's rate either)
        elif queue < cfg.queue_low_s and active and not window_bound:
            self._estimate *= 1.0 + cfg.increase
        else:
            return
        self._install(now)

    def _sample(self, now: float) -> None:
        if now - self._last_sample < self.config.sample_interval_s:
            return
        self._last_sample = now
        if self.config.rate_bps is not None:
            return
        info = self._info()
        if info is None:
            return
        self._meter.update(info, now)
        if self._estimate is not None:
            self._control(info, now)
            return
        started = self._start is not None and now - self._start >= self.config.startup_s
        estimate = self._meter.estimate(now)
        # Startup ends on a sample of the path, not on lower bounds alone: an upload that
        # sends small blobs request by request leaves the path idle between them, and a
        # rate taken from those (40 KB/s on loopback while the server was busy) paced the
        # next 5 MB blob for a minute before the slow increase found the path again.
        if started and estimate is not None and self._meter.path_samples:
            self._estimate = estimate
            self._floor = estimate * self.config.min_fraction
            self._last_control = now
            assert self._start is not None
            # The unpaced rate starts from what was written beside the startup's upload.
            self._unpaced_rate = self._unpaced_since_control / max(now - self._start, 1e-3)
            self._unpaced_since_control = 0
            self._rwnd_limited = info.rwnd_limited_s
            self._install(now)
            # The unpaced startup left a queue: bytes unsent in the socket and queued at the
            # bottleneck (the RTT above its minimum). Owing them makes the first paced
            # chunks wait until they drain, instead of a query waiting behind both (and
            # the control loop backing off on a queue it did not make).
            assert self._bucket is not None
            queued = max(0.0, info.rtt_s - info.min_rtt_s) * estimate
            self._bucket.consume(int(info.notsent_bytes + queued), now)

    def chunk_size(self, upper: int) -> int:
        """Bytes released per token wait: ``chunk_time_s`` of link time within [4 KiB, upper].

        On a slow link that is less than a frame, so frames shrink with it; on a fast one
        it is several frames per wake-up (the core still cuts frames at ``max_chunk``).
        Unpaced (startup, or no estimate): ``upper``.
        """
        rate = self.pacing_rate
        if rate is None:
            return upper
        return max(min(4096, upper), min(upper, int(rate * self.config.chunk_time_s)))

    def delay(self, chunk: int, now: float) -> float:
        """Seconds to wait before releasing a chunk of ``chunk`` bytes (0.0: now)."""
        self._active_since_control = True
        if chunk > self._chunk:
            self._chunk = chunk
            if self._bucket is not None:  # the burst floor is two chunks
                rate = self._bucket.rate
                self._bucket.set_rate(rate, self._burst(rate), now)
        if self._start is None:
            self._start = now
        self._sample(now)
        wait = 0.0 if self._bucket is None else self._bucket.delay(now)
        if wait > self.config.max_debt_s / 2 and self._reserve is not None:
            # Unpaced bytes hold the bucket deep in debt (not just the few milliseconds
            # a query leaves, which the upload waits out so as not to queue behind it):
            # the upload's own share may go now.
            reserve_wait = self._reserve.delay(now)
            if reserve_wait <= 0:
                self._reserve.consume(chunk, now)
            wait = min(wait, max(reserve_wait, 0.0))
        if wait <= 0:
            self._paced_pending += chunk
        return wait

    def consume(self, nbytes: int, now: float) -> None:
        """Charge bytes sent on the connection (paced chunks and everything else)."""
        paced = min(nbytes, self._paced_pending)
        self._paced_pending -= paced
        self._unpaced_since_control += nbytes - paced
        if self._bucket is not None:
            self._bucket.consume(nbytes, now)

    def account(self, total_written: int, now: float) -> None:
        """Charge what the connection wrote since the last call (``total_written`` is a
        running byte count): queries and control frames share the link with the upload, so
        they delay the next paced chunk instead of overfilling the bottleneck."""
        delta = total_written - self._written
        self._written = total_written
        if delta > 0:
            self.consume(delta, now)
