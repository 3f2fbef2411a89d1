"""ionn_net.client.mobility: the order pre-migration pushes blobs in (protocol.md §15.5) is
the upload plan the client's session made at a server holding nothing, taken from the plan
cache the two share: pre-migration does not plan again (seconds of the client's CPU for
``ours``, which held every push back past a move early in the upload), and pushes nothing
before the session has planned."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tests.helpers.dense_chain import dense_chain_prepared

from ionn_net.client.mobility import HandoffOptions, Mobility, PlanCache
from ionn_net.client.plan_state import PlanState, with_completion
from ionn_net.errors import PlannerError
from ionn_net.offthread import BackgroundWork
from ionn_net.planner.upload import get_planner
from ionn_net.planner.workload import QueryPattern


@pytest.fixture(scope="module")
def prepared() -> Any:
    return dense_chain_prepared(5)


def _mobility(prepared: Any, planner: str) -> tuple[Mobility, PlanState]:
    state = PlanState(prepared, pattern=QueryPattern(), assumed_mbit=50.0, slowdown=1.0)
    mobility = Mobility(
        prepared=prepared,
        state=state,
        options=HandoffOptions(),
        planner=planner,
        current="127.0.0.1:1",
        candidates=["127.0.0.1:2"],
        stats={},
        background=BackgroundWork(),
    )
    return mobility, state


def _never(prepared: Any, state: PlanState) -> frozenset[str]:
    return state.never() | frozenset(prepared.graph.inputs)


def _digests(prepared: Any, layers: list[str]) -> tuple[str, ...]:
    return tuple(prepared.layer_blob[n][0] for n in layers)


def test_the_push_order_is_the_sessions_plan_from_an_empty_server(prepared: Any) -> None:
    # A planner name that fails if used: the order must come from the cache alone.
    mobility, state = _mobility(prepared, planner="no-such-planner")
    assert asyncio.run(mobility.push_order()) == ()  # the session has not planned yet
    ctx = state.context()
    found = get_planner("ionn").plan(ctx)
    # one partition per layer, in an order no planner would choose: the cache's, visibly
    parts = [frozenset({"out"}), frozenset({"d2"}), frozenset({"d1"})]
    parts = with_completion(ctx, parts, frozenset(), _never(prepared, state))
    mobility.plans.put(PlanCache.key(state.cost_model_id, frozenset(), _never(prepared, state)),
                       (found, parts))  # fmt: skip
    state.start_upload(found, parts)
    assert asyncio.run(mobility.push_order()) == _digests(prepared, ["out", "d2", "d1"])


def test_without_a_plan_from_an_empty_server_pre_migration_plans_one(prepared: Any) -> None:
    mobility, state = _mobility(prepared, planner="ionn")
    found = get_planner("ionn").plan(state.context())
    # The session planned at a server that held d1: not the order for an empty one.
    held = frozenset({"d1"})
    mobility.plans.put(PlanCache.key(state.cost_model_id, held, _never(prepared, state)),
                       (found, [frozenset({"out"}), frozenset({"d2"})]))  # fmt: skip
    state.start_upload(found, [frozenset({"out"}), frozenset({"d2"})])
    order = asyncio.run(mobility.push_order())
    assert set(order) == set(_digests(prepared, ["d1", "d2", "out"]))
    # (the planner is what made it: one that does not exist fails there)
    other, other_state = _mobility(prepared, planner="no-such-planner")
    other_state.start_upload(found, [frozenset({"out"}), frozenset({"d2"})])
    with pytest.raises(PlannerError):
        asyncio.run(other.push_order())
