"""What the simulator charges beyond the planner's view, each a mechanism measured end to
end (ionn_net.planner.simulate: "Planning", "Loading", "Client compile", "Server
contention", "Pacing", "Measured loads")."""

from __future__ import annotations

import math

import pytest
from planner_graphs import chain

from ionn_net.errors import PlannerError
from ionn_net.planner.link import Link
from ionn_net.planner.simulate import simulate_partitions
from ionn_net.planner.workload import ExecutionPolicy, PlanningContext, QueryPattern

# in -> l0 -> l1; l0's weights 1000 B, l1's 5000 B; 1000 B/s: 1 s and 5 s of link
GRAPH = chain([25, 25, 25], weights=[1000, 5000])
A, B = frozenset({"l0"}), frozenset({"l1"})


def ctx() -> PlanningContext:
    return PlanningContext(
        graph=GRAPH,
        client_ms={"in": 0.0, "l0": 1500.0, "l1": 1500.0},
        server_ms={"in": 0.0, "l0": 10.0, "l1": 10.0},
        load_ms={"l0": 500.0, "l1": 0.0},
        link=Link(bandwidth=1000.0, rtt_s=0.05, half_duplex=False),
        pattern=QueryPattern.back_to_back(count=1),
    )


def run(**kw: object):  # type: ignore[no-untyped-def]
    return simulate_partitions(ctx(), [A, B], ExecutionPolicy("fine"), **kw)  # type: ignore[arg-type]


def test_without_a_head_start_the_link_idles_while_the_client_plans() -> None:
    p0, p1 = run(planned_s=2.0).partitions
    assert p0.sent_s == pytest.approx(2.0)
    assert p0.arrived_s == pytest.approx(3.0)
    assert p1.arrived_s == pytest.approx(8.0)
    assert run().partitions[1].arrived_s == pytest.approx(6.0)  # planned at 0


def test_the_head_start_goes_up_while_the_client_plans() -> None:
    p0, p1 = run(planned_s=2.0, head_start=["l0"]).partitions
    # l0's bytes went up during planning (0-1 s); its partition has nothing left to send
    # once the plan is known, and loads then
    assert p0.wire_bytes == pytest.approx(0.0)
    assert (p0.arrived_s, p0.ready_s) == pytest.approx((2.0, 2.5))
    assert p1.arrived_s == pytest.approx(7.0)


def test_a_head_start_layer_in_flight_finishes_after_the_plan_is_known() -> None:
    # l1 (5 s) starts before the plan is known at 1 s: it goes up whole, then l0
    p0, p1 = run(planned_s=1.0, head_start=["l1", "l0"]).partitions
    assert p0.sent_s == pytest.approx(5.0)
    assert p0.arrived_s == pytest.approx(6.0)
    assert p1.wire_bytes == pytest.approx(0.0)
    assert p1.arrived_s == pytest.approx(6.0)


# in -> l0 -> l1 -> l2, 1000 B of weights each: 1 s of link each
CHAIN3 = chain([25, 25, 25, 25], weights=[1000, 1000, 1000])


def ctx3(**kw: object) -> PlanningContext:
    return PlanningContext(
        graph=CHAIN3,
        client_ms={"in": 0.0, "l0": 1000.0, "l1": 1000.0, "l2": 1000.0},
        server_ms={"in": 0.0, "l0": 10.0, "l1": 10.0, "l2": 10.0},
        load_ms={"l0": 2500.0},
        link=Link(bandwidth=1000.0, rtt_s=0.0, half_duplex=False),
        pattern=QueryPattern.back_to_back(count=1),
        **kw,  # type: ignore[arg-type]
    )


PARTS3 = [frozenset({"l0"}), frozenset({"l1"}), frozenset({"l2"})]


def test_partitions_waiting_for_the_loader_are_loaded_together() -> None:
    res = simulate_partitions(ctx3(partition_overhead_ms=1000.0), PARTS3, ExecutionPolicy("fine"))
    p0, p1, p2 = res.partitions
    assert p0.ready_s == pytest.approx(1.0 + 2.5 + 1.0)
    # l1 (at 2 s) and l2 (at 3 s) wait for the loader, then load as one: one overhead
    assert (p1.arrived_s, p2.arrived_s) == pytest.approx((2.0, 3.0))
    assert p1.ready_s == p2.ready_s == pytest.approx(4.5 + 1.0)


