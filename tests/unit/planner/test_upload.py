"""Upload strategies: registry, hand-computed IONN and EMDL plans, ``ours``."""

from __future__ import annotations

import itertools
import random

import pytest
from planner_graphs import chain, inception, random_times, resnet

from ionn_net.errors import PlannerError
from ionn_net.model.graph import LayerGraph
from ionn_net.planner.efficiency import EfficiencyPlanner
from ionn_net.planner.link import Link
from ionn_net.planner.simulate import simulate
from ionn_net.planner.upload import IonnPlanner, UploadPlan, get_planner, planner_names
from ionn_net.planner.workload import PlanningContext, QueryPattern

MS_PER_BYTE_LINK = Link(bandwidth=1e6)  # 1 000 bytes = 1 ms, no RTT


def context(
    graph: LayerGraph, client: dict, server: dict, link: Link = MS_PER_BYTE_LINK, **kw: object
) -> PlanningContext:
    return PlanningContext(
        graph=graph,
        client_ms=client,
        server_ms=server,
        link=link,
        **kw,  # type: ignore[arg-type]
    )


# -- registry and simple strategies ---------------------------------------------------------


def test_registry_lists_and_builds_every_strategy() -> None:
    assert planner_names() == ("local", "all_at_once", "ionn", "efficiency", "ours", "neurosurgeon")
    for name in planner_names():
        assert get_planner(name).name == name
    with pytest.raises(PlannerError, match="local, all_at_once, ionn, efficiency, ours"):
        get_planner("fastest")
    with pytest.raises(PlannerError, match="bad options"):
        get_planner("ionn", colour="red")
    with pytest.raises(PlannerError, match="scope"):
        get_planner("all_at_once", scope="some")


def _useless_tail() -> PlanningContext:
    # l2 is cheap to run locally and has a big output: client-side even with everything
    # uploaded
    g = chain([250, 500, 250, 1250], weights=[50_000, 190_000, 2_000_000])
    client = {"in": 0.0, "l0": 100.0, "l1": 100.0, "l2": 0.5}
    server = {"in": 0.0, "l0": 1.0, "l1": 1.0, "l2": 1.0}
    return context(g, client, server)


def test_local_and_all_at_once() -> None:
    ctx = _useless_tail()
    assert get_planner("local").plan(ctx).partitions == ()
    everything = get_planner("all_at_once").plan(ctx)
    assert everything.partitions == (frozenset({"l0", "l1", "l2"}),)
    useful = get_planner("all_at_once", scope="useful").plan(ctx)
    assert useful.partitions == (frozenset({"l0", "l1"}),)
    assert useful.exec_plans[0].server_layers == {"l0", "l1"}
    assert not useful.initial_plan.offloads


# -- IONN ---------------------------------------------------------------------------------


def test_ionn_plan_matches_the_hand_computed_levels() -> None:
    # in -1 KB-> A -2 KB-> B -1 KB-> C -40 B->; weights 50 KB, 190 KB, 2 MB; 1 ms/KB.
    # p = 1:     {A}: 1 + (1 + 50) + 2 + 100 + 10 = 164 beats local 210, {A,B} 254
    # p = 1/2:   {A,B}: 1 + 26 + 96 + 1 + 10 = 134 beats {A} 139
    # p = 1/128: {A,B} 15.87 still beats {A,B,C} 21.54
    # p = 1/256: {A,B,C}: 1 + 1.195 + 1.742 + 8.81 + 0.04 = 12.79 beats {A,B} 14.94
    g = chain([250, 500, 250, 10], weights=[50_000, 190_000, 2_000_000])
    client = {"in": 0.0, "l0": 100.0, "l1": 100.0, "l2": 10.0}
    server = {"in": 0.0, "l0": 1.0, "l1": 1.0, "l2": 1.0}
    ctx = context(g, client, server)
    planner = IonnPlanner()
    assert planner.levels() == [0.5**i for i in range(10)] + [0.0]
    sets = planner.server_sets(ctx)
    assert sets == [
        (1.0, frozenset({"l0"})),
        (0.5, frozenset({"l0", "l1"})),
        (1 / 256, frozenset({"l0", "l1", "l2"})),
    ]
    plan = planner.plan(ctx)
    assert plan.partitions == (frozenset({"l0"}), frozenset({"l1"}), frozenset({"l2"}))
    assert plan.policy.method == "ionn"
    assert [p.server_layers for p in plan.exec_plans] == [
        {"l0"},
        {"l0", "l1"},
        {"l0", "l1", "l2"},
    ]


def test_ionn_never_uploads_layers_that_stay_local_at_zero_penalty() -> None:
    plan = get_planner("ionn").plan(_useless_tail())
    assert plan.partitions == (frozenset({"l0"}), frozenset({"l1"}))


