"""Precision-first uploads in the planner and the simulator: base stages as upload units,
refinements after them, charged on the same link and loader, and every query's precision
recorded."""

from __future__ import annotations

import dataclasses
import random

import pytest
from planner_graphs import chain, inception, random_times

from ionn_net.errors import PlannerError
from ionn_net.planner.link import Link
from ionn_net.planner.ours import OursPlanner
from ionn_net.planner.precision import base_context, order_refinements, staged_plan
from ionn_net.planner.simulate import simulate
from ionn_net.planner.upload import build_plan, get_planner
from ionn_net.planner.workload import (
    ExecutionPolicy,
    PlanningContext,
    QueryPattern,
    Refinement,
    StageCosts,
    UploadPlan,
)

# in -> A -> B; A's weights 1000 B, B's 5000 B; 1000 B/s, RTT 50 ms (as test_simulate)
GRAPH = chain([25, 25, 25], weights=[1000, 5000])
CLIENT = {"in": 0.0, "l0": 1500.0, "l1": 1500.0}
SERVER = {"in": 0.0, "l0": 10.0, "l1": 10.0}
LOAD = {"l0": 500.0, "l1": 0.0}
A, B = frozenset({"l0"}), frozenset({"l1"})
COSTS = StageCosts(
    precision="8bit-first",
    wire_fraction=(0.25, 0.5),
    decode_ms_per_mb=(100_000.0, 0.0),  # 0.1 s per 1000 bytes for a base
    swap_ms_per_layer=100.0,
)


def ctx(pattern: QueryPattern, **kw: object) -> PlanningContext:
    return PlanningContext(
        graph=GRAPH,
        client_ms=kw.pop("client_ms", CLIENT),  # type: ignore[arg-type]
        server_ms=kw.pop("server_ms", SERVER),  # type: ignore[arg-type]
        load_ms=LOAD,
        link=Link(bandwidth=1000.0, rtt_s=0.05),
        pattern=pattern,
        **kw,  # type: ignore[arg-type]
    )


def plan_of(c: PlanningContext, parts: list[frozenset[str]]) -> UploadPlan:
    return build_plan(c, "test", parts, ExecutionPolicy("fine", adaptive=True))


def test_bases_then_refinements_are_charged_on_the_link_and_the_loader() -> None:
    c = ctx(QueryPattern.back_to_back(count=1), stages=COSTS)
    plan = staged_plan(c, plan_of(c, [A, B]))
    assert plan.precision == "8bit-first"
    assert plan.refinements == (Refinement(A), Refinement(B))
    res = simulate(c, plan)
    base_a, base_b, ref_a, ref_b = res.partitions
    assert [p.stage for p in res.partitions] == [0, 0, 1, 1]
    # A's base: 250 B at 1000 B/s; decode 0.1 s + build 0.5 s. B's base: 1250 B, decode 0.5 s
    assert (base_a.wire_bytes, base_a.arrived_s, base_a.ready_s) == pytest.approx((250, 0.25, 0.85))
    assert (base_b.arrived_s, base_b.ready_s) == pytest.approx((1.5, 2.0))
    # refinements: 500 B and 2500 B, each swapped in at 0.1 s per layer, no decode set
    assert (ref_a.wire_bytes, ref_a.arrived_s, ref_a.ready_s) == pytest.approx((500, 2.0, 2.1))
    assert (ref_b.arrived_s, ref_b.ready_s) == pytest.approx((4.5, 4.6))
    assert res.upload_done_s == pytest.approx(4.6)


def test_queries_on_base_weights_are_marked_approximate_until_the_swap() -> None:
    c = ctx(QueryPattern.back_to_back(count=40), stages=COSTS)
    res = simulate(c, staged_plan(c, plan_of(c, [A, B])))
    last_swap = max(p.ready_s for p in res.partitions)
    assert res.queries[0].server_layers == frozenset() and res.queries[0].exact
    approx = [q for q in res.queries if not q.exact]
    assert approx, "queries ran on base stages before the refinements arrived"
    assert all(q.server_layers and q.started_s < last_swap for q in approx)
    assert all(q.exact for q in res.queries if q.started_s >= last_swap)
    exact_from = res.exact_from()
    assert exact_from is not None and exact_from <= res.queries[-1].issued_s
    assert res.approximate_queries() == len(approx)


def test_an_exact_upload_never_runs_on_approximate_weights() -> None:
    c = ctx(QueryPattern.back_to_back(count=40))
    for name in ("ours", "ionn", "efficiency", "all_at_once"):
        plan = get_planner(name).plan(c)
        assert plan.precision == "exact" and plan.refinements == ()
        res = simulate(c, plan)
        assert all(q.exact for q in res.queries)
        assert all(p.stage == 0 for p in res.partitions)
        assert res.exact_from() == res.queries[0].issued_s


