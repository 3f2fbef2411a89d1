"""Flood budgets of protocol.md §14.3, driven by the ``now`` the caller passes in.

This module owns the two rate primitives the connection uses: a fixed-window counter
(PING/SETTINGS per window) and an event bucket (RESET burst then steady rate). Neither
reads a clock. (The pacer's byte bucket is ``ionn_net.aio.pacing.TokenBucket``; both take
``rate, burst, now`` in that order.)
"""

from __future__ import annotations

__all__ = ["EventBucket", "WindowCounter"]


class WindowCounter:
    """At most ``limit`` events per ``window`` seconds (fixed windows starting at use)."""

    __slots__ = ("_count", "_start", "limit", "window")

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._start = float("-inf")
        self._count = 0

    def allow(self, now: float) -> bool:
        """Count one event at ``now``; False once the window's budget is exceeded."""
        if now - self._start >= self.window:
            self._start = now
            self._count = 0
        self._count += 1
        return self._count <= self.limit


class EventBucket:
    """``burst`` events at once, refilled at ``rate`` events per second; each event takes
    one."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.burst = burst
        self.rate = rate
        self._tokens = float(burst)
        self._last = now

    def allow(self, now: float) -> bool:
        """Take one token at ``now``; False when the bucket is empty."""
        if now > self._last:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
