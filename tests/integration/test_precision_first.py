"""Precision-first upload end to end (protocol.md §10.12): EdgeServer + OffloadClient over
real sockets with a narrow MobileNetV2 (2 MB of weights, random).

* The end state is exact: after the last refinement every result equals local execution,
  and the server holds every layer's exact blob (rebuilt from the stages and checked
  against the blob's SHA-256), seen through ``have`` on a second connection.
* While the server holds only base stages (its byte budget admits the bases, not the
  refinements), default queries run approximately and say so, exact queries run those
  layers here, and mid-query re-planning joins a plan on base layers only for a query that
  may be approximate.
* A connection cut during the refinements resumes from what the server holds: no stage is
  sent twice, and the upload still ends exact.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.helpers.device import slowdown_for

from ionn_net.aio import connect
from ionn_net.client import ClientConfig, OffloadClient
from ionn_net.client.session import handshake
from ionn_net.messages import Have, HaveOk, Manifest, ManifestOk, parse_reply
from ionn_net.server import EdgeServer, ServerConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SIDE = 96


@pytest.fixture(scope="module")
def model() -> Any:
    import keras

    keras.utils.set_random_seed(3)
    return keras.applications.MobileNetV2(weights=None, input_shape=(SIDE, SIDE, 3), alpha=0.35)


@pytest.fixture(scope="module")
def slowdown(model: Any) -> float:
    """A device that takes about two seconds per query: every layer's upload pays, the
    classifier's 1.3 M weights included, on a fast host as on a slow one (at a fixed 20x
    a host three times faster left six blobs not worth sending)."""
    return slowdown_for(model, 2000.0)


def inputs(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, (1, SIDE, SIDE, 3)).astype(np.float32) for _ in range(n)]


def local(model: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x, training=False))


async def held_blobs(port: int, key: str, client: OffloadClient) -> frozenset[str]:
    """What the server says this session holds of the client's model (``have``)."""
    async with connect("127.0.0.1", port) as conn:
        await handshake(conn, key, None, 1 << 28)
        manifest = Manifest(model=client.model_digest, body_len=len(client.manifest_body))
        head, _ = await conn.request(manifest.to_head(), client.manifest_body)
        parse_reply(head, ManifestOk)
        head, _ = await conn.request(Have(model=client.model_digest).to_head(), b"")
        return frozenset(parse_reply(head, HaveOk).holdings.blobs_held)


@pytest.mark.parametrize("precision", ["8bit-first", "16bit-first"])
async def test_the_upload_ends_exact_and_every_result_equals_local_execution(
    model: Any, cost_model: Any, tmp_path: Path, slowdown: float, precision: str
) -> None:
    xs = inputs(4)
    key = "cd" * 16
    config = ClientConfig(
        slowdown=slowdown, profile_cache=str(tmp_path / "p"), precision=precision, session_key=key
    )
    async with (
        EdgeServer(cost_model=cost_model) as server,
        OffloadClient("127.0.0.1", server.port, model, config=config) as client,
    ):
        early = [await client.infer_detailed(x) for x in xs]
        await client.wait_uploaded(timeout=120)
        assert client.plan_state.base == frozenset()
        late = [await client.infer_detailed(x) for x in xs]
        held = await held_blobs(server.port, key, client)
    assert client.upload_plan is not None and client.upload_plan.precision == precision
    staged = {d for d, _ in client.layer_blob.values() if d is not None}
    assert staged <= held  # every exact blob rebuilt, its SHA-256 checked, and held
    for x, result in zip(xs, late, strict=True):
        assert result.exact and result.precision == "exact" and result.offloaded
        np.testing.assert_array_equal(result.output, local(model, x))
    for x, result in zip(xs, early, strict=True):
        tolerance = 0.0 if result.exact else 0.05 * np.abs(local(model, x)).max()
        np.testing.assert_allclose(result.output, local(model, x), rtol=1e-5, atol=tolerance)


def _bases_only_budget(model: Any, precision: str) -> int:
    """Bytes of every base stage and every whole blob: a session budget that admits them
    and no refinement (each reserves at least its exact blob's size)."""
    from ionn_net.client.prepare import prepare_model

    prepared = prepare_model(model, ClientConfig(precision=precision), chunked=False)
    bases = sum(len(layer.data[0]) for layer in prepared.staged.values())
    whole = sum(
        size
        for name, (digest, size) in prepared.layer_blob.items()
        if digest is not None and name not in prepared.staged
    )
    return bases + whole + 1024


