"""EdgeServer over real sockets: sessions, uploads, queries and bad input.

Drives the server with the asyncio client API and hand-built manifests (no Keras on
the client side), so each case is fast. Bad input must affect only its own session:
after each one a second, well-behaved session still gets correct answers.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

import numpy as np
import pytest
from tests.helpers.manifests import tiny_cnn

from ionn_net.aio import AioConnection, ConnectionClosedError, connect
from ionn_net.model.spec import canonical_json
from ionn_net.planner.costmodel import ServerCostModel
from ionn_net.proto import ErrorCode
from ionn_net.server import EdgeServer, ServerConfig
from ionn_net.tensors import decode_tensors, encode_tensors

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def server() -> AsyncIterator[EdgeServer]:
    config = ServerConfig(max_models_per_session=2, max_bytes_per_session=1 << 20)
    async with EdgeServer(config=config, cost_model=ServerCostModel()) as srv:
        yield srv


async def call(
    conn: AioConnection, head: Mapping[str, Any], body: bytes = b""
) -> tuple[Mapping[str, Any], bytes]:
    return await conn.request(dict(head), body, urgency=2)


async def hello(conn: AioConnection, session: str | None = None) -> Mapping[str, Any]:
    session = session or os.urandom(16).hex()
    head, _ = await call(conn, {"m": "hello", "session": session, "nonce": os.urandom(16).hex()})
    return head


class Tenant:
    """A well-behaved client of the tiny model, written against protocol.md §10."""

    def __init__(self, conn: AioConnection) -> None:
        self.conn = conn
        self.obj, self.builder = tiny_cnn()
        self.body = canonical_json(self.obj)
        import hashlib

        self.digest = hashlib.sha256(self.body).hexdigest()

    async def upload_and_load(self) -> Mapping[str, Any]:
        head, _ = await call(self.conn, {"m": "manifest", "model": self.digest}, self.body)
        assert head["m"] == "manifest_ok", head
        for sha, blob in self.builder.blobs.items():
            reply, _ = await call(
                self.conn,
                {"m": "blob", "model": self.digest, "sha256": sha, "size": len(blob), "offset": 0},
                blob,
            )
            assert reply["m"] == "blob_ok" and reply["complete"], reply
        names = [layer["name"] for layer in self.obj["layers"][1:]]
        head, _ = await call(
            self.conn, {"m": "load", "model": self.digest, "layers": names, "prepare": [names]}
        )
        assert head["m"] == "load_ok", head
        return head

    async def query(self, x: np.ndarray, run: list[str] | None = None) -> Mapping[str, Any]:
        run = run or [layer["name"] for layer in self.obj["layers"][1:]]
        descs, parts = encode_tensors({"image:0": x})
        head = {
            "m": "query",
            "model": self.digest,
            "qid": "q1",
            "deadline_ms": 10_000,
            "run": run,
            "tensors": descs,
        }
        reply, body = await call(self.conn, head, b"".join(parts))
        if reply["m"] == "result":
            out = decode_tensors(reply["tensors"], body)
            return {**reply, "values": out}
        return reply


def reference(builder: Any, x: np.ndarray) -> np.ndarray:
    """The tiny model computed with numpy from the builder's weights."""
    w = builder.arrays
    k, b = w["conv1"]
    pad = np.pad(x[0], ((1, 1), (1, 1), (0, 0)))
    conv = np.zeros((8, 8, 4), np.float64)
    for i in range(8):
        for j in range(8):
            conv[i, j] = np.tensordot(pad[i : i + 3, j : j + 3], k, axes=3) + b
    conv = np.maximum(conv, 0)
    gamma, beta, mean, var = w["bn1"]
    bn = gamma * (conv - mean) / np.sqrt(var + 1e-3) + beta
    (dk,) = w["dw1"]
    pad = np.pad(bn, ((1, 1), (1, 1), (0, 0)))
    dw = np.zeros_like(bn)
    for i in range(8):
        for j in range(8):
            dw[i, j] = (pad[i : i + 3, j : j + 3] * dk[..., 0]).sum(axis=(0, 1))
    gap = (bn + dw).mean(axis=(0, 1))
    dk_, db = w["predictions"]
    logits = gap @ dk_ + db
    e = np.exp(logits - logits.max())
    return (e / e.sum())[None]


async def test_a_session_uploads_loads_and_queries(server: EdgeServer) -> None:
    async with connect("127.0.0.1", server.port) as conn:
        welcome = await hello(conn)
        assert welcome["m"] == "welcome"
        assert welcome["cost_model"]["format"] == "ionn-costmodel/1"
        tenant = Tenant(conn)
        loaded = await tenant.upload_and_load()
        assert loaded["layers_ready"][-1] == "predictions"
        x = np.random.default_rng(0).standard_normal((1, 8, 8, 3)).astype(np.float32)
        reply = await tenant.query(x)
        assert reply["m"] == "result" and reply["last"] == "predictions"
        np.testing.assert_allclose(
            reply["values"]["predictions:0"], reference(tenant.builder, x), rtol=1e-4, atol=1e-6
        )


