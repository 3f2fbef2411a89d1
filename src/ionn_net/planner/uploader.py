"""The upload side of a simulation (:mod:`ionn_net.planner.simulate`): the partitions'
progress over the link's free time, the head start sent while the client plans, the
server's loader and, precision-first, the refinements. Its model is described in the
simulate module's docstring (Upload, Planning, Loading, Client compile, Pacing, Measured
loads, Precision-first)."""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from ionn_net.errors import PlannerError
from ionn_net.planner.link import Link
from ionn_net.planner.timeline import PartitionRecord
from ionn_net.planner.workload import PlanningContext, Refinement

__all__ = ["Replanner", "Uploader", "upload_units"]

#: Called at a partition boundary after a bandwidth change: (layers sent, new link)
#: -> partitions to send next.
Replanner = Callable[[frozenset[str], Link], Sequence[frozenset[str]]]


class Uploader:
    """The upload fluid: progress over the link's free time, and the loader."""

    def __init__(
        self,
        ctx: PlanningContext,
        partitions: Sequence[frozenset[str]],
        link_changes: Sequence[tuple[float, Link]],
        replanner: Replanner | None,
        *,
        head: tuple[Sequence[str], float] = ((), 0.0),
        refinements: Sequence[Refinement] = (),
    ) -> None:
        self.ctx = ctx
        #: upload units: (layers, stage); stage 0 makes layers usable (whole blobs, or
        #: base stages precision-first), later stages refine them
        self.queue: deque[tuple[frozenset[str], int]] = deque(upload_units(partitions, refinements))
        #: the head start sent while the client plans, until ``planned_s``
        self.head: deque[str] = deque(head[0])
        self.planned_s = float(head[1])
        self.in_head = False
        self.prefetched: set[str] = set()
        #: (start, end) of every load and of the consolidation: the loader is busy
        self.load_spans: list[tuple[float, float]] = []
        #: partitions arrived but not loaded yet (record indices), and loads started
        self.pending: list[int] = []
        self.loads = 0
        #: client compile after each load, before queries use the partition
        self.activation_s: Sequence[float] = ()
        #: measured load time of the first partitions, in order (else the model's)
        self.measured_load_s: Sequence[float] = ()
        #: (from time, bytes/s): the pacing rate the upload (only) is held to
        self.pace: Sequence[tuple[float, float]] = ()
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

    def pace_at(self, t: float) -> float:
        """The rate the client's pacer lets the upload go at (bytes/s; inf: unpaced)."""
        rate = math.inf
        for when, value in self.pace:
            if when > t:
                break
            rate = value
        return rate

    def next_pace(self, t: float) -> float:
        return next((when for when, _ in self.pace if when > t), math.inf)

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
        if self.current is not None and not self.in_head and self.current_stage == 0:
            if self.current & wanted:
                fresh = [p - self.current for p in fresh]
            else:
                self.current = None
                self.records.pop()
                self.abandoned += 1
        refine = [unit for unit in self.queue if unit[1] > 0]
        self.queue = deque([(p, 0) for p in fresh if p] + refine)

    def _start_head(self) -> bool:
        """While the client plans: the next head-start layer (False: none, or planned)."""
        while self.head and self.now < self.planned_s:
            name = self.head.popleft()
            if name in self.sent_layers or name in self.prefetched:
                continue
            self.current, self.in_head = frozenset((name,)), True
            wb = self.ctx.graph[name].weight_bytes
            self.rem = wb / self.link_at(self.now)[1].weight_ratio
            return True
        return False

    def _idle_until(self, t: float) -> float:
        """Where the upload stands when it has nothing to send before ``t``."""
        if self.now < self.planned_s:
            return min(t, self.planned_s)  # the client is still planning
        return min(t, self.next_change(self.now)) if self.replanner else t

    def _start_next(self) -> bool:
        if self.now < self.planned_s:
            return self._start_head()
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
        sent = self.current - self.prefetched if stage == 0 else self.current
        wb = sum(self.ctx.graph[n].weight_bytes for n in sent)
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
        if self.in_head:  # its bytes are there; it loads with the partition that has it
            self.prefetched |= self.current
            self.current, self.in_head = None, False
            return
        if self.current_stage > 0:
            self._finish_refinement()
            return
        part = self.current
        self.records[-1] = replace(self.records[-1], arrived_s=self.now)
        if self.stages is not None:  # base stages: approximate until refined
            # only layers with weights travel as stages (§10.12.1): the others are exact
            staged = frozenset(n for n in part if self.ctx.graph[n].weight_bytes > 0)
            self.level.update(dict.fromkeys(staged, 0))
            self.inexact |= staged
        self.pending.append(len(self.records) - 1)
        self.sent_layers |= part
        self.usable.append(self.usable[-1] | part)
        self.current = None
        self._commit(self.now)

    def _commit(self, t: float) -> None:
        """Start the loads due by ``t`` (every arrival up to ``t`` is known): the loader
        takes every partition that has arrived by the time it is free, as one load (the
        client's session sends them as one, §10.6)."""
        while self.pending:
            start = max(self.loader_free, self.records[self.pending[0]].arrived_s)
            if start >= t:  # partitions arriving at ``start`` itself join this load
                return
            batch = [k for k in self.pending if self.records[k].arrived_s <= start]
            del self.pending[: len(batch)]
            self._load(batch, start)

    def _load(self, batch: list[int], start: float) -> None:
        g = self.ctx.graph
        layers = frozenset().union(*(self.records[k].layers for k in batch))
        j = self.loads
        self.loads += 1
        layer_load = sum(float(self.ctx.load_s[g.position(n)]) for n in layers)
        if self.stages is not None:  # the base stage is decoded before the layer is built
            layer_load += self.stages.decode_s(sum(g[n].weight_bytes for n in layers), 0)
        self.batch_of.update(dict.fromkeys(layers, j + 1))
        usable = self.usable[batch[-1] + 1]
        fresh: list[frozenset[str]] = []
        segments: tuple[frozenset[str], ...] = ()
        if self.run_sets is not None and self.ctx.compile_ms_per_layer > 0:
            segments = self.run_sets(usable, self.link_at(start)[1])
            for seg in segments:
                fresh.extend(p for p in self.pieces(seg) if p not in self.compiled)
            self.compiled.update(fresh)
        load = self.ctx.partition_load_s(layer_load, sum(map(len, fresh)))
        if j < len(self.measured_load_s):
            load = self.measured_load_s[j]
        ready = start + load
        self.load_spans.append((start, ready))
        self.loader_free = ready
        if self.needed <= usable:  # complete: each segment becomes one slice, in turn
            whole = sum(len(s) for s in segments if len(self.pieces(s)) > 1)
            self.consolidated_at = ready + self.ctx.compile_ms_per_layer / 1000.0 * whole
            self.load_spans.append((ready, self.consolidated_at))
        usable_at = ready + (self.activation_s[j] if j < len(self.activation_s) else 0.0)
        for k in batch:
            self.records[k] = replace(self.records[k], ready_s=usable_at)

    def _finish_refinement(self) -> None:
        """A refinement arrived: the loader checks, decodes and swaps it in (no rebuild,
        no compilation: the built layers' variables are assigned), after the loads of the
        partitions that arrived before it."""
        assert self.current is not None and self.stages is not None
        self._commit(math.inf)  # every pending partition arrived before this refinement
        part, stage = self.current, self.current_stage
        wb = sum(self.ctx.graph[n].weight_bytes for n in part)
        ready = max(self.now, self.loader_free) + self.stages.refine_s(wb, len(part), stage)
        self.load_spans.append((max(self.now, self.loader_free), ready))
        self.loader_free = ready
        self.level.update(dict.fromkeys(part, stage))
        if stage == self.stages.stages - 1:
            self.exact_at.update(dict.fromkeys(part, ready))
            self.inexact -= part
        self.records[-1] = replace(self.records[-1], arrived_s=self.now, ready_s=ready)
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
                # idle until the plan is known or the next bandwidth change (which may
                # bring a new plan)
                self.now = self._idle_until(t)
                continue
            while self.busy and self.busy[0][1] <= self.now:
                self.busy.popleft()
            if self.busy and self.busy[0][0] <= self.now:
                self.now = min(self.busy[0][1], t)
                continue
            horizon = min(
                t,
                self.busy[0][0] if self.busy else math.inf,
                self.next_change(self.now),
                self.next_pace(self.now),
            )
            bw = min(self.link_at(self.now)[1].bandwidth, self.pace_at(self.now))
            if self.rem <= (horizon - self.now) * bw:
                self.now += self.rem / bw
                self.rem = 0.0
                self._finish()
            else:
                self.rem -= (horizon - self.now) * bw
                self.now = horizon

    def settle(self, t: float) -> None:
        """Move the upload forward to ``t`` and start the loads due by then."""
        self.advance(t)
        self._commit(t)

    def clone(self) -> Uploader:
        """An independent copy that never calls the replanner (for look-ahead)."""
        twin = copy.copy(self)
        twin.queue = deque(self.queue)
        twin.busy = deque(self.busy)
        twin.records = list(self.records)
        twin.sent_layers = set(self.sent_layers)
        twin.usable = list(self.usable)
        twin.batch_of = dict(self.batch_of)
        twin.compiled = set(self.compiled)
        twin.head = deque(self.head)
        twin.prefetched = set(self.prefetched)
        twin.load_spans = list(self.load_spans)
        twin.pending = list(self.pending)
        twin.level = dict(self.level)
        twin.exact_at = dict(self.exact_at)
        twin.inexact = set(self.inexact)
        twin.replanner = None
        return twin

    def finished_by(self, t: float) -> bool:
        """True when nothing is left to send, every partition is usable at ``t`` and
        the server has compiled its chained segments as one slice (if it ever will)."""
        self.advance(t)
        self._commit(t)
        if self.queue or self.current is not None or self.pending or t < self.planned_s:
            return False
        if self.inexact:
            return False
        usable = not self.records or 0 <= self.records[-1].ready_s <= t
        return usable and (math.isinf(self.consolidated_at) or self.consolidated_at <= t)

    def loading_at(self, t: float) -> bool:
        """True while the server's loader works at ``t`` (the upload advanced to ``t``)."""
        self._commit(min(t, self.now))
        return any(a <= t < b for a, b in reversed(self.load_spans))

    def usable_count(self, t: float) -> int:
        """Partitions usable at time ``t``."""
        self.advance(t)
        self._commit(t)
        recs = self.records
        while self.n_usable < len(recs) and 0 <= recs[self.n_usable].ready_s <= t:
            self.n_usable += 1
        return self.n_usable

    def drain(self, limit: float) -> float:
        """Finish the upload with no more queries; return when it is usable."""
        while self.current is not None or self.queue or self.inexact or self.now < self.planned_s:
            if self.now >= limit:
                break
            self.advance(min(limit, self.now + 3600.0))
        self._commit(math.inf)
        return self.records[-1].ready_s if self.records else 0.0


def upload_units(
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
