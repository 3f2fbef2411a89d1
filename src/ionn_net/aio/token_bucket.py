"""The pacer's byte bucket (time passed in, no clock reads).

A module of its own so that :mod:`ionn_net.aio.pacing` stays readable; the §14.3 flood
budgets have their own event bucket (:class:`ionn_net.proto.flood.EventBucket`). Both take
``rate, burst, now`` in that order.
"""

from __future__ import annotations

from ionn_net.errors import ConfigError

__all__ = ["TokenBucket"]


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
