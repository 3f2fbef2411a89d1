"""``ours``: an upload order that directly targets the latency of the queries issued
while the upload runs.

This module owns the strategy registered as ``"ours"``. The idea, step by step:

1. **What is being maximised.** With back-to-back queries, the mean latency over a
   window W is about W / N where N = integral of dt / L(t) is the number of queries
   served, L(t) the per-query latency with the layers usable at time t. Maximising N
   means maximising the integral of the *throughput* 1/L. With queries at a rate q
   below capacity, the mean latency is the time average of L, so the integral of L
   is minimised instead. (For the energy objective, the energy saved per query times
   the query rate.) Call ``phi`` the per-second benefit: ``1/L`` or ``-q L``.
2. **Greedy by benefit per link second (Smith's rule).** Uploading partitions one
   after another, each with benefit rate ``d_phi`` starting when it is usable and cost
   ``tau`` of link time, the order maximising the integrated benefit of independent
   jobs is by decreasing ``d_phi / tau``; per-partition load delays cancel out of the
   exchange argument, so they only matter through the loader being the bottleneck
   (``tau = max(link time, load time + partition overhead)``) and the horizon (a
   partition usable after the queries end is worthless). Layers interact (a
   convolution pays only with its neighbours), so each step re-plans from the current
   state instead of ranking layers once.
3. **Candidates = the best partitions for every exchange rate, by Dinkelbach.** For
   a price ``lam`` (latency per second of upload), the execution planner with a
   penalty ``lam x upload seconds`` on every layer not yet on the server returns the
   plan minimising ``L(plan) + lam x tau(new layers)``; its new layers form a
   candidate partition. Dinkelbach's iteration ``lam <- (L_now - L(P)) / tau(P)``
   converges to the partition with the highest latency reduction per upload second
   over *all* sets of layers any execution plan can use, fine DAG cuts included; a
   ladder of prices around it adds smaller and larger partitions (the frontier), and
   each candidate is then scored exactly by ``d_phi / tau``. High-ratio partitions
   are small, so the first offloaded query comes early.
4. **What the baselines ignore, and this uses.** RTT in every plan; upload sizes
   after the transport's compression (``Link.weight_ratio``); server load time and
   the per-partition overhead; link sharing: while queries offload, their tensors
   pause the upload, so a partition's link time is stretched by ``1 / (1 - share)``
   with ``share`` the fraction of link time the current plan's queries use; the query
   pattern (back-to-back or a rate, and its count or duration as the horizon);
   layers already on the server are free; fine execution cuts (method ``"fine"``);
   and an adaptive execution policy (the client re-plans a running query at each of
   its layer boundaries when new layers became usable).
5. **Online re-planning.** :meth:`OursPlanner.replan` runs the greedy again from
   the layers already sent with a re-measured link, shortening the horizon by the
   elapsed time (the simulator calls it at partition boundaries after a bandwidth
   change).
"""

from __future__ import annotations

import math

import numpy as np

from ionn_net.errors import PlannerError
from ionn_net.planner.execution import METHODS, BoolArray, ExecutionPlan, FloatArray, planner_for
from ionn_net.planner.link import Link
from ionn_net.planner.upload import UploadPlanner, build_plan
from ionn_net.planner.workload import ExecutionPolicy, PlanningContext, UploadPlan

__all__ = ["OursPlanner"]

_MAX_SHARE = 0.9


