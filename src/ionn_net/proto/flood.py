"""Flood budgets of protocol.md §14.3, driven by the ``now`` the caller passes in.

This module owns the two rate primitives the connection uses: a fixed-window counter
(PING/SETTINGS per window) and a token bucket (RESET burst then steady rate; the same
bucket, in bytes and with debt, paces uploads in :mod:`ionn_net.aio.pacing`). Neither
reads a clock.
"""

from __future__ import annotations

from ionn_net.errors import ConfigError

__all__ = ["TokenBucket", "WindowCounter"]


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


class TokenBucket:
    """Token bucket driven by the caller's clock: ``rate`` tokens per second, at most
    ``burst`` kept; time is passed in, never read.

    One arithmetic, two uses:

    * admission -- the RESET budget of §14.3: ``allow(now)`` takes one token (or ``cost``)
      when the balance covers it, else refuses; such a bucket starts ``full``.
    * pacing -- bytes of :mod:`ionn_net.aio.pacing`: a chunk may leave whenever the balance
      is not negative (:meth:`delay`), then :meth:`consume` charges its whole size, so the
      balance goes negative (debt, at most ``max_debt``; beyond it is forgiven). The average
      rate is exact and a chunk is never split.
    """

    __slots__ = ("_balance", "_burst", "_last", "discarded", "forgiven", "max_debt", "rate")

    def __init__(
        self,
        rate: float,
        burst: float,
        now: float,
        *,
        max_debt: float = float("inf"),
        full: bool = False,
    ) -> None:
        if not rate > 0 or not burst >= 0 or not max_debt >= 0:
            raise ConfigError(
                "TokenBucket: expected rate > 0, burst >= 0 and max_debt >= 0, got "
                f"{rate}, {burst}, {max_debt}"
            )
        self.rate = float(rate)
        self._burst = float(burst)
        #: the balance never falls below -max_debt (forgiven beyond)
        self.max_debt = max_debt
        self._balance = self._burst if full else 0.0
        self._last = now
        #: tokens lost to the burst cap: time nothing was taken although it could be
        self.discarded = 0.0
        #: tokens consumed but never charged: debt beyond ``max_debt``
        self.forgiven = 0.0

    @property
    def burst(self) -> float:
        """The most tokens the bucket keeps."""
        return self._burst

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

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens at ``now`` if the balance covers them; False (nothing taken)
        otherwise."""
        self.settle(now)
        if self._balance >= cost:
            self._balance -= cost
            return True
        return False

    def delay(self, now: float) -> float:
        """Seconds until the balance is no longer negative (0.0: now)."""
        self.settle(now)
        return 0.0 if self._balance >= 0 else -self._balance / self.rate

    def debt(self, now: float) -> float:
        """Tokens taken ahead of the rate that the bucket is still making up for (0.0: none)."""
        self.settle(now)
        return max(0.0, -self._balance)

    def consume(self, amount: float, now: float) -> None:
        """Charge ``amount`` just taken, into debt if need be (beyond ``max_debt`` forgiven)."""
        self.settle(now)
        owed = self._balance - amount
        self._balance = max(owed, -self.max_debt)
        self.forgiven += self._balance - owed
