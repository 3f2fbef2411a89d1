"""A server segment that fails runs here on the chunks the local plan compiled
(QueryRunner.fallback_pieces): compiled whole, a long segment cost seconds of tracing first
(3.4 s for 141 layers of ResNet50, a query in flight when its client moved).

No server listens, so every server segment fails (not connected) deterministically; the
plan is switched to by hand with a server segment spanning three chunks of the grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.helpers.local_runs import record_local_runs
from tests.helpers.peered import free_port

from ionn_net.client import ClientConfig, OffloadClient
from ionn_net.planner.execution import ExecutionPlan, Segment

pytestmark = [pytest.mark.timeout(300)]


async def test_a_failed_server_segment_runs_on_the_local_chunk_grid(tmp_path: Path) -> None:
    import keras

    keras.utils.set_random_seed(3)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=0.35)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 96, 96, 3)).astype(np.float32)
    want = model(x, training=False).numpy()
    # A device of 1 ms per layer: seven chunks of about 20 ms (planner.midquery), however
    # fast this host is (a profile measured here gave three on a fast one).
    device_ms = {layer.name: 1.0 for layer in model.layers}
    config = ClientConfig(device_ms=device_ms, profile_cache=str(tmp_path / "p"))
    async with OffloadClient("127.0.0.1", free_port(), model, config=config) as client:
        order = client.graph.order
        grid = client.runner.fallback_pieces(tuple(order))
        assert len(grid) >= 5, grid  # the local plan's chunks
        # from the middle of the second chunk to the middle of the fourth
        start = order.index(grid[1][len(grid[1]) // 2])
        end = order.index(grid[3][len(grid[3]) // 2])
        server = tuple(order[start:end])
        segments = (
            Segment("client", tuple(order[:start])),
            Segment("server", server),
            Segment("client", tuple(order[end:])),
        )
        plan = ExecutionPlan(segments=segments, predicted_s=0.01, breakdown={})
        client.plan_state.switch(plan, frozenset(server), {})
        ran = record_local_runs(client)
        result = await client.infer_detailed(x)
    np.testing.assert_allclose(result.output, want, rtol=1e-4, atol=1e-5)
    assert result.fallback and [s.layers for s in result.segments if s.fallback] == [server]
    pieces = client.runner.fallback_pieces(server)
    assert len(pieces) == 3 and pieces[1] == grid[2], pieces  # the middle one compiled already
    assert [r for r in ran if set(r) <= set(server)] == list(pieces), ran
