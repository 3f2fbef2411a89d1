"""Handoff under attack (protocol.md §15): forged, expired, replayed and out-of-scope grants, a
previous server that sends bytes that do not match, and one killed mid-transfer.

Two real EdgeServers are peers on loopback (the previous one, A, is a real ``ionn-server`` process
where it gets killed). Every test asserts the defense (the request is refused with its typed
code and nothing is stored or revealed) AND that well-behaved sessions on both servers, set up
before the attack, still get correct answers afterwards; where the attacker is a server, the
client it betrayed finishes by uploading, as always, and its model answers correctly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.helpers.manifests import ManifestBuilder
from tests.integration.hardening.tenant import IN, Tenant, call, mlp

from ionn_net.aio import ServerStream, connect, serve
from ionn_net.handoff import HandoffConfig, stage_tag
from ionn_net.netem.proxy import LinkSpec, ShapingProxy
from ionn_net.planner.costmodel import ServerCostModel
from ionn_net.server import EdgeServer, ServerConfig

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def name(port: int) -> str:
    return f"127.0.0.1:{port}"


def config(peers: Mapping[str, str], **handoff: Any) -> ServerConfig:
    return ServerConfig(handoff=HandoffConfig(peers=peers, **handoff))


@contextlib.asynccontextmanager
async def pair(
    store_a: Path | None = None, **handoff: Any
) -> AsyncIterator[tuple[EdgeServer, EdgeServer]]:
    """Two peered servers; A keeps its blobs in the directory ``store_a`` when given."""
    pa, pb = free_port(), free_port()
    peers = {name(pa): name(pa), name(pb): name(pb)}
    cost = ServerCostModel()
    async with (
        EdgeServer(port=pa, config=config(peers, **handoff), cost_model=cost, store=store_a) as a,
        EdgeServer(port=pb, config=config(peers, **handoff), cost_model=cost) as b,
    ):
        yield a, b


@contextlib.asynccontextmanager
async def tenant(port: int, session: str | None = None, built: Any = None) -> AsyncIterator[Tenant]:
    async with connect("127.0.0.1", port) as conn:
        yield Tenant(conn, session, built)


async def grant(t: Tenant, ttl_s: int = 600) -> str:
    head, _ = await call(t.conn, {"m": "grant", "model": t.digest, "ttl_s": ttl_s})
    assert head["m"] == "grant_ok", head
    return str(head["grant"])


async def fetch(t: Tenant, source: str, token: str, blobs: list[str] | None = None) -> Any:
    head = {"m": "fetch", "model": t.digest, "source": source, "grant": token,
            "blobs": blobs if blobs is not None else list(t.builder.blobs),
            "deadline_ms": 30_000}  # fmt: skip
    reply, _ = await call(t.conn, head, timeout=60.0)
    return reply


async def held(t: Tenant) -> list[str]:
    head, _ = await call(t.conn, {"m": "have", "model": t.digest})
    return list(head["blobs_held"])


@contextlib.asynccontextmanager
async def bystanders(a: EdgeServer, b: EdgeServer) -> AsyncIterator[list[Tenant]]:
    """Well-behaved tenants on both servers, set up before the attack; checked after."""
    async with tenant(a.port, built=mlp(5)) as on_a, tenant(b.port, built=mlp(6)) as on_b:
        await on_a.setup()
        await on_b.setup()
        yield [on_a, on_b]
        for t in (on_a, on_b):
            await t.check_works()


def forgeries(token: str) -> list[str]:
    prefix, payload, mac = token.split(".")
    doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = []
    for change in ({"uses": 10_000}, {"exp": doc["exp"] + 86_400}, {"session": "0" * 32}):
        text = json.dumps({**doc, **change}, sort_keys=True, separators=(",", ":")).encode()
        forged.append(f"{prefix}.{base64.urlsafe_b64encode(text).rstrip(b'=').decode()}.{mac}")
    forged += [f"{prefix}.{payload}.{mac[::-1]}", f"{prefix}.{payload}", "x" * 1024]
    return forged


async def test_forged_grants_fetch_nothing_and_leave_the_genuine_one_intact() -> None:
    async with pair(grant_uses=1) as (a, b), bystanders(a, b):
        key = os.urandom(16).hex()
        async with tenant(a.port, key) as on_a, tenant(b.port, key) as on_b:
            await on_a.setup()
            token = await grant(on_a)
            await on_b.hello()
            await on_b.manifest()
            for forged in forgeries(token):
                reply = await fetch(on_b, name(a.port), forged)
                assert reply["source_error"] == "bad_grant", (forged[:40], reply)
                assert reply["fetched"] == [] and await held(on_b) == []
            assert a.handoff.stats["redeemed"] == 0
            reply = await fetch(on_b, name(a.port), token)  # its single use is still there
            assert sorted(reply["fetched"]) == sorted(on_a.builder.blobs)
            assert (await on_b.load())["m"] == "load_ok"
            await on_b.check_works()


async def test_expired_and_replayed_grants_are_refused() -> None:
    async with pair(grant_uses=1) as (a, b), bystanders(a, b):
        key = os.urandom(16).hex()
        async with tenant(a.port, key) as on_a:
            await on_a.setup()
            short, token = await grant(on_a, ttl_s=1), await grant(on_a)
        await asyncio.sleep(2.1)  # the expiry is in whole seconds
        async with tenant(b.port, key) as on_b:
            await on_b.hello()
            await on_b.manifest()
            reply = await fetch(on_b, name(a.port), short)
            assert reply["source_error"] == "grant_expired" and await held(on_b) == []
            reply = await fetch(on_b, name(a.port), token)  # its single use
            assert sorted(reply["fetched"]) == sorted(on_a.builder.blobs)
        # A replay: B's peer link is gone (as after a broken backhaul), so the next fetch
        # redeems the grant again on a new one.
        await b.handoff.links.close()
        async with tenant(b.port, key) as again:
            await again.hello()
            await again.manifest()
            reply = await fetch(again, name(a.port), token, [])
            assert reply["source_error"] == "grant_used_up", reply
        assert a.handoff.stats["redeemed"] == 1


async def test_a_grant_serves_only_its_model_and_its_blobs() -> None:
    async with pair() as (a, b), bystanders(a, b) as (victim_a, _):
        key = os.urandom(16).hex()
        async with tenant(a.port, key) as on_a, tenant(a.port, key, mlp(7)) as other_model:
            await on_a.setup()
            await other_model.hello()
            await other_model.manifest()
            token = await grant(on_a)
            async with tenant(b.port, key, mlp(7)) as on_b:
                await on_b.hello()
                await on_b.manifest()
                reply = await fetch(on_b, name(a.port), token)  # a grant of another model
                assert reply["source_error"] == "out_of_scope" and await held(on_b) == []
            # On a redeemed peer connection, another tenant's blob stays out of reach.
            async with connect("127.0.0.1", a.port) as peer:
                await Tenant(peer).hello()
                head = {"m": "redeem", "grant": token, "model": on_a.digest, "tag": stage_tag(key)}
                assert (await call(peer, head))[0]["m"] == "redeem_ok"
                for sha in victim_a.builder.blobs:
                    pull = {"m": "pull", "model": on_a.digest, "sha256": sha, "offset": 0,
                            "length": 16}  # fmt: skip
                    reply, body = await call(peer, pull)
                    assert reply["code"] == "out_of_scope" and body == b""


def _corrupting_source(blobs: Mapping[str, bytes]) -> Any:
    """A previous server that redeems anything and flips a byte of every pulled range."""
    sizes = {d: len(b) for d, b in blobs.items()}

    async def handle(stream: ServerStream) -> None:
        head = stream.head
        kind = head.get("m")
        if kind == "hello":
            await stream.respond({"m": "welcome", "server": "rogue", "session": head["session"],
                                  "cost_model": None, "limits": {}})  # fmt: skip
        elif kind == "redeem":
            await stream.respond({"m": "redeem_ok", "model": head["model"], "blobs": sizes})
        elif kind == "pull":
            data = bytearray(
                blobs[head["sha256"]][head["offset"] : head["offset"] + head["length"]]
            )
            data[len(data) // 2] ^= 0x55
            reply = {"m": "pull_ok", "sha256": head["sha256"], "offset": head["offset"]}
            await stream.respond({**reply, "body_len": len(data)}, bytes(data))

    return handle


async def test_a_source_sending_bytes_that_do_not_match_is_treated_like_a_client() -> None:
    victim = mlp(3)
    rogue = await serve(_corrupting_source(victim[1].blobs), "127.0.0.1", 0)
    try:
        peers = {name(rogue.port): name(rogue.port)}
        async with (
            EdgeServer(config=config(peers), cost_model=ServerCostModel()) as b,
            tenant(b.port, built=mlp(6)) as bystander,
        ):
            await bystander.setup()
            async with tenant(b.port, built=victim) as t:
                await t.hello()
                await t.manifest()
                reply = await fetch(t, name(rogue.port), "g1.any.thing")
                assert reply["fetched"] == [] and reply["partial"] == {}
                assert set(reply["failed"].values()) == {"digest_mismatch"}
                assert await held(t) == []
                for sha, blob in t.builder.blobs.items():  # the client uploads, as always
                    assert (await t.blob(sha, 0, blob))["complete"]
                assert (await t.load())["m"] == "load_ok"
                await t.check_works()
            await bystander.check_works()
    finally:
        rogue.close()
        await rogue.wait_closed()


def rot(store: Path, digest: str) -> None:
    """Flip a bit of ``digest``'s file in a directory store, as bit rot on disk would."""
    path = next((store / "blobs").glob(f"*/{digest}"))
    data = path.read_bytes()
    path.write_bytes(bytes([data[0] ^ 1]) + data[1:])


