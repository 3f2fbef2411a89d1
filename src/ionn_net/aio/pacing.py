"""Pacing of upload-urgency streams near the bottleneck rate.

Why: on a slow link the bytes in flight queue at the bottleneck (a tbf qdisc, a home router),
and a query frame queued behind them waits for all of them even when the sender's own queues
are empty (~100 ms p50 at 20 Mbit/s with TCP_NOTSENT_LOWAT alone, measured by
bench/transport.py). Releasing upload bytes at a little under the bottleneck rate keeps that
queue near empty, so a query sees about one upload frame of extra delay.

Owns the composition of pure pieces (time passed in, no clock reads):

* :class:`~ionn_net.aio.token_bucket.TokenBucket` in bytes, with debt: a chunk may leave
  whenever the balance is not negative, then the balance drops by its size; the average
  rate is exact and one chunk is never split.
* :mod:`ionn_net.aio.delivery` -- what the connection delivers, from ``TCP_INFO``, and the
  start of an estimated rate.
* :class:`Pacer` -- paces at ``gain`` x the bottleneck rate, given by the caller or
  estimated, from the first byte on (see its docstring).

Which streams are paced is decided by the caller (urgency >= ``PacingConfig.min_urgency``);
every byte the connection writes is charged to the bucket (:meth:`Pacer.account`), so the
paced upload fills only what queries and control frames leave of the link.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import ionn_net.aio.pacing_tuning as tune
from ionn_net.aio.delivery import (
    DEFAULT_MSS,
    DeliveryLog,
    LinkRateMeter,
    Ramp,
    RateEstimator,
    ack_delay,
    ack_segment,
    unpaced_queue,
)
from ionn_net.aio.pacing_config import PacingConfig
from ionn_net.aio.sockopts import TcpInfo
from ionn_net.aio.token_bucket import TokenBucket

__all__ = ["LinkRateMeter", "Pacer", "PacingConfig", "RateEstimator", "TokenBucket"]


@dataclass(frozen=True, slots=True)
class _Signals:
    """What one control interval of the estimated rate saw: the queueing delay (network and
    socket, seconds) and the socket's part, whether unpaced bytes were heavy, whether the
    peer's receive window held the socket back, and whether the path was behind (see
    Pacer._path_rate)."""

    queue: float
    in_socket: float
    heavy: bool
    window_bound: bool
    behind: bool


class Pacer:
    """Releases chunks of paced streams at ``gain`` x the bottleneck rate.

    With ``PacingConfig.rate_bps`` the bottleneck rate is given. Otherwise it is estimated
    from ``TCP_INFO``, and paced from the first byte:

    1. *Ramp* (:class:`~ionn_net.aio.delivery.Ramp`): from TCP's own window per handshake
       RTT, it doubles every ``ramp_rtts`` feedback delays (a round trip and the few ACKs
       the kernel's smoothed RTT needs), never past ``ramp_gain`` x what the path delivered
       and was released a feedback delay before. It ends at a queue in the network of
       ``ramp_exit_s`` (less what the queries' own bytes explain), or when the path keeps
       acknowledging less than was written a round trip before (full, or this host cannot
       send faster: back to its deliveries at once, and the end if that lasts); not at a
       stall's queue (the path delivering a fraction of the ramp's rate: a host stopped
       for a moment), through which it holds its rate. The estimate is what the path
       delivered over the last round trips, raised to what it delivers over the round
       trip after (what the ramp queued still keeps it full);
       that queue is owed to the bucket, so the upload waits until it drains instead of
       queries waiting behind it. An unpaced start filled the bottleneck's queue before
       any rate was known: the first query, issued as the upload began, waited 93-94 ms at
       20 Mbit/s with 20 ms each way (BENCHMARKS.md).
    2. *Steady state*: every control interval (four minimum RTTs, at least
       ``control_interval_s``) a queue above ``queue_high_s`` that grew, or that the path
       is behind on (it acknowledged less than was written), takes the estimate a step of
       ``decrease`` down, to what the path delivered if it was behind, and is owed. When
       the queue is long, the step is larger but bounded (a quarter per interval): a path
       that stalled for 0.3 s (a host stopped by CPU contention) delivered next to nothing
       and is not slower, and going straight to its deliveries kept the estimate at a
       quarter of the link for minutes (bench/transport.py at 20 Mbit/s). The queue's drain
       right after tells the two apart: a path that came back delivers above the estimate
       (back up to that), a slower one steadily below it (down to that); else a probe
       soon after, rising fast to the rate held before, where a queue the path delivered
       in full (a host's scheduling noise) is no measurement of its rate.

       The estimate does not creep up on its own: pacing below the bottleneck, a path
       that got faster looks the same as one that did not, and an estimate raised
       whenever no queue showed settled where gain x estimate filled the link: a standing
       queue, the upload at 96-97% of a 200 Mbit/s link, not the gain's
       95%. After a step down it comes back, but only up to the rate last measured.
    3. *Probes* measure: every ``probe_interval_s``, and first shortly after the ramp, the
       estimate rises by ``increase`` per interval until the queue is ``queue_low_s`` above
       its level before; then, while the queue stays, what the path delivers over at least
       two intervals is its rate (a queue past ``queue_high_s`` first: back to where the
       probe began; a queue that went: the rise goes on). After the ramp they follow
       each other a few intervals apart until one measured the path. Deliveries the
       sender (nothing to send) or the reader (a closed receive window) held back are
       only a lower bound of the path's rate (see _lower_bound_only).

    ``info_source`` returns the connection's TCP_INFO (or None: then nothing is paced
    unless the rate was given).
    """

    def __init__(
        self, config: PacingConfig, info_source: Callable[[], TcpInfo | None], now: float
    ) -> None:
        self.config = config
        self._info = info_source
        self._log = DeliveryLog()
        self._bucket: TokenBucket | None = None
        self._reserve: TokenBucket | None = None  # the upload's min_share
        self._paced_pending = 0  # released paced bytes not yet charged
        self._written = 0
        self._paced_written = 0
        self._unpaced_total = 0
        self._unpaced_writes: deque[tuple[float, int]] = deque(maxlen=64)  # (time, bytes)
        self._unpaced_since_control = 0
        self._unpaced_rate = 0.0  # bytes/s, smoothed over tune.UNPACED_SMOOTHING_S
        self._estimate: float | None = None
        self._floor = 0.0
        self._ramp: Ramp | None = None
        #: what the path delivered during the ramp, most lately (app-limited: only if more)
        self._ramp_best = RateEstimator(tune.RAMP_BEST_S)
        # (the most the path delivered lately as the log shows it, not the kernel's
        # per-flight samples, which a bottleneck's burst allowance makes read far higher)
        self._ramp_delivered = RateEstimator(tune.RAMP_BEST_S)
        self._flights = RateEstimator(tune.FLIGHTS_S)  # the kernel's delivery samples, lately
        self._stalled_since: float | None = None  # the ramp's path stopped keeping up
        self._shrinks = 0  # how often the ramp went back to the deliveries...
        self._stall_rate = 0.0  # ...since it first did so, at this rate
        self._after_ramp: tuple[float, int] | None = None  # (when it ended, bytes_acked)
        self._after_step: tuple[float, int] | None = None  # (a bounded step, bytes_acked)
        self._recall = 0.0  # the estimate before bounded steps no probe has yet confirmed
        self._no_info = False  # TCP_INFO was unavailable: never paced (estimated mode)
        self._discarded = 0.0  # the bucket's discarded bytes at the last sample
        self._unused = 0.0  # of those, lost while the kernel had nothing to send either
        self._chunk = 0
        self._samples = 0
        self._last_sample = -1e18
        self._last_control = -1e18
        self._active_since_control = False
        self._held = False  # the bucket made a paced chunk wait since the last step
        self._next_probe = float("inf")
        self._probe_from: float | None = None  # the estimate a running probe began at
        self._probe_step = 0.0
        self._probe_span_from = 0.0  # where a probe's steps start to grow from (see _probe_up)
        # probes left to calibrate the ramp's estimate (0: the next is no longer the first
        # after the ramp)
        self._calibrations = 0
        self._probe_hold: tuple[float, int] | None = None  # since when a probe measures
        self._measured = 0.0  # the path's rate as last measured (the ramp, a probe)
        self._lowered_at = -1e18  # when a queue or a measurement last took the rate down
        self._queue_base = 0.0  # queueing delay when no probe runs (smoothed)
        self._queues = (0.0, 0.0)  # the queueing delay of the last two control intervals
        self.queue_delay_s: float | None = None
        #: how often each decision of the estimated rate was taken (diagnostics)
        self.events: dict[str, int] = {}
        if config.rate_bps is not None:
            self._estimate = config.rate_bps / 8.0
            self._install(now)

    # ------------------------------------------------------------------ state

    @property
    def bottleneck_rate(self) -> float | None:
        """The rate (bytes/s) currently taken as the bottleneck, or None before estimating."""
        return self._estimate

    @property
    def pacing_rate(self) -> float | None:
        """Bytes/s currently released, or None while unpaced."""
        return None if self._bucket is None else self._bucket.rate

    @property
    def ramping(self) -> bool:
        """Whether an estimated rate is still in its ramp."""
        return self._ramp is not None

    @property
    def samples(self) -> int:
        """``TCP_INFO`` reads so far."""
        return self._samples

    @property
    def unpaced_bytes(self) -> int:
        """Bytes charged so far that were not paced streams' (queries, control frames)."""
        return self._unpaced_total

    @property
    def discarded_bytes(self) -> float:
        """Rate the bucket could not spend (nothing was ready to send for longer than the
        burst): idle time between uploads, or stalls during one."""
        return 0.0 if self._bucket is None else self._bucket.discarded

    @property
    def forgiven_bytes(self) -> float:
        """Bytes sent beyond the rate and never charged (debt over ``max_debt_s``)."""
        return 0.0 if self._bucket is None else self._bucket.forgiven

    def settle(self, now: float) -> None:
        """Bring the counters up to ``now`` (the bucket refills lazily, when next asked): read
        :attr:`discarded_bytes` after this to exclude what an idle spell before ``now`` lost."""
        if self._bucket is not None:
            self._bucket.settle(now)

    # ------------------------------------------------------------------ the writer's calls

    def chunk_size(self, upper: int) -> int:
        """Bytes released per token wait: ``chunk_time_s`` of link time within [4 KiB, upper].

        On a slow link that is less than a frame, so frames shrink with it; on a fast one
        it is several frames per wake-up (the core still cuts frames at ``max_chunk``).
        Before an estimated rate starts, one initial window; unpaced (no TCP_INFO):
        ``upper``.
        """
        rate = self.pacing_rate
        if rate is None:
            if self._no_info:
                return upper
            # The first chunk of an estimated rate: one initial window, not a burst the
            # ramp would start behind.
            return min(upper, self.config.initial_window * DEFAULT_MSS)
        return max(min(4096, upper), min(upper, int(rate * self.config.chunk_time_s)))

    def delay(self, chunk: int, now: float) -> float:
        """Seconds to wait before releasing a chunk of ``chunk`` bytes (0.0: now)."""
        self._active_since_control = True
        if chunk > self._chunk:
            self._chunk = chunk
            if self._bucket is not None:  # the burst floor is two chunks
                rate = self._bucket.rate
                self._bucket.set_rate(rate, self._burst(rate), now)
        self.settle(now)  # (an idle spell that ends now shows as unused rate in the sample)
        self._sample(now)
        wait = 0.0 if self._bucket is None else self._bucket.delay(now)
        if wait > 0:
            self._held = True
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

    def consume(self, nbytes: int, now: float, *, paced: int | None = None) -> None:
        """Charge bytes sent on the connection (paced chunks and everything else), of which
        ``paced`` were the paced streams' (None: as many as were released and not yet
        charged, right only when a released chunk goes out as released, uncompressed)."""
        if paced is None:
            paced = min(nbytes, self._paced_pending)
            self._paced_pending -= paced
        else:
            paced = min(nbytes, paced)
            self._paced_pending = 0
        self._unpaced_since_control += nbytes - paced
        self._unpaced_total += nbytes - paced
        if nbytes > paced:
            self._unpaced_writes.append((now, nbytes - paced))
        if self._bucket is not None:
            self._bucket.consume(nbytes, now)

    def account(self, total_written: int, now: float, *, paced_written: int | None = None) -> None:
        """Charge what the connection wrote since the last call (``total_written`` is a
        running byte count): queries and control frames share the link with the upload, so
        they delay the next paced chunk instead of overfilling the bottleneck.

        ``paced_written`` is the running count of those bytes that the paced streams
        wrote. A connection that compresses must give it: a compressed chunk is shorter on
        the wire than when released, and the difference, taken for paced bytes, hid the
        queries (ionn-bench, ResNet50 over 80 Mbit/s: 600 KB query tensors every 0.4 s read
        as no unpaced traffic at all, their queues as the rate's, and the estimate sank
        from 112 to 31 Mbit/s).
        """
        delta = total_written - self._written
        self._written = total_written
        paced: int | None = None
        if paced_written is not None:
            paced = paced_written - self._paced_written
            self._paced_written = paced_written
        if delta > 0:
            self.consume(delta, now, paced=paced)

    # ------------------------------------------------------------------ the bucket

    def _burst(self, rate: float) -> float:
        return max(2.0 * self._chunk, rate * self.config.burst_s)

    def _install(self, now: float, rate: float | None = None) -> None:
        """Pace at ``rate`` (default: gain x the estimate) from ``now`` on."""
        cfg = self.config
        if rate is None:
            assert self._estimate is not None
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

    def _owe(self, nbytes: float, now: float) -> None:
        """Charge bytes that queue ahead of the upload (it waits until they drained)."""
        if self._bucket is not None and nbytes > 0:
            self._bucket.consume(int(nbytes), now)

    # ------------------------------------------------------------------ measuring

    def _sample(self, now: float) -> None:
        cfg = self.config
        interval = cfg.sample_interval_s
        if self._ramp is not None:  # a ramp reacts within a fraction of its doubling
            interval = min(interval, cfg.ramp_min_s / 10)
        if now - self._last_sample < interval:
            return
        self._last_sample = now
        if cfg.rate_bps is not None:
            return
        info = self._info()
        if info is None:
            self._no_info = self._bucket is None
            return
        self._samples += 1
        # Rate the bucket lost since the last sample counts as unused only if the kernel
        # had nothing to send either: a writer blocked on a full socket (a full path, a
        # slow reader) lets the bucket overflow too, and is not application-limited.
        discarded = self.discarded_bytes
        if info.app_limited:
            self._unused += discarded - self._discarded
        self._discarded = discarded
        self._log.add(info, now, self._written, self._unused)
        if self._after_ramp is not None:
            self._measure_after_ramp(info, now)
        if self._after_step is not None:
            self._measure_after_step(info, now)
        if self._estimate is not None:
            self._control(info, now)
        elif self._ramp is None:
            self._ramp = Ramp(
                info, now, initial_window=cfg.initial_window, cap=cfg.initial_rate_bps / 8
            )
            self._install(now, self._ramp.rate)
        else:
            self._ramp_step(info, now)

    def _queue(self, info: TcpInfo, now: float, sending: float) -> tuple[float, float]:
        """(queueing delay in the network and the socket, the socket's part alone) in
        seconds at ``sending`` bytes/s.

        Unsent bytes up to the bucket's debt were written ahead of the rate (a query's
        tensor, a released chunk) and the bucket already holds the upload back until the
        link has drained them: they are not the rate's fault. Counting them backed off on
        every large query while the upload ran on its reserve share (ionn-bench, ResNet50's
        600 KB inputs: the estimate sank from ~70 to 35-50 Mbit/s on 76).
        """
        if sending <= 0:
            return max(0.0, info.rtt_s - info.min_rtt_s), 0.0
        owed = self._bucket.debt(now) if self._bucket is not None else 0.0
        # (two chunks may always wait: the writer hands the socket one while one leaves)
        in_socket = max(0.0, info.notsent_bytes - owed - 2 * self._chunk) / sending
        explained = unpaced_queue(self._unpaced_writes, info, now, sending) + ack_delay(
            info, self._chunk, sending
        )
        network = max(0.0, info.rtt_s - info.min_rtt_s - explained)
        return network + in_socket, in_socket

    def _backlog(self, info: TcpInfo) -> float:
        """Bytes queued on the path: in flight beyond one bandwidth-delay product at the
        estimate (the smoothed RTT trails a queue that is still growing; this does not)."""
        assert self._estimate is not None
        # (a segment is at most one chunk: loopback's MSS is 64 KiB, a slow rate's chunk 4 KiB)
        segment = min(info.mss or DEFAULT_MSS, self._chunk or DEFAULT_MSS)
        inflight = float(info.unacked_segments * segment)
        queued = info.rtt_s - info.min_rtt_s - ack_delay(info, self._chunk, self._estimate)
        by_rtt = max(0.0, queued) * self._estimate
        return max(by_rtt, inflight - self._estimate * info.min_rtt_s)

    def _lower_bound_only(self, start: float, now: float) -> bool:
        """Whether what the path delivered between ``start`` and ``now`` is only a lower
        bound of its rate, as BBR treats an application-limited sample: the sender left
        more than a small share of the pacing rate unused (nothing was ready to send: a
        blob waiting for the reply to the one before, a server busy loading), or the peer's
        receive window held sending back for more than ``tune.WINDOW_BOUND`` of the time
        (a reader slower than the path: an edge server loading a partition).

        Such a sample may raise an estimate but never lowers one, never caps a ramp's
        growth and never ends a ramp: blob pieces go up request by request, and deliveries
        taken for the path's rate held the pacing rate at what the sender happened to
        write; a slow reader's, at what it took (ionn-bench, ResNet50 over Wi-Fi: a probe
        measured 19 Mbit/s on a 106 Mbit/s path, held for 13 s until the next probe).
        """
        if self._reader_held(start, now):
            return True
        if self._bucket is None:
            return False
        unused = self._log.unused(start, now)
        return unused is not None and unused > tune.APP_LIMITED * self._bucket.rate

    def _reader_held(self, start: float, now: float) -> bool:
        """Whether the peer's receive window held sending back for more than
        ``tune.WINDOW_BOUND`` of the time between ``start`` and ``now``."""
        held = self._log.window_held(start, now)
        return held is not None and held > tune.WINDOW_BOUND

    def _count(self, event: str) -> None:
        self.events[event] = self.events.get(event, 0) + 1

    # ------------------------------------------------------------------ the ramp

    def _ramp_step(self, info: TcpInfo, now: float) -> None:
        ramp = self._ramp
        assert ramp is not None
        cfg = self.config
        queue, in_socket = self._queue(info, now, ramp.rate)
        self.queue_delay_s = queue
        span = max(info.rtt_s, cfg.ramp_span_s)
        # From a send to the ACK that shows its queue: a round trip and the few ACKs the
        # kernel's smoothed RTT needs.
        lag = info.rtt_s + tune.SRTT_SEGMENTS * ack_segment(info) / ramp.rate
        limited = self._lower_bound_only(now - lag - span, now)
        self._flights.add(info.delivery_rate, now, app_limited=False)
        # Only a queue in the network ends the ramp at once: unsent bytes in the socket are
        # the congestion window's (slow start opens it within a few round trips). Not while
        # the sender leaves the rate unused: the last segment before a pause waits for the
        # receiver's delayed-ACK timer (tens of ms), an RTT that is no queue (loopback: the
        # ramp ended at its first rate, 8 Mbit/s), and a queue a pause drains is no limit.
        # Nor while the path keeps up with what was released (_ramp_kept_up).
        delivered = self._log.delivered(now, span)
        kept_up = self._ramp_kept_up(ramp, now, lag, delivered)
        queued = queue - in_socket > cfg.ramp_exit_s
        if self._ramp_queue_ends_step(ramp, info, now, queued, ends=not (limited or kept_up)):
            return
        # (over a longer span: after a pause a bottleneck's burst allowance passes at once,
        # and the most delivered over a round trip would be that, not the path's rate)
        longer = self._log.delivered(now, max(span, tune.RAMP_BEST_SPAN_S))
        if longer is not None:
            self._ramp_best.add(longer, now, app_limited=limited)
            self._ramp_delivered.add(longer, now, app_limited=False)
        # The kernel's own sample covers one flight (send to ACK), not the pauses between
        # blobs, as BBR's do: a lower bound that may raise the most delivered.
        self._ramp_best.add(info.delivery_rate, now, app_limited=True)
        # What was written over the span whose bytes are acknowledged now: no more than the
        # ramp's rate then (the rest is a query's burst, which the bucket yields to).
        sent = self._log.written(now - lag - span, now - lag)
        if sent is not None:
            sent = min(sent, ramp.rate_at(now - lag - span / 2))
        used, self._held = self._held, False
        if limited:
            # A lower bound: no sign of a full path, and the growth is bounded by the most
            # the path was seen to deliver lately (BBR's windowed maximum), not by this.
            delivered = self._ramp_best.estimate(now)
            sent = None
        if self._keeps_up(delivered, sent, span, in_socket):
            self._stalled_since = None
            if ramp.rate > self._stall_rate * cfg.ramp_gain:
                self._shrinks = 0  # past where it last stalled: that was a sample's noise
            # Never more than ramp_gain x what the path delivered over the last round trip,
            # nor than was released then (a bottleneck's burst allowance passes a few
            # milliseconds faster than its rate): once the rate passes the path's, the
            # deliveries stop growing and so does the rate, before a queue shows.
            cap = ramp.rate_at(now - lag - span / 2)
            if delivered is not None:
                cap = min(cap, delivered)
            doubling = max(cfg.ramp_min_s, cfg.ramp_rtts * (lag + span / 2))
            used = used and in_socket <= cfg.ramp_exit_s
            ramp.grow(now, used=used, cap=cfg.ramp_gain * cap, doubling=doubling)
        else:
            # Acknowledged less than was written a round trip before: the path is full
            # (its queue shows a round trip or two later) or this host cannot send that
            # fast. Either way the deliveries are what the rate can be: back to them at
            # once, so a full path's queue stops growing; if that lasts, or keeps coming
            # back at one rate, the ramp ends.
            if self._stalled_since is None:
                self._stalled_since = now
            if not self._shrinks:
                self._stall_rate = ramp.rate
            self._shrinks += 1
            lasting = now - self._stalled_since >= 2.0 * (lag + span)
            if lasting or self._shrinks > tune.RAMP_SHRINKS:
                self._count("ramp ended by deliveries")
                self._end_ramp(info, now)
                return
            self._count("ramp back to deliveries")
            assert delivered is not None
            ramp.shrink(now, delivered)
        self._install(now, ramp.rate)

    def _ramp_kept_up(self, ramp: Ramp, now: float, lag: float, acked: float | None) -> bool:
        """Whether the kernel's delivery samples (each over one flight, as BBR's) show the
        path keeping up with what the ramp released (then a queue is the receiver's ACKs),
        and the bytes it acknowledged over the ramp's last span (``acked``, bytes/s) do
        too: ACKs a delay line releases in bursts make the kernel's samples read far above
        the path, and the ramp then never ended (simulated: paced at 1.3x the link,
        queries waiting 106 ms)."""
        flights = self._flights.estimate(now)
        released = ramp.rate_at(now - lag)
        return (
            flights is not None
            and flights >= tune.BEHIND * released
            # (a short span: read to RAMP_KEEPS_UP)
            and (acked is None or acked >= tune.RAMP_KEEPS_UP * released)
        )

    def _ramp_queue_ends_step(
        self, ramp: Ramp, info: TcpInfo, now: float, queued: bool, *, ends: bool
    ) -> bool:
        """A queue in the network (``queued``) ends the ramp if it ``ends`` (see
        _ramp_step), but holds it through a stall (see _ramp_stalled). True: this step
        is over (the ramp ended or holds)."""
        since = ramp.stall_since
        if not queued and since is not None and now - since > tune.RAMP_STALL_S:
            ramp.stall_since = None
        if not (queued and ends):
            return False
        if not self._ramp_stalled(ramp, info, now):
            self._count("ramp ended by a queue")
            self._end_ramp(info, now)
        return True

    def _ramp_stalled(self, ramp: Ramp, info: TcpInfo, now: float) -> bool:
        """Whether the queue that would end the ramp is a stall's: the path delivered a
        fraction of the ramp's rate over the last round trips (the ramp grows no faster
        than the path delivers, so the path kept up until then), as a host stopped for a
        moment does (the link emulator, an edge server loading, a client planning). For
        ``tune.RAMP_STALL_S`` from then on, while the stall lasts, its queue drains and
        what the writer held back meanwhile goes out, no queue ends the ramp: ended there,
        the stall's deliveries left the estimate at a sixth of an 80 Mbit/s link for 15 s
        (ionn-bench, ResNet50 over Wi-Fi)."""
        if ramp.stall_since is None:
            span = max(2.0 * info.rtt_s, tune.EXIT_SPAN_S)
            delivered = self._log.delivered(now, span)
            # (below both the ramp's rate and the most the path delivered lately: a ramp
            # grown past the path while the sender left it unused is no stall)
            best = self._ramp_delivered.estimate(now)
            rate = min(ramp.rate_at(now - info.rtt_s - span / 2), best or 0.0)
            if delivered is None or delivered >= (1.0 - tune.LONG_QUEUE_STEP) * rate:
                return False
            ramp.stall_since = now
        if now - ramp.stall_since > tune.RAMP_STALL_S:
            return False
        self._count("ramp held through a stall")
        return True

    def _keeps_up(
        self, delivered: float | None, sent: float | None, span: float, in_socket: float = 0.0
    ) -> bool:
        """Whether the path acknowledged, over the last ``span``, about what was written a
        round trip before. Unknown counts as yes: too little history, bytes the congestion
        window holds in the socket (slow start), or an unpaced write too large for the span
        to compare."""
        if delivered is None or sent is None or in_socket > 0:
            return True
        largest = max((nbytes for _, nbytes in self._unpaced_writes), default=0)
        if largest > tune.RAMP_UNPACED * sent * span:
            return True
        return delivered >= tune.RAMP_KEEPS_UP * sent

    def _end_ramp(self, info: TcpInfo, now: float) -> None:
        """The path is full: it delivered all it could over the last round trips, and no
        more than was released a round trip before (its burst allowance aside)."""
        ramp = self._ramp
        assert ramp is not None
        span = max(2.0 * info.rtt_s, tune.EXIT_SPAN_S)
        estimate = ramp.rate_at(now - info.rtt_s - span / 2)
        delivered = self._log.delivered(now, span)
        if delivered is not None and not self._lower_bound_only(now - info.rtt_s - span, now):
            estimate = min(estimate, delivered)
        estimate = max(estimate, ramp.first)
        self._ramp = None
        self._estimate = self._measured = estimate
        self._floor = estimate * self.config.min_fraction
        self._last_control = now
        interval = max(self.config.control_interval_s, 4.0 * info.min_rtt_s)
        self._next_probe = now + tune.FIRST_PROBE_INTERVALS * interval
        self._calibrations = tune.CALIBRATION_PROBES
        self._install(now)
        # The ramp's last round trip left a queue: bytes unsent in the socket and queued on
        # the path. Owing them makes the next paced chunks wait until they drain, instead
        # of a query waiting behind both.
        self._owe(info.notsent_bytes + self._backlog(info), now)
        self._after_ramp = (now, info.bytes_acked)

    def _measure_after_ramp(self, info: TcpInfo, now: float) -> None:
        """For a round trip after the ramp the path still delivers what the ramp's last
        round trip sent, above its rate, at exactly its rate (its queue is not empty, so
        no burst allowance either): a measurement without the ramp's growth in it, which
        the deliveries before the end lag by a round trip or two (at 20 Mbit/s with 20 ms
        each way they read 35% low). Only raises the estimate; needs a round trip long
        enough for a few dozen ACKs."""
        assert self._after_ramp is not None and self._estimate is not None
        start, acked = self._after_ramp
        if now - start < tune.AFTER_RAMP * info.rtt_s:
            return
        self._after_ramp = None
        if now - start < tune.AFTER_RAMP_MIN_S:
            return
        delivered = (info.bytes_acked - acked) / (now - start)
        if delivered > self._estimate:
            self._count("ramp's estimate raised by its last round trip")
            self._estimate = self._measured = delivered
            self._floor = delivered * self.config.min_fraction
            self._install(now)

    def _measure_after_step(self, info: TcpInfo, now: float) -> None:
        """After a bounded step down, the queue that made it is still there and the upload
        waits for it to drain (it is owed): for most of a round trip, which the queue
        lengthens, the path delivers at its own rate now. A path that stalled and came back
        delivers at its full rate: the estimate returns to that. A path that got slower
        delivers at its new rate, steadily (both halves of the span within tune.STEADY of each
        other): the estimate goes down to that. A stall delivers nothing, or unevenly as it
        ends: no measurement (the next interval's queue steps it further down)."""
        assert self._after_step is not None and self._estimate is not None
        start, acked = self._after_step
        if now - start < tune.AFTER_RAMP * info.rtt_s:
            return
        self._after_step = None
        if now - start < tune.AFTER_RAMP_MIN_S:
            return
        delivered = (info.bytes_acked - acked) / (now - start)
        middle = (start + now) / 2
        first, second = self._log.acked(start, middle), self._log.acked(middle, now)
        if delivered > self._estimate:
            self._count("estimate raised by the drain after a step")
        elif (
            first
            and second
            and min(first, second) >= tune.STEADY * max(first, second)
            and not self._lower_bound_only(start - info.rtt_s, now)
        ):
            self._count("estimate lowered by the drain after a step")
        else:
            return
        self._lowered_at = now
        self._estimate = self._measured = max(self._floor, delivered)
        # (measured: no rate from before the stall to go back to, no early probe)
        self._recall = 0.0
        self._next_probe = now + self.config.probe_interval_s
        self._install(now)

    # ------------------------------------------------------------------ steady state

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
        held, self._held = self._held, False
        self._delivered_at_least(info, now)
        signals = self._signals(info, now, elapsed)
        queue, in_socket = signals.queue, signals.in_socket
        # A queue that grew over the last two intervals is the path not keeping up as much
        # as one it is behind on: a little too fast (an estimate 1% high) is too little
        # to show as behind, but its queue grows without end.
        growing = queue > self._queues[1] > self._queues[0]
        self._queues = (self._queues[1], queue)
        long_queue = queue > cfg.queue_high_s and (signals.behind or growing)
        decrease = in_socket > cfg.queue_high_s or long_queue
        if decrease and signals.heavy:
            return
        if decrease:
            self._decrease(info, now, signals)
        elif self._probe_from is not None:
            if not self._probe(info, now, signals, interval, held and active):
                return
        else:
            self._queue_base += min(1.0, elapsed / tune.BASE_SMOOTHING_S) * (
                queue - self._queue_base
            )
            if not (held and active):
                return
            if now >= self._next_probe:
                self._count("probe")
                self._probe_from = self._probe_span_from = self._estimate
                self._probe_step = cfg.increase
                self._estimate *= 1.0 + cfg.increase
            elif self._estimate < self._measured and queue < self._queue_base + cfg.queue_low_s:
                # Back up after a step down, but never past what the path was measured to
                # deliver: a step down may have been a noisy sample's (a busy host delays
                # ACKs), and only a probe may find that the path got faster.
                self._estimate = min(self._measured, self._estimate * (1.0 + cfg.increase))
            elif self._estimate > self._measured and queue > self._queue_base + cfg.queue_low_s:
                # ...and down to it, step by step, while a queue shows.
                self._estimate = max(self._measured, self._estimate * (1.0 - cfg.decrease))
            else:
                return
        self._install(now)

    def _delivered_at_least(self, info: TcpInfo, now: float) -> None:
        """What the path delivered over the last ``tune.LOWER_BOUND_S`` (queries' bytes
        too) is a rate it has: the rate last measured, which the estimate goes back down to
        while a queue shows (see _control), is never below it. A ramp that ended early
        measured 57 Mbit/s on a 76 Mbit/s link; a probe rose past 76 but its queues were
        the queries' (their results, coming down, delay the upload's ACKs), so nothing
        measured the path, and the estimate sank back to 57 while 57 to 76 were delivered
        (ionn-bench, ResNet50 over 80 Mbit/s Wi-Fi)."""
        span = tune.LOWER_BOUND_S
        start = now - info.rtt_s - span
        if start < self._lowered_at:
            return  # (deliveries from before a path got slower are no bound of it now)
        delivered = self._log.delivered(now, span)
        if delivered is None or delivered <= self._measured:
            return
        if self._lower_bound_only(start, now):
            return
        self._count("measured rate raised by deliveries")
        self._measured = delivered

    def _decrease(self, info: TcpInfo, now: float, signals: _Signals) -> None:
        """A queue that grows: if the path was behind, what it delivered is its rate (at
        most one step down unless the queue is long: a sample can read low; a probe that
        went past the path ends there; at most one bounded step either way, see
        _step_down); else one step down. The queue is owed, so it drains before the upload
        goes on."""
        assert self._estimate is not None
        cfg = self.config
        self._lowered_at = now
        in_socket = signals.in_socket > cfg.queue_high_s
        self._count("decrease: unsent bytes" if in_socket else "decrease")
        # (at least min_span_s: the first of an excess passes at once, a bottleneck's
        # burst allowance, and over two short intervals read 2% high)
        span = max(cfg.min_span_s, 2.0 * info.rtt_s)
        path = self._path_rate(info, now, span)
        long_queue = signals.queue > tune.LONG_QUEUE * cfg.queue_high_s
        step = self._estimate * (1.0 - tune.LONG_QUEUE_STEP)
        if path is not None and path < step and (long_queue or self._probe_from is not None):
            self._step_down(info, now, path, step)
        elif self._probe_from is not None and path is not None:
            self._end_probe(info, now, path)
        elif path is not None and long_queue:
            self._end_probe(info, now, None)
            self._estimate = self._measured = max(self._floor, path)  # the path got slower
        else:
            lower = self._estimate * (1.0 - cfg.decrease)
            if path is not None:
                lower = max(lower, min(self._estimate, path))
                # (the path was full: no coming back above what it delivered)
                self._measured = min(self._measured, max(self._floor, path))
            probe_start = self._probe_from
            self._end_probe(info, now, None)
            if probe_start is not None:
                # A probe's last step may be far past the path (the first after the ramp
                # grows fast), and a step down from it would stay there: no further than
                # what the path delivered while it filled up, nor below where it began.
                recent = max(2.0 * info.rtt_s, tune.EXIT_SPAN_S)  # (since it filled up)
                delivered = self._log.delivered(now, recent) or 0.0
                lower = min(lower, max(probe_start, delivered))
            self._estimate = max(self._floor, lower)
        self._install(now)
        self._owe(self._backlog(info), now)

    def _step_down(self, info: TcpInfo, now: float, path: float, step: float) -> None:
        """The path delivered far less than the estimate while a long queue showed: it got
        much slower, or it stalled (a host stopped for a moment by CPU contention: next to
        nothing delivered, then the full rate again). Which one, this span cannot tell;
        taking the stall's deliveries for the rate sank the estimate to its floor, where
        nothing measured the path again until a probe. So the estimate goes one bounded
        step down (``step``; the next interval's queue takes it further), the path's
        rate as measured to what it delivered, and two measurements follow: the drain of
        the queue right after (_measure_after_step), else a probe within a few intervals
        that rises quickly back to the rate held before (_probe_up)."""
        assert self._estimate is not None
        recall = max(self._recall, self._estimate)
        self._end_probe(info, now, None)
        self._estimate = max(self._floor, step)
        self._measured = max(self._floor, min(self._measured, path))
        self._recall = recall
        self._after_step = (now, info.bytes_acked)
        interval = max(self.config.control_interval_s, 4.0 * info.min_rtt_s)
        self._next_probe = min(self._next_probe, now + tune.FIRST_PROBE_INTERVALS * interval)

    def _path_rate(self, info: TcpInfo, now: float, span: float) -> float | None:
        """What the path delivered over the last ``span`` if it was behind meanwhile: then
        that is its rate. None: it kept up (or too little history).

        Behind: it acknowledged less than was written a round trip before (what a full path
        leaves queued, in the network or, once the congestion window caught up with it,
        in the socket). Not less than the pacing rate: a busy host may not write that
        much, and measuring the path then measures the host, an estimate that sinks with
        the CPU. Nor more than the pacing rate: what the path owes on top of that is
        unpaced bursts, a query's tensor, which the bucket already yields to.
        """
        delivered = self._log.delivered(now, span)
        sent = self._log.written(now - info.rtt_s - span, now - info.rtt_s)
        if (
            delivered is None
            or sent is None
            or self._lower_bound_only(now - info.rtt_s - span, now)
        ):
            return None
        if self._bucket is not None:
            sent = min(sent, self._bucket.rate)
        return delivered if delivered < tune.BEHIND * sent else None

    def _signals(self, info: TcpInfo, now: float, elapsed: float) -> _Signals:
        """What one control interval saw (see _Signals)."""
        sending = self._bucket.rate if self._bucket is not None else 0.0
        unpaced, self._unpaced_since_control = self._unpaced_since_control, 0
        # Heavy unpaced traffic (large query tensors) queues at the bottleneck in bursts
        # that pacing cannot prevent and the bucket already yields to: that queue says
        # nothing about the rate, and backing off on it starved the upload (ionn-bench,
        # ResNet50 over 80 Mbit/s: 80 -> 20 Mbit/s estimated while queries sent ~34). A
        # burst outlives the interval it was written in, so its rate is smoothed.
        weight = min(1.0, elapsed / tune.UNPACED_SMOOTHING_S)
        self._unpaced_rate += weight * (unpaced / elapsed - self._unpaced_rate)
        heavy = sending > 0 and self._unpaced_rate > tune.HEAVY_UNPACED * sending
        # Our queue is in the network (RTT above its minimum) and, when the kernel's own
        # pacing (BBR) holds back what we release too fast, in the socket (not yet sent);
        # not when the peer's receive window held the socket back: then the reader is slow
        # (an edge server busy loading a partition), not the path, and backing off only
        # lowered the estimate for the rest of the upload (ionn-bench: 70 -> 49 Mbit/s on a
        # 76 Mbit/s link, every step taken on unsent bytes at a 2 ms RTT).
        window_bound = self._reader_held(now - elapsed, now)
        queue, in_socket = self._queue(info, now, sending)
        if window_bound:
            queue -= in_socket
            in_socket = 0.0
        self.queue_delay_s = queue
        behind = self._path_rate(info, now, max(self.config.min_span_s, 2.0 * info.rtt_s))
        return _Signals(queue, in_socket, heavy, window_bound, behind is not None)

    def _probe(
        self, info: TcpInfo, now: float, signals: _Signals, interval: float, used: bool
    ) -> bool:
        """One interval of a running probe; False: nothing changed.

        A queue above its level before the probe stops the rise, and what the path
        delivers from then on is measured: with the queue still there after two intervals,
        the path was full all along and that is its rate. (Not from before the queue showed:
        the first of an excess passes at once, a bottleneck's burst allowance, and read 2%
        high over the intervals before.) A queue that went came from elsewhere (a query,
        the host's scheduling): the rise goes on. Past ``queue_high_s`` before two intervals
        the estimate returns to where the probe began.
        """
        cfg = self.config
        queued = signals.queue > self._queue_base + cfg.queue_low_s
        if queued and self._probe_hold is None:
            self._probe_hold = (now, info.bytes_acked)
            return False
        if queued:
            assert self._probe_hold is not None
            since, acked = self._probe_hold
            if now - since >= max(2.0 * interval, tune.PROBE_MEASURE_S):
                delivered = (info.bytes_acked - acked) / (now - since)
                assert self._estimate is not None
                lower_bound = delivered < self._estimate and self._lower_bound_only(
                    since - info.rtt_s, now
                )
                if lower_bound or (
                    self._estimate < self._recall
                    and self._delivered_all(info, since, now, delivered)
                ):
                    # Below what the path carried before a stall, and it delivered all
                    # that was written: the queue was the host's (a millisecond of
                    # scheduling), not the path's, and what was delivered is only this
                    # probe's own low rate. Taken for the path's, it kept the estimate
                    # low for minutes. The rise goes on.
                    self._count("probe's queue was not the path's")
                    self._probe_hold = None
                    if not used or signals.window_bound:
                        return False
                    self._probe_up()
                    return True
                self._count("probe measured the path")
                self._end_probe(info, now, delivered)
                return True
            if signals.queue > self._queue_base + cfg.queue_high_s:
                self._count("probe found a queue")
                self._end_probe(info, now, None)
                return True
            return False
        self._probe_hold = None
        # (an interval bound by the reader, or one the upload could not fill, says
        # nothing about the network's rate)
        if not used or signals.window_bound:
            return False
        self._probe_up()
        return True

    def _delivered_all(self, info: TcpInfo, since: float, now: float, delivered: float) -> bool:
        """Whether the path delivered, from ``since`` to ``now``, about all that was written
        (queries too) a round trip before: then it kept up, and what it delivered is only
        the sending rate, not the path's (unknown: no)."""
        written = self._log.written(since - info.rtt_s, now - info.rtt_s)
        return written is not None and delivered >= tune.BEHIND * written

    def _probe_up(self) -> None:
        """One step of a probe: small where the path's rate is expected (a step that
        overshoots queues for as long as the queue takes to show), growing past that."""
        assert self._estimate is not None and self._probe_from is not None
        if self._recall > 0 and self._estimate >= self._recall:
            # Back at the rate held before a stall: from here on as a probe that began
            # here, in small steps (the path's rate may be near).
            self._recall = 0.0
            self._probe_span_from = self._estimate
            self._probe_step = self.config.increase
        elif (
            self._estimate < self._recall
            or self._estimate > self._probe_span_from * self._probe_span()
        ):
            top = tune.RAMP_PROBE_MAX_STEP if self._calibrations else tune.PROBE_MAX_STEP
            self._probe_step = min(top, self._probe_step * tune.PROBE_GROWTH)
        self._estimate *= 1.0 + self._probe_step

    def _probe_span(self) -> float:
        """How far a probe rises in small steps before they grow. The first after the ramp
        grows once a little past where a right estimate's path is (1 / gain), and faster:
        a ramp that a busy host's RTT ended, not the path's queue, left the estimate at a
        fraction of the path, down to its first rate, and small steps took seconds back
        (ionn-bench, ResNet50 over 80 Mbit/s Wi-Fi while the client plans: 27 -> 64 Mbit/s
        in 3.5 s, from 8 Mbit/s 5 s). A right estimate meets its queue before that."""
        if self._calibrations:
            return tune.RAMP_PROBE_SPAN / self.config.gain
        return tune.PROBE_SPAN

    def _end_probe(self, info: TcpInfo, now: float, delivered: float | None) -> None:
        """Stop a running probe (if any) at the queue it found: the path's rate is what it
        delivered meanwhile (``delivered``; None: back to where the probe began), and the
        queue is owed, so it drains before the upload goes on."""
        start, self._probe_from = self._probe_from, None
        self._probe_hold = None
        if start is None:
            return
        self._recall = 0.0  # (what it found is the path's rate now)
        if delivered is None and self._calibrations > 1:
            # The first probe after the ramp calibrates its estimate, which a bottleneck's
            # burst allowance leaves a few percent high (above the path: the queries
            # queue behind it). Ended before it measured (by a slow reader, a queue that
            # was not its own), it was left uncalibrated until the next probe, 10 s on.
            self._calibrations -= 1
            interval = max(self.config.control_interval_s, 4.0 * info.min_rtt_s)
            self._next_probe = now + tune.FIRST_PROBE_INTERVALS * interval
        else:
            self._calibrations = 0
            self._next_probe = now + self.config.probe_interval_s
        assert self._estimate is not None
        if delivered is None:
            self._estimate = max(self._floor, start)
        else:
            self._lowered_at = now
            self._estimate = self._measured = max(self._floor, delivered)
        self._install(now)
        queued = max(0.0, info.rtt_s - info.min_rtt_s - self._queue_base) * self._estimate
        self._owe(queued, now)
