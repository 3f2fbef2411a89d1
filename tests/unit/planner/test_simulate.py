"""The simulator: hand-computed timelines for upload, loading, link sharing, queueing,
adaptive re-planning, bandwidth changes; and agreement with the execution planner."""

from __future__ import annotations

import random

import pytest
from planner_graphs import chain, diamond, inception, random_times, resnet

from ionn_net.errors import PlannerError
from ionn_net.planner.execution import plan_execution
from ionn_net.planner.link import Link
from ionn_net.planner.simulate import simulate
from ionn_net.planner.upload import build_plan
from ionn_net.planner.workload import ExecutionPolicy, PlanningContext, QueryPattern

# in -> A -> B; every tensor 100 B; A's weights 1000 B, B's 5000 B; 1000 B/s, RTT 50 ms
GRAPH = chain([25, 25, 25], weights=[1000, 5000])
CLIENT = {"in": 0.0, "l0": 1500.0, "l1": 1500.0}
SERVER = {"in": 0.0, "l0": 10.0, "l1": 10.0}
LOAD = {"l0": 500.0, "l1": 0.0}
A, B = frozenset({"l0"}), frozenset({"l1"})


def ctx(pattern: QueryPattern, **kw: object) -> PlanningContext:
    link = kw.pop("link", Link(bandwidth=1000.0, rtt_s=0.05))
    return PlanningContext(
        graph=GRAPH,
        client_ms=CLIENT,
        server_ms=SERVER,
        load_ms=LOAD,
        link=link,  # type: ignore[arg-type]
        pattern=pattern,
        **kw,  # type: ignore[arg-type]
    )


def plan_of(c: PlanningContext, parts: list[frozenset[str]], adaptive: bool = False):  # type: ignore[no-untyped-def]
    return build_plan(c, "test", parts, ExecutionPolicy("fine", adaptive=adaptive))


def test_upload_pauses_while_query_tensors_are_on_the_link() -> None:
    c = ctx(QueryPattern.back_to_back(count=4))
    res = simulate(c, plan_of(c, [A, B]))
    p0, p1 = res.partitions
    assert (p0.arrived_s, p0.ready_s) == pytest.approx((1.0, 1.5))
    # query 0 runs locally (0-3 s); queries 1 and 2 offload A: each puts 0.1 s up and
    # 0.1 s down on the half-duplex link, so B (5 s of link) arrives 0.4 s late
    assert p1.arrived_s == pytest.approx(6.4)
    lat = [q.latency_s for q in res.queries]
    assert lat == pytest.approx([3.0, 1.76, 1.76, 0.27])
    assert [q.server_layers for q in res.queries] == [frozenset(), A, A, A | B]
    assert res.upload_done_s == pytest.approx(6.4)
    assert res.local_s == pytest.approx(3.0)


def test_full_duplex_link_only_pauses_for_uploads() -> None:
    c = ctx(
        QueryPattern.back_to_back(count=4),
        link=Link(bandwidth=1000.0, rtt_s=0.05, half_duplex=False),
    )
    res = simulate(c, plan_of(c, [A, B]))
    assert res.partitions[1].arrived_s == pytest.approx(6.2)


def test_weight_compression_shortens_the_upload() -> None:
    c = ctx(QueryPattern.back_to_back(count=1), link=Link(bandwidth=1000.0, weight_ratio=2.0))
    res = simulate(c, plan_of(c, [A | B]))
    assert res.partitions[0].wire_bytes == pytest.approx(3000.0)
    assert res.partitions[0].arrived_s == pytest.approx(3.0)
    assert res.partitions[0].ready_s == pytest.approx(3.5)  # load of A + B


def test_loader_is_serial_and_partition_overhead_counts() -> None:
    c = ctx(QueryPattern.back_to_back(count=1), partition_overhead_ms=2000.0)
    res = simulate(c, plan_of(c, [A, B]))
    p0, p1 = res.partitions
    assert p0.ready_s == pytest.approx(1.0 + 0.5 + 2.0)
    # B arrives at 6.0 (no query traffic: the only query runs locally) and loads after A
    assert p1.arrived_s == pytest.approx(6.0)
    assert p1.ready_s == pytest.approx(6.0 + 2.0)


def test_loading_compiles_only_the_new_pieces_of_the_new_best_plan() -> None:
    c = ctx(QueryPattern.back_to_back(count=1), compile_ms_per_layer=100.0)
    res = simulate(c, plan_of(c, [A, B]))
    p0, p1 = res.partitions
    # after A the server runs {A} (1 layer compiled); after B it runs {A, B} as the
    # chain {A} -> {B}, and {A} is compiled already: 1 more layer, not 2 (§10.6)
    assert p0.ready_s == pytest.approx(1.0 + 0.5 + 0.1)
    assert p1.ready_s == pytest.approx(6.0 + 0.0 + 0.1)
    assert c.partition_load_s(0.5, 3) == pytest.approx(0.8)


