"""The send scheduler of protocol.md §8.2: which frame goes out next.

This module owns the order of outbound frames and nothing else (no encoding, no credit
arithmetic). Order: queued control frames first, FIFO; then stream frames of the most
urgent class (0 = most urgent) that has a stream *eligible* (a frame ready and, for DATA,
credit to send it -- decided by the caller's predicate). Within one urgency,
non-incremental streams are served first, one stream at a time in the order they were
opened; incremental streams share round-robin, one frame per turn.

Because the connection asks for one frame at a time, a query queued behind any upload
backlog is emitted next, after at most the one frame already being written (§8.3).
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable

from ionn_net.proto.streams import Stream

__all__ = ["URGENCY_LEVELS", "Scheduler"]

URGENCY_LEVELS = 8


class Scheduler:
    """Control FIFO plus per-urgency stream queues; streams are added when they have output."""

    __slots__ = ("_active", "_fifo", "_fifo_keys", "_rr", "control", "control_bytes")

    def __init__(self) -> None:
        self.control: deque[bytes] = deque()
        self.control_bytes = 0
        # Non-incremental streams per urgency, sorted by open order (seq).
        self._fifo: list[list[Stream]] = [[] for _ in range(URGENCY_LEVELS)]
        self._fifo_keys: list[list[int]] = [[] for _ in range(URGENCY_LEVELS)]
        self._rr: list[deque[Stream]] = [deque() for _ in range(URGENCY_LEVELS)]
        self._active = 0  # bit u set when urgency u has a scheduled stream

    # -- control frames

    def push_control(self, frame: bytes) -> None:
        self.control.append(frame)
        self.control_bytes += len(frame)

    def pop_control(self) -> bytes | None:
        if not self.control:
            return None
        frame = self.control.popleft()
        self.control_bytes -= len(frame)
        return frame

    def clear_streams(self) -> None:
        """Drop every stream (a connection error). Queued control frames stay: they may hold
        the preface and SETTINGS, which must precede the GOAWAY that follows."""
        for u in range(URGENCY_LEVELS):
            for s in self._fifo[u]:
                s.scheduled = False
            for s in self._rr[u]:
                s.scheduled = False
            self._fifo[u].clear()
            self._fifo_keys[u].clear()
            self._rr[u].clear()
        self._active = 0

    # -- streams

    def add(self, stream: Stream) -> None:
        """Make ``stream`` a candidate (it has output). Idempotent."""
        if stream.scheduled:
            return
        stream.scheduled = True
        u = stream.urgency
        if stream.incremental:
            self._rr[u].append(stream)
        else:
            keys = self._fifo_keys[u]
            i = bisect.bisect(keys, stream.seq)
            keys.insert(i, stream.seq)
            self._fifo[u].insert(i, stream)
        self._active |= 1 << u

    def remove(self, stream: Stream) -> None:
        """Drop ``stream`` (no output left, or reset). Idempotent."""
        if not stream.scheduled:
            return
        stream.scheduled = False
        u = stream.urgency
        if stream.incremental:
            self._rr[u].remove(stream)
        else:
            i = self._fifo[u].index(stream)
            del self._fifo[u][i]
            del self._fifo_keys[u][i]
        if not self._fifo[u] and not self._rr[u]:
            self._active &= ~(1 << u)

    def alone(self, stream: Stream) -> bool:
        """``stream`` is the only scheduled stream of its urgency."""
        u = stream.urgency
        return len(self._fifo[u]) + len(self._rr[u]) == 1

    def pick(self, eligible: Callable[[Stream], bool]) -> Stream | None:
        """The stream whose frame goes next (rotating round-robin classes), or ``None``."""
        active = self._active
        u = 0
        while active:
            if active & 1:
                for s in self._fifo[u]:
                    if eligible(s):
                        return s
                rr = self._rr[u]
                for i, s in enumerate(rr):
                    if eligible(s):
                        del rr[i]
                        rr.append(s)  # one frame per turn (§8.2)
                        return s
            active >>= 1
            u += 1
        return None

    def any_eligible(self, eligible: Callable[[Stream], bool]) -> bool:
        """Whether :meth:`pick` would return a stream (without rotating)."""
        active = self._active
        u = 0
        while active:
            if active & 1 and (
                any(eligible(s) for s in self._fifo[u]) or any(eligible(s) for s in self._rr[u])
            ):
                return True
            active >>= 1
            u += 1
        return False

    @property
    def scheduled_streams(self) -> int:
        return sum(len(f) + len(r) for f, r in zip(self._fifo, self._rr, strict=True))
