"""The client's public value types: its configuration, a query's result and the upload's
progress (re-exported by :mod:`ionn_net.client`, where they are documented in use).
Immutable values: any loop may read them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ionn_net.aio.options import TransportOptions
from ionn_net.aio.pacing import PacingConfig
from ionn_net.config import Limits
from ionn_net.errors import ConfigError
from ionn_net.model.stages import PRECISIONS

__all__ = [
    "ClientConfig",
    "InferenceResult",
    "SegmentTiming",
    "UploadProgress",
    "UploadTimeline",
    "paced_transport",
]


def paced_transport(rate_bps: float | None = None) -> TransportOptions:
    """Transport options that pace the upload at 0.95x ``rate_bps`` (bits/s), or at a rate
    estimated from the kernel's TCP_INFO when None (:mod:`ionn_net.aio.pacing`)."""
    return TransportOptions(pacing=PacingConfig(rate_bps=rate_bps))


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """Client policy. ``slowdown`` emulates a slower device: every local segment is
    stretched to ``slowdown`` times its measured duration (the profile too)."""

    limits: Limits = field(default_factory=Limits)
    session_key: str | None = None
    query_timeout_s: float = 30.0
    slowdown: float = 1.0
    assumed_mbit: float = 50.0
    profile_cache: str | None = None
    device_id: str = "local"
    compress_below_mbit: float = 400.0
    reconnect: bool = True
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    secret: bytes | None = None
    upload: bool = True
    #: Per-layer milliseconds of the (emulated) device, e.g. ``client.client_ms`` of an
    #: earlier run: when given, the client neither profiles nor rescales, so several runs
    #: compare strategies on the very same device.
    device_ms: Mapping[str, float] | None = None
    #: Socket, buffer and pacing options of the connection to the server. The default
    #: paces the upload at 0.95x a bottleneck rate it estimates from the kernel's TCP_INFO,
    #: so the upload leaves room for queries instead of queueing them behind its bytes at
    #: the bottleneck (aio.pacing; without it a query's tensor waited 20-90 ms behind the
    #: upload on a 20 Mbit/s link in ionn-bench). Give ``paced_transport(rate_bps)`` when
    #: the rate is known and TCP cannot see the bottleneck (a userspace proxy in between),
    #: or ``TransportOptions()`` for no pacing.
    transport: TransportOptions = field(default_factory=paced_transport)
    #: ``"exact"`` (every result equal to local execution, the whole blobs uploaded), or
    #: ``"16bit-first"`` / ``"8bit-first"``: each layer goes up first as a low-precision base
    #: stage the server serves queries with, then its refinement (protocol.md §10.12); a
    #: result computed on base weights says so (``InferenceResult.exact``), and a query
    #: may still ask for exact weights (``infer(x, exact=True)``).
    precision: str = "exact"
    #: Publish this model's blobs (protocol.md §10.3.4): ``True`` every blob, a tuple of
    #: layer names those layers' blobs. Once this client's upload of a marked blob is
    #: verified, the server tells any later session naming the same blob that it holds
    #: it; unmarked blobs stay private to this session key (§14.5).
    public: bool | tuple[str, ...] = False
    #: Seconds from the start of planning (the session just ready) that the upload waits
    #: for the strategy's plan (sending the head start meanwhile) before it starts on a
    #: quick plan, the ``efficiency`` strategy's (~0.1 s of planning), whose partitions the
    #: server loads at once; the strategy's plan, once known, replaces the partitions not
    #: yet sent. ``ours`` plans ResNet50 for 1.5-5 s, while head-start blobs wait unloaded.
    #: ``None``: always wait. Exact uploads only (a precision-first plan orders stages too).
    plan_wait_s: float | None = 0.5

    def __post_init__(self) -> None:
        for name in ("query_timeout_s", "slowdown", "assumed_mbit", "backoff_initial_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value < 1e9:
                raise ConfigError(f"{name}: expected a positive number, got {value!r}")
        if self.slowdown < 1:
            raise ConfigError(f"slowdown: expected >= 1, got {self.slowdown!r}")
        if not isinstance(self.transport, TransportOptions):
            raise ConfigError(f"transport: expected TransportOptions, got {self.transport!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision: expected one of {list(PRECISIONS)}, got {self.precision!r}"
            )
        wait = self.plan_wait_s
        if wait is not None and (not isinstance(wait, int | float) or not 0 <= wait < 1e9):
            raise ConfigError(f"plan_wait_s: expected None or a number >= 0, got {wait!r}")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError("backoff_max_s: expected >= backoff_initial_s")
        public = self.public
        if not isinstance(public, bool) and not (
            isinstance(public, tuple) and all(isinstance(n, str) for n in public)
        ):
            raise ConfigError(f"public: expected a bool or a tuple of layer names, got {public!r}")
        key = self.session_key
        if key is not None and (len(key) != 32 or any(c not in "0123456789abcdef" for c in key)):
            raise ConfigError(f"session_key: expected 32 lowercase hex digits, got {key!r}")


@dataclass(frozen=True, slots=True)
class SegmentTiming:
    """Where one segment of a query ran and how long it took (milliseconds)."""

    location: str
    layers: tuple[str, ...]
    ms: float
    fallback: bool = False
    #: For a server segment that the server answered: the compute time it reported
    #: (``ms`` minus this is the network, queueing and codec share); None otherwise.
    server_ms: float | None = None


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """One query's output and what happened to it."""

    output: np.ndarray | list[np.ndarray]
    segments: tuple[SegmentTiming, ...]
    total_ms: float
    predicted_ms: float
    fallback: bool
    #: Times the query left its plan mid-way for one made possible by layers that
    #: landed while it ran (ionn_net.planner.midquery).
    replans: int = 0
    #: False when a server layer ran on base-stage weights (protocol.md §10.12.5)
    exact: bool = True
    #: The lowest precision any layer ran at: ``"exact"``, ``"16bit"`` or ``"8bit"``
    precision: str = "exact"

    @property
    def offloaded(self) -> bool:
        return any(s.location == "server" and not s.fallback for s in self.segments)

    @property
    def server_layers(self) -> int:
        return sum(len(s.layers) for s in self.segments if s.location == "server")


@dataclass(frozen=True, slots=True)
class UploadProgress:
    """Upload state after each blob and each partition."""

    sent_bytes: int
    total_bytes: int
    partitions_done: int
    partitions_total: int
    layers_ready: int
    elapsed_s: float
    bandwidth_mbit: float
    #: the rate the upload is currently paced at (None: unpaced, or still measuring)
    pacing_mbit: float | None = None
    done: bool = False
    #: ready layers still at base precision (a precision-first upload, §10.12.4)
    layers_base: int = 0

    @property
    def fraction(self) -> float:
        return 1.0 if self.total_bytes == 0 else min(1.0, self.sent_bytes / self.total_bytes)


@dataclass(frozen=True, slots=True)
class UploadTimeline:
    """When the latest upload session reached its milestones (``time.monotonic()``
    seconds; None: not yet). ``ready_at``: the manifest was acknowledged (§10.3), the
    session can upload; ``first_byte_at``: the first blob message was handed to the
    connection; ``planned_at``: the upload's partitions were known (the strategy's plan, or a
    quick one after ``ClientConfig.plan_wait_s``: then ``quick_plan`` names its strategy,
    and ``strategy_planned_at`` is when the strategy's own plan replaced it). The client
    does not wait for a plan to start uploading: until then it sends ``head_start``, the
    first layers of the model in order (see :mod:`ionn_net.client.session`)."""

    ready_at: float | None = None
    first_byte_at: float | None = None
    planned_at: float | None = None
    strategy_planned_at: float | None = None
    quick_plan: str | None = None
    head_start: tuple[str, ...] = ()
    #: each load of the session (§10.6): (sent at, answered at, layers, the server's
    #: own ``load_ms``)
    loads: tuple[tuple[float, float, int, float], ...] = ()
    #: each plan activated after a load: (compile started, plan switched)
    activations: tuple[tuple[float, float], ...] = ()

    @property
    def first_byte_delay_s(self) -> float | None:
        """Seconds from session ready to the first upload byte (None: not both yet)."""
        if self.ready_at is None or self.first_byte_at is None:
            return None
        return self.first_byte_at - self.ready_at