async def test_messages_before_hello_are_refused(server: EdgeServer) -> None:
    async with connect("127.0.0.1", server.port) as conn:
        head, _ = await call(conn, {"m": "have", "model": "0" * 64})
        assert head == {"m": "error", "code": "no_session", "message": head["message"]}


async def test_unknown_message_type(server: EdgeServer) -> None:
    async with connect("127.0.0.1", server.port) as conn:
        await hello(conn)
        head, _ = await call(conn, {"m": "teleport"})
        assert head["code"] == "unknown_message"


def lambda_manifest() -> tuple[bytes, str]:
    obj, _ = tiny_cnn()
    obj["layers"][2]["class"] = "Lambda"
    obj["layers"][2]["config"] = {"function": {"module": "os", "class_name": "system"}}
    body = canonical_json(obj)
    import hashlib

    return body, hashlib.sha256(body).hexdigest()


async def test_a_disallowed_layer_is_refused_and_others_keep_working(server: EdgeServer) -> None:
    async with connect("127.0.0.1", server.port) as bad, connect("127.0.0.1", server.port) as good:
        await hello(bad)
        await hello(good)
        body, digest = lambda_manifest()
        head, _ = await call(bad, {"m": "manifest", "model": digest}, body)
        assert head["code"] == "bad_manifest"
        assert "Lambda" in head["message"] or "function" in head["message"]
        tenant = Tenant(good)
        await tenant.upload_and_load()
        x = np.ones((1, 8, 8, 3), np.float32)
        assert (await tenant.query(x))["m"] == "result"


async def test_wrong_tensor_shape_and_dtype_are_refused(server: EdgeServer) -> None:
    async with connect("127.0.0.1", server.port) as conn:
        await hello(conn)
        tenant = Tenant(conn)
        await tenant.upload_and_load()
        reply = await tenant.query(np.ones((1, 8, 9, 3), np.float32))
        assert reply["code"] == "bad_request"  # §10.7: not the model's boundary shape
        reply = await tenant.query(np.ones((1, 8, 8, 3), np.float64))
        assert reply["code"] == "bad_request"
        assert (await tenant.query(np.ones((1, 8, 8, 3), np.float32)))["m"] == "result"


async def test_query_on_layers_not_loaded(server: EdgeServer) -> None:
    async with connect("127.0.0.1", server.port) as conn:
        await hello(conn)
        tenant = Tenant(conn)
        head, _ = await call(conn, {"m": "manifest", "model": tenant.digest}, tenant.body)
        assert head["layers_ready"] == []
        reply = await tenant.query(np.ones((1, 8, 8, 3), np.float32))
        assert reply["code"] == "layer_not_ready"


async def test_bad_digest_and_offset_conflict_change_nothing(server: EdgeServer) -> None:
    async with connect("127.0.0.1", server.port) as conn:
        await hello(conn)
        tenant = Tenant(conn)
        await call(conn, {"m": "manifest", "model": tenant.digest}, tenant.body)
        sha, blob = next(iter(tenant.builder.blobs.items()))
        base = {"m": "blob", "model": tenant.digest, "sha256": sha, "size": len(blob)}
        half = len(blob) // 2
        reply, _ = await call(conn, {**base, "offset": 0}, blob[:half])
        assert reply == {"m": "blob_ok", "sha256": sha, "offset": half, "complete": False}
        reply, _ = await call(conn, {**base, "offset": 4}, blob[4:])
        assert reply["code"] == "offset_conflict" and reply["offset"] == half
        corrupt = bytes(b ^ 0xFF for b in blob[half:])
        reply, _ = await call(conn, {**base, "offset": half}, corrupt)
        assert reply["code"] == "digest_mismatch"
        have, _ = await call(conn, {"m": "have", "model": tenant.digest})
        assert sha not in have["blobs_held"] and sha not in have["partial"]


async def test_tenants_never_see_each_others_blobs(server: EdgeServer) -> None:
    async with connect("127.0.0.1", server.port) as a, connect("127.0.0.1", server.port) as b:
        await hello(a)
        await hello(b)
        first, second = Tenant(a), Tenant(b)
        await first.upload_and_load()
        head, _ = await call(b, {"m": "manifest", "model": second.digest}, second.body)
        assert head["blobs_held"] == [] and head["layers_ready"] == [] and head["partial"] == {}