class _Greedy:
    """One run of the greedy from a given state (see the module docstring)."""

    def __init__(
        self,
        ctx: PlanningContext,
        method: str,
        ladder: tuple[float, ...],
        iterations: int,
    ) -> None:
        self.ctx = ctx
        self.ep = planner_for(ctx.graph, method)
        self.everything = self.ep.servable(ctx.graph.order)
        self.wire_s = ctx.weight_bytes / ctx.link.weight_ratio / ctx.link.bandwidth
        self.ladder = ladder
        self.iterations = iterations
        self.latency = ctx.objective == "latency"
        self.solves = 0

    def solve(self, mask: BoolArray, penalty: FloatArray | None = None) -> ExecutionPlan:
        self.solves += 1
        c = self.ctx
        return self.ep.solve(
            c.times, mask, c.link, objective=c.objective, power=c.power, penalty=penalty
        )

    def cost(self, plan: ExecutionPlan) -> float:
        return plan.predicted_s if self.latency else plan.breakdown["energy_j"]

    def share(self, plan: ExecutionPlan) -> float:
        """Fraction of link time the queries of ``plan`` occupy."""
        link = self.ctx.link
        busy = plan.transfer_s if link.half_duplex else plan.breakdown["up_s"]
        pattern = self.ctx.pattern
        if pattern.kind == "rate":
            assert pattern.rate_qps is not None
            frac = pattern.rate_qps * busy
        else:
            frac = busy / plan.predicted_s if plan.predicted_s > 0 else 0.0
        return min(frac, _MAX_SHARE)

    def query_rate(self, plan: ExecutionPlan) -> float:
        cap = 1.0 / plan.predicted_s if plan.predicted_s > 0 else math.inf
        pattern = self.ctx.pattern
        if pattern.kind == "rate":
            assert pattern.rate_qps is not None
            return min(pattern.rate_qps, cap)
        return cap

    def gain(self, cur: ExecutionPlan, new: ExecutionPlan) -> float:
        """Benefit per second of switching from ``cur`` to ``new`` (step 1)."""
        if self.latency and self.ctx.pattern.kind == "back_to_back":
            if new.predicted_s <= 0:
                return math.inf
            return 1.0 / new.predicted_s - 1.0 / cur.predicted_s
        return self.query_rate(cur) * (self.cost(cur) - self.cost(new))

    def candidates(
        self, held: BoolArray, cur: ExecutionPlan, unit_cost: FloatArray
    ) -> list[tuple[BoolArray, ExecutionPlan]]:
        """Partitions from Dinkelbach's iteration plus a ladder of prices (step 3)."""
        found: dict[bytes, tuple[BoolArray, ExecutionPlan]] = {}

        def add(sol: ExecutionPlan) -> BoolArray | None:
            new = self.ep.servable(sol.server_layers) & ~held
            if not new.any():
                return None
            key = new.tobytes()
            if key not in found:
                found[key] = (new, self.solve(held | new))
            return new

        lam = 0.0
        for _ in range(self.iterations):
            new = add(self.solve(self.everything, lam * unit_cost))
            if new is None:
                break
            tau = float(unit_cost[new].sum())
            if tau <= 0:
                break
            ratio = (self.cost(cur) - self.cost(found[new.tobytes()][1])) / tau
            if ratio <= lam * (1 + 1e-9):
                break
            lam = ratio
        if lam > 0:
            for factor in self.ladder:
                add(self.solve(self.everything, lam * factor * unit_cost))
        return list(found.values())

    def run(self, horizon_s: float, overhead_s: float, max_parts: int) -> list[frozenset[str]]:
        ctx = self.ctx
        names = ctx.graph.order
        held = self.ep.servable(ctx.held)
        cur = self.solve(held)
        t_link = loader_free = 0.0
        parts: list[frozenset[str]] = []
        while len(parts) < max_parts:
            slow = 1.0 / (1.0 - self.share(cur))
            unit_cost = np.where(held, 0.0, self.wire_s * slow)
            best: tuple[float, BoolArray, ExecutionPlan, float, float] | None = None
            for new, plan in self.candidates(held, cur, unit_cost):
                link_s = float(unit_cost[new].sum())
                load_s = float(ctx.load_s[new].sum()) + overhead_s
                ready = max(t_link + link_s, loader_free) + load_s
                gain = self.gain(cur, plan)
                if ready >= horizon_s or not gain > 1e-12:
                    continue
                score = gain / max(link_s, load_s, 1e-9)
                if best is None or score > best[0]:
                    best = (score, new, plan, t_link + link_s, ready)
            if best is None:
                break
            _, new, cur, t_link, loader_free = best
            held = held | new
            parts.append(frozenset(names[i] for i in np.flatnonzero(new)))
        return parts


class OursPlanner(UploadPlanner):
    """Greedy benefit-per-upload-second partitions (see the module docstring)."""

    name = "ours"

    def __init__(
        self,
        *,
        method: str = "fine",
        adaptive: bool = True,
        ladder: tuple[float, ...] = (8.0, 4.0, 2.0, 1.5, 0.75, 0.5, 0.25, 0.1),
        iterations: int = 8,
        max_partitions: int = 256,
    ) -> None:
        if method not in METHODS:
            raise PlannerError(f"ours method: expected one of {METHODS}, got {method!r}")
        if not all(isinstance(f, int | float) and 0 < f < 1e6 for f in ladder):
            raise PlannerError(f"ours ladder: expected positive factors, got {ladder!r}")
        if not 1 <= iterations <= 100 or not 1 <= max_partitions <= 10_000:
            raise PlannerError("ours: iterations in 1..100 and max_partitions in 1..10000")
        self.method = method
        self.adaptive = adaptive
        self.ladder = tuple(float(f) for f in ladder)
        self.iterations = iterations
        self.max_partitions = max_partitions

    def partitions(self, ctx: PlanningContext, elapsed_s: float = 0.0) -> list[frozenset[str]]:
        """The greedy's partitions, in upload order."""
        pattern = ctx.pattern
        horizon = math.inf
        if pattern.duration_s is not None:
            horizon = pattern.duration_s - elapsed_s
        greedy = _Greedy(ctx, self.method, self.ladder, self.iterations)
        return greedy.run(horizon, ctx.overhead_s, self.max_partitions)

    def plan(self, ctx: PlanningContext) -> UploadPlan:
        return self._plan(ctx, 0.0)

    def replan(
        self, ctx: PlanningContext, uploaded: frozenset[str], link: Link, elapsed_s: float = 0.0
    ) -> UploadPlan:
        return self._plan(ctx.with_(held=ctx.held | uploaded, link=link), elapsed_s)

    def _plan(self, ctx: PlanningContext, elapsed_s: float) -> UploadPlan:
        parts = self.partitions(ctx, elapsed_s)
        policy = ExecutionPolicy(self.method, adaptive=self.adaptive, objective=ctx.objective)
        notes = {"elapsed_s": elapsed_s}
        return build_plan(ctx, self.name, parts, policy, notes)
