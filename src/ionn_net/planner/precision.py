"""Precision-first upload in the planner: base stages first, then the refinements.

This module owns how a plan for a precision-first upload (``PlanningContext.stages``,
:class:`~ionn_net.planner.workload.StageCosts`) is made from an ordinary one. A layer's
base stage makes it usable at a lower precision and costs only the base's bytes; its
refinements make it exact and bring no latency at all (a query takes as long on
approximate weights as on exact ones). Hence the rule:

1. **Every base first, in the planner's order.** The planner orders the base stages as it
   orders whole layers, on :func:`base_context`: a context whose uploads cost the bases'
   wire bytes and whose layer loads include decoding the base. A refinement sent before a
   base that helps delays that base's benefit and buys no latency (the exchange argument
   of Smith's rule with a zero benefit rate), so none goes before the last useful base.
2. **Then the refinements, the active plan's server layers first.** A query is exact only
   when every server layer it runs on is, so what matters is when the whole set of server
   layers of the plan in use (the best plan once every base is usable) is exact: its
   refinements go first, one unit per base partition, in upload order (earlier layers are
   reported exact earlier); the other uploaded layers (used by no plan once everything is
   on the server) follow, so that the end state is exact everywhere. Within the first
   group the order cannot make any query exact sooner: the last of them decides.
   With more than one refinement stage, every layer's stage 1 goes before any stage 2.

The simulator (:mod:`.simulate`) charges base bytes and decoding, the refinements' bytes,
decoding and swap (assigning the exact weights to the built layer's variables), all on the
same link and serial loader.
"""

from __future__ import annotations

import dataclasses

from ionn_net.errors import PlannerError
from ionn_net.planner.workload import PlanningContext, Refinement, StageCosts, UploadPlan

__all__ = ["base_context", "order_refinements", "staged_plan"]


def base_context(ctx: PlanningContext) -> PlanningContext:
    """The exact-upload context a planner orders the base stages of ``ctx`` in: every
    layer's upload costs its base stage's wire bytes, and its load includes decoding the
    base (``ctx`` itself when it is not precision-first)."""
    stages = ctx.stages
    if stages is None:
        return ctx
    ratio = 1.0 / stages.wire_fraction[0]
    link = dataclasses.replace(ctx.link, weight_ratio=min(max(ratio, 0.01), 1000.0))
    g = ctx.graph
    per_mb = stages.decode_ms_per_mb[0]
    load = {n: float(ctx.load_ms.get(n, 0.0)) + g[n].weight_bytes * per_mb / 1e6 for n in g.order}
    return ctx.with_(link=link, load_ms=load, stages=None)


def order_refinements(plan: UploadPlan, stages: StageCosts) -> tuple[Refinement, ...]:
    """The refinements of ``plan``'s partitions, by the rule of the module docstring."""
    final = plan.exec_plans[-1].server_layers if plan.exec_plans else frozenset()
    used = [part & final for part in plan.partitions]
    rest = [part - final for part in plan.partitions]
    units = [u for u in used + rest if u]
    return tuple(Refinement(u, stage) for stage in range(1, stages.stages) for u in units)


def staged_plan(ctx: PlanningContext, plan: UploadPlan) -> UploadPlan:
    """``plan`` (its partitions ordered on :func:`base_context`) as a precision-first
    upload: its partitions send base stages, then :func:`order_refinements`."""
    if ctx.stages is None:
        raise PlannerError("staged plan: expected a precision-first context (ctx.stages)")
    notes = {**plan.notes, "precision": ctx.stages.precision}
    return dataclasses.replace(
        plan,
        precision=ctx.stages.precision,
        refinements=order_refinements(plan, ctx.stages),
        notes=notes,
    )
