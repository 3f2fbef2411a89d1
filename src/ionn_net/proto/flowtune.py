"""Receive-window auto-tuning: a receiver-side credit policy (protocol.md §7; no wire change).

This module owns the pure decisions behind how much credit a receiver grants: the window a
CREDIT frame extends (``consumed + window``, §7.3) grows when the application keeps up
with the link, the way HTTP/2 and QUIC stacks tune theirs, and :class:`RttEstimator`, the
smoothed round trip the policy compares against. Time is passed in as numbers (monotonic
seconds); nothing here reads a clock.

Why: with a fixed window ``W`` and a CREDIT sent each time half of it is consumed, one
stream moves at most about ``W / 2`` per round trip, so the default 1 MiB caps a single
upload on a long fat link (200 Mbit/s x 40 ms needs about 2 MiB). Growing every window
would let a slow application pile up data, so a window grows only when the application
drained half of it in less than :data:`GROWTH_RTTS` round trips since the previous CREDIT
-- the peer would otherwise soon wait for credit -- and never beyond the configured
maximum (``Limits.max_stream_credit`` / ``max_connection_credit``), which bounds memory.
"""

from __future__ import annotations

import math

__all__ = ["GROWTH_RTTS", "RTT_FLOOR_S", "RttEstimator", "grown_window"]

#: A window grows when half of it was consumed within this many round trips.
GROWTH_RTTS = 2.0
#: Round trips below this are treated as this: event-loop clocks tick in milliseconds
#: (uvloop), so shorter intervals cannot be told apart, and a window drained within a couple
#: of milliseconds is small for any path (each CREDIT costs a write and a read).
RTT_FLOOR_S = 0.001
_RTT_GAIN = 0.125  # RFC 6298 smoothing


def grown_window(
    window: int, max_window: int, last_credit: float | None, now: float, rtt: float | None
) -> int:
    """The window to grant with the CREDIT being sent at ``now``.

    ``last_credit`` is when the previous CREDIT of the same window (stream or connection)
    was sent, ``None`` for the first one. The window doubles, up to ``max_window``, when
    that was less than :data:`GROWTH_RTTS` round trips ago; otherwise it is unchanged. It
    never shrinks (a limit never decreases anyway, §7.3) and stays as it is without a
    round-trip estimate. A ``max_window`` below ``window`` means no growth.
    """
    if last_credit is None or rtt is None or window >= max_window:
        return window
    if now - last_credit < GROWTH_RTTS * max(rtt, RTT_FLOOR_S):
        return min(window * 2, max_window)
    return window


class RttEstimator:
    """Smoothed round trip (RFC 6298 weighting) from samples; ``None`` until the first one.

    Samples come from the connection's own exchanges (SETTINGS and its ACK, PING and its
    ACK) and from the I/O layer (the kernel's TCP estimate). Samples that are negative or
    not finite are ignored.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float | None = None

    def update(self, sample: float) -> None:
        if not math.isfinite(sample) or sample < 0:
            return
        current = self.value
        self.value = sample if current is None else current + _RTT_GAIN * (sample - current)
