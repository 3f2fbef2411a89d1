"""The edge server's policy (:class:`ServerConfig`): per-session quotas, thread counts,
the shared secret, the drain deadline and the timing of clients' models (protocol.md
§10.11); wire limits live in its ``limits`` (§14). Re-exported by :mod:`ionn_net.server`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ionn_net.config import Limits
from ionn_net.errors import ConfigError
from ionn_net.handoff.config import HandoffConfig
from ionn_net.model.limits import DEFAULT_LIMITS, SpecLimits
from ionn_net.server_catalog import DEFAULT_TRUNKS, check_trunks, check_warm_spec
from ionn_net.server_timing import TimingConfig

__all__ = ["ServerConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Server policy; wire limits live in ``limits`` (protocol.md §14)."""

    limits: Limits = field(default_factory=Limits)
    spec_limits: SpecLimits = DEFAULT_LIMITS
    max_models_per_session: int = 4
    max_bytes_per_session: int = 1 << 30
    max_queries_per_session: int = 8
    max_sessions: int = 1024
    max_connections_per_address: int = 16
    max_manifest_bytes: int = 16 << 20
    max_prepare_sets: int = 16
    inference_threads: int = 2
    #: Niceness added to the threads that build and compile loaded layers (0: none).
    #: On a host shared with queries (and, in the bench, the client) a load otherwise
    #: slows the queries it overlaps 2-5x (BENCHMARKS.md, ionn-bench); Linux only.
    loader_nice: int = 10
    secret: bytes | None = None
    jit: bool | None = None
    #: Handoff to and from other servers: peers, grants, limits (protocol.md §14.7, §15).
    handoff: HandoffConfig = field(default_factory=HandoffConfig)
    #: Catalog models built and compiled ahead, after the server listens: ``all``,
    #: ``none``, a number N (the first N of the index) or comma-separated names/digests.
    catalog_warm: str = "all"
    #: Trunks of each warm catalog model also compiled ahead (0..8): the model cut after
    #: each of its last cut points, what a client of a fine-tuned head on it runs first.
    catalog_trunks: int = DEFAULT_TRUNKS
    #: Seconds between sweeps of stale partial uploads (§14.5; the store's TTL decides).
    sweep_interval_s: float = 3600.0
    #: Deadline of a graceful drain (§13.3): connections still open then are aborted.
    drain_timeout_s: float = 10.0
    #: Timing clients' models before their weights arrive (§10.11) and its bounds.
    timing: TimingConfig = field(default_factory=TimingConfig)

    def __post_init__(self) -> None:
        for name in (
            "max_models_per_session",
            "max_bytes_per_session",
            "max_queries_per_session",
            "max_sessions",
            "max_connections_per_address",
            "max_manifest_bytes",
            "max_prepare_sets",
            "inference_threads",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"{name}: expected an integer >= 1, got {value!r}")
        if type(self.loader_nice) is not int or not 0 <= self.loader_nice <= 19:
            raise ConfigError(f"loader_nice: expected an integer 0..19, got {self.loader_nice!r}")
        if self.secret is not None and (not isinstance(self.secret, bytes) or not self.secret):
            raise ConfigError("secret: expected non-empty bytes or None")
        check_warm_spec(self.catalog_warm)
        check_trunks(self.catalog_trunks)
        if not isinstance(self.sweep_interval_s, int | float) or not self.sweep_interval_s > 0:
            raise ConfigError(f"sweep_interval_s: expected > 0, got {self.sweep_interval_s!r}")
        timeout = self.drain_timeout_s
        if type(timeout) not in (int, float) or not 0 < timeout < float("inf"):
            raise ConfigError(f"drain_timeout_s: expected seconds > 0, got {timeout!r}")