def test_ionn_collapses_dag_blocks_into_whole_partitions() -> None:
    rng = random.Random(4)
    g = inception(rng)
    client, server = random_times(g, rng, gap=50.0)
    plan = get_planner("ionn").plan(context(g, client, server))
    block = {"a", "b1", "b2", "c1", "c2", "c3", "pool", "p1", "concat"}
    for part in plan.partitions:
        assert not (part & block) or block <= part | set().union(*plan.partitions[:0])


# -- EMDL 2019 -----------------------------------------------------------------------------


def test_efficiency_plan_matches_the_hand_computed_order() -> None:
    # in -0.1 ms-> L1 -5-> L2 -20-> L3 -0.1-> L4 -0.004->  (transfer ms); client
    # 50/50/40/40, server 1 each, upload 10/100/100/300 ms; target = all four.
    # first = argmax gain - upload: L1 (43.9 - 10 = 33.9).
    # then efficiencies with L1 uploaded: [L2,L3] 92.9/200 = 0.46 is best, but it has the
    #   inner range [L2] with efficiency 34/100 = 0.34 and positive gain: take [L2].
    # then [L3] 58.9/100 beats [L3,L4] 0.245 and [L4] 0.13; then [L4].
    g = chain([25, 1250, 25, 5000, 1], weights=[10_000, 100_000, 100_000, 300_000])
    client = {"in": 0.0, "l0": 50.0, "l1": 50.0, "l2": 40.0, "l3": 40.0}
    server = {"in": 0.0, "l0": 1.0, "l1": 1.0, "l2": 1.0, "l3": 1.0}
    plan = EfficiencyPlanner().plan(context(g, client, server))
    assert plan.partitions == tuple(frozenset({f"l{i}"}) for i in range(4))
    assert plan.policy.method == "ionn"


def test_efficiency_skips_layers_outside_its_target_set() -> None:
    plan = EfficiencyPlanner().plan(_useless_tail())
    assert plan.layers == {"l0", "l1"}


# -- ours -----------------------------------------------------------------------------------


def _vgg_like() -> PlanningContext:
    """Eight convolutions (heavy compute, small weights) then two big dense layers."""
    sizes = [150_000, 800_000, 800_000, 400_000, 400_000, 200_000, 200_000, 100_000, 25_000]
    sizes += [1000, 250]
    weights = [8_000, 150_000, 300_000, 600_000, 1_200_000, 2_400_000, 2_400_000, 4_800_000]
    weights += [100_000_000, 4_000_000]
    g = chain(sizes, weights=weights)
    server = dict.fromkeys(g.order, 2.0) | {"in": 0.0, "l8": 0.3, "l9": 0.05}
    client = {n: v * 50 for n, v in server.items()}
    link = Link.from_mbit(80, 1.0, weight_ratio=1.1)
    load = {n: 5.0 + g[n].weight_bytes / 2e6 for n in g.order if n != "in"}
    return context(g, client, server, link, load_ms=load, partition_overhead_ms=50.0)


def test_ours_sends_small_convolution_partitions_first_and_big_dense_last() -> None:
    ctx = _vgg_like()
    plan = get_planner("ours").plan(ctx)
    first = plan.partitions[0]
    assert "l8" not in first and first <= {f"l{i}" for i in range(8)}
    assert sum(ctx.graph[n].weight_bytes for n in first) < 0.1 * ctx.graph.total_weight_bytes
    assert plan.exec_plans[0].predicted_s < plan.initial_plan.predicted_s
    assert plan.policy.adaptive and plan.policy.method == "fine"
    # partitions only ever lower the predicted latency
    lat = [plan.initial_plan.predicted_s] + [p.predicted_s for p in plan.exec_plans]
    assert all(b < a for a, b in itertools.pairwise(lat))


SCENARIOS = [
    ("vgg_like", None),
    ("inception", 1),
    ("inception", 2),
    ("resnet", 3),
    ("resnet", 4),
]


def _scenario(name: str, seed: int | None) -> PlanningContext:
    if seed is None:
        return _vgg_like()
    rng = random.Random(seed)
    g = {"inception": inception, "resnet": resnet}[name](rng)
    client, server = random_times(g, rng, gap=rng.choice([10.0, 100.0]))
    weights = {n: g[n].weight_bytes for n in g.order}
    load = {n: 2.0 for n in g.order if n != "in"}
    del weights
    link = Link(bandwidth=rng.choice([2e4, 1e5]), rtt_s=0.002)
    return context(g, client, server, link, load_ms=load)


@pytest.mark.parametrize(("name", "seed"), SCENARIOS)
def test_ours_beats_or_matches_the_baselines_in_simulation(name: str, seed: int | None) -> None:
    ctx = _scenario(name, seed)
    window = ctx.graph.total_weight_bytes / ctx.link.bandwidth
    sim_ctx = ctx.with_(pattern=QueryPattern.back_to_back(duration_s=window))
    mean = {}
    for strategy in ("ionn", "efficiency", "all_at_once", "ours"):
        plan = get_planner(strategy).plan(ctx)
        mean[strategy] = simulate(sim_ctx, plan).mean_latency(0.0, window)
    assert mean["ours"] <= min(mean["ionn"], mean["efficiency"]) * (1 + 1e-9), mean


