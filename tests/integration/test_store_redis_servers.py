"""Edge servers of one site sharing a store on a real redis-server, as real processes.

Server A (the ``ionn-server`` console script, ``--store redis://...``) receives a session's
upload in 1 MiB pieces, each acknowledged by ``blob_ok``, and is SIGKILLed while the next
piece is half sent. Server B, started on the same Redis, reports every acknowledged byte to
the same session key (the complete blob held, the partial one at least at its acknowledged
offset), takes the rest of the upload and answers a query. Server C, running beside B,
holds every layer B verified: it loads and answers with no blob byte sent to it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.helpers.manifests import ManifestBuilder
from tests.helpers.redis_server import RedisServer
from tests.integration.hardening.tenant import Tenant

from ionn_net.aio import connect
from ionn_net.planner.costmodel import ServerCostModel
from ionn_net.store_redis import RedisStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PIECE = 1 << 20
IN, HIDDEN, WIDE, OUT = 512, 2048, 1024, 6


def wide_mlp() -> tuple[dict[str, Any], ManifestBuilder]:
    """x(512) -> Dense(2048, relu) -> Dense(1024, relu) -> Dense(6): blobs of 4.2, 8.4 and
    0.02 MB, so they span several 4 MiB chunks and several 1 MiB pieces."""
    rng = np.random.default_rng(5)
    b = ManifestBuilder(name="wide")
    x = b.input("x", [IN])
    h = x
    for name, n_in, n_out, act in (
        ("d1", IN, HIDDEN, "relu"),
        ("d2", HIDDEN, WIDE, "relu"),
        ("d3", WIDE, OUT, "linear"),
    ):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        h = b.add(
            name,
            "Dense",
            {"units": n_out, "activation": act},
            [h],
            [w, rng.standard_normal(n_out).astype(np.float32)],
        )
    return b.obj([h]), b


def reference(builder: ManifestBuilder, x: np.ndarray) -> np.ndarray:
    h = x.astype(np.float64)
    for name in ("d1", "d2", "d3"):
        w, bias = builder.arrays[name]
        h = h @ w + bias
        if name != "d3":
            h = np.maximum(h, 0.0)
    return h


def start_server(store: str, cost_file: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ionn-server"),
            *("--port", "0", "--store", store, "--cost-model", str(cost_file)),
            *("--log-level", "WARNING"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on" in line, line
    return proc, int(line.rsplit(":", 1)[1])


def stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(10)


async def query(tenant: Tenant, x: np.ndarray) -> np.ndarray:
    reply = await tenant.query(x)
    assert reply["m"] == "result", reply
    out: np.ndarray = reply["values"]["d3:0"]
    return out


async def upload_until(tenant: Tenant, sha: str, blob: bytes, start: int, stop_at: int) -> int:
    """Send ``blob[start:stop_at]`` in acknowledged pieces; returns the acknowledged offset."""
    offset = start
    while offset < stop_at:
        reply = await tenant.blob(sha, offset, blob[offset : min(stop_at, offset + PIECE)])
        assert reply["m"] == "blob_ok", reply
        offset = int(reply["offset"])
    return offset


async def killed_mid_upload(url: str, cost: Path, session: str, built: Any) -> dict[str, int]:
    """Server A: the first blob whole and 5 MiB of the second, in acknowledged pieces, then
    SIGKILL while the next piece is half sent. Returns the acknowledged offsets."""
    (d1, blob1), (d2, blob2), _ = built[1].blobs.items()
    a, port = start_server(url, cost)
    try:
        conn = await connect("127.0.0.1", port)
        tenant = Tenant(conn, session=session, built=built)
        assert (await tenant.hello())["m"] == "welcome"
        assert (await tenant.manifest())["m"] == "manifest_ok"
        acked = {d1: await upload_until(tenant, d1, blob1, 0, len(blob1))}
        acked[d2] = await upload_until(tenant, d2, blob2, 0, 5 * PIECE)
        head = {"m": "blob", "model": tenant.digest, "sha256": d2, "size": len(blob2)}
        stream = await conn.open_stream({**head, "offset": acked[d2], "body_len": PIECE})
        await stream.send_data(blob2[acked[d2] : acked[d2] + PIECE // 2], end_stream=False)
        await asyncio.sleep(0.3)
        a.send_signal(signal.SIGKILL)  # mid-upload, mid-message: no FIN, no clean close
        a.wait(10)
        conn.abort()
    finally:
        stop(a)
    assert acked == {d1: len(blob1), d2: 5 * PIECE}
    return acked


async def resumed_elsewhere(port: int, session: str, built: Any, acked: dict[str, int]) -> None:
    """Server B: the same session key finds every acknowledged byte, sends the rest."""
    builder = built[1]
    (d1, _), (d2, blob2), (d3, blob3) = builder.blobs.items()
    async with connect("127.0.0.1", port) as conn:
        tenant = Tenant(conn, session=session, built=built)
        await tenant.hello()
        held = await tenant.manifest()
        assert held["blobs_held"] == [d1], held
        resume = held["partial"][d2]
        assert acked[d2] <= resume <= acked[d2] + PIECE // 2, held
        await upload_until(tenant, d2, blob2, resume, len(blob2))
        await upload_until(tenant, d3, blob3, 0, len(blob3))
        assert (await tenant.load())["m"] == "load_ok"
        x = np.random.default_rng(1).standard_normal((1, IN)).astype(np.float32)
        got = await query(tenant, x)
        np.testing.assert_allclose(got, reference(builder, x), rtol=1e-4, atol=1e-5)


async def served_without_upload(port: int, session: str, built: Any) -> None:
    """Server C: every blob held for the session, loaded and queried with no blob sent."""
    builder = built[1]
    async with connect("127.0.0.1", port) as conn:
        tenant = Tenant(conn, session=session, built=built)
        await tenant.hello()
        held = await tenant.manifest()
        assert sorted(held["blobs_held"]) == sorted(builder.blobs), held
        assert held["partial"] == {}
        loaded = await tenant.load()  # no blob message at all on this connection
        assert loaded["m"] == "load_ok", loaded
        x = np.random.default_rng(2).standard_normal((1, IN)).astype(np.float32)
        got = await query(tenant, x)
        np.testing.assert_allclose(got, reference(builder, x), rtol=1e-4, atol=1e-5)
    async with connect("127.0.0.1", port) as conn:
        other = Tenant(conn, built=built)  # another tenant on C sees none of it (§14.5)
        await other.hello()
        assert (await other.manifest())["blobs_held"] == []


async def test_a_site_shares_verified_blobs_and_loses_nothing_acknowledged(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    cost = tmp_path / "cost.json"
    cost.write_text(ServerCostModel().to_json())
    built = wide_mlp()
    session = os.urandom(16).hex()
    acked = await killed_mid_upload(own_redis.url(), cost, session, built)
    d1 = next(iter(built[1].blobs))
    assert RedisStore(own_redis.url()).get(d1) == built[1].blobs[d1]  # verified on read
    b, port_b = start_server(own_redis.url(), cost)
    try:
        await resumed_elsewhere(port_b, session, built, acked)
        c, port_c = start_server(own_redis.url(), cost)  # beside B: two servers, one store
        try:
            await served_without_upload(port_c, session, built)
        finally:
            stop(c)
    finally:
        stop(b)
