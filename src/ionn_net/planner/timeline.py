"""The timeline of one simulation: what each query and each upload unit did, and the
metrics read from it (:func:`ionn_net.planner.simulate.simulate` produces it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ionn_net.planner.workload import QueryPattern

__all__ = ["PartitionRecord", "QueryRecord", "SimResult", "issue_time", "repeat_query"]


@dataclass(frozen=True, slots=True)
class QueryRecord:
    """One simulated query. ``server_layers`` ran on the server, the rest locally."""

    index: int
    issued_s: float
    started_s: float
    finished_s: float
    server_layers: frozenset[str]
    compute_s: float
    transfer_s: float
    wait_s: float
    energy_j: float
    replans: int = 0
    #: False when a server layer it ran on held base-stage (approximate) weights
    exact: bool = True

    @property
    def latency_s(self) -> float:
        """From issue to result, including time queued behind earlier queries."""
        return self.finished_s - self.issued_s


@dataclass(frozen=True, slots=True)
class PartitionRecord:
    index: int
    layers: frozenset[str]
    wire_bytes: float
    sent_s: float
    arrived_s: float
    ready_s: float
    #: 0: the layers' whole blobs (or their base stages, precision-first); >= 1: a refinement
    stage: int = 0


@dataclass(frozen=True, slots=True)
class SimResult:
    """The timeline of one simulation."""

    queries: tuple[QueryRecord, ...]
    partitions: tuple[PartitionRecord, ...]
    local_s: float
    upload_replans: int = 0
    notes: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def upload_done_s(self) -> float:
        """When the last partition became usable (0 without partitions)."""
        return self.partitions[-1].ready_s if self.partitions else 0.0

    def window(self, since: float = 0.0, until: float = math.inf) -> list[QueryRecord]:
        return [q for q in self.queries if since <= q.issued_s < until]

    def mean_latency(self, since: float = 0.0, until: float = math.inf) -> float:
        """Mean latency of the queries issued in ``[since, until)`` (nan if none)."""
        qs = self.window(since, until)
        return sum(q.latency_s for q in qs) / len(qs) if qs else math.nan

    def mean_energy(self, since: float = 0.0, until: float = math.inf) -> float:
        qs = self.window(since, until)
        return sum(q.energy_j for q in qs) / len(qs) if qs else math.nan

    def first_faster_than_local(self, factor: float = 1.0) -> float | None:
        """Issue time of the first query faster than ``factor`` x the local latency."""
        for q in self.queries:
            if q.latency_s < self.local_s * factor * (1 - 1e-9):
                return q.issued_s
        return None

    def completion_time(self, n: int) -> float | None:
        """When the ``n``-th query finished (``None`` if fewer were simulated)."""
        return self.queries[n - 1].finished_s if 0 < n <= len(self.queries) else None

    def uploaded_by(self, t: float) -> float:
        """Wire bytes of the partitions that arrived by time ``t``."""
        return sum(p.wire_bytes for p in self.partitions if p.arrived_s <= t)

    def approximate_queries(self, since: float = 0.0, until: float = math.inf) -> int:
        """Queries issued in ``[since, until)`` that ran on approximate weights."""
        return sum(1 for q in self.window(since, until) if not q.exact)

    def exact_from(self) -> float | None:
        """Issue time of the first query from which every query ran on exact weights
        (``None`` if the last one did not)."""
        if not self.queries or not self.queries[-1].exact:
            return None
        first = len(self.queries)
        while first > 0 and self.queries[first - 1].exact:
            first -= 1
        return self.queries[first].issued_s


def issue_time(pattern: QueryPattern, i: int, prev_end: float) -> float:
    """When query ``i`` is issued (back to back: when the previous one ended)."""
    if pattern.kind == "rate":
        assert pattern.rate_qps is not None
        return i / pattern.rate_qps
    return prev_end


def repeat_query(
    records: list[QueryRecord], rec: QueryRecord, pattern: QueryPattern, limit: float, total: int
) -> float:
    """Append copies of ``rec`` (same service time) until the pattern's limit or
    ``total`` queries; return the last finish time."""
    service = rec.finished_s - rec.started_s
    prev_end = rec.finished_s
    i = rec.index + 1
    while i < total:
        issued = issue_time(pattern, i, prev_end)
        if issued >= limit:
            break
        started = max(issued, prev_end)
        prev_end = started + service
        records.append(
            QueryRecord(
                i,
                issued,
                started,
                prev_end,
                rec.server_layers,
                rec.compute_s,
                rec.transfer_s,
                rec.wait_s,
                rec.energy_j,
                0,
                rec.exact,
            )
        )
        i += 1
    return prev_end
