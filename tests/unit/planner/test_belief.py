"""ionn_net.planner.simulate with a Belief: the client decides with the times it believes,
every cost is charged with the true ones (the regret of prediction error).

A belief equal to the truth changes nothing; a client that believes the server 100x
slower than it is keeps every query local until it learns better, and the simulation
charges it the true, slower latency; from the switch on it offloads again.
"""

from __future__ import annotations

import math

import pytest
from planner_graphs import chain

from ionn_net.errors import PlannerError
from ionn_net.planner.link import Link
from ionn_net.planner.simulate import Belief, SimMemo, simulate, simulate_partitions
from ionn_net.planner.upload import build_plan
from ionn_net.planner.workload import ExecutionPolicy, PlanningContext, QueryPattern

GRAPH = chain([25, 25, 25], weights=[1000, 5000])
CLIENT = {"in": 0.0, "l0": 150.0, "l1": 150.0}
SERVER = {"in": 0.0, "l0": 10.0, "l1": 10.0}
SLOW = {"in": 0.0, "l0": 1000.0, "l1": 1000.0}


def ctx(server: dict[str, float]) -> PlanningContext:
    return PlanningContext(
        graph=GRAPH,
        client_ms=CLIENT,
        server_ms=server,
        link=Link(bandwidth=100_000.0, rtt_s=0.01),
        pattern=QueryPattern.back_to_back(duration_s=20.0),
    )


def plan() -> object:
    c = ctx(SERVER)
    return build_plan(c, "test", [frozenset({"l0", "l1"})], ExecutionPolicy("fine"))


def test_a_belief_equal_to_the_truth_changes_nothing() -> None:
    truth = ctx(SERVER)
    exact = simulate(truth, plan())  # type: ignore[arg-type]
    believed = simulate(truth, plan(), belief=Belief(truth.times, truth.times, 5.0))  # type: ignore[arg-type]
    assert [q.finished_s for q in believed.queries] == pytest.approx(
        [q.finished_s for q in exact.queries]
    )
    assert [q.server_layers for q in believed.queries] == [q.server_layers for q in exact.queries]


def test_decisions_follow_the_belief_and_costs_the_truth() -> None:
    truth, wrong = ctx(SERVER), ctx(SLOW)
    exact = simulate(truth, plan())  # type: ignore[arg-type]
    stuck = simulate(truth, plan(), belief=Belief(wrong.times, wrong.times))  # type: ignore[arg-type]
    assert any(q.server_layers for q in exact.queries)
    assert not any(q.server_layers for q in stuck.queries)  # it believed the server slow
    # ... and is charged the true local time, not the believed server time
    assert stuck.queries[-1].latency_s == pytest.approx(0.3)
    assert stuck.mean_latency(0, 20) > exact.mean_latency(0, 20)
    learned = simulate(truth, plan(), belief=Belief(wrong.times, truth.times, 10.0))  # type: ignore[arg-type]
    before = [q for q in learned.queries if q.started_s < 10.0]
    after = [q for q in learned.queries if q.started_s >= 10.0]
    assert before and not any(q.server_layers for q in before)
    assert after and all(q.server_layers for q in after)
    mean = learned.mean_latency(0, 20)
    assert exact.mean_latency(0, 20) < mean < stuck.mean_latency(0, 20)
    assert math.isfinite(mean)


def test_a_belief_cannot_share_the_truths_memo() -> None:
    truth = ctx(SERVER)
    policy = ExecutionPolicy("fine")
    with pytest.raises(PlannerError, match="memo"):
        simulate_partitions(
            truth,
            [frozenset({"l0"})],
            policy,
            memo=SimMemo(truth, policy),
            belief=Belief(truth.times, truth.times),
        )
