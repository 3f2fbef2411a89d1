"""Discrete-event simulation of an incremental upload with queries running meanwhile.

This module owns the replay of an :class:`~ionn_net.planner.workload.UploadPlan`
against a :class:`~ionn_net.planner.workload.QueryPattern` on a
:class:`~ionn_net.planner.workload.PlanningContext`, and the metrics read from the
resulting timeline. It is the referee every upload strategy is measured with.

Model:

* **Upload.** Partitions are sent in order over the uplink, each as its weight bytes
  divided by the link's weight compression ratio. The upload is a fluid that uses the
  link whenever no query tensor is on it: while a query's tensors are on the link the
  upload pauses (queries have priority, protocol.md §8). On a half-duplex link
  (``Link.half_duplex``, Wi-Fi) downloads pause it too. Bandwidth may change over time
  (``link_changes``); an optional ``replanner`` is then called at once with the
  layers already sent and the new link; its partitions replace the rest of the queue,
  and the partition in flight is abandoned unless the new plan still wants it.
* **Loading.** One loader on the server: a partition becomes usable at
  ``max(arrival, previous partition usable) + load``, where load is its layers' load
  times + the partition overhead + compiling the run sets of the best plan with it
  (``PlanningContext.partition_load_s``). Queries never pay compilation.
* **Queries.** One at a time on the client (a query issued while another runs waits).
  A query takes the best execution plan (policy method) for the layers usable when it
  starts; each server segment costs upload of its input boundary tensors, one RTT,
  server time and download of its output boundary tensors, computed here from
  :meth:`LayerGraph.boundary` independently of the planner's tables. With an adaptive
  policy the client re-plans the rest of the query at each layer boundary it reaches
  locally if new layers became usable meanwhile.
* **Energy.** Client power model of the context: computing, radio active (either
  direction), idle while waiting for the RTT and server compute.
* **Precision-first** (``PlanningContext.stages``). A partition sends its layers' base
  stages (their wire fraction of the raw bytes); the loader decodes them before building
  the layers, which are then usable at base precision. Refinements (the plan's, then the
  next stage of any layer still approximate) go over the same link and the same serial
  loader, which decodes them and swaps the exact weights in (no rebuild, no compile). A
  query that ran a server segment on a layer not yet exact is recorded as approximate
  (``QueryRecord.exact``).
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ionn_net.errors import PlannerError
from ionn_net.planner.execution import ExecutionPlan, ExecutionPlanner, Segment, planner_for
from ionn_net.planner.link import Link
from ionn_net.planner.timeline import PartitionRecord, QueryRecord, SimResult
from ionn_net.planner.workload import (
    ExecutionPolicy,
    PlanningContext,
    QueryPattern,
    Refinement,
    UploadPlan,
)

__all__ = [
    "PartitionRecord",
    "QueryRecord",
    "Replanner",
    "SimMemo",
    "SimResult",
    "simulate",
    "simulate_partitions",
]

#: Called at a partition boundary after a bandwidth change: (layers sent, new link)
#: -> partitions to send next.
Replanner = Callable[[frozenset[str], Link], Sequence[frozenset[str]]]

_MAX_QUERIES = 1_000_000


class _Uploader:
    """The upload fluid: progress over the link's free time, and the loader."""

    def __init__(
        self,
        ctx: PlanningContext,
        partitions: Sequence[frozenset[str]],
        link_changes: Sequence[tuple[float, Link]],
        replanner: Replanner | None,
        refinements: Sequence[Refinement] = (),
    ) -> None:
        self.ctx = ctx
        #: upload units: (layers, stage); stage 0 makes layers usable (whole blobs, or
        #: base stages precision-first), later stages refine them
        self.queue: deque[tuple[frozenset[str], int]] = deque(_units(partitions, refinements))
        self.changes = list(link_changes)
        self.replanner = replanner
        self.now = 0.0
        self.rem = 0.0
        self.current: frozenset[str] | None = None
        self.current_stage = 0
        self.stages = ctx.stages
        #: precision-first: the last stage each sent layer received, and when the layers
        #: whose last stage arrived run on exact weights; layers still approximate
        self.level: dict[str, int] = {}
        self.exact_at: dict[str, float] = {}
        self.inexact: set[str] = set()
        self.sent_at = 0.0
        self.busy: deque[tuple[float, float]] = deque()
        self.records: list[PartitionRecord] = []
        self.loader_free = 0.0
        self.sent_layers: set[str] = set(ctx.held)
        self.planned_with = 0  # index into self.changes already planned for
        self.replans = 0
        self.abandoned = 0
        #: the server segments of the best plan once ``usable`` layers are ready
        self.run_sets: Callable[[frozenset[str], Link], tuple[frozenset[str], ...]] | None = None
        self.usable: list[frozenset[str]] = [ctx.held]
        self.n_usable = 0
        #: the partition that brought each layer (0: held before): the server's pieces
        self.batch_of: dict[str, int] = dict.fromkeys(ctx.held, 0)
        self.compiled: set[frozenset[str]] = set()
        #: when the server has compiled every segment in use as one slice (§10.6)
        self.consolidated_at = math.inf
        self.needed = frozenset(n.name for n in ctx.graph if n.cls != "InputLayer")
        self.piece_memo: dict[frozenset[tuple[str, int]], tuple[frozenset[str], ...]] = {}

    def link_at(self, t: float) -> tuple[int, Link]:
        idx, link = 0, self.ctx.link
        for i, (when, new) in enumerate(self.changes):
            if when <= t:
                idx, link = i + 1, new
        return idx, link

    def next_change(self, t: float) -> float:
        return next((when for when, _ in self.changes if when > t), math.inf)

    def add_busy(self, start: float, end: float) -> None:
        if end <= start:
            return
        if self.busy and start <= self.busy[-1][1]:
            self.busy[-1] = (self.busy[-1][0], max(end, self.busy[-1][1]))
        else:
            self.busy.append((start, end))

    def _maybe_replan(self) -> None:
        """After a bandwidth change, ask the replanner for the rest of the upload. The
        partition in flight keeps going if the new plan still wants any of its layers
        (they are dropped from the new queue); otherwise it is abandoned and the bytes
        already sent are lost."""
        idx, link = self.link_at(self.now)
        if self.replanner is None or idx <= self.planned_with:
            return
        self.planned_with = idx
        self.replans += 1
        fresh = [p - self.sent_layers for p in self.replanner(frozenset(self.sent_layers), link)]
        wanted = frozenset().union(*fresh) if fresh else frozenset()
        if self.current is not None and self.current_stage == 0:
            if self.current & wanted:
                fresh = [p - self.current for p in fresh]
            else:
                self.current = None
                self.records.pop()
                self.abandoned += 1
        refine = [unit for unit in self.queue if unit[1] > 0]
        self.queue = deque([(p, 0) for p in fresh if p] + refine)

    def _start_next(self) -> bool:
        self._maybe_replan()
        while True:
            if not self.queue and not self._queue_refinement():
                return False
            layers, stage = self.queue.popleft()
            if stage == 0:
                self.current = layers - self.sent_layers
                break
            self.current = frozenset(n for n in layers if self.level.get(n) == stage - 1)
            if self.current:
                break
        self.current_stage = stage
        link = self.link_at(self.now)[1]
        wb = sum(self.ctx.graph[n].weight_bytes for n in self.current)
        if self.stages is None:
            self.rem = wb / link.weight_ratio
        else:
            self.rem = self.stages.wire_bytes(wb, stage)
        self.records.append(
            PartitionRecord(len(self.records), self.current, self.rem, self.now, -1, -1, stage)
        )
        return True

    def _queue_refinement(self) -> bool:
        """Precision-first: once nothing else is queued, the next stage of every layer
        still approximate (whatever the plan listed, the upload ends exact)."""
        if not self.inexact:
            return False
        low = min(self.level[n] for n in self.inexact)
        layers = frozenset(n for n in self.inexact if self.level[n] == low)
        self.queue.append((layers, low + 1))
        return True

    def _finish(self) -> None:
        assert self.current is not None
        if self.current_stage > 0:
            self._finish_refinement()
            return
        part = self.current
        g = self.ctx.graph
        layer_load = sum(float(self.ctx.load_s[g.position(n)]) for n in part)
        if self.stages is not None:  # the base stage is decoded before the layer is built
            layer_load += self.stages.decode_s(sum(g[n].weight_bytes for n in part), 0)
            # only layers with weights travel as stages (§10.12.1): the others are exact
            staged = frozenset(n for n in part if g[n].weight_bytes > 0)
            self.level.update(dict.fromkeys(staged, 0))
            self.inexact |= staged
        self.batch_of.update(dict.fromkeys(part, len(self.records)))
        usable = self.usable[-1] | part
        fresh: list[frozenset[str]] = []
        segments: tuple[frozenset[str], ...] = ()
        if self.run_sets is not None and self.ctx.compile_ms_per_layer > 0:
            segments = self.run_sets(usable, self.link_at(self.now)[1])
            for seg in segments:
                fresh.extend(p for p in self.pieces(seg) if p not in self.compiled)
            self.compiled.update(fresh)
        load = self.ctx.partition_load_s(layer_load, sum(map(len, fresh)))
        ready = max(self.now, self.loader_free) + load
        self.loader_free = ready
        if self.needed <= usable:  # complete: each segment becomes one slice, in turn
            whole = sum(len(s) for s in segments if len(self.pieces(s)) > 1)
            self.consolidated_at = ready + self.ctx.compile_ms_per_layer / 1000.0 * whole
        rec = self.records[-1]
        self.records[-1] = PartitionRecord(
            rec.index, part, rec.wire_bytes, rec.sent_s, self.now, ready
        )
        self.sent_layers |= part
        self.usable.append(self.usable[-1] | part)
        self.current = None

    def _finish_refinement(self) -> None:
        """A refinement arrived: the loader checks, decodes and swaps it in (no rebuild,
        no compilation: the built layers' variables are assigned)."""
        assert self.current is not None and self.stages is not None
        part, stage = self.current, self.current_stage
        wb = sum(self.ctx.graph[n].weight_bytes for n in part)
        ready = max(self.now, self.loader_free) + self.stages.refine_s(wb, len(part), stage)
        self.loader_free = ready
        self.level.update(dict.fromkeys(part, stage))
        if stage == self.stages.stages - 1:
            self.exact_at.update(dict.fromkeys(part, ready))
            self.inexact -= part
        rec = self.records[-1]
        self.records[-1] = PartitionRecord(
            rec.index, part, rec.wire_bytes, rec.sent_s, self.now, ready, stage
        )
        self.usable.append(self.usable[-1])
        self.current = None

    def exact_by(self, layers: Iterable[str], t: float) -> bool:
        """Whether every one of ``layers`` runs on exact weights at time ``t`` (layers
        held before the upload do)."""
        if self.stages is None:
            return True
        return all(
            self.exact_at.get(n, -1.0 if n not in self.level else math.inf) <= t for n in layers
        )

    def pieces(self, layers: frozenset[str]) -> tuple[frozenset[str], ...]:
        """:meth:`LayerGraph.pieces` of usable ``layers`` (memoised: a pure function of
        the layers and the partitions they came in)."""
        key = frozenset((n, self.batch_of[n]) for n in layers)
        found = self.piece_memo.get(key)
        if found is None:
            found = tuple(self.ctx.graph.pieces(layers, self.batch_of))
            self.piece_memo[key] = found
        return found

    def advance(self, t: float) -> None:
        """Move the upload forward to time ``t``."""
        guard = 0
        while self.now < t:
            guard += 1
            if guard > 10_000_000:
                raise PlannerError("simulation: upload did not converge")
            self._maybe_replan()
            if self.current is None and not self._start_next():
                # idle until the next bandwidth change (which may bring a new plan)
                self.now = min(t, self.next_change(self.now)) if self.replanner else t
                continue
            while self.busy and self.busy[0][1] <= self.now:
                self.busy.popleft()
            if self.busy and self.busy[0][0] <= self.now:
                self.now = min(self.busy[0][1], t)
                continue
            horizon = min(t, self.busy[0][0] if self.busy else math.inf, self.next_change(self.now))
            bw = self.link_at(self.now)[1].bandwidth
            if self.rem <= (horizon - self.now) * bw:
                self.now += self.rem / bw
                self.rem = 0.0
                self._finish()
            else:
                self.rem -= (horizon - self.now) * bw
                self.now = horizon

    def clone(self) -> _Uploader:
        """An independent copy that never calls the replanner (for look-ahead)."""
        twin = copy.copy(self)
        twin.queue = deque(self.queue)
        twin.busy = deque(self.busy)
        twin.records = list(self.records)
        twin.sent_layers = set(self.sent_layers)
        twin.usable = list(self.usable)
        twin.batch_of = dict(self.batch_of)
        twin.compiled = set(self.compiled)
        twin.level = dict(self.level)
        twin.exact_at = dict(self.exact_at)
        twin.inexact = set(self.inexact)
        twin.replanner = None
        return twin

    def finished_by(self, t: float) -> bool:
        """True when nothing is left to send, every partition is usable at ``t`` and
        the server has compiled its chained segments as one slice (if it ever will)."""
        self.advance(t)
        if self.queue or self.current is not None or self.inexact:
            return False
        usable = not self.records or self.records[-1].ready_s <= t
        return usable and (math.isinf(self.consolidated_at) or self.consolidated_at <= t)

    def usable_count(self, t: float) -> int:
        """Partitions usable at time ``t``."""
        self.advance(t)
        recs = self.records
        while self.n_usable < len(recs) and 0 <= recs[self.n_usable].ready_s <= t:
            self.n_usable += 1
        return self.n_usable

    def drain(self, limit: float) -> float:
        """Finish the upload with no more queries; return when it is usable."""
        while self.current is not None or self.queue or self.inexact:
            if self.now >= limit:
                break
            self.advance(min(limit, self.now + 3600.0))
        return self.records[-1].ready_s if self.records else 0.0


