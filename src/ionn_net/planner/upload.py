"""Upload plans: in which order the client sends the model's layers to the server.

This module owns the :class:`UploadPlanner` interface, the registry that selects a
strategy by name (:func:`get_planner`) and the three simple strategies:

* ``local``: never upload, run every query on the client.
* ``all_at_once``: one partition holding the whole model (``scope="all"``, the
  default, every layer except the inputs: the baseline IONN was designed to beat), or
  only the layers that the best plan with everything uploaded runs on the server
  (``scope="useful"``); queries then use the best plan.
* ``ionn``: faithful to IONN's public code. For level = 0, 1, 2, ... the penalty is
  ``p = K ** level`` (K = 0.5), replaced by 0 once below 0.001 as the final round;
  every server edge of the execution graph costs ``t_s + p * (upload + load)`` for
  every layer (already scheduled ones too); the shortest path gives the server-side
  layer set of that level, kept when it differs from the previous level's. Partition
  ``j`` is plan ``j``'s layers minus those of all earlier plans, so layers that are
  client-side even at ``p = 0`` are never uploaded. The execution graph is IONN's
  dominator collapse (method ``"ionn"``), without RTT and without compression (IONN
  models neither); the upload penalty uses raw weight bytes. Queries use the best
  collapsed plan for the partitions usable when they start.

``efficiency`` (EMDL 2019) lives in :mod:`.efficiency` and ``ours`` in :mod:`.ours`.
Every strategy skips layers the server already holds (``PlanningContext.held``):
the protocol's store deduplicates them whatever the plan says.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

from ionn_net.errors import PlannerError
from ionn_net.planner.energy import objective_weights
from ionn_net.planner.execution import planner_for
from ionn_net.planner.link import Link
from ionn_net.planner.workload import ExecutionPolicy, PlanningContext, QueryPattern, UploadPlan

__all__ = [
    "AllAtOncePlanner",
    "IonnPlanner",
    "LocalPlanner",
    "QueryPattern",
    "UploadPlan",
    "UploadPlanner",
    "build_plan",
    "get_planner",
    "planner_names",
]


def build_plan(
    ctx: PlanningContext,
    strategy: str,
    partitions: Sequence[frozenset[str]],
    policy: ExecutionPolicy,
    notes: Mapping[str, object] | None = None,
) -> UploadPlan:
    """An :class:`UploadPlan` with the execution plan each prefix of ``partitions``
    enables (empty partitions and already-held layers dropped)."""
    done = set(ctx.held)
    parts: list[frozenset[str]] = []
    for part in partitions:
        fresh = frozenset(part) - done
        unknown = [n for n in fresh if n not in ctx.graph]
        if unknown:
            raise PlannerError(f"{strategy}: partition names unknown layers {sorted(unknown)[:3]}")
        if fresh:
            parts.append(fresh)
            done |= fresh
    usable = frozenset(ctx.held)
    initial = ctx.best_plan(usable, method=policy.method)
    plans = []
    for part in parts:
        usable |= part
        plans.append(ctx.best_plan(usable, method=policy.method))
    return UploadPlan(
        strategy=strategy,
        partitions=tuple(parts),
        exec_plans=tuple(plans),
        initial_plan=initial,
        policy=policy,
        notes=dict(notes or {}),
    )


class UploadPlanner(ABC):
    """A strategy that orders the upload of a model's layers."""

    name: ClassVar[str] = ""

    @abstractmethod
    def plan(self, ctx: PlanningContext) -> UploadPlan:
        """The whole upload plan for ``ctx``."""

    def replan(
        self, ctx: PlanningContext, uploaded: frozenset[str], link: Link, elapsed_s: float = 0.0
    ) -> UploadPlan:
        """Plan the rest after ``uploaded`` layers arrived, on a re-measured ``link``,
        ``elapsed_s`` into the session. The baselines simply plan again from that
        state; ``ours`` also shortens its horizon by ``elapsed_s``."""
        del elapsed_s
        return self.plan(ctx.with_(held=ctx.held | uploaded, link=link))


