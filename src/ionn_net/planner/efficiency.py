"""EMDL 2019 "Enhanced Partitioning of DNN Layers for Uploading from Mobile Devices
to Edge Servers" (Shin, Jeong, Moon): efficiency-based, finer-grained partitions.

This module owns the faithful re-implementation of that baseline, as described in
the notes on its public code, over IONN's execution graph (layers of a chain, or the
super-layers between cut points of a DAG, called *units* here):

1. Target set: the server-side units of the shortest path with IONN's penalty fixed
   at ``p = 0.001`` (upload + load time per layer).
2. A contiguous unit range ``R = [a..b]`` standing alone scores
   ``gain(R) = client time of R - (input transfer + server time of R + output
   transfer)`` (no RTT, raw sizes), and ``upload(R)`` = its weight bytes / bandwidth
   + its load time. A range next to already-uploaded ranges scores its *marginal*
   gain: ``gain(merged) - gain(left neighbour) - gain(right neighbour)``.
   ``efficiency(R) = gain / upload``.
3. Candidates are the ranges inside the target set made of units not yet uploaded.
   The first partition is ``argmax gain - upload`` (the range that best repays its
   own upload within one query). Then repeatedly: take the most efficient candidate,
   descend to its most efficient strictly-inner (proper) sub-range while that one's
   gain is positive, upload it (merging with the uploaded neighbours for later
   scoring), until the target set is covered.

Queries use IONN's collapsed execution planning (method ``"ionn"``).
"""

from __future__ import annotations

import math

import numpy as np

from ionn_net.errors import PlannerError
from ionn_net.planner.execution import ExecutionPlanner, FloatArray, planner_for
from ionn_net.planner.link import Link
from ionn_net.planner.upload import UploadPlanner, build_plan
from ionn_net.planner.workload import ExecutionPolicy, PlanningContext, UploadPlan

__all__ = ["EfficiencyPlanner"]


class _Scorer:
    """Range gains and upload times over units, plus the uploaded mask."""

    def __init__(self, ctx: PlanningContext, ep: ExecutionPlanner) -> None:
        link = ctx.link
        raw = Link(bandwidth=link.bandwidth, down_bandwidth=link.down_bandwidth)
        in_t, out_t = ep.unit_tables(raw)
        self.in_s: list[list[float]] = (in_t / raw.bandwidth).tolist()
        self.out_s: list[list[float]] = (out_t / raw.down).tolist()

        def cum(per_position: FloatArray) -> list[float]:
            return [0.0, *(float(v) for v in np.cumsum(ep.unit_sum(per_position)))]

        self.client = cum(ctx.times.client_s)
        self.server = cum(ctx.times.server_s)
        self.upload = cum(ctx.weight_bytes / raw.bandwidth + ctx.load_s)
        self.m = ep.units
        self.uploaded = [False] * self.m
        self._left: dict[int, int] = {}
        self._right: dict[int, int] = {}

    def mark(self, a: int, b: int) -> None:
        for k in range(a, b + 1):
            self.uploaded[k] = True
        self._left.clear()
        self._right.clear()

    def _extent(self, a: int, b: int) -> tuple[int, int]:
        """The range grown over uploaded neighbours (memoised until the next mark)."""
        lo = self._left.get(a)
        if lo is None:
            lo = a
            while lo > 0 and self.uploaded[lo - 1]:
                lo -= 1
            self._left[a] = lo
        hi = self._right.get(b)
        if hi is None:
            hi = b
            while hi < self.m - 1 and self.uploaded[hi + 1]:
                hi += 1
            self._right[b] = hi
        return lo, hi

    def gain(self, a: int, b: int) -> float:
        c = self.client[b + 1] - self.client[a]
        s = self.server[b + 1] - self.server[a]
        return c - (self.in_s[b][a] + s + self.out_s[b][a])

    def upload_s(self, a: int, b: int) -> float:
        return self.upload[b + 1] - self.upload[a]

    def marginal(self, a: int, b: int) -> float:
        lo, hi = self._extent(a, b)
        g = self.gain(lo, hi)
        if lo < a:
            g -= self.gain(lo, a - 1)
        if hi > b:
            g -= self.gain(b + 1, hi)
        return g

    def efficiency(self, a: int, b: int) -> float:
        g = self.marginal(a, b)
        u = self.upload_s(a, b)
        if u > 0:
            return g / u
        return math.inf if g > 0 else (0.0 if g == 0 else -math.inf)