def test_ours_respects_the_horizon_and_plans_with_compressed_sizes() -> None:
    # one layer worth offloading whose 10 MB take 10 s raw, 5 s at ratio 2
    g = chain([100, 100], weights=[10_000_000])
    t_client, t_server = {"in": 0.0, "l0": 1000.0}, {"in": 0.0, "l0": 1.0}
    raw = context(g, t_client, t_server, pattern=QueryPattern.back_to_back(duration_s=8.0))
    assert get_planner("ours").plan(raw).partitions == ()
    squeezed = raw.with_(link=Link(bandwidth=1e6, weight_ratio=2.0))
    assert get_planner("ours").plan(squeezed).partitions == (frozenset({"l0"}),)
    unbounded = raw.with_(pattern=QueryPattern.back_to_back())
    assert get_planner("ours").plan(unbounded).partitions == (frozenset({"l0"}),)


def test_ours_skips_held_layers_and_replans_from_what_was_sent() -> None:
    ctx = _vgg_like()
    ours = get_planner("ours")
    full = ours.plan(ctx)
    sent = full.partitions[0]
    slower = ctx.link.with_bandwidth(ctx.link.bandwidth / 4)
    rest = ours.replan(ctx, sent, slower, 1.0)
    assert not (rest.layers & sent)
    assert rest.layers
    # the new plan starts from what was sent, on the new link
    assert rest.initial_plan == ctx.best_plan(sent, link=slower)
    everything_useful = ctx.best_plan(frozenset(ctx.graph.order)).server_layers
    done = ours.plan(ctx.with_(held=everything_useful))
    assert done.partitions == ()


def test_ours_replans_inside_the_simulator_after_a_bandwidth_drop() -> None:
    ctx = _vgg_like().with_(pattern=QueryPattern.back_to_back(duration_s=60.0))
    ours = get_planner("ours")
    plan = ours.plan(ctx)
    slow = ctx.link.with_bandwidth(ctx.link.bandwidth / 50)

    def replanner(sent: frozenset[str], link: Link) -> list[frozenset[str]]:
        return list(ours.replan(ctx, sent, link, 5.0).partitions)

    fixed = simulate(ctx, plan, link_changes=[(5.0, slow)])
    adapted = simulate(ctx, plan, link_changes=[(5.0, slow)], replanner=replanner)
    assert adapted.upload_replans == 1
    # after the drop the 100 MB dense layer no longer pays off within the minute
    assert "l8" in {n for p in fixed.partitions for n in p.layers}
    assert "l8" not in {n for p in adapted.partitions for n in p.layers}
    assert adapted.mean_latency(0, 60.0) <= fixed.mean_latency(0, 60.0) * (1 + 1e-9)


def test_upload_plan_validates_its_partitions() -> None:
    ctx = _useless_tail()
    base = get_planner("ionn").plan(ctx)
    with pytest.raises(PlannerError, match="empty"):
        UploadPlan(
            strategy="x",
            partitions=(frozenset(),),
            exec_plans=base.exec_plans[:1],
            initial_plan=base.initial_plan,
        )
    with pytest.raises(PlannerError, match="repeats"):
        UploadPlan(
            strategy="x",
            partitions=(frozenset({"l0"}), frozenset({"l0"})),
            exec_plans=base.exec_plans,
            initial_plan=base.initial_plan,
        )
    with pytest.raises(PlannerError, match="one execution plan per partition"):
        UploadPlan(
            strategy="x",
            partitions=base.partitions,
            exec_plans=(),
            initial_plan=base.initial_plan,
        )


def test_energy_objective_changes_what_is_worth_uploading() -> None:
    # offloading l0 is faster (0.09 s of radio vs 0.1 s of compute) but, with a
    # power-hungry radio, costs more client energy than computing locally
    from ionn_net.planner.energy import PowerModel

    g = chain([22_500, 10], weights=[1000])
    client, server = {"in": 0.0, "l0": 100.0}, {"in": 0.0, "l0": 1.0}
    radio_hungry = PowerModel(compute_w=1.0, transmit_w=10.0, idle_w=0.5)
    fast = context(g, client, server, power=radio_hungry)
    frugal = fast.with_(objective="energy")
    for name in ("ionn", "ours"):
        assert get_planner(name).plan(fast).partitions == (frozenset({"l0"}),)
        plan = get_planner(name).plan(frugal)
        assert plan.partitions == ()
        assert plan.policy.objective == "energy"
    ctx = frugal.with_(pattern=QueryPattern.back_to_back(count=3))
    res = simulate(ctx, get_planner("all_at_once").plan(ctx))
    # queries after the upload still run locally: energy is what the policy minimises
    assert res.queries[-1].server_layers == frozenset()
    assert res.queries[-1].energy_j == pytest.approx(0.1 * 1.0)