async def test_a_source_whose_stored_blob_rotted_sends_none_of_it(tmp_path: Path) -> None:
    """A blob that fails verification on the previous server's disk is neither pulled nor
    pushed (the store discards it); the others move, and the client uploads that one."""
    async with pair(tmp_path) as (a, b), bystanders(a, b):
        key = os.urandom(16).hex()
        async with tenant(a.port, key, mlp(8)) as on_a:
            await on_a.setup()
            token = await grant(on_a)
            first, second = list(on_a.builder.blobs)
            rot(tmp_path, first)
            async with tenant(b.port, key, mlp(8)) as on_b:
                await on_b.hello()
                await on_b.manifest()
                reply = await fetch(on_b, name(a.port), token)
                assert reply["fetched"] == [second], reply
                assert reply["failed"] == {first: "out_of_scope"}, reply
                assert "source_error" not in reply
                assert await held(on_b) == [second]
                assert (await on_b.blob(first, 0, on_a.builder.blobs[first]))["complete"]
                assert (await on_b.load())["m"] == "load_ok"
                await on_b.check_works()
            assert (await on_a.blob(first, 0, on_a.builder.blobs[first]))["complete"]
            rot(tmp_path, second)
            push = {"m": "push", "model": on_a.digest, "target": name(b.port),
                    "blobs": [second, first], "deadline_ms": 30_000}  # fmt: skip
            reply, _ = await call(on_a.conn, push, timeout=60.0)
            assert reply["pushed"] == [first] and reply["failed"] == {second: "missing_blobs"}


