"""How upload-urgency streams are paced: the settings of :class:`ionn_net.aio.pacing.Pacer`
(a module of its own so that the pacer's module stays readable; import it from
:mod:`ionn_net.aio.pacing` or :mod:`ionn_net.aio`)."""

from __future__ import annotations

from dataclasses import dataclass

from ionn_net.errors import ConfigError

__all__ = ["PacingConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PacingConfig:
    """How upload-urgency streams are paced (see :class:`Pacer`).

    ``rate_bps`` (bits/s) fixes the bottleneck rate; None estimates it. Streams whose
    urgency is >= ``min_urgency`` are paced (uploads are urgency 5, §8.1) at ``gain`` x the
    bottleneck rate, counting every byte the connection writes. ``burst_s`` bounds how much
    sending may catch up after a late wake-up (at least two chunks). Each release carries
    about ``chunk_time_s`` of link time (on a slow link one smaller frame), so an urgent
    frame waits behind about that much upload at the bottleneck.

    An estimated rate starts at ``initial_window`` segments (or TCP's larger congestion
    window) per round trip, at most ``initial_rate_bps``, and ramps up (doubling every
    ``ramp_rtts`` feedback delays, at least ``ramp_min_s``, never past ``ramp_gain`` x what
    the path delivered, measured over at least ``ramp_span_s``) until a queue of
    ``ramp_exit_s`` shows or the path stops keeping up. Then every control interval (at
    least ``control_interval_s``) the queueing delay steers it: above ``queue_high_s`` with
    the path behind, down by at most ``decrease`` (never below ``min_fraction`` of the
    first estimate); every ``probe_interval_s`` a probe raises it in steps of ``increase``
    until the queue grows by ``queue_low_s``. ``sample_interval_s`` spaces the
    ``TCP_INFO`` reads; delivery is measured over at least ``min_span_s``, and
    ``window_s`` is the meter's memory.

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
    initial_rate_bps: float = 8e6
    initial_window: int = 10
    ramp_rtts: float = 2.0
    ramp_min_s: float = 0.03
    ramp_gain: float = 1.15
    ramp_span_s: float = 0.02
    ramp_exit_s: float = 0.002
    probe_interval_s: float = 10.0
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
            ("initial_rate_bps", self.initial_rate_bps, 1e3, 1e12),
            ("initial_window", self.initial_window, 1, 1000),
            ("ramp_rtts", self.ramp_rtts, 0.5, 100.0),
            ("ramp_min_s", self.ramp_min_s, 0.001, 10.0),
            ("ramp_gain", self.ramp_gain, 1.0, 4.0),
            ("ramp_span_s", self.ramp_span_s, 0.001, 10.0),
            ("ramp_exit_s", self.ramp_exit_s, 0.0, 10.0),
            ("probe_interval_s", self.probe_interval_s, 0.1, 3600.0),
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
