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
* **Planning.** The client may still be planning when the session starts
  (``planned_s``): until then it sends only its head start (``head_start``, layers in
  order, each started before ``planned_s``; the link idles once they are sent), then the
  partitions, whose bytes exclude the head start's. Without either, the plan is known at 0.
* **Loading.** One loader on the server, which takes every partition that has arrived by
  the time it is free as one load (as the client's session sends them): a partition
  becomes usable at ``max(arrival, loader free) + load``, where load is its layers' load
  times + the partition overhead + compiling the run sets of the best plan with it
  (``PlanningContext.partition_load_s``). Queries never pay compilation.
* **Client compile.** With ``activation_s``, the partitions of load ``k`` become usable
  by queries ``activation_s[k]`` after the server has loaded them: the client compiles its
  side of the new plan first (the server's loader does not wait for that).
* **Server contention.** With ``loader_extra_s``, a server segment that starts while the
  loader works (building and compiling a partition, or consolidating after the upload)
  takes that much longer: the loader's threads and the query's share the server's CPU
  and interpreter, and a call waits for them at each hand-over, whatever its size.
* **Client contention.** With ``client_extra_s``, a query that runs part of the model
  on the client while the upload is not over takes that much longer: the client's own
  upload work (compressing and framing blobs, planning, compiling new plans) shares its
  CPU and interpreter with the query.
* **Planning view.** With ``plan_server_ms``, queries choose their plans with those
  server times (the client's prior, e.g. the server's announced cost model) until the
  first query that ran on the server; from then on with the context's (what the client
  learns from each answer).
* **Pacing.** With ``pace``, the upload (not the queries' tensors) goes no faster than
  the client's pacer lets it, from each given time on.
* **Measured loads.** ``load_s`` gives the duration of the first loads (as a run
  measured them, in order) instead of the per-layer model.
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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ionn_net.errors import PlannerError
from ionn_net.planner.execution import (
    ExecutionPlan,
    ExecutionPlanner,
    LayerTimes,
    Segment,
    planner_for,
)
from ionn_net.planner.link import Link
from ionn_net.planner.timeline import (
    PartitionRecord,
    QueryRecord,
    SimResult,
    issue_time,
    repeat_query,
)
from ionn_net.planner.uploader import Replanner, Uploader
from ionn_net.planner.workload import (
    ExecutionPolicy,
    PlanningContext,
    Refinement,
    UploadPlan,
)

__all__ = [
    "Belief",
    "PartitionRecord",
    "QueryRecord",
    "Replanner",
    "SimMemo",
    "SimResult",
    "simulate",
    "simulate_partitions",
]

_MAX_QUERIES = 1_000_000


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


@dataclass(frozen=True, slots=True)
class Belief:
    """The per-layer times a client plans with when it does not know the true ones
    (those of the simulated context, which every cost is charged with): ``before``
    until ``switch_s`` (e.g. the server's predictions), then ``after`` (its
    measurements, protocol.md §10.11). Execution plans and the run sets the server
    prepares are chosen with the belief at the moment of the decision."""

    before: LayerTimes
    after: LayerTimes
    switch_s: float = math.inf

    def at(self, t: float) -> tuple[int, LayerTimes]:
        return (0, self.before) if t < self.switch_s else (1, self.after)


class SimMemo:
    """Execution plans, run-set sizes and segment costs shared by several simulations
    of one context and policy (a planner replaying many candidate orders). Each entry
    is a pure function of the usable layers, the link and the start position, so
    sharing them changes no result, only the time taken."""

    def __init__(self, ctx: PlanningContext, policy: ExecutionPolicy) -> None:
        self.ctx = ctx
        self.policy = policy
        # keyed also by whether the plans are chosen with the context's times (True) or
        # with a simulation's planning view (False: such a simulation has its own memo)
        self.plans: dict[tuple[frozenset[str], _LinkKey, int, bool], ExecutionPlan] = {}
        self.run_sets: dict[tuple[frozenset[str], _LinkKey, bool], tuple[frozenset[str], ...]] = {}
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
        self,
        ctx: PlanningContext,
        policy: ExecutionPolicy,
        up: Uploader,
        memo: SimMemo,
        *,
        loader_extra_s: float = 0.0,
        client_extra_s: float = 0.0,
        view: LayerTimes | None = None,
        belief: Belief | None = None,
    ) -> None:
        self.ctx = ctx
        self.policy = policy
        self.up = up
        self.loader_extra_s = loader_extra_s
        self.client_extra_s = client_extra_s
        #: what plans are chosen with until a query has run on the server ("Planning view")
        self.view = ctx.times if view is None else view
        self.learned = view is None
        self.planner: ExecutionPlanner = planner_for(ctx.graph, policy.method)
        self.belief = belief
        #: when the decision being made is taken (the belief may change over time)
        self.now = 0.0
        self.plans = memo.plans
        self.run_sets = memo.run_sets
        # plans made with the second belief are kept apart from the first's
        self.later: tuple[dict[Any, ExecutionPlan], dict[Any, tuple[frozenset[str], ...]]]
        self.later = ({}, {})
        up.run_sets = self.run_sets_for
        up.piece_memo = memo.pieces
        self.seg_costs = memo.seg_costs
        self.piece_counts: dict[frozenset[str], int] = {}

    def run_sets_for(self, usable: frozenset[str], link: Link) -> tuple[frozenset[str], ...]:
        """Server segments of the best plan with ``usable`` layers: what the server
        prepares when a partition lands."""
        phase, times = self._times(self.up.now)
        table = self.run_sets if phase == 0 else self.later[1]
        key = (usable, _link_key(link), self.learned)
        if key in table:
            return table[key]
        plan = self.planner.solve(
            times,
            self.planner.servable(usable),
            link,
            objective=self.policy.objective,
            power=self.ctx.power,
        )
        table[key] = tuple(
            frozenset(seg.layers) for seg in plan.segments if seg.location == "server"
        )
        return table[key]

    def _times(self, t: float) -> tuple[int, LayerTimes]:
        """The times decisions at ``t`` are made with: the planning view (the true ones
        once learned), or the belief."""
        return (0, self.view) if self.belief is None else self.belief.at(t)

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
        phase, times = self._times(self.now)
        plans = self.plans if phase == 0 else self.later[0]
        usable = self.up.usable[k]
        key = (usable, _link_key(link), start, self.learned)
        if key not in plans:
            plans[key] = self.planner.solve(
                times,
                self.planner.servable(usable),
                link,
                objective=self.policy.objective,
                power=self.ctx.power,
                start=start,
            )
        return plans[key]

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
        if self.loader_extra_s and self.up.loading_at(t + up_s):
            srv += self.loader_extra_s
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
            peek.settle(min(end, event))
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

    def run(self, start: float, acc: _Acc, *, uploading: bool = False) -> float:
        """Execute one query from time ``start``; return its finish time. ``uploading``:
        the upload is not over, so its client segments pay ``client_extra_s``."""
        self.now = start
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
            if uploading and self.client_extra_s:  # once per query (see "Client contention")
                t += self.client_extra_s
                acc.compute += self.client_extra_s
                uploading = False
            t, pos, changed = self._run_client(
                seg, t, pos, k=k, link_idx=link_idx, acc=acc, declined=declined
            )
            if changed is None:
                continue
            self.now = t
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
        if acc.server and not self.learned:  # the client has measured the server now
            self.learned, self.view = True, self.ctx.times
        return t


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
    belief: Belief | None = None,
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
        belief=belief,
        refinements=plan.refinements,
    )