def wide(seed: int = 11) -> tuple[dict[str, Any], ManifestBuilder]:
    """input(16) -> Dense(1024, relu) -> Dense(1024, relu) -> Dense(6, softmax): 4.2 MB."""
    rng = np.random.default_rng(seed)
    b = ManifestBuilder(name="wide")
    x = b.input("x", [IN])
    w = [(rng.standard_normal((IN, 1024)) * 0.1).astype(np.float32), np.zeros(1024, np.float32)]
    h = b.add("d1", "Dense", {"units": 1024, "activation": "relu"}, [x], w)
    w = [(rng.standard_normal((1024, 1024)) * 0.03).astype(np.float32), np.zeros(1024, np.float32)]
    h = b.add("d2", "Dense", {"units": 1024, "activation": "relu"}, [h], w)
    w = [(rng.standard_normal((1024, 6)) * 0.1).astype(np.float32), np.zeros(6, np.float32)]
    out = b.add("d3", "Dense", {"units": 6, "activation": "softmax"}, [h], w)
    return b.obj([out]), b


def wide_reference(b: ManifestBuilder, x: np.ndarray) -> np.ndarray:
    h = x.astype(np.float64)
    for layer in ("d1", "d2"):
        kernel, bias = b.arrays[layer]
        h = np.maximum(h @ kernel + bias, 0.0)
    kernel, bias = b.arrays["d3"]
    logits = h @ kernel + bias
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def start_previous(port: int, peers: list[str], tmp: Path) -> subprocess.Popen[str]:
    cost = tmp / "cost.json"
    cost.write_text(ServerCostModel().to_json())
    argv = [str(Path(sys.executable).parent / "ionn-server"), "--port", str(port), "--store",
            str(tmp / "store-a"), "--cost-model", str(cost), "--log-level", "WARNING"]  # fmt: skip
    for peer in peers:
        argv += ["--peer", peer]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on" in line, line
    return proc


