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
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from ionn_net.errors import PlannerError
from ionn_net.planner.execution import METHODS, BoolArray, ExecutionPlan, FloatArray, planner_for
from ionn_net.planner.link import Link
from ionn_net.planner.simulate import SimResult, simulate_partitions
from ionn_net.planner.upload import UploadPlanner, build_plan
from ionn_net.planner.workload import ExecutionPolicy, PlanningContext, UploadPlan

__all__ = ["OursPlanner"]

_MAX_SHARE = 0.9
#: Where :meth:`_Greedy.first_piece` tries to cut the chosen set (fractions of its bytes).
_PREFIX_FRACTIONS = (0.5, 0.25, 0.125, 0.0625, 0.03125)


class _Greedy:
    """One run of the greedy from a given state (see the module docstring)."""

    def __init__(
        self,
        ctx: PlanningContext,
        method: str,
        ladder: tuple[float, ...],
        iterations: int,
        phi: str = "throughput",
    ) -> None:
        self.ctx = ctx
        self.phi = phi
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
        if self.latency and self.phi == "throughput" and self.ctx.pattern.kind == "back_to_back":
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

    def run(
        self, horizon_s: float, overhead_s: float, max_parts: int, cap_s: float = math.inf
    ) -> list[frozenset[str]]:
        """Greedy partitions; ``cap_s`` bounds a partition's link time (when any
        candidate fits under it)."""
        ctx = self.ctx
        names = ctx.graph.order
        held = self.ep.servable(ctx.held)
        cur = self.solve(held)
        t_link = loader_free = 0.0
        parts: list[frozenset[str]] = []
        while len(parts) < max_parts:
            slow = 1.0 / (1.0 - self.share(cur))
            unit_cost = np.where(held, 0.0, self.wire_s * slow)
            scored: list[tuple[float, float, BoolArray, ExecutionPlan, float, float]] = []
            for new, plan in self.candidates(held, cur, unit_cost):
                link_s = float(unit_cost[new].sum())
                load_s = float(ctx.load_s[new].sum()) + overhead_s
                ready = max(t_link + link_s, loader_free) + load_s
                gain = self.gain(cur, plan)
                if ready >= horizon_s or not gain > 1e-12:
                    continue
                score = gain / max(link_s, load_s, 1e-9)
                scored.append((score, link_s, new, plan, t_link + link_s, ready))
            fitting = [c for c in scored if c[1] <= cap_s] or scored
            if not fitting:
                break
            _, _, new, plan, _, _ = max(fitting, key=lambda c: c[0])
            piece = self.first_piece(
                held, cur=cur, chosen=new, plan=plan, unit_cost=unit_cost, overhead_s=overhead_s
            )
            if piece is not None:
                new, plan = piece
            link_s = float(unit_cost[new].sum())
            t_link += link_s
            loader_free = max(t_link, loader_free) + float(ctx.load_s[new].sum()) + overhead_s
            cur = plan
            held = held | new
            parts.append(frozenset(names[i] for i in np.flatnonzero(new)))
        return parts

    def first_piece(
        self,
        held: BoolArray,
        *,
        cur: ExecutionPlan,
        chosen: BoolArray,
        plan: ExecutionPlan,
        unit_cost: FloatArray,
        overhead_s: float,
    ) -> tuple[BoolArray, ExecutionPlan] | None:
        """Step 2b: the best set is not always best sent in one go. A prefix ``Q``
        (topological order, by upload bytes) that already helps earns its gain for
        the time the rest of the set takes, ``d_phi(Q) x tau(rest)``, and costs one
        more partition overhead, which delays the whole set when the overhead exceeds
        the rest's link time. Return the prefix with the largest positive balance."""
        positions = np.flatnonzero(chosen)
        if len(positions) < 2:
            return None
        cum = np.cumsum(unit_cost[positions])
        total = float(cum[-1])
        gain_all = self.gain(cur, plan)
        cuts = {int(np.searchsorted(cum, f * total)) + 1 for f in _PREFIX_FRACTIONS} | {1}
        best: tuple[float, BoolArray, ExecutionPlan] | None = None
        for cut in sorted(c for c in cuts if 0 < c < len(positions)):
            piece = np.zeros_like(chosen)
            piece[positions[:cut]] = True
            piece_plan = self.solve(held | piece)
            rest_s = total - float(cum[cut - 1])
            value = self.gain(cur, piece_plan) * rest_s - gain_all * max(0.0, overhead_s - rest_s)
            if value > 0 and (best is None or value > best[0]):
                best = (value, piece, piece_plan)
        return None if best is None else (best[1], best[2])