def test_measured_loads_and_client_compile_set_when_partitions_become_usable() -> None:
    res = simulate_partitions(
        ctx3(), PARTS3, ExecutionPolicy("fine"), load_s=[0.5, 2.0], activation_s=[0.25, 0.0]
    )
    p0, p1, p2 = res.partitions
    assert p0.ready_s == pytest.approx(1.0 + 0.5 + 0.25)  # the compile does not hold the loader
    assert p1.ready_s == pytest.approx(2.0 + 2.0)
    assert p2.ready_s == pytest.approx(4.0 + 0.0)  # past the measured loads: the model's


def test_the_pacer_holds_the_upload_not_the_queries() -> None:
    paced = simulate_partitions(ctx3(), PARTS3, ExecutionPolicy("fine"), pace=[(0.0, 500.0)])
    assert paced.partitions[0].arrived_s == pytest.approx(2.0)
    assert paced.partitions[2].arrived_s == pytest.approx(6.0)
    half = simulate_partitions(
        ctx3(), PARTS3, ExecutionPolicy("fine"), pace=[(1.0, 500.0), (2.0, 1e9)]
    )
    assert half.partitions[0].arrived_s == pytest.approx(1.0)
    assert half.partitions[1].arrived_s == pytest.approx(2.5)  # 500 B/s, then the link's


def test_server_segments_take_longer_while_the_loader_works() -> None:
    c = ctx().with_(pattern=QueryPattern.back_to_back(count=8))
    policy = ExecutionPolicy("fine")
    loads = [0.5, 10.0]  # A usable at 1.5 s; B arrives at 6 s and loads until 16 s
    base = simulate_partitions(c, [A, B], policy, load_s=loads)
    slow = simulate_partitions(c, [A, B], policy, load_s=loads, loader_extra_s=0.2)
    pairs = list(zip(base.queries, slow.queries, strict=True))
    during = [(q, s) for q, s in pairs if 6.0 <= s.started_s < 16.0 and s.server_layers]
    before = [(q, s) for q, s in pairs if s.started_s < 6.0]
    assert during and before
    for q, s in before:  # the loader was idle (A's load ended at 1.5 s): nothing added
        assert s.latency_s == pytest.approx(q.latency_s)
    for q, s in during:  # each offloaded query pays the extra once, on its server segment
        assert s.finished_s - s.started_s == pytest.approx(q.finished_s - q.started_s + 0.2)


def test_bad_planning_inputs_raise_planner_error() -> None:
    with pytest.raises(PlannerError, match="planned_s"):
        run(planned_s=-1.0)
    with pytest.raises(PlannerError, match="head_start"):
        run(head_start=["nope"])
    with pytest.raises(PlannerError, match="load_s"):
        run(load_s=[-1.0])
    with pytest.raises(PlannerError, match="loader_extra_s"):
        run(loader_extra_s=math.nan)


def test_a_query_pays_the_client_contention_once_while_the_upload_runs() -> None:
    c = ctx().with_(pattern=QueryPattern.back_to_back(count=6))
    policy = ExecutionPolicy("fine")
    base = simulate_partitions(c, [A, B], policy)
    busy = simulate_partitions(c, [A, B], policy, client_extra_s=0.1)
    assert base.queries[0].latency_s == pytest.approx(3.0)
    assert busy.queries[0].latency_s == pytest.approx(3.1)  # local, during the upload
    done = busy.upload_done_s
    after = [(q, b) for q, b in zip(base.queries, busy.queries, strict=True) if b.started_s >= done]
    assert after
    for q, b in after:  # the upload is over: nothing added
        assert b.latency_s == pytest.approx(q.latency_s)


def test_queries_plan_with_the_prior_until_one_has_run_on_the_server() -> None:
    c = ctx().with_(pattern=QueryPattern.back_to_back(count=6))
    policy = ExecutionPolicy("fine")
    truth = simulate_partitions(c, [A, B], policy)
    assert any(q.server_layers for q in truth.queries)
    # a prior that makes the server look slow: the client never offloads, so it never
    # measures the server and keeps planning with the prior
    slow = {"in": 0.0, "l0": 1e5, "l1": 1e5}
    prior = simulate_partitions(c, [A, B], policy, plan_server_ms=slow)
    assert not any(q.server_layers for q in prior.queries)
    assert all(q.latency_s == pytest.approx(3.0) for q in prior.queries)
    # a prior only a little off still offloads; after that the plans are the context's
    near = {"in": 0.0, "l0": 20.0, "l1": 20.0}
    learned = simulate_partitions(c, [A, B], policy, plan_server_ms=near)
    assert [q.server_layers for q in learned.queries] == [q.server_layers for q in truth.queries]