def test_missing_refinements_are_sent_last_so_the_upload_ends_exact() -> None:
    c = ctx(QueryPattern.back_to_back(), stages=COSTS)
    res = simulate(c, plan_of(c, [A, B]))  # no refinements listed
    assert [p.stage for p in res.partitions] == [0, 0, 1]
    assert res.partitions[-1].layers == A | B
    assert res.queries[-1].exact


def test_refinements_of_the_active_plan_go_first() -> None:
    # B is slower on the server than on the client: the final plan keeps it local, so
    # A's refinement is what makes queries exact and goes first
    server = {"in": 0.0, "l0": 10.0, "l1": 5000.0}
    c = ctx(QueryPattern.back_to_back(), stages=COSTS, server_ms=server)
    plan = plan_of(c, [B, A])
    assert plan.exec_plans[-1].server_layers == A
    assert order_refinements(plan, COSTS) == (Refinement(A), Refinement(B))
    three = dataclasses.replace(COSTS, wire_fraction=(0.25, 0.2, 0.3), decode_ms_per_mb=(0, 0, 0))
    assert [(r.layers, r.stage) for r in order_refinements(plan, three)] == [
        (A, 1),
        (B, 1),
        (A, 2),
        (B, 2),
    ]


def test_base_context_prices_uploads_at_the_base_stage() -> None:
    c = ctx(QueryPattern.back_to_back(), stages=COSTS)
    base = base_context(c)
    assert base.stages is None and base.link.weight_ratio == pytest.approx(4.0)
    assert float(base.load_s[GRAPH.position("l0")]) == pytest.approx(0.5 + 0.1)
    assert float(base.load_s[GRAPH.position("l1")]) == pytest.approx(0.5)
    assert base_context(ctx(QueryPattern.back_to_back())).stages is None


def test_ours_orders_bases_on_the_base_context_and_refines_everything_it_sent() -> None:
    rng = random.Random(3)
    g = inception(rng)
    client, server = random_times(g, rng, gap=50.0)
    plain = PlanningContext(
        graph=g,
        client_ms=client,
        server_ms=server,
        link=Link.from_mbit(0.5, 20.0, weight_ratio=1.2),
        pattern=QueryPattern.back_to_back(),
    )
    measured = StageCosts(  # about what bench/stages.py measures
        precision="8bit-first", wire_fraction=(0.25, 0.59), decode_ms_per_mb=(1.0, 5.0)
    )
    staged = plain.with_(stages=measured)
    planner = OursPlanner(polish_budget=10)
    plan = planner.plan(staged)
    assert plan.partitions == planner.plan(base_context(staged)).partitions
    assert plan.precision == "8bit-first" and plan.notes["precision"] == "8bit-first"
    sent = frozenset().union(*plan.partitions)
    assert frozenset().union(*(r.layers for r in plan.refinements)) == sent
    assert all(r.after is None and r.stage == 1 for r in plan.refinements)
    window = g.total_weight_bytes / plain.link.bandwidth
    pattern = QueryPattern.back_to_back(duration_s=window)
    fast = simulate(staged.with_(pattern=pattern), plan).mean_latency(0.0, window)
    slow = simulate(plain.with_(pattern=pattern), planner.plan(plain)).mean_latency(0.0, window)
    assert fast < slow  # a quarter of the bytes first: queries offload sooner


def test_stage_costs_and_refinements_are_validated() -> None:
    bad: list[dict[str, object]] = [
        {"precision": "exact"},
        {"wire_fraction": (0.25,), "decode_ms_per_mb": (0.0,)},
        {"wire_fraction": (0.0, 0.5)},
        {"wire_fraction": (0.25, float("nan"))},
        {"decode_ms_per_mb": (1.0,)},
        {"swap_ms_per_mb": -1.0},
    ]
    for changes in bad:
        with pytest.raises(PlannerError):
            dataclasses.replace(COSTS, **changes)  # type: ignore[arg-type]
    c = ctx(QueryPattern.back_to_back(), stages=COSTS)
    plan = plan_of(c, [A, B])
    with pytest.raises(PlannerError, match="refinement 0"):
        dataclasses.replace(plan, precision="8bit-first", refinements=(Refinement(B, after=1),))
    with pytest.raises(PlannerError, match="refinement 0"):
        dataclasses.replace(plan, precision="8bit-first", refinements=(Refinement(A, stage=0),))
    with pytest.raises(PlannerError, match="exact upload"):
        dataclasses.replace(plan, refinements=(Refinement(A),))
    with pytest.raises(PlannerError, match="precision-first"):
        staged_plan(ctx(QueryPattern.back_to_back()), plan)
    with pytest.raises(PlannerError, match="stages"):
        ctx(QueryPattern.back_to_back(), stages="8bit")