@dataclass
class _Acc:
    compute: float = 0.0
    transfer: float = 0.0
    wait: float = 0.0
    server: set[str] = field(default_factory=set)
    replans: int = 0
    approx: bool = False


_LinkKey = tuple[Link, object]
_MEMO_LIMIT = 20_000


class SimMemo:
    """Execution plans, run-set sizes and segment costs shared by several simulations
    of one context and policy (a planner replaying many candidate orders). Each entry
    is a pure function of the usable layers, the link and the start position, so
    sharing them changes no result, only the time taken."""

    def __init__(self, ctx: PlanningContext, policy: ExecutionPolicy) -> None:
        self.ctx = ctx
        self.policy = policy
        self.plans: dict[tuple[frozenset[str], _LinkKey, int], ExecutionPlan] = {}
        self.run_sets: dict[tuple[frozenset[str], _LinkKey], tuple[frozenset[str], ...]] = {}
        self.seg_costs: dict[tuple[tuple[str, ...], object], tuple[float, float, float]] = {}
        self.pieces: dict[frozenset[tuple[str, int]], tuple[frozenset[str], ...]] = {}

    def check(self, ctx: PlanningContext, policy: ExecutionPolicy) -> None:
        mine, theirs = self.ctx.times, ctx.times
        same = ctx.graph is self.ctx.graph and ctx.power == self.ctx.power
        if not (same and mine is theirs) and not (
            same
            and np.array_equal(mine.client_s, theirs.client_s)
            and np.array_equal(mine.server_s, theirs.server_s)
        ):
            raise PlannerError("simulation memo: made for another planning context")
        if policy != self.policy or ctx.objective != self.ctx.objective:
            raise PlannerError(f"simulation memo: made for {self.policy!r}, got {policy!r}")
        for table in (self.plans, self.run_sets, self.seg_costs, self.pieces):
            if len(table) > _MEMO_LIMIT:
                table.clear()


