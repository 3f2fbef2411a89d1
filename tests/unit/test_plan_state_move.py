"""ionn_net.client.plan_state: after a move to another server (protocol.md §15) nothing the
previous server held, timed or taught counts; queries run locally until a plan is
activated again, while what belongs to this device (its per-layer times, the compiled
chunks, the link estimate) stays."""

from __future__ import annotations

from typing import Any

import pytest
from tests.helpers.dense_chain import dense_chain_prepared

from ionn_net.client.plan_state import PlanState
from ionn_net.messages import TimingTable
from ionn_net.messages.upload import Holdings
from ionn_net.planner.workload import QueryPattern


@pytest.fixture(scope="module")
def state_parts() -> Any:
    return dense_chain_prepared(3)


def _state(prepared: Any) -> PlanState:
    return PlanState(prepared, pattern=QueryPattern(), assumed_mbit=50.0, slowdown=1.0)


def _a_server_that_taught(state: PlanState, prepared: Any) -> None:
    """A server that holds every layer, timed two of them and answered queries."""
    names = ("d1", "d2", "out")
    digests = tuple(prepared.layer_blob[n][0] for n in names)
    state.adopt_holdings(
        Holdings(blobs_held=digests[:2], partial={digests[2]: 10}, layers_ready=names[:2])
    )
    state.adopt_ready(names)
    state.timings.adopt_timings(TimingTable({"d1": 0.2, "d2": 0.2}, {"out": 0.1}), done=True)
    state.set_ping(0.004)
    state.observe_round_trip(0.09, 64, 16, server_ms=0.4, ran=["d1", "d2"])
    plan = state.best_plan(state.ready)
    assert plan.offloads, plan  # 80 ms here, well under 1 ms there: it offloads
    state.switch(plan, state.ready, {})


def test_a_move_forgets_what_the_previous_server_held_timed_and_taught(state_parts: Any) -> None:
    state = _state(state_parts)
    fresh = _state(state_parts)
    _a_server_that_taught(state, state_parts)
    assert state.held_blobs and state.partial and state.ready
    assert state.timings.source["d1"] == "measured"
    assert state.learned.rtt_s != fresh.learned.rtt_s
    link_before, chunks_before = state.link.bandwidth, state.chunks_of(("d1",))

    state.new_server()

    assert state.ready == state.base == frozenset()
    assert state.held_blobs == frozenset() and dict(state.partial) == {}
    assert not state.active.plan.offloads and not state.active_exact.plan.offloads
    assert set(state.timings.source.values()) == {"assumed"} and not state.timings.done
    assert dict(state.server_ms) == dict(fresh.server_ms)
    assert state.learned.server_scale == fresh.learned.server_scale == 1.0
    assert state.learned.rtt_s == fresh.learned.rtt_s
    assert state.link.rtt_s == fresh.link.rtt_s
    # this device's side is unchanged by a move
    assert dict(state.client_ms) == dict(fresh.client_ms)
    assert state.link.bandwidth == link_before
    assert state.chunks_of(("d1",)) == chunks_before
