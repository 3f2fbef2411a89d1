"""Public blobs beyond one server, and the server's own upkeep of its store.

* Two edge servers on one real redis-server: a blob published through the first is public
  on the second (its record lives in the store), which builds it without any upload.
* The library's client publishing its model (``ClientConfig(public=True)``): a second client
  of the same model uploads nothing.
* ``ionn-server --catalog DIR`` as a process: starts with a refused entry (logged, naming the
  file) and serves the rest; refuses to start on a directory that is not a catalog.
* Stale partial uploads are swept while the server runs (§14.5), not only at the store's open.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.helpers.small_models import export, model_pair
from tests.integration.hardening.tenant import Tenant, call

from ionn_net.aio import connect
from ionn_net.client import ClientConfig, OffloadClient
from ionn_net.planner.costmodel import ServerCostModel
from ionn_net.server import EdgeServer, ServerConfig
from ionn_net.store import DirectoryStore
from ionn_net.store_redis import RedisStore

pytestmark = [pytest.mark.timeout(300)]


async def publish(port: int) -> Tenant:
    """A tenant that uploads every blob of the mlp under ``public: true``."""
    conn = await connect("127.0.0.1", port)
    tenant = Tenant(conn)
    assert (await tenant.hello())["m"] == "welcome"
    head = {"m": "manifest", "model": tenant.digest, "public": True}
    assert (await call(conn, head, tenant.body))[0]["m"] == "manifest_ok"
    for sha, blob in tenant.builder.blobs.items():
        assert (await tenant.blob(sha, 0, blob))["complete"] is True
    return tenant


async def test_a_blob_published_on_one_server_is_public_on_another(redis_url: str) -> None:
    cost = ServerCostModel()
    async with (
        EdgeServer(store=RedisStore(redis_url), cost_model=cost) as first,
        EdgeServer(store=RedisStore(redis_url), cost_model=cost) as second,
    ):
        publisher = await publish(first.port)
        async with connect("127.0.0.1", second.port) as conn:
            other = Tenant(conn)
            await other.hello()
            held = await other.manifest()
            assert held["blobs_public"] == sorted(publisher.builder.blobs), held
            assert held["blobs_held"] == []
            assert (await other.load())["m"] == "load_ok"  # no byte uploaded to it
            await other.check_works()
        await publisher.conn.aclose()


@pytest.mark.slow
async def test_a_client_that_publishes_spares_the_next_one_its_upload(tmp_path: Path) -> None:
    base, _ = model_pair()
    x = np.random.default_rng(0).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
    cost = ServerCostModel()
    async with EdgeServer(cost_model=cost) as server:
        uploads = []
        for public in (True, False):
            config = ClientConfig(
                slowdown=50.0, profile_cache=str(tmp_path / "profiles"), public=public
            )
            async with OffloadClient("127.0.0.1", server.port, base, config=config) as client:
                await client.wait_uploaded(timeout=120)
                result = await client.infer_detailed(x)
                np.testing.assert_allclose(
                    result.output, base(x, training=False).numpy(), rtol=1e-4, atol=1e-5
                )
                uploads.append(client.stats["sent_bytes"])
                assert result.offloaded
    assert uploads[0] > 0 and uploads[1] == 0, uploads


async def test_stale_partial_uploads_are_swept_while_the_server_runs(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store", partial_ttl_s=0.5)
    config = ServerConfig(sweep_interval_s=0.2)
    async with (
        EdgeServer(store=store, config=config, cost_model=ServerCostModel()) as srv,
        connect("127.0.0.1", srv.port) as conn,
    ):
        tenant = Tenant(conn)
        await tenant.hello()
        await tenant.manifest()
        sha, blob = next(iter(tenant.builder.blobs.items()))
        assert (await tenant.blob(sha, 0, blob[:10]))["offset"] == 10
        assert (await tenant.manifest())["partial"] == {sha: 10}
        for _ in range(50):
            await asyncio.sleep(0.1)
            if not list((tmp_path / "store" / "partial").iterdir()):
                break
        assert (await tenant.manifest())["partial"] == {}  # expired: resume from 0


def _server(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "ionn-server"), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


@pytest.mark.slow
def test_ionn_server_serves_a_catalog_with_a_refused_entry(tmp_path: Path) -> None:
    base, tuned = model_pair()
    root = tmp_path / "catalog"
    export(base, root, name="base")
    digest = export(tuned, root, name="tuned")
    bad = root / "manifests" / f"{digest}.json"
    bad.write_bytes(bad.read_bytes()[:-1])  # no longer its digest: refused
    cost = tmp_path / "cost.json"
    cost.write_text(ServerCostModel().to_json())
    proc = _server("--catalog", str(root), "--cost-model", str(cost), "--catalog-warm", "none")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ionn-server listening on"), line
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert f"refusing {bad}" in err, err


def test_ionn_server_refuses_to_start_on_a_directory_that_is_not_a_catalog(
    tmp_path: Path,
) -> None:
    proc = _server("--catalog", str(tmp_path))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and out == ""
    assert err.strip().startswith("ionn-server: catalog") and "index.json" in err, err
    proc = _server("--catalog-warm", "not a spec!")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "catalog_warm: expected" in err, err
