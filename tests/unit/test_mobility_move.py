"""ionn_net.client.mobility at a move (protocol.md §15.4): what the new server fetched from
the previous one is loaded in the order of the plan made there: the fewest of its first
partitions with which offloading pays as one load, then the others one by one, then whatever
no partition held; not as one load of everything (which kept every query local until all of
it was built), nor one partition at a time before anything pays (a compile per load)."""

from __future__ import annotations

from typing import Any

import pytest
from tests.helpers.dense_chain import dense_chain_prepared

from ionn_net.client.mobility import HandoffOptions, Mobility
from ionn_net.client.plan_state import PlanState
from ionn_net.offthread import BackgroundWork
from ionn_net.planner.upload import get_planner
from ionn_net.planner.workload import QueryPattern


@pytest.fixture(scope="module")
def prepared() -> Any:
    return dense_chain_prepared(5)


def _mobility(prepared: Any) -> tuple[Mobility, PlanState]:
    state = PlanState(prepared, pattern=QueryPattern(), assumed_mbit=50.0, slowdown=1.0)
    mobility = Mobility(
        prepared=prepared,
        state=state,
        options=HandoffOptions(),
        planner="ionn",
        current="127.0.0.1:1",
        candidates=[],
        stats={},
        background=BackgroundWork(),
    )
    return mobility, state


def test_fetched_layers_load_in_the_previous_plans_partition_order(prepared: Any) -> None:
    mobility, state = _mobility(prepared)
    found = get_planner("ionn").plan(state.context())
    # an order no planner would choose, so that the pieces visibly follow it
    state.start_upload(found, [frozenset({"out"}), frozenset({"d2"})])
    mobility.moved("127.0.0.1:2")
    state.new_server()  # as OffloadClient.move_to does: the new server's state is empty
    state.set_ping(0.01)  # a 10 ms round trip: worth it for d1 or d2 (40 ms), not "out" (5)
    # "out" alone (5 ms) is not worth a round trip; with d2 (40 ms) it is: one first load
    pieces = mobility.load_pieces(frozenset({"d1", "d2", "out"}))
    assert pieces == [frozenset({"out", "d2"}), frozenset({"d1"})]
    # only what is loadable is loaded: a partition with nothing of it is skipped
    assert mobility.load_pieces(frozenset({"d1", "d2"})) == [frozenset({"d2"}), frozenset({"d1"})]
    # nothing that pays: one load of it all
    assert mobility.load_pieces(frozenset({"out"})) == [frozenset({"out"})]


def test_before_any_move_there_is_no_previous_plan_to_follow(prepared: Any) -> None:
    mobility, _ = _mobility(prepared)
    assert mobility.load_pieces(frozenset({"d1", "d2"})) == [frozenset({"d1", "d2"})]