def _link_key(link: Link) -> _LinkKey:
    return (link, link.ratio_key())


class _Runner:
    """Runs queries one at a time against the uploader."""

    def __init__(
        self, ctx: PlanningContext, policy: ExecutionPolicy, up: _Uploader, memo: SimMemo
    ) -> None:
        self.ctx = ctx
        self.policy = policy
        self.up = up
        self.planner: ExecutionPlanner = planner_for(ctx.graph, policy.method)
        self.plans = memo.plans
        self.run_sets = memo.run_sets
        up.run_sets = self.run_sets_for
        up.piece_memo = memo.pieces
        self.seg_costs = memo.seg_costs
        self.piece_counts: dict[frozenset[str], int] = {}

    def run_sets_for(self, usable: frozenset[str], link: Link) -> tuple[frozenset[str], ...]:
        """Server segments of the best plan with ``usable`` layers: what the server
        prepares when a partition lands."""
        key = (usable, _link_key(link))
        if key in self.run_sets:
            return self.run_sets[key]
        plan = self.planner.solve(
            self.ctx.times,
            self.planner.servable(usable),
            link,
            objective=self.policy.objective,
            power=self.ctx.power,
        )
        self.run_sets[key] = tuple(
            frozenset(seg.layers) for seg in plan.segments if seg.location == "server"
        )
        return self.run_sets[key]

    def _piece_overhead_s(self, seg: Segment, t: float) -> float:
        """Dispatch of the extra pieces of a chained segment, until consolidated. Its
        layers are all usable, so their partitions (and the pieces) are final."""
        if self.ctx.piece_call_ms <= 0 or t >= self.up.consolidated_at:
            return 0.0
        layers = frozenset(seg.layers)
        n = self.piece_counts.get(layers)
        if n is None:
            n = len(self.up.pieces(layers))
            self.piece_counts[layers] = n
        return (n - 1) * self.ctx.piece_call_ms / 1000.0

    def plan(self, k: int, link_idx: int, link: Link, start: int = 0) -> ExecutionPlan:
        del link_idx  # the link itself is part of the key
        usable = self.up.usable[k]
        key = (usable, _link_key(link), start)
        if key not in self.plans:
            self.plans[key] = self.planner.solve(
                self.ctx.times,
                self.planner.servable(usable),
                link,
                objective=self.policy.objective,
                power=self.ctx.power,
                start=start,
            )
        return self.plans[key]

    def _server_cost(self, seg: Segment, link: Link) -> tuple[float, float, float]:
        """(up wire bytes, server seconds, down wire bytes) from the graph itself."""
        key = (seg.layers, link.ratio_key())
        if key not in self.seg_costs:
            g = self.ctx.graph
            ins, outs = g.boundary(seg.layers)
            up_b = sum(g.tensor_bytes(r) / link.ratio_of(r) for r in ins)
            down_b = sum(g.tensor_bytes(r) / link.ratio_of(r) for r in outs)
            srv = sum(float(self.ctx.times.server_s[g.position(n)]) for n in seg.layers)
            self.seg_costs[key] = (up_b, srv, down_b)
        return self.seg_costs[key]

    def _run_server(self, seg: Segment, t: float, acc: _Acc) -> float:
        link = self.up.link_at(t)[1]
        up_b, srv, down_b = self._server_cost(seg, link)
        srv += self._piece_overhead_s(seg, t)
        up_s = up_b / link.bandwidth
        self.up.advance(t)
        self.up.add_busy(t, t + up_s)
        t += up_s + link.rtt_s + srv
        down_s = down_b / link.down
        if link.half_duplex:
            self.up.advance(t)
            self.up.add_busy(t, t + down_s)
        acc.transfer += up_s + down_s
        acc.wait += link.rtt_s + srv
        acc.server.update(seg.layers)
        if not acc.approx and not self.up.exact_by(seg.layers, t - srv):
            acc.approx = True
        return t + down_s

    def _run_client(
        self,
        seg: Segment,
        t: float,
        pos: int,
        *,
        k: int,
        link_idx: int,
        acc: _Acc,
        declined: int = -1,
    ) -> tuple[float, int, tuple[int, int, Link] | None]:
        """Run a client segment; with an adaptive policy stop at the first layer
        boundary (a unit start) after new layers became usable (other than a set whose
        switch the query declined, ``declined``) or the link changed,
        returning the new (usable count, link index, link)."""
        client_s = self.ctx.times.client_s
        n = len(seg.layers)
        durations = client_s[pos : pos + n]
        end = t + float(durations.sum())
        event = math.inf
        if self.policy.adaptive:
            # the query sends nothing during this segment: run a copy of the upload to
            # the segment's end (or the next bandwidth change) to find when the next
            # partition becomes usable, without committing the real one past ``t``
            event = self.up.next_change(t)
            peek = self.up.clone()
            peek.advance(min(end, event))
            recs = peek.records
            if k < len(recs) and recs[k].ready_s >= 0:
                event = min(event, recs[k].ready_s)
        if event > end:
            acc.compute += end - t
            return end, pos + n, None
        planner = self.planner
        for i in range(n):
            p = pos + i
            if t >= event and p > 0 and planner.unit_start[planner.unit_of[p]] == p:
                k_now = self.up.usable_count(t)
                idx_now, link_now = self.up.link_at(t)
                if (k_now not in (k, declined)) or idx_now != link_idx:
                    return t, p, (k_now, idx_now, link_now)
            dt = float(durations[i])
            t += dt
            acc.compute += dt
        return t, pos + n, None

    def run(self, start: float, acc: _Acc) -> float:
        """Execute one query from time ``start``; return its finish time."""
        k = self.up.usable_count(start)
        link_idx, link = self.up.link_at(start)
        segments = list(self.plan(k, link_idx, link).segments)
        t, pos, si = start, 0, 0
        declined = -1  # usable count whose switch this query declined
        while si < len(segments):
            seg = segments[si]
            si += 1
            if seg.location == "server":
                t = self._run_server(seg, t, acc)
                pos += len(seg.layers)
                continue
            t, pos, changed = self._run_client(
                seg, t, pos, k=k, link_idx=link_idx, acc=acc, declined=declined
            )
            if changed is None:
                continue
            rest = self.plan(k, link_idx, link, pos)
            fresh = self.plan(*changed, pos)
            if changed[1] != link_idx or (
                fresh.predicted_s <= self.policy.switch_margin * rest.predicted_s
            ):
                k, link_idx, link = changed
                rest = fresh
                acc.replans += 1
            else:  # not worth it: keep to the course until more layers land
                declined = changed[0]
            segments, si = list(rest.segments), 0
        return t