def test_chained_segments_pay_per_piece_until_consolidated() -> None:
    # A then B: {A, B} runs as 2 pieces from B's ready time until the server has
    # compiled it as one slice (2 layers x 1 s later)
    c = ctx(
        QueryPattern.back_to_back(count=60),
        compile_ms_per_layer=1000.0,
        piece_call_ms=20.0,
        link=Link(bandwidth=1000.0, rtt_s=0.05, half_duplex=False),
    )
    res = simulate(c, plan_of(c, [A, B]))
    whole_at = res.partitions[1].ready_s + 2.0
    both = [q for q in res.queries if q.server_layers == A | B]
    before = [q.latency_s for q in both if q.started_s < whole_at - 1e-9]
    after = [q.latency_s for q in both if q.started_s >= whole_at]
    assert before and after
    assert min(before) == pytest.approx(max(after) + 0.020)
    plain = simulate(c.with_(piece_call_ms=0.0), plan_of(c, [A, B]))
    first_both = next(q for q in plain.queries if q.server_layers == A | B)
    assert first_both.latency_s == pytest.approx(max(after))


def landing_mid_query() -> PlanningContext:
    """B first (1000 B weights here), ready at 1 s; the first query reaches B at 1.5 s."""
    return PlanningContext(
        graph=chain([25, 25, 25], weights=[5000, 1000]),
        client_ms=CLIENT,
        server_ms=SERVER,
        link=Link(bandwidth=1000.0, rtt_s=0.05),
        pattern=QueryPattern.back_to_back(count=1),
    )


def test_adaptive_policy_uses_layers_that_land_mid_query() -> None:
    c = landing_mid_query()
    static = simulate(c, plan_of(c, [B]))
    adaptive = simulate(c, plan_of(c, [B], adaptive=True))
    assert static.queries[0].latency_s == pytest.approx(3.0)
    assert adaptive.queries[0].latency_s == pytest.approx(1.5 + 0.26)
    assert adaptive.queries[0].server_layers == B
    assert adaptive.queries[0].replans == 1


def test_a_mid_query_switch_must_beat_the_margin() -> None:
    # at 1.5 s the rest costs 1.5 s locally or 0.26 s offloaded (ratio 0.17)
    c = landing_mid_query()

    def run(margin: float) -> tuple[float, int]:
        policy = ExecutionPolicy("fine", adaptive=True, switch_margin=margin)
        q = simulate(c, build_plan(c, "test", [B], policy)).queries[0]
        return q.latency_s, q.replans

    assert run(0.1) == (pytest.approx(3.0), 0)  # declined: stays local to the end
    assert run(0.2) == (pytest.approx(1.76), 1)
    with pytest.raises(PlannerError, match="switch_margin"):
        ExecutionPolicy(switch_margin=0.0)


def test_a_query_that_replans_mid_segment_still_pauses_the_upload() -> None:
    # in -> l0 -> l1 -> l2, 100 B tensors; l1 (500 B) is usable at 0.5 s, l2 (5000 B)
    # is on the link from 0.5 s. The first query computes l0 locally (1 s), then
    # re-plans and offloads l1: 0.1 s up and 0.1 s down pause l2's upload.
    g = chain([25, 25, 25, 25], weights=[0, 500, 5000])
    c = PlanningContext(
        graph=g,
        client_ms={"in": 0.0, "l0": 1000.0, "l1": 1000.0, "l2": 1000.0},
        server_ms={"in": 0.0, "l0": 10.0, "l1": 10.0, "l2": 10.0},
        link=Link(bandwidth=1000.0),
        pattern=QueryPattern.back_to_back(count=1),
    )
    res = simulate(c, plan_of(c, [frozenset({"l1"}), frozenset({"l2"})], adaptive=True))
    q = res.queries[0]
    assert q.server_layers == {"l1"}
    assert q.latency_s == pytest.approx(1.0 + 0.21 + 1.0)
    assert res.partitions[1].arrived_s == pytest.approx(5.5 + 0.2)


def test_rate_pattern_queues_behind_a_running_query() -> None:
    c = ctx(QueryPattern.rate(0.5, count=3))
    res = simulate(c, plan_of(c, []))
    assert [q.issued_s for q in res.queries] == pytest.approx([0.0, 2.0, 4.0])
    assert [q.started_s for q in res.queries] == pytest.approx([0.0, 3.0, 6.0])
    assert [q.latency_s for q in res.queries] == pytest.approx([3.0, 4.0, 5.0])


