"""The upload starts within 50 ms of the session being ready, while the client still
plans (ionn_net.client.session: the head start), and what a query measures while the
server loads teaches the client nothing. Real client, real server, real TCP."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.helpers.device import slowdown_for

from ionn_net.client import ClientConfig, OffloadClient, planning
from ionn_net.netem.proxy import LinkSpec, ShapingProxy
from ionn_net.planner.upload import UploadPlanner, get_planner
from ionn_net.planner.workload import PlanningContext, UploadPlan
from ionn_net.server import EdgeServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

#: The bound: from the manifest's acknowledgement to the first blob leaving.
FIRST_BYTE_S = 0.050
#: What a query of the model takes on the emulated device.
DEVICE_MS = 1000.0


@pytest.fixture(scope="module")
def small_model() -> Any:
    """A narrow MobileNetV2 (155 layers, 2 MB): ``ours`` plans it for far longer than
    50 ms, so a client that plans before it sends fails the bound."""
    import keras

    keras.utils.set_random_seed(2)
    return keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=0.35)


@pytest.fixture(scope="module")
def slowdown(small_model: Any) -> float:
    """A device that takes about a second per query: offloading pays over 4 Mbit/s (the
    input alone takes 220 ms), on a fast host as on a slow one."""
    return slowdown_for(small_model, DEVICE_MS)


def _input() -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (1, 96, 96, 3)).astype(np.float32)


@contextlib.asynccontextmanager
async def _ours_over_a_link(
    model: Any, cost_model: Any, tmp_path: Path, mbit: float, slowdown: float, **config: Any
) -> AsyncIterator[OffloadClient]:
    """A client planning with ``ours``, on a real server behind a shaping proxy of ``mbit``
    Mbit/s each way and 2 ms, its device ``slowdown`` times slower than this host."""
    link = LinkSpec(rate_bps=mbit * 1e6, delay_ms=2.0)
    options = ClientConfig(
        slowdown=slowdown, profile_cache=str(tmp_path / "p"), assumed_mbit=mbit, **config
    )
    async with (
        EdgeServer(store=tmp_path / "store", cost_model=cost_model) as server,
        ShapingProxy("127.0.0.1", server.port, up=link, down=link) as proxy,
        OffloadClient("127.0.0.1", proxy.port, model, planner="ours", config=options) as c,
    ):
        yield c


async def test_the_first_upload_byte_leaves_while_the_client_plans(
    small_model: Any, cost_model: Any, tmp_path: Path, slowdown: float
) -> None:
    x = _input()
    async with _ours_over_a_link(small_model, cost_model, tmp_path, 20.0, slowdown) as c:
        await c.wait_uploaded(timeout=120)
        result = await c.infer_detailed(x)
        timeline = c.upload_timeline
        # While a load runs the server's loader shares its CPU with the queries: answers
        # that slow teach the client nothing; once the load is over they do.
        state, ran = c.plan_state, sorted(c.plan_state.ready)
        slow_ms = 20 * sum(c.server_ms[n] for n in ran)
        before = state.learned.server_scale
        state.load_started()
        for _ in range(10):
            state.observe_round_trip(slow_ms / 1000, 0, 0, server_ms=slow_ms, ran=ran)
        assert state.learned.server_scale == before
        state.load_finished()
        for _ in range(10):
            state.observe_round_trip(slow_ms / 1000, 0, 0, server_ms=slow_ms, ran=ran)
        assert state.learned.server_scale > 2 * before
    assert timeline.ready_at is not None and timeline.first_byte_at is not None
    assert timeline.planned_at is not None
    delay = timeline.first_byte_delay_s
    assert delay is not None and 0 <= delay <= FIRST_BYTE_S, timeline
    # the bytes really overlapped planning: the first went up before the plan was known,
    # and the head start's blobs were sent (and, being useful, loaded: all layers offload)
    assert timeline.first_byte_at < timeline.planned_at, timeline
    assert timeline.head_start
    sent_head = {c.layer_blob[n][0] for n in timeline.head_start}
    assert sent_head <= c.uploaded
    assert result.offloaded
    np.testing.assert_allclose(
        result.output, small_model(x, training=False).numpy(), rtol=1e-4, atol=1e-5
    )


async def test_layers_the_server_holds_ready_serve_before_the_rest_is_planned(
    small_model: Any, cost_model: Any, tmp_path: Path, slowdown: float
) -> None:
    # A first session leaves the server with its first partitions ready; a second one (same
    # key, as after a move to a server that pre-migration filled, protocol.md §15.5.5)
    # activates a plan over them at once: its compile starts before `ours` has planned the
    # rest of the upload, not after.
    config = ClientConfig(
        slowdown=slowdown,
        profile_cache=str(tmp_path / "p"),
        assumed_mbit=20.0,
        session_key="ab" * 16,
    )
    async with EdgeServer(store=tmp_path / "store", cost_model=cost_model) as server:
        async with OffloadClient(
            "127.0.0.1", server.port, small_model, planner="ionn", config=config
        ) as first:
            while not first.plan_state.ready:
                await asyncio.sleep(0.01)
        async with OffloadClient(
            "127.0.0.1", server.port, small_model, planner="ours", config=config
        ) as second:
            # (an activation is on record once its compile is over, maybe after planning)
            for _ in range(6000):
                timeline = second.upload_timeline
                if timeline.strategy_planned_at is not None and timeline.activations:
                    break
                await asyncio.sleep(0.01)
            assert second.plan_state.ready, "the server kept no layer ready for the key"
            assert timeline.strategy_planned_at is not None and timeline.activations, timeline
            started, _ = timeline.activations[0]
            assert timeline.strategy_planned_at is not None
            assert started < timeline.strategy_planned_at, timeline


class _OursAfterTheFirstPartition(UploadPlanner):
    """``ours``, planning only once the client has sent a whole partition (or the upload
    ended, or 120 s passed): a device whose planner takes longer than a partition's
    upload, by construction rather than by this host's speed against the link's (the
    quick plan's first partition may hold most of the model)."""

    name = "ours"

    def __init__(self, client: list[OffloadClient]) -> None:
        self._client = client
        self._inner = get_planner("ours")

    def plan(self, ctx: PlanningContext) -> UploadPlan:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self._client:
                progress = self._client[0].last_progress
                if self._client[0].plan_state.uploaded_parts >= 1 or (progress and progress.done):
                    break
            time.sleep(0.02)
        return self._inner.plan(ctx)


async def test_the_server_loads_a_quick_plan_while_the_strategy_still_plans(
    small_model: Any,
    cost_model: Any,
    tmp_path: Path,
    slowdown: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # ClientConfig.plan_wait_s: past it, the upload starts on efficiency's plan, whose
    # partitions the server loads (and queries use) before `ours` has planned; its plan,
    # once known, replaces the partitions not sent yet.
    client: list[OffloadClient] = []

    def planners(name: str, **options: object) -> UploadPlanner:
        if name == "ours" and not options:
            return _OursAfterTheFirstPartition(client)
        return get_planner(name, **options)

    monkeypatch.setattr(planning, "get_planner", planners)
    x = _input()
    async with _ours_over_a_link(
        small_model, cost_model, tmp_path, 4.0, slowdown, plan_wait_s=0.0
    ) as c:
        client.append(c)
        await c.wait_uploaded(timeout=120)
        result = await c.infer_detailed(x)
        timeline = c.upload_timeline
        plan = c.upload_plan
    assert timeline.quick_plan == "efficiency", timeline
    assert timeline.planned_at is not None and timeline.strategy_planned_at is not None
    assert timeline.planned_at < timeline.strategy_planned_at, timeline
    assert timeline.loads and timeline.loads[0][0] < timeline.strategy_planned_at, timeline
    assert plan is not None and plan.strategy == "ours"  # (adopted before the end)
    assert result.offloaded
    np.testing.assert_allclose(
        result.output, small_model(x, training=False).numpy(), rtol=1e-4, atol=1e-5
    )
