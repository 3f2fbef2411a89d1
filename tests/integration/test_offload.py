"""End to end over real sockets: EdgeServer + OffloadClient with MobileNetV2.

The client is slowed 10x (ClientConfig.slowdown) so that offloading pays, and talks to
the server through the userspace shaping proxy at 40 Mbit/s so that the 14 MB upload
takes a few seconds and queries run while it is in progress.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.helpers.local_runs import record_local_runs

from ionn_net.client import ClientConfig, InferenceResult, OffloadClient
from ionn_net.netem.proxy import LinkSpec, ShapingProxy
from ionn_net.ops.hooks import ServerHooks
from ionn_net.server import EdgeServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

LINK = LinkSpec(rate_bps=40e6, delay_ms=1.0)


@pytest.fixture(scope="module")
def model() -> Any:
    import keras

    keras.utils.set_random_seed(1)
    return keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))


@pytest.fixture(scope="module")
def small_model() -> Any:
    """A narrow MobileNetV2 (2 MB of weights) for the tests about sessions, not speed."""
    import keras

    keras.utils.set_random_seed(2)
    return keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=0.35)


def inputs(n: int, side: int = 224) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, (1, side, side, 3)).astype(np.float32) for _ in range(n)]


# A ratio of two latencies of one run: a neighbour's burst of CPU during the late queries
# made it 0.64 against 0.6 in one of three full suites run on 2026-12-07 (0.47 usually).
@pytest.mark.flaky(reruns=1, reruns_delay=2)
async def test_queries_during_upload_are_correct_and_get_faster(
    model: Any, cost_model: Any, tmp_path: Path
) -> None:
    xs = inputs(30)
    expected = [model(x, training=False).numpy() for x in xs]
    # 20x slower than this machine: offloading the whole model then clearly pays even
    # though the 600 KB input crosses a 40 Mbit/s link (~120 ms).
    config = ClientConfig(slowdown=20.0, profile_cache=str(tmp_path / "profiles"))
    async with (
        EdgeServer(store=tmp_path / "store", cost_model=cost_model) as server,
        ShapingProxy("127.0.0.1", server.port, up=LINK, down=LINK) as proxy,
        OffloadClient("127.0.0.1", proxy.port, model, planner="ours", config=config) as client,
    ):
        results = [await client.infer_detailed(x) for x in xs]
        await client.wait_uploaded(timeout=120)
        # the steady latency once the upload is done: the best of three (the first query
        # on the final plan pays its slices' first calls: 203 ms against 159-163 here)
        late = [await client.infer_detailed(x) for x in xs[:3]]
    for got, want in zip(results + late, expected + expected[:3], strict=True):
        np.testing.assert_allclose(got.output, want, rtol=1e-4, atol=1e-5)
    assert not any(r.fallback for r in results + late)
    assert results[0].server_layers == 0  # nothing was uploaded yet
    assert all(r.offloaded for r in late)
    first, last = results[0].total_ms, min(r.total_ms for r in late)
    assert last < 0.6 * first, (first, [r.total_ms for r in late])


async def test_reconnect_uploads_nothing_twice(
    small_model: Any, cost_model: Any, tmp_path: Path
) -> None:
    model = small_model
    config = ClientConfig(
        slowdown=10.0, profile_cache=str(tmp_path / "profiles"), session_key="ab" * 16
    )
    async with EdgeServer(store=tmp_path / "store", cost_model=cost_model) as server:
        async with OffloadClient("127.0.0.1", server.port, model, config=config) as first:
            await first.wait_uploaded(timeout=120)
        assert first.uploaded and first.stats["sent_bytes"] > 0
        async with OffloadClient("127.0.0.1", server.port, model, config=config) as second:
            await second.wait_uploaded(timeout=120)
            result = await second.infer_detailed(inputs(1, 96)[0])
        # Nothing the server already holds is sent again (a layer the first plan left on
        # the client may still be uploaded now, once).
        assert not (second.uploaded & first.uploaded)
        assert second.stats["sent_bytes"] < 0.05 * first.stats["sent_bytes"]
        assert result.offloaded


class _QueryArrival(ServerHooks):
    """Server hooks that tell the test when a query's tensors reached the server, and that
    call ``on_query`` right then (on the server's loop, before the query runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()
        self.on_query: Callable[[], None] | None = None

    def received(self, message: str, nbytes: int) -> None:
        super().received(message, nbytes)
        if message == "query":
            if self.on_query is not None:
                self.on_query()
            self.arrived.set()


async def _query_cut_at_the_server(
    client: OffloadClient,
    xs: list[np.ndarray],
    hooks: _QueryArrival,
    sever: Callable[[], None],
    cut: Any,
) -> tuple[int, InferenceResult]:
    """Query until one reaches the server, whose arrival breaks the path at once (``sever``:
    before the query runs, so its answer can never come back), then ``cut()`` the rest: that
    query's server segment fails. Returns the index of that query's input and its result."""
    hooks.on_query = sever
    # Bounded: 90 s. After a slow first answer (0.6 s behind the upload on this 4 Mbit/s
    # link) the client plans locally until what it learned fades (half-life 5 s), so a
    # query may reach the server only some seconds later, perhaps after the upload.
    deadline = time.monotonic() + 90
    attempt = 0
    while time.monotonic() < deadline:
        i, attempt = attempt % len(xs), attempt + 1
        x = xs[i]
        hooks.arrived.clear()
        query = asyncio.ensure_future(client.infer_detailed(x))
        arrival = asyncio.ensure_future(hooks.arrived.wait())
        await asyncio.wait({query, arrival}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        arrival.cancel()
        if hooks.arrived.is_set():
            await cut()
            return i, await asyncio.wait_for(query, 60)
        await asyncio.wait_for(query, 60)  # ran on the client alone: try the next one
    raise AssertionError(f"no query reached the server; progress: {client.last_progress}")


async def test_server_closed_mid_upload_loses_no_query(
    small_model: Any, cost_model: Any, tmp_path: Path
) -> None:
    """The path to the server breaks while a query is on the server (after a query was
    offloaded during the upload): that query finishes locally (a fallback), the later ones
    run locally, and every query returns the model's output."""
    model = small_model
    xs = inputs(6, 96)
    expected = [model(x, training=False).numpy() for x in xs]
    slow = LinkSpec(rate_bps=4e6, delay_ms=1.0)
    # 40x: offloading pays as soon as the first partition is loaded (at 5x no query
    # offloaded before the upload ended on this machine, so nothing was tested).
    config = ClientConfig(slowdown=40.0, profile_cache=str(tmp_path / "p"), reconnect=False)
    hooks = _QueryArrival()
    server = await EdgeServer(cost_model=cost_model, hooks=hooks).start()
    proxy = await ShapingProxy("127.0.0.1", server.port, up=slow, down=slow).start()

    async def cut() -> None:
        await proxy.close()  # the path breaks first: the answer in flight is lost
        await server.close()

    try:
        async with OffloadClient("127.0.0.1", proxy.port, model, config=config) as client:
            before = await _query_until_offloaded(client, xs[0], timeout_s=120.0)
            progress = client.last_progress
            assert progress is not None and not progress.done, progress  # still uploading
            ran = record_local_runs(client)
            index, cut_query = await _query_cut_at_the_server(client, xs, hooks, proxy.sever, cut)
            failed = [s.layers for s in cut_query.segments if s.fallback]
            pieces = [client.runner.fallback_pieces(layers) for layers in failed]
            after = [await asyncio.wait_for(client.infer_detailed(x), 60) for x in xs]
            fallbacks = client.stats["fallbacks"]
    finally:
        await server.close()
        await proxy.close()
    np.testing.assert_allclose(before.output, expected[0], rtol=1e-4, atol=1e-5)
    assert cut_query.fallback, cut_query.segments
    # The failed segment ran on the local plan's chunk grid, never compiled whole (which
    # segment the cut hits varies: most runs span two chunks or more, some only one).
    for layers, cut_up in zip(failed, pieces, strict=True):
        assert all(p in ran for p in cut_up), (cut_up, ran)
        assert len(cut_up) == 1 or layers not in ran, (layers, ran)
    np.testing.assert_allclose(cut_query.output, expected[index], rtol=1e-4, atol=1e-5)
    assert fallbacks >= 1
    for result, want in zip(after, expected, strict=True):
        np.testing.assert_allclose(result.output, want, rtol=1e-4, atol=1e-5)
    assert not any(r.offloaded for r in after)


async def _query_until_offloaded(
    client: OffloadClient, x: np.ndarray, *, timeout_s: float
) -> InferenceResult:
    """Query until one answer used the server (fails after ``timeout_s``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = await asyncio.wait_for(client.infer_detailed(x), 60)
        if result.offloaded:
            return result
        assert loop.time() < deadline, f"no query offloaded; progress: {client.last_progress}"


async def test_a_running_query_joins_a_plan_that_becomes_active(
    small_model: Any, cost_model: Any, tmp_path: Path
) -> None:
    """Mid-query re-planning (planner.midquery): a query that started on the local plan
    switches, between two precompiled chunks, to the offloading plan activated while it
    ran, and still returns the model's output."""
    model = small_model
    x = inputs(1, 96)[0]
    want = model(x, training=False).numpy()
    config = ClientConfig(slowdown=20.0, profile_cache=str(tmp_path / "p"))
    async with (
        EdgeServer(store=tmp_path / "store", cost_model=cost_model) as server,
        OffloadClient("127.0.0.1", server.port, model, config=config) as client,
    ):
        await client.wait_uploaded(timeout=120)
        state = client.plan_state
        offloading = state.active
        assert offloading.plan.offloads
        local = state.local_plan()
        (whole,) = local.segments
        chunks = state.chunks_of(whole.layers)  # compiled at start, as layers were to come
        assert len(chunks) >= 2
        state.switch(local, frozenset(), {})
        run_local = client.runner.run_local
        calls: list[tuple[str, ...]] = []

        async def first_chunk_then_activate(layers: Any, tensors: Any, due: Any = None) -> Any:
            calls.append(tuple(layers))
            out = await run_local(layers, tensors, due)
            # as if a partition had just been loaded
            state.switch(offloading.plan, offloading.ready, {})
            return out

        client.runner.run_local = first_chunk_then_activate
        result = await client.infer_detailed(x)
    np.testing.assert_allclose(result.output, want, rtol=1e-4, atol=1e-5)
    assert result.replans == 1
    assert calls[0] == chunks[0]
    assert result.offloaded and not result.fallback
    ran = [n for s in result.segments for n in s.layers]
    assert set(ran) >= set(client.graph.order)  # every layer ran somewhere


async def test_blobs_above_the_peers_message_size_go_up_in_pieces(
    cost_model: Any, tmp_path: Path
) -> None:
    """VGG16's first dense layer (411 MB) is above the default MAX_MESSAGE_SIZE (256 MiB):
    the client sends such blobs in pieces at increasing offsets (protocol.md §10.5).
    Scaled down: a server accepting 1 MiB messages, a model with a 4 MiB dense layer."""
    import keras

    from ionn_net.config import Limits
    from ionn_net.server import ServerConfig

    keras.utils.set_random_seed(3)
    inp = keras.Input((1024,))
    hidden = keras.layers.Dense(1024, activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Dense(10)(hidden))
    x = np.random.default_rng(0).standard_normal((1, 1024)).astype(np.float32)
    want = model(x, training=False).numpy()
    config = ClientConfig(slowdown=50.0, profile_cache=str(tmp_path / "p"))
    server_config = ServerConfig(limits=Limits(max_message_size=1 << 20))
    async with (
        EdgeServer(store=tmp_path / "store", cost_model=cost_model, config=server_config) as srv,
        OffloadClient("127.0.0.1", srv.port, model, config=config) as client,
    ):
        big = max(client.blobs, key=lambda d: len(client.blobs[d]))
        assert len(client.blobs[big]) > 4 * (1 << 20)
        await client.wait_uploaded(timeout=120)
        result = await client.infer_detailed(x)
        assert big in client.uploaded and srv.store.has(big)
        assert client.stats["reconnects"] == 0
    np.testing.assert_allclose(result.output, want, rtol=1e-4, atol=1e-5)


# One rerun, as the suite's other timing-ratio tests: under a full suite's load the server's
# answers measured 2x+ its predictions for five queries in a row once in many runs.
@pytest.mark.flaky(reruns=1, reruns_delay=2)
async def test_a_client_that_stopped_offloading_on_bad_measurements_comes_back(
    small_model: Any, cost_model: Any, tmp_path: Path
) -> None:
    """Once every query runs locally nothing measures the server any more: what was
    learned must fade back to the priors so that the client tries the server again
    (ionn_net.planner.learned; seen in ionn-bench after one slow answer during a load)."""
    config = ClientConfig(slowdown=10.0, profile_cache=str(tmp_path / "profiles"))
    async with (
        EdgeServer(store=tmp_path / "store", cost_model=cost_model) as server,
        OffloadClient("127.0.0.1", server.port, small_model, config=config) as client,
    ):
        await client.wait_uploaded(timeout=120)
        x = inputs(1, 96)[0]
        assert (await client.infer_detailed(x)).offloaded
        # A spell of answers 20x slower than predicted and half a second late (the server
        # busy compiling), fed through the client's own measuring path:
        state = client.plan_state
        ran = sorted(state.ready)
        slow_ms = 20 * sum(client.server_ms[n] for n in ran)
        for _ in range(20):
            state.observe_round_trip(slow_ms / 1000 + 0.5, 0, 0, server_ms=slow_ms, ran=ran)
        learned = state.learned
        await client.replan()
        assert not state.active.plan.server_layers  # every layer on the client now
        assert not (await client.infer_detailed(x)).offloaded
        learned.half_life_s = 0.3  # fade quickly (5 s by default)
        for _ in range(100):  # bounded: 10 s
            if state.active.plan.server_layers:
                break
            await asyncio.sleep(0.1)
        result = await client.infer_detailed(x)
        assert result.offloaded  # it tried the server again, which is fast in truth
        # and its answers bring the scale back down (bounded: ten queries, for slow ones on
        # a shared machine; with the 20x spell learned for good it stays ~20)
        for _ in range(10):
            if learned.server_scale < 5.0:
                break
            await client.infer_detailed(x)
        assert learned.server_scale < 5.0


async def test_upload_is_paced_at_the_configured_rate(
    small_model: Any, cost_model: Any, tmp_path: Path
) -> None:
    """ClientConfig.transport reaches the connection: at a given pacing rate the upload
    cannot leave faster than gain x rate even over loopback (load only slows it), and
    queries still run. The default config paces at an estimated rate."""
    from ionn_net.aio import PacingConfig, TransportOptions

    assert ClientConfig().transport.pacing == PacingConfig()
    rate = 8e6
    paced = TransportOptions(pacing=PacingConfig(rate_bps=rate))
    config = ClientConfig(slowdown=5.0, profile_cache=str(tmp_path / "p"), transport=paced)
    x = inputs(1, 96)[0]
    async with EdgeServer(cost_model=cost_model) as server:
        client = OffloadClient("127.0.0.1", server.port, small_model, config=config)
        async with client:
            started = asyncio.get_running_loop().time()
            conn = client.connection
            assert conn is not None and conn.pacer is not None
            result = await client.infer_detailed(x)
            await client.wait_uploaded(timeout=120)
            elapsed = asyncio.get_running_loop().time() - started
            wire = conn.bytes_sent  # (compressed frames are shorter than the blobs' bytes)
            assert client.last_progress is not None
            assert client.last_progress.pacing_mbit == pytest.approx(0.95 * rate / 1e6)
        assert client.stats["sent_bytes"] > 1e6
        floor = wire * 8 / (PacingConfig().gain * rate)
        # minus the bucket's burst and one chunk the first release may carry
        assert elapsed > floor - 0.05, (elapsed, floor)
        np.testing.assert_allclose(
            result.output, small_model(x, training=False).numpy(), 1e-4, 1e-5
        )
        unpaced = ClientConfig(profile_cache=str(tmp_path / "p"), transport=TransportOptions())
        async with OffloadClient("127.0.0.1", server.port, small_model, config=unpaced) as other:
            assert other.connection is not None and other.connection.pacer is None


def test_client_config_rejects_a_transport_that_is_not_transport_options() -> None:
    from ionn_net.errors import ConfigError

    with pytest.raises(ConfigError, match="transport: expected TransportOptions"):
        ClientConfig(transport={"pacing": None})  # type: ignore[arg-type]


# Timing-sensitive on a shared 2-core machine (RELIABILITY.md, "Tests given one rerun"):
# a broken guarantee fails both runs.
@pytest.mark.flaky(reruns=1, reruns_delay=2)
async def test_queries_during_the_upload_do_not_make_the_link_look_slower(
    model: Any, cost_model: Any, tmp_path: Path
) -> None:
    """The client measures the link from what the connection carried while each blob went
    up, queries included: offloaded queries overtake the blob and slow it, but a plan's
    tensor transfers see the whole link, not the upload's share of it. (Measured from the
    blobs alone, the link looked about half as fast here.)"""
    from ionn_net.aio import PacingConfig, TransportOptions

    rate = 16e6
    slow = LinkSpec(rate_bps=rate, delay_ms=1.0)
    config = ClientConfig(
        slowdown=50.0,  # offloading pays as soon as layers land: 600 KB inputs load the link
        profile_cache=str(tmp_path / "p"),
        assumed_mbit=rate / 1e6,
        transport=TransportOptions(pacing=PacingConfig(rate_bps=rate)),
    )
    xs = inputs(3)
    async with (
        EdgeServer(cost_model=cost_model) as server,
        ShapingProxy("127.0.0.1", server.port, up=slow, down=slow) as proxy,
        OffloadClient("127.0.0.1", proxy.port, model, config=config) as client,
    ):
        offloaded_during_upload = 0
        for i in range(300):
            if client.last_progress is not None and client.last_progress.done:
                break
            result = await client.infer_detailed(xs[i % 3])
            offloaded_during_upload += result.offloaded
        await client.wait_uploaded(timeout=180)
        measured = client.link.bandwidth * 8
    assert offloaded_during_upload >= 5
    # 15.3 Mbit/s measured so, 10.7 from the blobs alone
    assert measured >= 0.8 * 0.95 * rate, (measured, offloaded_during_upload)
