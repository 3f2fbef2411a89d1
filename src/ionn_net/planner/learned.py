"""What a client learns online about the server's real speed and the effective round trip.

The server's cost model and a ping give priors; each query that runs layers on the server
measures both for real (the server reports its compute time, the client times the round
trip), and plans are made with the learned values. Learning only from the queries a plan
sends has a trap: a spell of bad measurements (the server compiling a partition while it
answered, a queue behind the upload) can make every plan keep all layers on the client,
and then nothing measures the server again, so the client stays local for good even once
the server is idle. Seen in ``ionn-bench`` (wifi, ResNet50, ``ours``): one slow answer
during a load and the last 85 queries ran locally. So what was learned fades back toward
the priors while nothing measures it (half-life ``half_life_s``); the client re-plans as
it fades and the first query that goes to the server measures the truth again. Pure: time
is passed in.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ionn_net.errors import PlannerError

__all__ = ["BandwidthMeter", "LearnedCosts"]

#: Weight of a new measurement in the moving averages.
_NEW = 0.3
#: Bounds of the learned server scale (measured / predicted compute).
_SCALE_RANGE = (0.05, 20.0)


@dataclass(slots=True)
class LearnedCosts:
    """Learned server-time scale and effective round trip, with their priors.

    ``server_scale`` multiplies the cost model's per-layer server times (prior 1.0);
    ``rtt_s`` is what a server segment pays beyond compute and raw transfer (prior: the
    measured ping, ``ping_rtt_s``).
    """

    ping_rtt_s: float = 1e-3
    server_scale: float = 1.0
    rtt_s: float = 1e-3
    half_life_s: float = 5.0
    observed_at: float | None = None

    def __post_init__(self) -> None:
        for name in ("ping_rtt_s", "rtt_s", "half_life_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise PlannerError(f"{name}: expected a positive number of seconds, got {value!r}")

    def set_ping(self, rtt_s: float) -> None:
        """A new prior round trip (after a (re)connect); the learned value restarts there."""
        self.ping_rtt_s = self.rtt_s = max(float(rtt_s), 1e-4)

    def observe(self, *, overhead_s: float, scale_ratio: float | None, now: float) -> None:
        """One server segment measured: ``overhead_s`` is what it took beyond compute and
        raw transfer; ``scale_ratio`` the server's real over predicted compute (None when
        the prediction was too small to compare)."""
        self.rtt_s = (1 - _NEW) * self.rtt_s + _NEW * max(overhead_s, self.ping_rtt_s)
        if scale_ratio is not None:
            lo, hi = _SCALE_RANGE
            ratio = min(max(scale_ratio, lo), hi)
            self.server_scale = (1 - _NEW) * self.server_scale + _NEW * ratio
        self.observed_at = now

    def reset_scale(self) -> None:
        """The predictions the scale corrects changed (the server timed the layers,
        protocol.md §10.11): what was learned against the old ones starts again at 1."""
        self.server_scale = 1.0

    def fade(self, now: float) -> bool:
        """Move both values toward their priors by what ``now - observed_at`` allows at
        the half-life (from the last observation or fade); True if either moved by more
        than 5%, i.e. plans made with the old values may no longer be the best."""
        if self.observed_at is None or now <= self.observed_at:
            return False
        keep: float = 0.5 ** ((now - self.observed_at) / self.half_life_s)
        scale = 1.0 + (self.server_scale - 1.0) * keep
        rtt = self.ping_rtt_s + (self.rtt_s - self.ping_rtt_s) * keep
        moved = abs(scale / self.server_scale - 1) > 0.05 or abs(rtt / self.rtt_s - 1) > 0.05
        if moved:
            self.server_scale, self.rtt_s, self.observed_at = scale, rtt, now
        return moved


class BandwidthMeter:
    """The link's rate from (bytes the connection wrote, seconds) per uploaded blob piece:
    the rate over the newest samples holding at least ``window_bytes`` (single blobs are
    too noisy to re-plan on), reported once ``min_bytes`` have been measured."""

    __slots__ = ("_bytes", "_min", "_samples", "_seconds", "_window")

    def __init__(self, window_bytes: int = 4 << 20, min_bytes: int = 1 << 20) -> None:
        if not 0 < min_bytes <= window_bytes:
            raise PlannerError(
                f"BandwidthMeter: expected 0 < min_bytes <= window_bytes, got "
                f"{min_bytes}, {window_bytes}"
            )
        self._window, self._min = window_bytes, min_bytes
        self._samples: deque[tuple[int, float]] = deque()
        self._bytes, self._seconds = 0, 0.0  # totals over _samples

    def add(self, nbytes: int, seconds: float) -> float | None:
        """Record one sample; the rate in bytes/s, or None while too little is measured."""
        if seconds <= 0 or nbytes < 0:
            return None
        samples = self._samples
        samples.append((nbytes, seconds))
        self._bytes += nbytes
        self._seconds += seconds
        # Drop the oldest while the rest still hold the window.
        while len(samples) > 2 and self._bytes - samples[0][0] >= self._window:
            old_bytes, old_seconds = samples.popleft()
            self._bytes -= old_bytes
            self._seconds -= old_seconds
        return self._bytes / self._seconds if self._bytes >= self._min else None
