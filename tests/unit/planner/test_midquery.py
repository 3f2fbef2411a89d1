"""Mid-query re-planning (planner.midquery): chunking of client segments and the choice
of where a running query joins a newer plan."""

from __future__ import annotations

import random

import pytest
from planner_graphs import chain, diamond

from ionn_net.errors import PlannerError
from ionn_net.model.graph import TensorRef
from ionn_net.planner.execution import ExecutionPlan, Segment, plan_execution
from ionn_net.planner.link import Link
from ionn_net.planner.midquery import (
    SegmentCoster,
    choose_continuation,
    chunk_segment,
    split_at,
)

LINK = Link.from_mbit(80.0, 1.0)


def test_chunks_cover_the_segment_in_order_with_balanced_time() -> None:
    g = chain([1000] * 41)
    layers = g.order[1:]
    ms = dict.fromkeys(g.order, 10.0)
    chunks = chunk_segment(g, layers, ms, max_chunks=4, min_chunk_ms=20.0)
    assert sum(chunks, ()) == layers
    assert len(chunks) == 4
    assert [len(c) for c in chunks] == [10, 10, 10, 10]


def test_short_segments_stay_whole_and_min_chunk_bounds_the_count() -> None:
    g = chain([1000] * 11)
    layers = g.order[1:]
    ms = dict.fromkeys(g.order, 5.0)  # 50 ms in all
    assert chunk_segment(g, layers, ms, max_chunks=8, min_chunk_ms=60.0) == (layers,)
    assert len(chunk_segment(g, layers, ms, max_chunks=8, min_chunk_ms=20.0)) == 2


def test_cuts_prefer_single_tensor_cut_points_nearby() -> None:
    g = diamond(random.Random(1))  # in a {b1 b2 c} add d: only a, add, d are cut points
    layers = g.order[1:]
    ms = dict.fromkeys(g.order, 10.0) | {"a": 25.0}
    # equal time puts the cut after b1 (35 of 75 ms); "a" (25 ms) is within half a chunk
    plain = chunk_segment(g, layers, ms, max_chunks=2, min_chunk_ms=10.0)
    assert plain[0][-1] == "b1"
    chunks = chunk_segment(
        g, layers, ms, cut_points=g.cut_points(), max_chunks=2, min_chunk_ms=10.0
    )
    assert sum(chunks, ()) == layers
    assert chunks[0] == ("a",)


def test_segments_cut_on_the_model_grid_share_their_inner_chunks() -> None:
    g = chain([1000] * 41)
    ms = dict.fromkeys(g.order, 10.0)
    grid = chunk_segment(g, g.order, ms, max_chunks=4, min_chunk_ms=20.0)
    ends = {c[-1] for c in grid}
    # a suffix segment, as a plan offloading a prefix has: only its first chunk is new
    suffix = g.order[15:]
    chunks = split_at(suffix, ends)
    assert sum(chunks, ()) == suffix
    assert chunks[1:] == grid[2:]
    assert chunks[0] == g.order[15:20]  # l14..l18, up to the grid cut after l18
    assert split_at(g.order, ends) == grid
    assert split_at(g.order[3:7], ends) == (g.order[3:7],)  # inside one grid chunk
    assert split_at((), ends) == ()


def test_chunking_rejects_bad_arguments() -> None:
    g = chain([10, 10])
    with pytest.raises(PlannerError, match="max_chunks"):
        chunk_segment(g, g.order, {}, max_chunks=0)
    with pytest.raises(PlannerError, match="unknown layer"):
        chunk_segment(g, ("nope",), {})


def _setup() -> tuple[SegmentCoster, dict[str, float], dict[str, float]]:
    g = chain([1000] * 21)  # 4 kB activations: 0.4 ms each at 80 Mbit/s
    client = dict.fromkeys(g.order, 100.0)
    server = dict.fromkeys(g.order, 1.0)
    return SegmentCoster(g, client, server, LINK), client, server


def _held_after(coster: SegmentCoster, done: int) -> tuple[set[TensorRef], set[str]]:
    g = coster.graph
    have = {TensorRef(n) for n in g.order[:done]}
    return have, set(g.order[done:])


def test_joins_a_newer_plan_that_covers_the_rest_and_is_faster() -> None:
    coster, client, server = _setup()
    g = coster.graph
    newer = plan_execution(g, client, server, g.order[1:15], LINK)
    assert newer.offloads
    have, remaining = _held_after(coster, 6)  # in, l0..l4 computed locally
    rest = (Segment("client", g.order[6:]),)
    join = choose_continuation(coster, rest, newer, have, remaining)
    assert join is not None
    # it joins at the server segment (which repeats l0..l4 at 1 ms each)
    assert newer.segments[join.index].location == "server"
    assert join.cost_s < 0.5 * join.current_s
    covered = {n for s in newer.segments[join.index :] for n in s.layers}
    assert remaining <= covered


def test_stays_on_course_when_the_newer_plan_is_not_worth_it() -> None:
    coster, client, server = _setup()
    g = coster.graph
    newer = plan_execution(g, client, server, g.order[1:3], LINK)  # only l0, l1 held
    have, remaining = _held_after(coster, 15)
    rest = (Segment("client", g.order[15:]),)
    # joining would redo l0..l13 on the server: not possible without their inputs,
    # or not faster than 6 local layers
    assert choose_continuation(coster, rest, newer, have, remaining) is None


def test_never_joins_where_an_input_is_missing() -> None:
    coster, _, _ = _setup()
    g = coster.graph
    newer = ExecutionPlan(
        segments=(Segment("client", g.order[:14]), Segment("server", g.order[14:])),
        predicted_s=0.0,
        breakdown={},
    )
    # the query ran l0..l4 locally: the server segment needs l12's output, not held, and
    # redoing the client segment (14 layers) is no faster than 15 local layers
    have, remaining = _held_after(coster, 6)
    rest = (Segment("client", g.order[6:]),)
    assert choose_continuation(coster, rest, newer, have, remaining) is None
    # with l12 held it joins the server segment
    have2, remaining2 = _held_after(coster, 14)
    rest2 = (Segment("client", g.order[14:]),)
    join = choose_continuation(coster, rest2, newer, have2, remaining2)
    assert join is not None and join.index == 1


def test_margin_gives_hysteresis() -> None:
    coster, client, server = _setup()
    g = coster.graph
    newer = plan_execution(g, client, server, g.order[1:], LINK)
    have, remaining = _held_after(coster, 20)  # one layer left: 100 ms locally
    rest = (Segment("client", g.order[20:]),)
    join = choose_continuation(coster, rest, newer, have, remaining, margin=1.0)
    assert join is not None
    with pytest.raises(PlannerError, match="margin"):
        choose_continuation(coster, rest, newer, have, remaining, margin=0.0)
    slow = coster.priced(client, dict.fromkeys(g.order, 99.0), LINK)
    assert choose_continuation(slow, rest, newer, have, remaining) is None