async def test_same_session_after_reconnect_sees_its_layers(server: EdgeServer) -> None:
    session = os.urandom(16).hex()
    async with connect("127.0.0.1", server.port) as conn:
        await hello(conn, session)
        tenant = Tenant(conn)
        await tenant.upload_and_load()
    async with connect("127.0.0.1", server.port) as conn:
        await hello(conn, session)
        head, _ = await call(conn, {"m": "manifest", "model": tenant.digest}, tenant.body)
        assert sorted(head["blobs_held"]) == sorted(tenant.builder.blobs)
        assert "predictions" in head["layers_ready"]


async def test_per_session_model_and_byte_limits(server: EdgeServer) -> None:
    async with connect("127.0.0.1", server.port) as conn:
        await hello(conn)
        for i in range(3):
            obj, _ = tiny_cnn(seed=i)
            obj["name"] = f"m{i}"
            body = canonical_json(obj)
            import hashlib

            head, _ = await call(
                conn, {"m": "manifest", "model": hashlib.sha256(body).hexdigest()}, body
            )
            if i < 2:
                assert head["m"] == "manifest_ok"
            else:
                assert head["code"] == "limit_exceeded"


async def test_garbage_bytes_close_only_that_connection(server: EdgeServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\n\r\n" * 10)
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed without a word (§2.2)
    writer.close()
    async with connect("127.0.0.1", server.port) as conn:
        assert (await hello(conn))["m"] == "welcome"


async def test_a_client_vanishing_mid_blob_affects_nobody_else(server: EdgeServer) -> None:
    async with connect("127.0.0.1", server.port) as good:
        await hello(good)
        vanishing = await connect("127.0.0.1", server.port)
        await hello(vanishing)
        tenant = Tenant(vanishing)
        await call(vanishing, {"m": "manifest", "model": tenant.digest}, tenant.body)
        sha, blob = next(iter(tenant.builder.blobs.items()))
        stream = await vanishing.open_stream(
            {
                "m": "blob",
                "model": tenant.digest,
                "sha256": sha,
                "size": len(blob),
                "offset": 0,
                "body_len": len(blob),
            }
        )
        await stream.send_data(blob[:100])
        vanishing.abort()
        other = Tenant(good)
        await other.upload_and_load()
        assert (await other.query(np.ones((1, 8, 8, 3), np.float32)))["m"] == "result"


def test_cost_model_in_welcome_round_trips() -> None:
    doc = ServerCostModel().to_doc()
    assert ServerCostModel.from_doc(json.loads(json.dumps(doc))) == ServerCostModel()


async def test_an_upload_cut_mid_blob_resumes_from_the_bytes_received(server: EdgeServer) -> None:
    session = os.urandom(16).hex()
    tenant_conn = await connect("127.0.0.1", server.port)
    await hello(tenant_conn, session)
    tenant = Tenant(tenant_conn)
    await call(tenant_conn, {"m": "manifest", "model": tenant.digest}, tenant.body)
    sha, blob = max(tenant.builder.blobs.items(), key=lambda kv: len(kv[1]))
    stream = await tenant_conn.open_stream(
        {
            "m": "blob",
            "model": tenant.digest,
            "sha256": sha,
            "size": len(blob),
            "offset": 0,
            "body_len": len(blob),
        }
    )
    await stream.send_data(blob[:200])
    await asyncio.sleep(0.2)  # let the server read it
    tenant_conn.abort()  # the client vanishes mid-blob
    async with connect("127.0.0.1", server.port) as conn:
        await hello(conn, session)
        head, _ = await call(conn, {"m": "manifest", "model": tenant.digest}, tenant.body)
        for _ in range(100):  # the server notices the vanished client, then keeps its bytes
            if sha in head["partial"]:
                break
            await asyncio.sleep(0.05)
            head, _ = await call(conn, {"m": "have", "model": tenant.digest})
        offset = head["partial"][sha]
        assert offset == 200
        reply, _ = await call(
            conn,
            {
                "m": "blob",
                "model": tenant.digest,
                "sha256": sha,
                "size": len(blob),
                "offset": offset,
            },
            blob[offset:],
        )
        assert reply["complete"] and reply["offset"] == len(blob)


async def test_connections_per_address_are_capped() -> None:
    config = ServerConfig(max_connections_per_address=2)
    async with EdgeServer(config=config, cost_model=ServerCostModel()) as srv:
        conns = [await connect("127.0.0.1", srv.port) for _ in range(3)]
        try:
            assert (await hello(conns[0]))["m"] == "welcome"
            assert (await hello(conns[1]))["m"] == "welcome"
            try:
                third = await hello(conns[2])
            except ConnectionClosedError as exc:  # the GOAWAY overtook the error reply
                assert exc.error_code == ErrorCode.ENHANCE_YOUR_CALM
            else:
                assert third["m"] == "error" and third["code"] == "busy"
            assert (await hello(conns[1]))["code"] == "bad_request"  # others unaffected
        finally:
            for c in conns:
                c.abort()


async def blobs_sent(conn: AioConnection) -> Tenant:
    """A session whose manifest and every blob are on the server, nothing loaded yet."""
    await hello(conn)
    tenant = Tenant(conn)
    await call(conn, {"m": "manifest", "model": tenant.digest}, tenant.body)
    for sha, blob in tenant.builder.blobs.items():
        head = {"m": "blob", "model": tenant.digest, "sha256": sha, "size": len(blob)}
        await call(conn, {**head, "offset": 0}, blob)
    return tenant


async def test_loads_chain_pieces_and_a_complete_model_is_consolidated(server: EdgeServer) -> None:
    """§10.6: each load compiles only its own layers (the run set of a later load reuses
    the earlier piece); once every layer is ready the set is compiled as one slice in
    the background; answers are the same throughout."""
    from ionn_net.executor import CompiledSlice, SliceChain

    async with connect("127.0.0.1", server.port) as conn:
        tenant = await blobs_sent(conn)
        names = [layer["name"] for layer in tenant.obj["layers"][1:]]
        first, middle, last = names[:2], names[2:-1], names[-1:]
        loads = ((first, first), (middle, first + middle), (last, names))
        (model,) = [m for s in server._sessions.values() for m in s.models.values()]
        executor = model.executor()
        for i, (layers, prepare) in enumerate(loads):
            head, _ = await call(
                conn,
                {"m": "load", "model": tenant.digest, "layers": layers, "prepare": [prepare]},
            )
            assert head["m"] == "load_ok" and head["prepared"] == [prepare], head
            if i == 1:  # not complete yet: a chain whose first piece is the first load's
                runner = model.runner(prepare)
                assert isinstance(runner, SliceChain)
                assert runner.pieces[0] is executor.cached(first)
                assert [p.layers for p in runner.pieces] == [frozenset(first), frozenset(middle)]
                assert executor.cached(prepare) is None
        x = np.random.default_rng(3).standard_normal((1, 8, 8, 3)).astype(np.float32)
        want = reference(tenant.builder, x)
        reply = await tenant.query(x)
        np.testing.assert_allclose(reply["values"]["predictions:0"], want, rtol=1e-4, atol=1e-6)
        for _ in range(300):  # the background compile: bounded wait
            if executor.cached(names) is not None:
                break
            await asyncio.sleep(0.1)
        assert isinstance(model.runner(names), CompiledSlice)
        reply = await tenant.query(x)
        np.testing.assert_allclose(reply["values"]["predictions:0"], want, rtol=1e-4, atol=1e-6)


async def test_a_failed_consolidation_keeps_the_chain_serving(server: EdgeServer) -> None:
    """Compiling the complete set as one slice is an optimisation: when it fails the
    chain of pieces goes on answering, correctly."""
    from ionn_net.errors import ExecutorError
    from ionn_net.executor import SliceChain

    async with connect("127.0.0.1", server.port) as conn:
        tenant = await blobs_sent(conn)
        names = [layer["name"] for layer in tenant.obj["layers"][1:]]
        (model,) = [m for s in server._sessions.values() for m in s.models.values()]
        executor = model.executor()
        build = executor.prepare

        def no_whole_model(layer_set: Any) -> Any:
            if frozenset(layer_set) == frozenset(names):
                raise ExecutorError("injected: the whole set does not compile")
            return build(layer_set)

        executor.prepare = no_whole_model
        for layers in (names[:3], names[3:]):
            head, _ = await call(
                conn, {"m": "load", "model": tenant.digest, "layers": layers, "prepare": [names]}
            )
            assert head["m"] == "load_ok", head
        for _ in range(100):  # the background attempt: bounded wait
            if not server._background:
                break
            await asyncio.sleep(0.05)
        assert frozenset(names) in model.consolidating  # it was tried
        assert isinstance(model.runner(names), SliceChain)
        x = np.random.default_rng(4).standard_normal((1, 8, 8, 3)).astype(np.float32)
        reply = await tenant.query(x)
        np.testing.assert_allclose(
            reply["values"]["predictions:0"], reference(tenant.builder, x), rtol=1e-4, atol=1e-6
        )


async def test_loads_run_on_lower_priority_threads() -> None:
    """Building and compiling a partition must not slow the queries it overlaps more than
    the scheduler allows: the loader threads are niced (ServerConfig.loader_nice)."""
    import threading

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = niceness()
    async with EdgeServer(config=ServerConfig(loader_nice=7), cost_model=ServerCostModel()) as srv:
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(srv._loader, niceness) == min(base + 7, 19)
    with pytest.raises(Exception, match=r"loader_nice: expected an integer 0\.\.19"):
        ServerConfig(loader_nice=20)
