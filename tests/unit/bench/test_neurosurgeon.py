"""The NeuroSurgeon-style baseline: single cut chosen with everything available,
the server's side uploaded as one partition, hand-computed costs."""

from __future__ import annotations

import math

import pytest

from ionn_net.model.graph import LayerGraph, LayerNode, TensorRef
from ionn_net.planner.link import Link
from ionn_net.planner.neurosurgeon import NeuroSurgeonPlanner, single_cut_costs
from ionn_net.planner.simulate import simulate
from ionn_net.planner.workload import PlanningContext, QueryPattern

LINK = Link(bandwidth=1e6)  # 1 000 bytes = 1 ms, no RTT


def node(name: str, *inputs: str, elems: int, weight_bytes: int = 4000) -> LayerNode:
    return LayerNode(
        name=name,
        cls="Conv2D" if inputs else "InputLayer",
        inbound=tuple(TensorRef.parse(i) for i in inputs),
        output_shapes=((elems,),),
        weight_bytes=weight_bytes if inputs else 0,
        macs=1000 if inputs else 0,
    )


def chain() -> LayerGraph:
    # float32: in 4000 B (4 ms), a 400 B, b 40 000 B, c 40 B
    nodes = [
        node("in", elems=1000),
        node("a", "in", elems=100),
        node("b", "a", elems=10_000),
        node("c", "b", elems=10),
    ]
    return LayerGraph(nodes, [TensorRef("c")], name="chain")


def ctx(
    graph: LayerGraph, client: dict[str, float], server: dict[str, float], **kw: object
) -> PlanningContext:
    return PlanningContext(graph=graph, client_ms=client, server_ms=server, link=LINK, **kw)  # type: ignore[arg-type]


CLIENT = {"in": 0.0, "a": 50.0, "b": 50.0, "c": 50.0}
SERVER = {"in": 0.0, "a": 5.0, "b": 5.0, "c": 5.0}


def test_costs_of_every_single_cut_by_hand() -> None:
    costs = single_cut_costs(ctx(chain(), CLIENT, SERVER))
    # cut after "in": send 4 ms, server 15 ms, receive 0.04 ms
    assert costs["in"] == pytest.approx(4.0e-3 + 15e-3 + 0.04e-3)
    # after "a": client 50, send 0.4, server 10, receive 0.04
    assert costs["a"] == pytest.approx(50e-3 + 0.4e-3 + 10e-3 + 0.04e-3)
    # after "b": client 100, send 40, server 5, receive 0.04
    assert costs["b"] == pytest.approx(100e-3 + 40e-3 + 5e-3 + 0.04e-3)
    assert costs[None] == pytest.approx(150e-3)
    assert "c" not in costs  # after the last layer is local execution


def test_plan_uploads_the_suffix_after_the_best_cut_in_one_partition() -> None:
    plan = NeuroSurgeonPlanner().plan(ctx(chain(), CLIENT, SERVER))
    assert plan.strategy == "neurosurgeon"
    assert plan.partitions == (frozenset({"a", "b", "c"}),)
    assert plan.notes["cut_after"] == "in"
    assert plan.exec_plans[0].server_layers == frozenset({"a", "b", "c"})
    assert plan.initial_plan.server_layers == frozenset()


def test_a_slow_uplink_moves_the_cut_to_the_small_tensor() -> None:
    # at 100 kB/s the input costs 40 ms to send; with "a" cheap on the client,
    # cutting after it (400 B, 4 ms) wins: 5 + 4 + 10 + 0.4 < 40 + 15 + 0.4
    client = {**CLIENT, "a": 5.0}
    c = ctx(chain(), client, SERVER).with_(link=Link(bandwidth=1e5))
    costs = single_cut_costs(c)
    assert costs["a"] == pytest.approx(19.4e-3)
    assert costs["in"] == pytest.approx(55.4e-3)
    plan = NeuroSurgeonPlanner().plan(c)
    assert plan.notes["cut_after"] == "a"
    assert plan.partitions == (frozenset({"b", "c"}),)


def test_nothing_is_uploaded_when_no_cut_beats_local() -> None:
    slow_server = dict.fromkeys(SERVER, 100.0)
    plan = NeuroSurgeonPlanner().plan(ctx(chain(), CLIENT, slow_server))
    assert plan.partitions == ()
    assert plan.notes["cut_after"] is None


def test_layers_already_held_are_not_uploaded_again() -> None:
    plan = NeuroSurgeonPlanner().plan(ctx(chain(), CLIENT, SERVER, held=frozenset({"b"})))
    assert plan.partitions == (frozenset({"a", "c"}),)


def test_cuts_are_only_where_one_tensor_crosses() -> None:
    # in -> a -> {b1, b2} -> add -> d: no cut may separate b1 from b2
    nodes = [
        node("in", elems=1000),
        node("a", "in", elems=1000),
        node("b1", "a", elems=10),
        node("b2", "a", elems=10),
        LayerNode(
            name="add",
            cls="Add",
            inbound=(TensorRef("b1"), TensorRef("b2")),
            output_shapes=((10,),),
        ),
        node("d", "add", elems=10),
    ]
    g = LayerGraph(nodes, [TensorRef("d")], name="diamond")
    client = dict.fromkeys(g.order, 10.0)
    server = dict.fromkeys(g.order, 1.0)
    costs = single_cut_costs(ctx(g, client, server))
    assert set(costs) == {None, "in", "a", "add"}


def test_simulated_queries_stay_local_until_the_partition_is_usable() -> None:
    c = ctx(chain(), CLIENT, SERVER, pattern=QueryPattern.back_to_back(count=10))
    plan = NeuroSurgeonPlanner().plan(c)
    result = simulate(c, plan)
    ready = result.partitions[0].ready_s
    # 12 000 weight bytes at 1 MB/s: usable after 12 ms
    assert ready == pytest.approx(12e-3)
    for q in result.queries:
        if q.started_s < ready:
            assert q.server_layers == frozenset()
        else:
            assert q.server_layers == frozenset({"a", "b", "c"})
            assert q.latency_s == pytest.approx(costs_after_in())


def costs_after_in() -> float:
    return 4.0e-3 + 15e-3 + 0.04e-3


def test_energy_objective_weighs_compute_and_radio() -> None:
    c = ctx(chain(), CLIENT, SERVER, objective="energy")
    costs = single_cut_costs(c)
    p = c.power
    assert costs[None] == pytest.approx(p.compute_w * 150e-3)
    assert costs["in"] == pytest.approx(p.transmit_w * 4.04e-3 + p.idle_w * 15e-3)
    plan = NeuroSurgeonPlanner().plan(c)
    assert math.isnan(float(plan.notes["predicted_s"]))  # type: ignore[arg-type]