def _runs(mask: list[bool]) -> list[tuple[int, int]]:
    out, start = [], None
    for i, on in enumerate([*mask, False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            out.append((start, i - 1))
            start = None
    return out


def _sub_ranges(a: int, b: int, *, proper: bool) -> list[tuple[int, int]]:
    return [
        (i, j)
        for i in range(a, b + 1)
        for j in range(i, b + 1)
        if not (proper and (i, j) == (a, b))
    ]


class EfficiencyPlanner(UploadPlanner):
    """EMDL 2019's efficiency-based partitioning (see the module docstring)."""

    name = "efficiency"

    def __init__(self, *, target_penalty: float = 0.001, max_units: int = 600) -> None:
        if not 0 <= target_penalty < 1:
            raise PlannerError(f"efficiency target_penalty: expected [0, 1), got {target_penalty}")
        self.target_penalty = target_penalty
        self.max_units = max_units

    def _target(self, ctx: PlanningContext, ep: ExecutionPlanner) -> list[bool]:
        link = ctx.link
        raw = Link(bandwidth=link.bandwidth, down_bandwidth=link.down_bandwidth)
        penalty = self.target_penalty * (ctx.weight_bytes / raw.bandwidth + ctx.load_s)
        sol = ep.solve(ctx.times, ep.servable(ctx.graph.order), raw, penalty=penalty)
        on = ep.servable(sol.server_layers)
        return [bool(on[int(ep.unit_start[k])]) for k in range(ep.units)]

    def _pick(self, sc: _Scorer, cands: list[tuple[int, int]]) -> tuple[int, int]:
        # most efficient; ties broken by larger gain, then earlier position
        return max(cands, key=lambda r: (sc.efficiency(*r), sc.marginal(*r), -r[0], -r[1]))

    def unit_order(self, ctx: PlanningContext) -> list[tuple[int, int]]:
        """The unit ranges in upload order."""
        ep = planner_for(ctx.graph, "ionn")
        if ep.units > self.max_units:
            raise PlannerError(f"efficiency: at most {self.max_units} units, got {ep.units}")
        sc = _Scorer(ctx, ep)
        held = ep.servable(ctx.held)
        for k in range(ep.units):
            if held[ep.unit_start[k] : ep.unit_end[k] + 1].all():
                sc.mark(k, k)
        target = self._target(ctx, ep)
        order: list[tuple[int, int]] = []

        def candidates() -> list[tuple[int, int]]:
            free = [t and not u for t, u in zip(target, sc.uploaded, strict=True)]
            return [r for a, b in _runs(free) for r in _sub_ranges(a, b, proper=False)]

        def take(r: tuple[int, int]) -> None:
            order.append(r)
            sc.mark(*r)

        cands = candidates()
        if cands:
            take(max(cands, key=lambda r: (sc.marginal(*r) - sc.upload_s(*r), -r[0], -r[1])))
        while cands := candidates():
            best = self._pick(sc, cands)
            while best[0] < best[1]:
                inner = self._pick(sc, _sub_ranges(*best, proper=True))
                if sc.marginal(*inner) <= 0:
                    break
                best = inner
            take(best)
        return order

    def plan(self, ctx: PlanningContext) -> UploadPlan:
        ep = planner_for(ctx.graph, "ionn")
        order = ctx.graph.order
        parts = [
            frozenset(order[int(ep.unit_start[a]) : int(ep.unit_end[b]) + 1])
            for a, b in self.unit_order(ctx)
        ]
        policy = ExecutionPolicy("ionn", objective=ctx.objective)
        return build_plan(ctx, self.name, parts, policy, {"target_penalty": self.target_penalty})