def _planning_view(
    ctx: PlanningContext,
    memo: SimMemo | None,
    belief: Belief | None,
    plan_server_ms: Mapping[str, float] | None,
) -> tuple[LayerTimes | None, SimMemo | None]:
    """The planning view of ``plan_server_ms`` (None: the true times) and the memo the
    simulation may share (none when its plans are not the truth's)."""
    if belief is not None and memo is not None:
        raise PlannerError("simulation: a memo holds plans made with the true times, not a belief")
    if belief is not None and plan_server_ms is not None:
        raise PlannerError("simulation: a belief and a planning view are exclusive")
    if plan_server_ms is None:
        return None, memo
    # plans chosen with this view are this simulation's own
    return LayerTimes.from_ms(ctx.graph, ctx.client_ms, plan_server_ms), None


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
    belief: Belief | None = None,
    head_start: Sequence[str] = (),
    planned_s: float = 0.0,
    loader_extra_s: float = 0.0,
    activation_s: Sequence[float] = (),
    load_s: Sequence[float] = (),
    pace: Sequence[tuple[float, float]] = (),
    client_extra_s: float = 0.0,
    plan_server_ms: Mapping[str, float] | None = None,
    refinements: Sequence[Refinement] = (),
) -> SimResult:
    """:func:`simulate` for a bare list of partitions and a policy. ``memo`` (made for
    the same context and policy) lets several simulations share their execution plans.
    With ``ctx.stages`` (precision-first) the partitions send base stages and
    ``refinements`` (then whatever stages are still missing) follow.
    ``planned_s``: when the client knows its plan; until then it sends ``head_start``
    (see the module docstring). ``loader_extra_s``: how much longer a server segment
    takes while the loader works (see "Server contention"); ``activation_s``: the
    client's compile time after each load (see "Client compile"); ``load_s``: measured
    load times of the first partitions (see "Measured loads"); ``pace``: (from time,
    bytes/s) the upload's pacing rate over time (query tensors are not paced);
    ``client_extra_s``: what a query's client side pays while the upload runs (see
    "Client contention"); ``plan_server_ms``: the server times plans are chosen with
    until a query has run on the server (see "Planning view"). With a ``belief`` the
    client decides with its times while every cost is charged with the context's (then
    ``memo`` cannot be shared: its plans are the truth's; not with ``plan_server_ms``)."""
    for name, values in (
        ("activation_s", activation_s),
        ("load_s", load_s),
        ("loader_extra_s", (loader_extra_s,)),
        ("client_extra_s", (client_extra_s,)),
    ):
        if any(not (math.isfinite(v) and v >= 0) for v in values):
            raise PlannerError(f"{name}: expected finite seconds >= 0, got {values!r}")
    if not 1 <= max_queries <= _MAX_QUERIES:
        raise PlannerError(f"max_queries: expected 1..{_MAX_QUERIES}, got {max_queries}")
    view, memo = _planning_view(ctx, memo, belief, plan_server_ms)
    if memo is None:
        memo = SimMemo(ctx, policy)
    memo.check(ctx, policy)
    if not (math.isfinite(planned_s) and planned_s >= 0):
        raise PlannerError(f"planned_s: expected a finite time >= 0, got {planned_s!r}")
    unknown = [n for n in head_start if n not in ctx.graph]
    if unknown:
        raise PlannerError(f"head_start: unknown layers {unknown[:3]}")
    up = Uploader(
        ctx,
        partitions,
        _validate_changes(link_changes),
        replanner,
        head=(tuple(head_start), planned_s),
        refinements=refinements,
    )
    up.activation_s = tuple(activation_s)
    up.measured_load_s = tuple(load_s)
    up.pace = tuple(sorted(pace))
    runner = _Runner(
        ctx,
        policy,
        up,
        memo,
        loader_extra_s=loader_extra_s,
        client_extra_s=client_extra_s,
        view=view,
        belief=belief,
    )
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
        issued = issue_time(pattern, i, prev_end)
        if issued >= limit or (open_ended and i > 0 and up.finished_by(issued)):
            break
        started = max(issued, prev_end)
        acc = _Acc()
        done = up.finished_by(started)
        steady = done and math.isinf(up.next_change(started))
        steady = steady and (belief is None or started >= belief.switch_s)
        prev_end = runner.run(started, acc, uploading=not done)
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
            prev_end = repeat_query(records, rec, pattern, limit, total)
            break
    up.drain(limit=prev_end + 1e7)
    return SimResult(
        queries=tuple(records),
        partitions=tuple(up.records),
        local_s=ctx.local_s(),
        upload_replans=up.replans,
        notes={"abandoned_partitions": float(up.abandoned)},
    )