def _units(
    partitions: Sequence[frozenset[str]], refinements: Sequence[Refinement]
) -> list[tuple[frozenset[str], int]]:
    """Partitions (stage 0) and refinements in sending order."""
    n = len(partitions)
    after: dict[int, list[tuple[frozenset[str], int]]] = {}
    for ref in refinements:
        k = n if ref.after is None else min(max(ref.after, 0), n)
        after.setdefault(k, []).append((ref.layers, ref.stage))
    out: list[tuple[frozenset[str], int]] = []
    for k in range(n + 1):
        out.extend(after.get(k, ()))
        if k < n:
            out.append((partitions[k], 0))
    return out


def _issue_time(pattern: QueryPattern, i: int, prev_end: float) -> float:
    if pattern.kind == "rate":
        assert pattern.rate_qps is not None
        return i / pattern.rate_qps
    return prev_end


def _repeat(
    records: list[QueryRecord], rec: QueryRecord, pattern: QueryPattern, limit: float, total: int
) -> float:
    """Append copies of ``rec`` (same service time) until the pattern's limit or
    ``total`` queries; return the last finish time."""
    service = rec.finished_s - rec.started_s
    prev_end = rec.finished_s
    i = rec.index + 1
    while i < total:
        issued = _issue_time(pattern, i, prev_end)
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


