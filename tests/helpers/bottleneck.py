"""A sender's TCP socket in front of a FIFO bottleneck, in simulated time, for the pacer.

What the pacer reads from ``TCP_INFO`` (bytes acknowledged, smoothed and minimum RTT,
unsent bytes, congestion window) follows from what was written and when, as the kernel
would report it for a path of ``rate`` bytes/s with ``delay_s`` each way and the queue at
the sender's end (the ``tbf`` of ``ionn_net.netem``): segments leave the socket while the
congestion window allows (slow start from ten segments, no loss), wait in the bottleneck's
FIFO, and are acknowledged one way-back later; the smoothed RTT is the kernel's 1/8
moving average of per-ACK samples. A query's round trip is its wait behind what is queued
(unsent bytes in the socket, then the bottleneck) plus its own transfer both ways.

The pacer is a pure class with the clock passed in: this drives it with the timings a
real connection would give it, so its start and steady state can be checked against the
queue they leave, which a test over a real link could only sample.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from ionn_net.aio.pacing import Pacer
from ionn_net.aio.sockopts import TcpInfo

MSS = 1448
SEGMENT = 4 * MSS  # what one ACK covers here (delayed ACKs, GSO): fewer events, same rates
INITIAL_WINDOW = 10 * MSS


@dataclass
class BottleneckPath:
    """One direction of a path: the socket, the bottleneck queue and the way back."""

    rate: float  # bytes/s of the bottleneck
    delay_s: float  # one way
    notsent_lowat: int = 128 * 1024
    #: backlog at which the bottleneck would drop (tbf's latency): the window halves then,
    #: as after a loss (the segment is not lost here: no retransmission is modelled)
    queue_limit_s: float = 0.05
    cwnd: float = INITIAL_WINDOW
    bytes_acked: int = 0
    bytes_written: int = 0
    srtt: float = 0.0
    min_rtt: float = float("inf")
    _unsent: deque[list[float]] = field(default_factory=deque)  # [bytes, tag]
    _notsent: int = 0
    _inflight: int = 0
    #: bytes the bottleneck lets through at once after an idle spell (tbf's burst:
    #: ``ionn_net.netem`` sets 2 ms of the rate, at least 16 KiB)
    burst: float = -1.0
    _tokens: float = 0.0
    _last_token: float = 0.0
    _free_at: float = 0.0  # when the bottleneck finishes what it holds
    _acks: list[tuple[float, float, int]] = field(default_factory=list)  # (at, sent, bytes)
    _now: float = 0.0
    #: the peer's receive window stays closed until then (a reader that stopped reading)
    rwnd_closed_until: float = 0.0
    rwnd_limited_s: float = 0.0
    #: tag -> when the last byte of that write left the bottleneck
    done: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.burst < 0:
            self.burst = max(16 * 1024, self.rate * 0.002)
        self._tokens = self.burst

    def handshake(self) -> None:
        """The SYN exchange: the first RTT sample (no queue)."""
        rtt = 2 * self.delay_s + 64 / self.rate
        self.srtt = rtt
        self.min_rtt = rtt

    def write(self, nbytes: int, now: float, tag: int = 0) -> None:
        self.advance(now)
        self._unsent.append([float(nbytes), float(tag)])
        self._notsent += nbytes
        self.bytes_written += nbytes
        self._pump(now)

    def writable(self, now: float) -> bool:
        """Whether the socket takes more (unsent bytes below the low-water mark)."""
        self.advance(now)
        return self._notsent < self.notsent_lowat

    def next_event(self) -> float | None:
        return self._acks[0][0] if self._acks else None

    def advance(self, now: float) -> None:
        if self._unsent and self.rwnd_closed_until > self._now:
            held = min(now, self.rwnd_closed_until) - self._now
            self.rwnd_limited_s += max(0.0, held)
        if self._now < self.rwnd_closed_until <= now:
            self._pump(self.rwnd_closed_until)
        while self._acks and self._acks[0][0] <= now:
            at, sent, nbytes = heapq.heappop(self._acks)
            self._inflight -= nbytes
            self.bytes_acked += nbytes
            sample = at - sent
            self.min_rtt = min(self.min_rtt, sample)
            self.srtt += (sample - self.srtt) / 8
            self.cwnd += nbytes  # slow start: the pacer, not loss, bounds the rate
            self._pump(at)
        self._now = max(self._now, now)

    def _pump(self, now: float) -> None:
        if now < self.rwnd_closed_until:
            return
        while self._unsent and self._inflight < self.cwnd:
            head = self._unsent[0]
            size = int(min(head[0], SEGMENT))
            head[0] -= size
            self._notsent -= size
            self._inflight += size
            if self._free_at - now > self.queue_limit_s:
                self.cwnd = max(2.0 * MSS, self.cwnd / 2)
            leaves = self._serve(now, size)
            heapq.heappush(self._acks, (leaves + 2 * self.delay_s, now, size))
            if head[0] <= 0:
                self._unsent.popleft()
                if head[1]:
                    self.done[int(head[1])] = leaves

    def _serve(self, now: float, size: int) -> float:
        """When a segment arriving at ``now`` leaves the bottleneck (tokens of the burst
        first, then at the rate)."""
        start = max(now, self._free_at)
        self._tokens = min(self.burst, self._tokens + (start - self._last_token) * self.rate)
        self._last_token = start
        if self._tokens >= size:
            self._tokens -= size
            leaves = start
        else:
            leaves = start + (size - self._tokens) / self.rate
            self._tokens = 0.0
            self._last_token = leaves
        self._free_at = leaves
        return leaves

    def stall(self, now: float, seconds: float) -> None:
        """The bottleneck delivers nothing for ``seconds`` from ``now`` (a receiver or a
        host that stopped for a moment); what it holds and what arrives meanwhile waits,
        then leaves at the rate again."""
        self.advance(now)
        self._free_at = max(self._free_at, now) + seconds
        self._tokens = 0.0
        self._last_token = self._free_at

    def queue_s(self, now: float) -> float:
        """How long a byte written now waits before its own transfer: unsent bytes ahead of
        it plus the bottleneck's backlog."""
        self.advance(now)
        return max(0.0, self._free_at - now) + self._notsent / self.rate

    def info(self, now: float) -> TcpInfo:
        self.advance(now)
        return TcpInfo(
            rtt_s=self.srtt,
            rttvar_s=self.srtt / 4,
            min_rtt_s=self.min_rtt,
            cwnd_segments=int(self.cwnd // MSS),
            bytes_acked=self.bytes_acked,
            notsent_bytes=self._notsent,
            delivery_rate=0.0,
            app_limited=not self._unsent,
            mss=MSS,
            rwnd_limited_s=self.rwnd_limited_s,
            unacked_segments=-(-self._inflight // MSS),
            bytes_sent=self.bytes_acked + self._inflight,
        )


@dataclass
class Run:
    """What a simulated upload with queries gave."""

    #: (issued at, extra round trip over idle) of every query, seconds
    queries: list[tuple[float, float]]
    upload_s: float
    upload_bytes: int
    path: BottleneckPath
    #: (time, pacing rate or None) after every release
    rates: list[tuple[float, float | None]]
    #: when the first chunk of each blob was released (with ``blobs``)
    blob_starts: list[float] = field(default_factory=list)

    def extra(self, start: float = 0.0, end: float = float("inf")) -> list[float]:
        return [x for at, x in self.queries if start <= at < end]

    def share(self) -> float:
        """The upload's goodput as a share of the bottleneck."""
        return self.upload_bytes / self.upload_s / self.path.rate


class _Requests:
    """Blobs sent request by request: after each, the writer waits until the path has
    acknowledged all that was written, then ``reply_s`` (the reply's way back and the
    server's work), before the next."""

    def __init__(self, blobs: Sequence[int], reply_s: float) -> None:
        self._ends = [sum(blobs[: i + 1]) for i in range(len(blobs))]
        self._firsts = {0, *self._ends[:-1]} if blobs else set()
        self._reply_s = reply_s
        self._awaited: int | None = None  # bytes written when the last blob went
        self._reply_at: float | None = None
        self.starts: list[float] = []  # when each blob's first chunk was released

    def end(self, upload: int) -> int:
        """Where the blob being sent ends."""
        return self._ends[0] if self._ends else upload

    def released(self, sent: int, now: float) -> None:
        """A chunk that starts at byte ``sent`` of the upload went at ``now``."""
        if sent in self._firsts:
            self.starts.append(now)

    def waiting(self, path: BottleneckPath, sent: int, now: float) -> float | None:
        """None: the writer may go on; else the time to look again (awaiting a reply)."""
        if self._ends and sent == self._ends[0]:
            self._ends.pop(0)
            self._awaited = path.bytes_written
        if self._awaited is None:
            return None
        path.advance(now)
        if self._reply_at is None and path.bytes_acked >= self._awaited:
            self._reply_at = now + self._reply_s
        if self._reply_at is None or now < self._reply_at:
            event = path.next_event()
            return self._reply_at or (event if event is not None else now + 0.001)
        self._awaited = self._reply_at = None
        return None


def simulate(
    pacer_for: Callable[[Callable[[], TcpInfo]], Pacer],
    *,
    rate: float,
    delay_s: float,
    upload: int,
    query_every_s: float,
    query_bytes: int = 16 * 1024,
    chunk_cap: int = 256 * 1024,
    wake_late_s: float = 0.0002,
    host_rate: float | None = None,
    events: Sequence[tuple[float, Callable[[BottleneckPath, float], None]]] = (),
    deadline_s: float = 120.0,
    rtt_noise: Callable[[float], float] | None = None,
    blobs: Sequence[int] = (),
    reply_s: float = 0.0,
) -> Run:
    """Upload ``upload`` bytes paced by the pacer ``pacer_for(info_source)`` makes, with a
    query of ``query_bytes`` written every ``query_every_s`` from t = 0 (the upload's first
    byte); the writer wakes ``wake_late_s`` after the time it asked for and releases at most
    ``host_rate`` bytes/s (a busy host; None: no limit). Each of ``events`` is called with
    the path and the time once that time has come (a path that changes its rate, ...).
    ``rtt_noise(now)`` seconds are added to the RTT that TCP_INFO reports (a busy host's
    scheduling: the path itself does not change).

    ``blobs`` (if any) cut the upload into blobs sent request by request, as the client
    sends layers: after each one the writer waits until the path acknowledged all that was
    written, then a way back and ``reply_s`` (the server's reply), before the next: an
    application-limited sender. ``upload`` is then their sum."""
    path = BottleneckPath(rate, delay_s)
    path.handshake()
    clock = [0.0]

    def info() -> TcpInfo:
        now = clock[0]
        if rtt_noise is None:
            return path.info(now)
        return replace(path.info(now), rtt_s=path.info(now).rtt_s + rtt_noise(now))

    pacer = pacer_for(info)
    sent = 0
    now = 0.0
    next_query = 0.0
    tag = 0
    issued: dict[int, float] = {}
    rates: list[tuple[float, float | None]] = []
    pending = sorted(events, key=lambda event: event[0])
    upload = sum(blobs) or upload
    requests = _Requests(blobs, delay_s + reply_s)
    while sent < upload and now < deadline_s:
        while pending and pending[0][0] <= now:
            at, change = pending.pop(0)
            path.advance(at)
            change(path, at)
        while next_query <= now:
            tag += 1
            issued[tag] = next_query
            path.write(query_bytes, next_query, tag)
            next_query += query_every_s
        clock[0] = now
        if not path.writable(now):
            event = path.next_event()
            now = min(next_query, event if event is not None else now + 0.001)
            continue
        later = requests.waiting(path, sent, now)
        if later is not None:
            now = min(next_query, later)
            continue
        pacer.account(path.bytes_written, now)
        chunk = min(pacer.chunk_size(chunk_cap), requests.end(upload) - sent)
        wait = pacer.delay(chunk, now)
        if wait > 0:
            now = min(next_query, now + wait + wake_late_s)
            continue
        path.write(chunk, now)
        requests.released(sent, now)
        sent += chunk
        rates.append((now, pacer.pacing_rate))
        # the writer's own time per release
        now += wake_late_s / 4 if host_rate is None else chunk / host_rate
    end = now
    path.advance(end + 10.0)
    # Without a queue the query's last byte would leave the bottleneck its own transfer
    # time after it was written: anything beyond is waiting behind the upload.
    queries = [
        (at, path.done[t] - at - query_bytes / rate)
        for t, at in issued.items()
        if t in path.done and at < end
    ]
    return Run(queries, end, upload, path, rates, requests.starts)
