"""OffloadClient.explain() and the client's word on not offloading, with a real server.

A device slower than the server offloads, and the explanation's segments add up to the
plan's prediction; a server the client believes slower than itself is never used, and
the client says so once at INFO, with the numbers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
import pytest

from ionn_net.client import ClientConfig, OffloadClient, PlanExplanation
from ionn_net.planner.costmodel import ServerCostModel
from ionn_net.planner.prior import PRIOR_FEATURES, LayerPrior
from ionn_net.server import EdgeServer, ServerConfig
from ionn_net.server_timing import TimingConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def prior(one_ms: float) -> LayerPrior:
    return LayerPrior(base=tuple(one_ms if f == "one" else 0.0 for f in PRIOR_FEATURES))


@pytest.fixture(scope="module")
def model() -> Any:
    import keras

    keras.utils.set_random_seed(5)
    return keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=0.35)


async def explained(
    model: Any, layer_ms: float, slowdown: float
) -> tuple[PlanExplanation, float | None]:
    """The explanation once the upload is over, and the latency the planner predicts now
    for the same plan (None if it would choose another one now)."""
    # timing off: the client plans with the prior's prediction, as chosen here
    config = ServerConfig(timing=TimingConfig(enabled=False))
    async with EdgeServer(config=config, cost_model=ServerCostModel(), prior=prior(layer_ms)) as s:
        cfg = ClientConfig(slowdown=slowdown)
        async with OffloadClient("127.0.0.1", s.port, model, config=cfg) as client:
            await client.wait_uploaded(120)
            x = np.zeros((1, 96, 96, 3), np.float32)
            deadline = time.monotonic() + 60
            found = client.explain()
            while found.partitions_left and time.monotonic() < deadline:
                await client.infer(x)
                found = client.explain()
            state = client.plan_state
            again = state.best_plan(state.active.ready, held=state.active.ready)
            same = again.segments == state.active.plan.segments
            return found, again.predicted_s * 1000.0 if same else None


def test_a_slow_device_offloads_and_the_explanation_adds_up(model: Any) -> None:
    found, planner_ms = asyncio.run(explained(model, 0.001, slowdown=100.0))
    assert found.offloads and found.why_local is None
    assert set(found.sources) == {"predicted"}  # the server's per-layer predictions
    assert planner_ms is not None, "the active plan is not the best one for what is held"
    assert found.predicted_ms == pytest.approx(planner_ms, rel=1e-6)  # what the planner charges
    server = [s for s in found.segments if s.location == "server"]
    assert server and all(s.server_ms < s.client_ms for s in server)
    assert "server" in found.line() and found.local_ms > found.predicted_ms


def test_a_server_no_faster_than_the_device_is_not_used_and_the_client_says_why(
    model: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ionn_net.client")
    found, _ = asyncio.run(explained(model, 50.0, slowdown=1.0))  # 50 ms per layer there
    assert not found.offloads
    assert found.why_local is not None and "not faster" in found.why_local
    said = [r.getMessage() for r in caplog.records if "not offloading" in r.getMessage()]
    assert said, "the client did not say why it runs everything itself"
    assert "ms compute" in said[0] and "whole model here" in said[0]