def _validate_changes(changes: Sequence[tuple[float, Link]]) -> list[tuple[float, Link]]:
    out: list[tuple[float, Link]] = []
    last = 0.0
    for item in changes:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Link)):
            raise PlannerError(f"link_changes: expected (time_s, Link) pairs, got {item!r}")
        when = item[0]
        if not (isinstance(when, int | float) and math.isfinite(when) and when > last):
            raise PlannerError(f"link_changes: expected increasing times > 0, got {when!r}")
        last = float(when)
        out.append((last, item[1]))
    return out


def simulate(
    ctx: PlanningContext,
    plan: UploadPlan,
    *,
    policy: ExecutionPolicy | None = None,
    link_changes: Sequence[tuple[float, Link]] = (),
    replanner: Replanner | None = None,
    until_s: float | None = None,
    max_queries: int = 200_000,
) -> SimResult:
    """Replay ``plan`` with the queries of ``ctx.pattern``.

    Queries stop at the pattern's count or duration, at ``until_s`` (issue time), or
    when neither is given once every partition is usable (at least one query runs).
    ``policy`` defaults to the plan's own. Bounded by ``max_queries``.
    """
    return simulate_partitions(
        ctx,
        plan.partitions,
        policy or plan.policy,
        link_changes=link_changes,
        replanner=replanner,
        until_s=until_s,
        max_queries=max_queries,
        refinements=plan.refinements,
    )