def test_energy_per_query_follows_the_power_model() -> None:
    c = ctx(QueryPattern.back_to_back(count=4))
    res = simulate(c, plan_of(c, [A, B]))
    local, offloaded = res.queries[0], res.queries[3]
    assert local.energy_j == pytest.approx(3.0 * 7.239)
    assert offloaded.transfer_s == pytest.approx(0.2)
    assert offloaded.wait_s == pytest.approx(0.05 + 0.02)
    assert offloaded.energy_j == pytest.approx(0.2 * 6.611 + 0.07 * 3.977)


def test_bandwidth_change_slows_the_upload_and_triggers_replanning() -> None:
    c = ctx(QueryPattern.back_to_back(duration_s=0.1))
    calls: list[tuple[frozenset[str], float]] = []

    def replanner(sent: frozenset[str], link: Link) -> list[frozenset[str]]:
        calls.append((sent, link.bandwidth))
        return [A, B]  # still wants A, which is in flight: it keeps going

    slow = Link(bandwidth=500.0, rtt_s=0.05)
    res = simulate(c, plan_of(c, [A, B]), link_changes=[(0.5, slow)], replanner=replanner)
    # called at the change; A: 500 B in the first 0.5 s, 500 B more at 500 B/s
    assert calls == [(frozenset(), 500.0)]
    assert res.partitions[0].arrived_s == pytest.approx(1.5)
    assert res.partitions[1].layers == B
    assert res.partitions[1].arrived_s == pytest.approx(1.5 + 10.0)
    assert res.upload_replans == 1
    assert res.notes["abandoned_partitions"] == 0


def test_replanning_can_abandon_the_partition_in_flight() -> None:
    c = ctx(QueryPattern.back_to_back(duration_s=0.1))
    slow = Link(bandwidth=500.0, rtt_s=0.05)
    res = simulate(
        c, plan_of(c, [A, B]), link_changes=[(0.5, slow)], replanner=lambda sent, link: [B]
    )
    assert [p.layers for p in res.partitions] == [B]
    assert res.partitions[0].sent_s == pytest.approx(0.5)
    assert res.partitions[0].arrived_s == pytest.approx(0.5 + 10.0)
    assert res.notes["abandoned_partitions"] == 1


def test_metrics_read_the_timeline() -> None:
    c = ctx(QueryPattern.back_to_back(count=4))
    res = simulate(c, plan_of(c, [A, B]))
    assert res.first_faster_than_local() == pytest.approx(3.0)
    assert res.completion_time(4) == pytest.approx(3.0 + 1.76 + 1.76 + 0.27)
    assert res.completion_time(5) is None
    assert res.mean_latency(0.0, 3.5) == pytest.approx((3.0 + 1.76) / 2)
    assert res.uploaded_by(2.0) == pytest.approx(1000.0)


def test_open_ended_pattern_stops_once_the_upload_is_usable() -> None:
    c = ctx(QueryPattern.back_to_back())
    res = simulate(c, plan_of(c, [A, B]))
    # the fourth query would start at 6.52 s, after B became usable at 6.4 s
    assert [q.issued_s for q in res.queries] == pytest.approx([0.0, 3.0, 4.76])
    assert res.upload_done_s == pytest.approx(6.4)


@pytest.mark.parametrize("builder", [diamond, inception, resnet])
@pytest.mark.parametrize("method", ["fine", "ionn"])
def test_simulated_latency_equals_the_planner_prediction(builder, method) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(42)
    for _ in range(5):
        g = builder(rng)
        client, server = random_times(g, rng, gap=rng.choice([3.0, 30.0]))
        link = Link(bandwidth=rng.choice([1e5, 1e7]), rtt_s=rng.choice([0.0, 0.01]))
        held = frozenset(n for n in g.order if rng.random() < 0.8)
        c = PlanningContext(
            graph=g,
            client_ms=client,
            server_ms=server,
            link=link,
            held=held,
            pattern=QueryPattern.back_to_back(count=1),
        )
        plan = plan_execution(g, client, server, held, link, method=method)
        res = simulate(c, build_plan(c, "t", [], ExecutionPolicy(method)))
        assert res.queries[0].latency_s == pytest.approx(plan.predicted_s, rel=1e-9)
        assert res.queries[0].server_layers == plan.server_layers


def test_bad_inputs_raise_planner_error() -> None:
    c = ctx(QueryPattern.back_to_back(count=1))
    p = plan_of(c, [A])
    with pytest.raises(PlannerError, match="link_changes"):
        simulate(c, p, link_changes=[(1.0, Link(bandwidth=1.0)), (0.5, Link(bandwidth=1.0))])
    with pytest.raises(PlannerError, match="max_queries"):
        simulate(c, p, max_queries=0)
    with pytest.raises(PlannerError, match="rate_qps"):
        QueryPattern.rate(0.0)
    with pytest.raises(PlannerError, match="count"):
        QueryPattern.back_to_back(count=0)
