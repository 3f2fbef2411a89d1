"""What a TCP connection delivers, measured from ``TCP_INFO``, and the start of a paced rate.

Pure pieces of :mod:`ionn_net.aio.pacing` (time passed in, no clock reads):

* :class:`RateEstimator` -- windowed maximum of rate samples; app-limited samples are lower
  bounds and only count when they raise the maximum.
* :class:`LinkRateMeter` -- rate samples from the growth of ``bytes_acked`` over a few round
  trips (the low-water mark of :mod:`ionn_net.aio.protocol` follows it).
* :class:`DeliveryLog` -- bytes acknowledged and bytes the kernel sent at each sample: how
  fast the path delivered over a recent span, and how fast it was fed a round trip before.
* :class:`Ramp` -- the first rate of an estimated pacing rate and its growth.
* :func:`ack_delay`, :func:`unpaced_queue` -- what of the smoothed RTT is no queue of the
  upload's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from ionn_net.aio.pacing_tuning import ACK_SEGMENTS, SRTT_KEEPS
from ionn_net.aio.sockopts import TcpInfo

__all__ = [
    "DEFAULT_MSS",
    "DeliveryLog",
    "LinkRateMeter",
    "Ramp",
    "RateEstimator",
    "ack_delay",
    "ack_segment",
    "unpaced_queue",
]

#: Segment size assumed where TCP_INFO does not give one.
DEFAULT_MSS = 1448


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

    __slots__ = ("_estimator", "_history", "_min_span", "latest", "samples")

    def __init__(self, window_s: float, min_span_s: float) -> None:
        self._estimator = RateEstimator(window_s)
        self._min_span = min_span_s
        self._history: deque[tuple[float, int, bool]] = deque(maxlen=4096)
        self.samples = 0
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

    def estimate(self, now: float) -> float | None:
        """Bytes/s: the largest sample of the window, or None before the first."""
        return self._estimator.estimate(now)


class DeliveryLog:
    """(time, bytes acknowledged, bytes the kernel sent, bytes the application wrote, rate
    left unused, time the peer's receive window held sending back) at each ``TCP_INFO``
    sample.

    Sent means on the path: bytes waiting in the socket (a congestion window that holds
    them back) or in the transport are not. Written counts them too. Unused is the pacing
    bucket's running count of rate it could not spend because nothing was ready to send
    (:attr:`~ionn_net.aio.token_bucket.TokenBucket.discarded`): where it grows, the sender
    was application-limited, and what the path delivered then is a lower bound of its rate.
    So it is where the receive window held sending back (``TcpInfo.rwnd_limited_s``): the
    path delivered what the reader took.
    """

    __slots__ = ("_log",)

    def __init__(self, length: int = 512) -> None:
        self._log: deque[tuple[float, int, int, int, float, float]] = deque(maxlen=length)

    def add(self, info: TcpInfo, now: float, written: int, unused: float = 0.0) -> None:
        sent = info.bytes_sent or info.bytes_acked + info.unacked_segments * (
            info.mss or DEFAULT_MSS
        )
        self._log.append((now, info.bytes_acked, sent, written, unused, info.rwnd_limited_s))

    def delivered(self, now: float, span: float) -> float | None:
        """Bytes/s acknowledged over the last ``span`` seconds up to the newest sample (None:
        less history than that)."""
        return self._rate(now - span, now, 1)

    def acked(self, start: float, end: float) -> float | None:
        """Bytes/s acknowledged between two past moments (None: not known then)."""
        return self._rate(start, end, 1)

    def sent(self, start: float, end: float) -> float | None:
        """Bytes/s the kernel sent between two past moments (None: not known then)."""
        return self._rate(start, end, 2)

    def written(self, start: float, end: float) -> float | None:
        """Bytes/s the application wrote between two past moments (None: not known)."""
        return self._rate(start, end, 3)

    def unused(self, start: float, end: float) -> float | None:
        """Bytes/s of pacing rate left unused between two past moments, the sender having
        nothing to send (None: not known then)."""
        return self._rate(start, end, 4)

    def window_held(self, start: float, end: float) -> float | None:
        """Share of the time between two past moments that the peer's receive window held
        sending back, a reader slower than the path (None: not known then)."""
        return self._rate(start, end, 5)

    def _rate(self, start: float, end: float, field: int) -> float | None:
        log = self._log
        if len(log) < 2 or log[0][0] > start or end <= start:
            return None
        first = last = log[0]
        for entry in log:
            if entry[0] <= start:
                first = entry
            if entry[0] <= end:
                last = entry
            else:
                break
        if last[0] <= first[0]:
            return None
        return (last[field] - first[field]) / (last[0] - first[0])


class Ramp:
    """The start of an estimated rate (bytes/s): a cautious first rate and its growth.

    The first rate is what TCP itself would send in one round trip (its congestion window,
    at least ``initial_window`` segments, over the handshake's RTT), at most ``cap``. It
    grows exponentially, only while the upload is held back by it (a rate it cannot use yet
    says nothing) and to at most a cap the caller derives from what the path delivered;
    it may go back down to what the path delivered. Every change is kept, so that the rate
    released a round trip ago, which the path's answer now is about, can be looked up.
    """

    __slots__ = ("_history", "_last", "first", "rate", "stall_since", "started")

    def __init__(self, info: TcpInfo, now: float, *, initial_window: int, cap: float) -> None:
        rtt = info.min_rtt_s if info.min_rtt_s > 0 else info.rtt_s
        # TCP's own window: the initial one, or what earlier traffic opened it to.
        window = max(initial_window, info.cwnd_segments) * (info.mss or DEFAULT_MSS)
        self.rate = min(cap, window / rtt) if rtt > 0 else cap
        self.first = self.rate
        self.started = now
        #: since when the path stalled under the ramp (None: it did not lately), for the
        #: caller's hold through a stall
        self.stall_since: float | None = None
        self._last = now
        self._history: deque[tuple[float, float]] = deque([(now, self.rate)], maxlen=1024)

    def grow(self, now: float, *, used: bool, cap: float, doubling: float) -> None:
        """Advance to ``now``: if the upload was held back by the rate meanwhile, double it
        every ``doubling`` seconds, to at most ``cap`` (never down)."""
        if used and now > self._last:
            grown = self.rate * 2.0 ** ((now - self._last) / doubling)
            self._set(now, max(self.rate, min(grown, cap)))
        self._last = now

    def shrink(self, now: float, rate: float) -> None:
        """Go down to ``rate`` (never below the first rate), and grow from there."""
        self._set(now, max(min(self.rate, rate), self.first))
        self._last = now

    def _set(self, now: float, rate: float) -> None:
        if rate != self.rate:
            self.rate = rate
            self._history.append((now, rate))

    def rate_at(self, when: float) -> float:
        """The rate released at ``when`` (the first one before the ramp began)."""
        rate = self.first
        for at, value in self._history:
            if at > when:
                break
            rate = value
        return rate


def ack_segment(info: TcpInfo) -> int:
    """The segment size ACKs come back for: the MSS, at most an Ethernet one (loopback's
    64 KiB MSS is not what a paced sender's segments are: its chunks are smaller)."""
    return min(info.mss or DEFAULT_MSS, DEFAULT_MSS)


def ack_delay(info: TcpInfo, chunk: int, sending: float) -> float:
    """How much of the smoothed RTT the receiver's delayed ACKs may explain (seconds), for
    paced chunks of ``chunk`` bytes at ``sending`` bytes/s.

    A receiver acknowledges every second full-sized segment at once but holds a lone one
    until the next segment arrives (or its delayed-ACK timer fires). A paced chunk of one
    segment is such a lone one, whose RTT sample then includes the wait for the next
    chunk: up to one chunk's spacing. On loopback (64 KiB MSS, so every chunk is one
    segment) that was the whole "queue": a smoothed RTT of 5-19 ms with nothing unsent and
    at most two segments in flight, which ended the ramp at once and stepped the estimate
    down to its floor (1.9 Mbit/s), so that clients stopped offloading. Chunks of several
    segments end on a lone one in few of their ACKs: nothing to explain.
    """
    mss = info.mss or DEFAULT_MSS
    if chunk <= 0 or chunk >= ACK_SEGMENTS * mss or sending <= 0:
        return 0.0
    return chunk / sending


def unpaced_queue(
    writes: Iterable[tuple[float, int]],
    info: TcpInfo,
    now: float,
    sending: float,
) -> float:
    """How much of the smoothed RTT the unpaced bytes written lately (``writes``: (time,
    bytes), oldest first) still explain, at ``sending`` bytes/s.

    A query's own bytes queue at the bottleneck for their transfer time (at 2 Mbit/s a
    16 KiB query is 69 ms), the bytes written behind them wait as long, and the smoothed
    RTT keeps 7/8 of that per ACK once their ACKs came back: not the upload's queue.
    """
    acks_per_s = sending / (2.0 * ack_segment(info))
    explained = 0.0
    for at, nbytes in reversed(list(writes)):
        if now - at > 1.0:
            break
        height = nbytes / sending
        since = now - (at + height + info.rtt_s)  # since its last ACK came back
        explained += height * SRTT_KEEPS ** (max(0.0, since) * acks_per_s)
    return explained