def simulate_partitions(
    ctx: PlanningContext,
    partitions: Sequence[frozenset[str]],
    policy: ExecutionPolicy,
    *,
    link_changes: Sequence[tuple[float, Link]] = (),
    replanner: Replanner | None = None,
    until_s: float | None = None,
    max_queries: int = 200_000,
    memo: SimMemo | None = None,
    refinements: Sequence[Refinement] = (),
) -> SimResult:
    """:func:`simulate` for a bare list of partitions and a policy. ``memo`` (made for
    the same context and policy) lets several simulations share their execution plans.
    With ``ctx.stages`` (precision-first) the partitions send base stages and
    ``refinements`` (then whatever stages are still missing) follow."""
    if not 1 <= max_queries <= _MAX_QUERIES:
        raise PlannerError(f"max_queries: expected 1..{_MAX_QUERIES}, got {max_queries}")
    if memo is None:
        memo = SimMemo(ctx, policy)
    memo.check(ctx, policy)
    up = _Uploader(ctx, partitions, _validate_changes(link_changes), replanner, refinements)
    runner = _Runner(ctx, policy, up, memo)
    pattern = ctx.pattern
    limit = min(
        until_s if until_s is not None else math.inf,
        pattern.duration_s if pattern.duration_s is not None else math.inf,
    )
    count = pattern.count if pattern.count is not None else max_queries
    open_ended = math.isinf(limit) and pattern.count is None
    records: list[QueryRecord] = []
    prev_end = 0.0
    total = min(count, max_queries)
    i = 0
    while i < total:
        issued = _issue_time(pattern, i, prev_end)
        if issued >= limit or (open_ended and i > 0 and up.finished_by(issued)):
            break
        started = max(issued, prev_end)
        acc = _Acc()
        steady = up.finished_by(started) and math.isinf(up.next_change(started))
        prev_end = runner.run(started, acc)
        energy = ctx.power.energy_j(compute_s=acc.compute, transfer_s=acc.transfer, wait_s=acc.wait)
        rec = QueryRecord(
            i,
            issued,
            started,
            prev_end,
            frozenset(acc.server),
            acc.compute,
            acc.transfer,
            acc.wait,
            energy,
            acc.replans,
            not acc.approx,
        )
        records.append(rec)
        i += 1
        if steady and not open_ended:
            # nothing changes any more: every later query repeats this one
            prev_end = _repeat(records, rec, pattern, limit, total)
            break
    up.drain(limit=prev_end + 1e7)
    return SimResult(
        queries=tuple(records),
        partitions=tuple(up.records),
        local_s=ctx.local_s(),
        upload_replans=up.replans,
        notes={"abandoned_partitions": float(up.abandoned)},
    )