class LocalPlanner(UploadPlanner):
    """Never offload."""

    name = "local"

    def plan(self, ctx: PlanningContext) -> UploadPlan:
        return build_plan(ctx, self.name, (), ExecutionPolicy("fine", objective=ctx.objective))


class AllAtOncePlanner(UploadPlanner):
    """Upload everything (or every useful layer) as one partition."""

    name = "all_at_once"

    def __init__(self, *, scope: str = "all") -> None:
        if scope not in ("all", "useful"):
            raise PlannerError(f"all_at_once scope: expected 'all' or 'useful', got {scope!r}")
        self.scope = scope

    def plan(self, ctx: PlanningContext) -> UploadPlan:
        g = ctx.graph
        if self.scope == "all":
            layers = frozenset(n for n in g.order if n not in g.inputs)
        else:
            layers = ctx.best_plan(frozenset(g.order)).server_layers
        policy = ExecutionPolicy("fine", objective=ctx.objective)
        return build_plan(ctx, self.name, [layers], policy, {"scope": self.scope})


class IonnPlanner(UploadPlanner):
    """IONN's penalty-level shortest paths (see the module docstring)."""

    name = "ionn"

    def __init__(
        self, *, k: float = 0.5, threshold: float = 0.001, rtt_aware: bool = False
    ) -> None:
        if not 0 < k < 1:
            raise PlannerError(f"ionn K: expected 0 < K < 1, got {k!r}")
        if not 0 < threshold < 1:
            raise PlannerError(f"ionn threshold: expected 0 < t < 1, got {threshold!r}")
        self.k = k
        self.threshold = threshold
        self.rtt_aware = rtt_aware

    def levels(self) -> list[float]:
        """The penalties tried, ending with 0."""
        out, level = [], 0
        while True:
            p = self.k**level
            if p < self.threshold:
                out.append(0.0)
                return out
            out.append(p)
            level += 1

    def server_sets(self, ctx: PlanningContext) -> list[tuple[float, frozenset[str]]]:
        """(penalty, server-side layers) of every level whose plan changed."""
        g = ctx.graph
        ep = planner_for(g, "ionn")
        link = ctx.link
        model_link = (
            link
            if self.rtt_aware
            else Link(bandwidth=link.bandwidth, down_bandwidth=link.down_bandwidth)
        )
        w = objective_weights(ctx.objective, ctx.power)
        upload = w.transfer * ctx.weight_bytes / link.bandwidth + w.wait * ctx.load_s
        servable = ep.servable(g.order)
        sets: list[tuple[float, frozenset[str]]] = []
        for p in self.levels():
            sol = ep.solve(
                ctx.times,
                servable,
                model_link,
                objective=ctx.objective,
                power=ctx.power,
                penalty=p * upload,
            )
            if not sets or sol.server_layers != sets[-1][1]:
                sets.append((p, sol.server_layers))
        return sets

    def plan(self, ctx: PlanningContext) -> UploadPlan:
        sets = self.server_sets(ctx)
        policy = ExecutionPolicy("ionn", objective=ctx.objective)
        notes = {"penalties": [p for p, _ in sets], "k": self.k}
        return build_plan(ctx, self.name, [s for _, s in sets], policy, notes)


_REGISTRY: dict[str, str] = {
    "local": "ionn_net.planner.upload:LocalPlanner",
    "all_at_once": "ionn_net.planner.upload:AllAtOncePlanner",
    "ionn": "ionn_net.planner.upload:IonnPlanner",
    "efficiency": "ionn_net.planner.efficiency:EfficiencyPlanner",
    "ours": "ionn_net.planner.ours:OursPlanner",
    "neurosurgeon": "ionn_net.planner.neurosurgeon:NeuroSurgeonPlanner",
}


def planner_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_planner(name: str, **options: object) -> UploadPlanner:
    """The upload strategy called ``name``, constructed with ``options``."""
    target = _REGISTRY.get(name) if isinstance(name, str) else None
    if target is None:
        raise PlannerError(f"upload strategy: expected one of {', '.join(_REGISTRY)}, got {name!r}")
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    try:
        planner = cls(**options)
    except TypeError as exc:
        raise PlannerError(f"upload strategy {name!r}: bad options ({exc})") from None
    assert isinstance(planner, UploadPlanner)
    return planner