@pytest.mark.slow
async def test_a_previous_server_killed_mid_transfer_leaves_what_verified(tmp_path: Path) -> None:
    pa, pb = free_port(), free_port()
    proc = start_previous(pa, [name(pb)], tmp_path)
    try:
        # The backhaul to A goes through a 40 Mbit/s link, so that the 4 MB blob takes ~1 s.
        link = LinkSpec(rate_bps=40e6, delay_ms=1.0)
        async with ShapingProxy("127.0.0.1", pa, up=link, down=link) as backhaul:
            peers = {name(pa): name(backhaul.port)}
            handoff = {"pull_piece": 256 << 10, "pulls_in_flight": 1}
            async with EdgeServer(port=pb, config=config(peers, **handoff),
                                  cost_model=ServerCostModel()) as b:  # fmt: skip
                await _kill_mid_fetch(proc, pa, b)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


async def _kill_mid_fetch(proc: subprocess.Popen[str], pa: int, b: EdgeServer) -> None:
    key, built = os.urandom(16).hex(), wide()
    order = [s["blob"]["sha256"] for s in built[0]["layers"] if "blob" in s]  # d1, d2, d3
    async with tenant(b.port, built=mlp(6)) as bystander:
        await bystander.setup()
        async with tenant(pa, key, built) as on_a:
            await on_a.setup()
            token = await grant(on_a)
        async with tenant(b.port, key, built) as on_b, connect("127.0.0.1", b.port) as watch:
            await on_b.hello()
            await on_b.manifest()
            fetching = asyncio.create_task(fetch(on_b, name(pa), token, order))
            watcher = Tenant(watch, key, built)
            await watcher.hello()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # until part of the 4 MB blob has arrived
                head, _ = await call(watch, {"m": "have", "model": on_b.digest})
                if head["partial"].get(order[1], 0) > 0:
                    break
                await asyncio.sleep(0.01)
            os.kill(proc.pid, signal.SIGKILL)
            reply = await fetching
            assert reply["source_error"] == "unreachable", reply
            assert reply["fetched"] == [order[0]] and reply["blobs_held"] == [order[0]]
            offset = reply["partial"][order[1]]
            assert 0 < offset < len(built[1].blobs[order[1]]) and offset % (256 << 10) == 0
            # the client uploads the rest as always, resuming the partial blob
            rest = built[1].blobs[order[1]]
            assert (await on_b.blob(order[1], offset, rest[offset:]))["complete"]
            assert (await on_b.blob(order[2], 0, built[1].blobs[order[2]]))["complete"]
            assert (await on_b.load())["m"] == "load_ok"
            x = np.random.default_rng(1).standard_normal((1, IN)).astype(np.float32)
            reply = await on_b.query(x)
            got = reply["values"][f"{on_b.names[-1]}:0"]
            np.testing.assert_allclose(got, wide_reference(built[1], x), rtol=1e-4, atol=1e-6)
        await bystander.check_works()


async def test_staging_reveals_nothing_to_another_key(tmp_path: Path) -> None:
    async with pair() as (a, b), bystanders(a, b):
        key = os.urandom(16).hex()
        async with tenant(a.port, key) as on_a:
            await on_a.setup()
            head = {"m": "push", "model": on_a.digest, "target": name(b.port),
                    "blobs": list(on_a.builder.blobs), "deadline_ms": 10_000}  # fmt: skip
            reply, _ = await call(on_a.conn, head)
            assert sorted(reply["pushed"]) == sorted(on_a.builder.blobs)
        for other in (os.urandom(16).hex(), key[::-1]):
            async with tenant(b.port, other, (on_a.obj, on_a.builder)) as t:
                await t.hello()
                assert (await t.manifest())["blobs_held"] == []
        async with tenant(b.port, key, (on_a.obj, on_a.builder)) as t:
            await t.hello()
            assert sorted((await t.manifest())["blobs_held"]) == sorted(on_a.builder.blobs)
            assert (await t.load())["m"] == "load_ok"
            await t.check_works()
