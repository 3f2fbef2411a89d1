"""``neurosurgeon``: one cut, decided as if the whole model were on the server, used
only once everything the cut needs has been uploaded.

This module owns the NeuroSurgeon-style baseline (Kang et al., ASPLOS 2017). The
original assumes the model is preinstalled on the server and picks, per query, the
single split point of a chain that minimises predicted latency (or energy): the
client runs the layers before it, sends the one tensor at the cut, and the server
runs the rest. Transplanted to a server that must first receive the model, the
natural reading is "upload, then cut": the split is chosen with every layer
available, the server's side of it is uploaded as one partition, and queries run
locally until that partition is usable.

Details of this re-implementation:

* Candidate cuts are the graph's single-tensor cut points
  (:meth:`~ionn_net.model.graph.LayerGraph.cut_points`): on a DAG these are the
  only places one tensor crosses, which is what "single cut" means. Cutting after
  the input layer is full offload; "no cut" is local execution.
* The cost of a cut is client time of the prefix + one RTT + upload of the suffix's
  input tensors + server time of the suffix + download of its outputs, with the
  same :class:`~ionn_net.planner.link.Link` formulas as every other planner, and
  the objective's weights (latency or client energy). Upload time is *not* part of
  the decision: NeuroSurgeon never saw it.
* The partition is the suffix after the best cut (the layers the server needs),
  not the whole model: uploading the client's prefix would only delay the first
  offloaded query. If no cut beats local execution nothing is uploaded.
* Queries use the best plan over the uploaded layers (method ``"fine"``), which for
  a suffix is the single cut itself unless keeping a tail layer local is cheaper.
"""

from __future__ import annotations

import math

from ionn_net.planner.energy import objective_weights
from ionn_net.planner.upload import UploadPlanner, build_plan
from ionn_net.planner.workload import ExecutionPolicy, PlanningContext, UploadPlan

__all__ = ["NeuroSurgeonPlanner", "single_cut_costs"]


def single_cut_costs(ctx: PlanningContext) -> dict[str | None, float]:
    """Predicted cost (objective units) of every single cut, keyed by the layer the
    cut follows; key ``None`` is local execution (no cut)."""
    g = ctx.graph
    w = objective_weights(ctx.objective, ctx.power)
    link = ctx.link
    client = ctx.times.client_s * w.compute
    server = ctx.times.server_s * w.wait
    client_cum = client.cumsum()
    server_tail = server[::-1].cumsum()[::-1]  # server_tail[p] = sum of server[p:]
    n = len(g)
    costs: dict[str | None, float] = {None: float(client.sum())}
    for name in g.cut_points():
        pos = g.position(name)
        if pos >= n - 1:
            continue  # cutting after the last layer is local execution
        suffix = g.order[pos + 1 :]
        ins, outs = g.boundary(suffix)
        up = sum(link.activation_s(r, g.tensor_bytes(r)) for r in ins)
        down = sum(link.activation_s(r, g.tensor_bytes(r), up=False) for r in outs)
        cost = (
            float(client_cum[pos])
            + w.wait * link.rtt_s
            + w.transfer * (up + down)
            + float(server_tail[pos + 1])
        )
        costs[name] = cost
    return costs


class NeuroSurgeonPlanner(UploadPlanner):
    """Upload the server side of the best single cut in one partition (see module)."""

    name = "neurosurgeon"

    def plan(self, ctx: PlanningContext) -> UploadPlan:
        costs = single_cut_costs(ctx)
        # min over (cost, tie-break): on equal cost prefer local, then the later cut
        # (fewer bytes to upload), so the choice is deterministic.
        g = ctx.graph

        def rank(item: tuple[str | None, float]) -> tuple[float, int]:
            cut, cost = item
            return (cost, -(len(g) if cut is None else g.position(cut)))

        cut, best = min(costs.items(), key=rank)
        policy = ExecutionPolicy("fine", objective=ctx.objective)
        suffix = frozenset() if cut is None else frozenset(g.order[g.position(cut) + 1 :])
        suffix -= frozenset(g.inputs)
        notes = {
            "cut_after": cut,
            "predicted_s": best if ctx.objective == "latency" else math.nan,
            "predicted_cost": best,
            "local_cost": costs[None],
            "candidates": len(costs) - 1,
        }
        return build_plan(ctx, self.name, [suffix] if suffix else [], policy, notes)
