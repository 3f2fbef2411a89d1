"""Transport tuning of the asyncio layer (socket and buffer sizes, deadlines, pacing).

Protocol limits -- everything the peer can observe or abuse -- live in the one
:class:`ionn_net.config.Limits`. This module owns the knobs that only shape how this
endpoint drives its own socket: how much unsent data may sit below the scheduler (the
head-of-line budget, §8.3), how much received-but-unread data the
application may hold before reading pauses, how long a close may drain, and whether
upload-urgency streams are paced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ionn_net.aio.pacing import PacingConfig
from ionn_net.errors import ConfigError

__all__ = ["AUTO_CONGESTION", "PACED_CONGESTION", "TransportOptions"]

KIB = 1024
#: ``TransportOptions.congestion`` value: the library picks (see ``congestion_to_set``).
AUTO_CONGESTION = "auto"
#: What "auto" sets on a paced connection: loss-based, so it has no probing cycle of its own.
PACED_CONGESTION = "cubic"


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportOptions:
    """How this endpoint drives its socket; validated at creation (ConfigError).

    * ``notsent_lowat``: initial ``TCP_NOTSENT_LOWAT`` in bytes (None: kernel default,
      unbounded, and no adaptation).
    * ``hol_budget_s``: the low-water mark then follows the measured delivery rate so that
      the kernel holds about this much link time of unsent data (within 16 KiB..4 MiB): a
      fixed byte count is far too much on a slow link (128 KiB is 52 ms at 20 Mbit/s) and
      far too little on a fast one (40 us at 3 GB/s, one wake-up per 128 KiB). It is also
      how late the event loop may wake up before the link idles: 20 ms keeps a loaded
      2-core machine at full rate; pacing, not this budget, keeps queries fast on slow
      links. None keeps ``notsent_lowat`` fixed.
    * ``write_high_water`` / ``write_low_water``: the transport's userspace buffer limits;
      the writer hands the transport one frame at a time while it is below high water
      (low water None: a quarter of high water).
    * ``read_buffer_size``: the largest receive buffer handed to the kernel per read; it
      starts at 64 KiB (or this, if smaller) and doubles each time a read fills it. A
      bulk transfer is received in large reads (1 MiB: about half the CPU per byte of
      256 KiB reads on loopback) while idle connections stay small.
    * ``read_budget``: decoded bytes delivered to streams but not yet consumed by the
      application before reading pauses (None: the connection's largest receive
      window, ``Limits.max_connection_credit`` or the initial credit if larger).
    * ``send_chunk``: the largest piece of a body handed to the core per call; the sender
      feeds the core only as credit and the outbound cap allow (None: ``Limits.max_chunk``
      x 8).
    * ``stall_timeout_s``: a connection whose outbound queue stays at ``max_outbound_bytes``
      (or whose transport stays paused) without progress this long is closed with TIMEOUT
      (§14.3.2; None: ``Limits.heartbeat_timeout_s``).
    * ``close_timeout_s``: deadline of a graceful close (GOAWAY, drain, flush).
    * ``pacing``: pacing of upload-urgency streams (None: unpaced).
    * ``congestion``: TCP congestion control for this socket (e.g. "cubic"; None: the
      system default; "auto", the default: ``cubic`` when ``pacing`` is set, else the
      system default). Why: under application pacing the pacer is the rate controller and a
      loss-based algorithm stays out of its way (the paced upload never fills the
      bottleneck, so it sees no loss), while BBR -- the system default on many hosts --
      enters ProbeRTT whenever its minimum RTT is 10 s old: a congestion window of four
      packets for 200 ms plus a round trip, during which a query's frames wait behind the
      unsent bytes in the socket. Measured (BENCHMARKS.md, transport, stop 14): at
      20 Mbit/s with 20 ms one-way delay that was the whole p99 tail, up to +217 ms above
      the idle p99 with BBR; at most +6 ms with cubic. An algorithm the kernel lacks or
      refuses is not an error: the connection keeps the system default
      (``IonnProtocol.applied``).
    """

    notsent_lowat: int | None = 128 * KIB
    hol_budget_s: float | None = 0.02
    write_high_water: int = 64 * KIB
    write_low_water: int | None = None
    read_buffer_size: int = 1024 * KIB
    read_budget: int | None = None
    send_chunk: int | None = None
    stall_timeout_s: float | None = None
    close_timeout_s: float = 10.0
    pacing: PacingConfig | None = None
    congestion: str | None = AUTO_CONGESTION

    def __post_init__(self) -> None:
        _positive("notsent_lowat", self.notsent_lowat, optional=True)
        _positive("write_high_water", self.write_high_water)
        low = self.write_low_water
        if low is not None and (type(low) is not int or not 0 <= low <= self.write_high_water):
            raise ConfigError(
                f"TransportOptions.write_low_water: expected 0..write_high_water "
                f"({self.write_high_water}) or None, got {low!r}"
            )
        _positive("read_buffer_size", self.read_buffer_size)
        _positive("read_budget", self.read_budget, optional=True)
        _positive("send_chunk", self.send_chunk, optional=True)
        for name in ("stall_timeout_s", "close_timeout_s", "hol_budget_s"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
            ):
                raise ConfigError(f"TransportOptions.{name}: expected seconds > 0, got {value!r}")
            if value is not None and math.isnan(value):
                raise ConfigError(f"TransportOptions.{name}: expected seconds > 0, got NaN")
        if self.congestion is not None and (
            not isinstance(self.congestion, str)
            or not self.congestion.isascii()
            or not 0 < len(self.congestion) < 16
        ):
            raise ConfigError(
                f'TransportOptions.congestion: expected an algorithm name, "auto" or None, '
                f"got {self.congestion!r}"
            )
        if self.pacing is not None and not isinstance(self.pacing, PacingConfig):
            raise ConfigError(
                f"TransportOptions.pacing: expected PacingConfig or None, got {self.pacing!r}"
            )

    @property
    def congestion_to_set(self) -> str | None:
        """The algorithm to ask the kernel for (None: leave the system default)."""
        if self.congestion == AUTO_CONGESTION:
            return PACED_CONGESTION if self.pacing is not None else None
        return self.congestion


def _positive(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if type(value) is not int or value <= 0:
        raise ConfigError(f"TransportOptions.{name}: expected a positive int, got {value!r}")