class OursPlanner(UploadPlanner):
    """Greedy benefit-per-upload-second partitions (see the module docstring)."""

    name = "ours"

    def __init__(
        self,
        *,
        method: str = "fine",
        adaptive: bool = True,
        ladder: tuple[float, ...] = (4.0, 2.0, 0.5, 0.25),
        iterations: int = 6,
        max_partitions: int = 256,
        select: bool = True,
        polish_budget: int = 40,
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
        self.select = select
        self.polish_budget = polish_budget

    def variants(self, ctx: PlanningContext, elapsed_s: float = 0.0) -> list[list[frozenset[str]]]:
        """The greedy's partition lists for each benefit measure and size cap."""
        pattern = ctx.pattern
        horizon = math.inf
        if pattern.duration_s is not None:
            horizon = pattern.duration_s - elapsed_s
        total_s = float(ctx.weight_bytes.sum()) / ctx.link.weight_ratio / ctx.link.bandwidth
        out: list[list[frozenset[str]]] = []
        for phi, cap in _VARIANTS:
            greedy = _Greedy(ctx, self.method, self.ladder, self.iterations, phi)
            parts = greedy.run(horizon, ctx.overhead_s, self.max_partitions, cap * total_s)
            if parts not in out:
                out.append(parts)
        return out

    def partitions(self, ctx: PlanningContext, elapsed_s: float = 0.0) -> list[frozenset[str]]:
        """The chosen partitions, in upload order."""
        return list(self._plan(ctx, elapsed_s).partitions)

    def plan(self, ctx: PlanningContext) -> UploadPlan:
        return self._plan(ctx, 0.0)

    def replan(
        self, ctx: PlanningContext, uploaded: frozenset[str], link: Link, elapsed_s: float = 0.0
    ) -> UploadPlan:
        return self._plan(ctx.with_(held=ctx.held | uploaded, link=link), elapsed_s)

    def _plan(self, ctx: PlanningContext, elapsed_s: float) -> UploadPlan:
        policy = ExecutionPolicy(self.method, adaptive=self.adaptive, objective=ctx.objective)
        variants = self.variants(ctx, elapsed_s)
        parts, notes = variants[0], {"elapsed_s": elapsed_s, "variant": 0}
        if self.select and (len(variants) > 1 or self.polish_budget > 0):
            sim_ctx = _evaluation_context(ctx, elapsed_s)

            def score(candidate: list[frozenset[str]]) -> float:
                return _score(ctx, simulate_partitions(sim_ctx, candidate, policy))

            scores = [score(v) for v in variants]
            best = scores.index(min(scores))
            parts, evals = _polish(ctx, variants[best], scores[best], score, self.polish_budget)
            notes = {"elapsed_s": elapsed_s, "variant": best, "polish_evaluations": evals}
        return build_plan(ctx, self.name, parts, policy, notes)


def _split(ctx: PlanningContext, part: frozenset[str]) -> tuple[frozenset[str], frozenset[str]]:
    """Halve a partition along the topological order, by weight bytes."""
    g = ctx.graph
    names = sorted(part, key=g.position)
    total = sum(g[n].weight_bytes for n in names)
    acc, cut = 0, 1
    for i, name in enumerate(names[:-1], start=1):
        acc += g[name].weight_bytes
        cut = i
        if total and acc * 2 >= total:
            break
    if not total:
        cut = len(names) // 2
    return frozenset(names[:cut]), frozenset(names[cut:])


def _moves(ctx: PlanningContext, parts: list[frozenset[str]]) -> list[list[frozenset[str]]]:
    """Neighbouring partition lists: split one, merge two adjacent, swap two
    adjacent, or drop the last (earliest partitions first: early gains weigh most)."""
    out: list[list[frozenset[str]]] = []
    for k, part in enumerate(parts):
        if len(part) > 1:
            a, b = _split(ctx, part)
            out.append([*parts[:k], a, b, *parts[k + 1 :]])
        if k + 1 < len(parts):
            out.append([*parts[:k], part | parts[k + 1], *parts[k + 2 :]])
            out.append([*parts[:k], parts[k + 1], part, *parts[k + 2 :]])
    if parts:
        out.append(parts[:-1])
    return out


def _polish(
    ctx: PlanningContext,
    parts: list[frozenset[str]],
    current: float,
    score: Callable[[list[frozenset[str]]], float],
    budget: int,
) -> tuple[list[frozenset[str]], int]:
    """First-improvement local search over :func:`_moves`, at most ``budget``
    simulations."""
    evals = 0
    improved = True
    while improved and evals < budget:
        improved = False
        for candidate in _moves(ctx, parts):
            if evals >= budget:
                break
            evals += 1
            value = score(candidate)
            if value < current * (1 - 1e-9):
                parts, current, improved = candidate, value, True
                break
    return parts, evals


#: (benefit measure, partition size cap as a fraction of the whole model's link time)
_VARIANTS: tuple[tuple[str, float], ...] = (
    ("throughput", math.inf),
    ("latency", math.inf),
)


def _evaluation_context(ctx: PlanningContext, elapsed_s: float) -> PlanningContext:
    """The context the variants are simulated in: the expected pattern, bounded by its
    own duration or count, else by the time the whole model takes on the link."""
    pattern = ctx.pattern
    if pattern.duration_s is not None or pattern.count is not None:
        return ctx
    window = float(ctx.weight_bytes.sum()) / ctx.link.weight_ratio / ctx.link.bandwidth
    window = max(window - elapsed_s, 1e-3)
    return ctx.with_(pattern=replace(pattern, duration_s=window))


def _score(ctx: PlanningContext, res: SimResult) -> float:
    if ctx.objective == "energy":
        return res.mean_energy()
    return res.mean_latency()