@contextlib.asynccontextmanager
async def bases_only(
    model: Any, cost_model: Any, tmp_path: Path, slowdown: float
) -> AsyncIterator[OffloadClient]:
    """A precision-first client whose server holds its layers at base precision only."""
    precision = "8bit-first"
    config = ClientConfig(
        slowdown=slowdown, profile_cache=str(tmp_path / "p"), precision=precision, reconnect=False
    )
    server_config = ServerConfig(max_bytes_per_session=_bases_only_budget(model, precision))
    async with (
        EdgeServer(cost_model=cost_model, config=server_config) as server,
        OffloadClient("127.0.0.1", server.port, model, config=config) as client,
    ):
        state = client.plan_state
        for _ in range(600):  # the bases go up and load, then the first refinement is refused
            done = state.partitions and state.loaded_parts == len(state.partitions)
            if done and state.base and state.active.plan.offloads:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        assert state.active.plan.server_layers & state.base
        yield client
        assert state.base, "the budget admitted a refinement"


async def _join_after_first_chunk(client: OffloadClient, x: np.ndarray, *, exact: bool) -> Any:
    """Run a query that starts on the local plan while the offloading plan becomes active
    after its first precompiled chunk (as if a load had just finished)."""
    state = client.plan_state
    offloading = state.active
    local_plan = state.local_plan()
    (whole,) = local_plan.segments
    assert len(state.chunks_of(whole.layers)) >= 2
    state.switch(local_plan, frozenset(), {})
    run_local = client.runner.run_local

    async def first_chunk_then_activate(layers: Any, tensors: Any, due: Any = None) -> Any:
        out = await run_local(layers, tensors, due)
        state.switch(offloading.plan, offloading.ready, {})
        return out

    client.runner.run_local = first_chunk_then_activate
    try:
        return await client.infer_detailed(x, exact=exact)
    finally:
        client.runner.run_local = run_local
        state.switch(offloading.plan, offloading.ready, {})


async def test_while_the_server_holds_only_bases_exact_queries_run_here(
    model: Any, cost_model: Any, tmp_path: Path, slowdown: float
) -> None:
    """Default queries run on the layers at base and say so; exact queries run those layers
    here. Mid-query re-planning (planner.midquery) joins a plan on base layers for a query
    that may be approximate, and never for an exact one."""
    x = inputs(1)[0]
    want = local(model, x)
    tolerance = 0.05 * np.abs(want).max()
    async with bases_only(model, cost_model, tmp_path, slowdown) as client:
        approx = await client.infer_detailed(x)
        exact = await client.infer_detailed(x, exact=True)
        base = client.plan_state.base
        joined = await _join_after_first_chunk(client, x, exact=False)
        kept = await _join_after_first_chunk(client, x, exact=True)
    assert approx.offloaded and not approx.exact and approx.precision == "8bit"
    np.testing.assert_allclose(approx.output, want, rtol=0, atol=tolerance)
    assert exact.exact and exact.precision == "exact"
    ran_here = {n for s in exact.segments if s.location == "client" for n in s.layers}
    assert ran_here >= base  # the layers at base ran on this device
    np.testing.assert_array_equal(exact.output, want)
    assert joined.replans == 1 and joined.offloaded and not joined.exact
    np.testing.assert_allclose(joined.output, want, rtol=0, atol=tolerance)
    assert kept.replans == 0 and not kept.offloaded and kept.exact
    np.testing.assert_array_equal(kept.output, want)


async def test_a_cut_during_the_refinements_resumes_without_sending_a_stage_twice(
    model: Any, cost_model: Any, tmp_path: Path, slowdown: float
) -> None:
    config = ClientConfig(
        slowdown=slowdown, profile_cache=str(tmp_path / "p"), precision="16bit-first"
    )
    cut: list[float] = []
    holder: list[OffloadClient] = []
    totals: list[int] = []

    def on_progress(p: Any) -> None:
        totals.append(p.total_bytes)
        client = holder[0]
        state = client.plan_state
        rebuilt = [n for n in state.base if client.layer_blob[n][0] in state.held_blobs]
        if not cut and rebuilt:  # a refinement is held, its layer not refined yet
            conn = client.connection
            assert conn is not None
            cut.append(p.sent_bytes)
            conn.abort()  # mid-refinements: some are held, the rest is not

    async with EdgeServer(cost_model=cost_model) as server:
        client = OffloadClient(
            "127.0.0.1", server.port, model, config=config, on_progress=on_progress
        )
        holder.append(client)
        async with client:
            await client.wait_uploaded(timeout=180)
            x = inputs(1)[0]
            result = await client.infer_detailed(x)
    assert cut, "the upload never reached its refinements"
    assert client.stats["reconnects"] >= 1
    assert client.plan_state.base == frozenset()
    assert result.exact and result.offloaded
    np.testing.assert_array_equal(result.output, local(model, x))
    # every stage went up once (what the server held at the cut was not sent again)
    assert client.stats["sent_bytes"] <= max(totals), (client.stats["sent_bytes"], max(totals))
