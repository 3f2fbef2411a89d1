"""The simulator charges the client's planning time: until the plan is known only the
head start goes up (ionn_net.planner.simulate, "Planning")."""

from __future__ import annotations

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


def test_bad_planning_inputs_raise_planner_error() -> None:
    with pytest.raises(PlannerError, match="planned_s"):
        run(planned_s=-1.0)
    with pytest.raises(PlannerError, match="head_start"):
        run(head_start=["nope"])
