"""protocol.md §10's client-side MUSTs, with the reference peer playing the edge server.

The fake server (a blocking RefPeer on a loopback socket, in a thread) answers ``hello`` with a
chosen cost model, accepts every blob, and on ``load`` declares only *some* layers ready; it
records each ``query`` and answers ``busy`` so the client finishes locally. The ionn_net
OffloadClient must never plan server execution on a layer not listed as ready (§10.6), must
validate the cost model and fall back when it is invalid (§10.10), and must verify the server's
proof of the shared secret, closing with AUTH_FAILED when it is wrong (§10.2.3).
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from tests.refpeer import Code, PeerClosed, PeerTimeout, RefPeer, SocketChannel
from tests.refpeer.session import server_proof

from ionn_net.errors import PlannerError
from ionn_net.planner.costmodel import ServerCostModel

pytestmark = pytest.mark.slow

FAST_SERVER = ServerCostModel().to_doc()  # zero cost: offloading always looks attractive
INVALID_COST_MODELS: list[object] = [
    {**FAST_SERVER, "partition_overhead_ms": -1.0},  # JSON-encodable, so also sent on the wire
    {**FAST_SERVER, "partition_overhead_ms": math.nan},
    {**FAST_SERVER, "partition_overhead_ms": math.inf},
    {**FAST_SERVER, "surprise": 1},
    {**FAST_SERVER, "format": "ionn-costmodel/999"},
    {**FAST_SERVER, "exec": {f"Layer{i}": {} for i in range(500)}},
    [1, 2, 3],
]


@dataclass
class FakeServer:
    cost_model: object = field(default_factory=lambda: FAST_SERVER)
    wrong_proof: bool = False
    ready: set[str] = field(default_factory=set)
    queries: list[list[str]] = field(default_factory=list)
    goaway: Code | None = None
    errors: list[BaseException] = field(default_factory=list)

    def serve(self, sock: socket.socket) -> None:
        peer = RefPeer(SocketChannel(sock), client=False, timeout=30.0)
        try:
            peer.handshake()
            while True:
                req = peer.accept_request()
                head, body = self.answer(req.head)
                peer.send_message(req.stream_id, head, body)
        except (PeerClosed, PeerTimeout, OSError):
            pass
        except BaseException as exc:  # reported to the test
            self.errors.append(exc)
        finally:
            got = peer.goaway_received
            self.goaway = got[1] if got is not None else None
            sock.close()

    def answer(self, head: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        kind = head["m"]
        if kind == "hello":
            if self.wrong_proof:
                nonce = os.urandom(16)
                proof = server_proof(b"not the secret", bytes.fromhex(str(head["nonce"])), nonce)
                return {"m": "challenge", "nonce": nonce.hex(), "proof": proof}, b""
            return {
                "m": "welcome",
                "server": "fake",
                "session": head["session"],
                "cost_model": self.cost_model,
                "limits": {},
            }, b""
        if kind in ("manifest", "have"):
            return {
                "m": f"{kind}_ok",
                "model": head["model"],
                "blobs_held": [],
                "partial": {},
                "layers_ready": [],
                "refused": {},
            }, b""
        if kind == "blob":
            return {
                "m": "blob_ok",
                "sha256": head["sha256"],
                "offset": head["size"],
                "complete": True,
            }, b""
        if kind == "load":
            layers = list(head["layers"])
            self.ready.update(layers[:1])  # only the first layer of each load becomes ready
            return {
                "m": "load_ok",
                "layers_ready": sorted(self.ready),
                "prepared": [],
                "load_ms": 1.0,
            }, b""
        if kind == "query":
            self.queries.append(list(head["run"]))
            return {"m": "error", "code": "busy", "message": "fake server"}, b""
        return {"m": "error", "code": "unknown_message", "message": kind}, b""


@pytest.fixture
def fake() -> Iterator[tuple[FakeServer, int]]:
    server = FakeServer()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(60)
    port = listener.getsockname()[1]

    def accept() -> None:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        server.serve(sock)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server, port
    listener.close()
    thread.join(30)
    assert not server.errors, server.errors


@pytest.fixture(scope="module")
def model() -> Any:
    import keras

    inputs = keras.Input((8,), name="x")
    h = keras.layers.Dense(16, activation="relu", name="d1")(inputs)
    h = keras.layers.Dense(16, activation="relu", name="d2")(h)
    out = keras.layers.Dense(4, name="d3")(h)
    return keras.Model(inputs, out)


async def _run_client(model: Any, port: int, *, upload: bool = True, **config: Any) -> Any:
    """Start an OffloadClient against the fake server; with ``upload`` wait for the upload and
    run one query (answered ``busy``, so it must complete locally and still be right)."""
    from ionn_net.client import ClientConfig, OffloadClient

    # A device 300x slower than this machine makes offloading worth planning.
    cfg = ClientConfig(reconnect=False, slowdown=300.0, **config)
    client = OffloadClient("127.0.0.1", port, model, config=cfg)
    x = np.linspace(-1, 1, 8, dtype="float32").reshape(1, 8)
    await client.start()
    try:
        if upload:
            await client.wait_uploaded(timeout=30)
            out = await client.infer(x)
            np.testing.assert_allclose(np.asarray(out), np.asarray(model(x)), rtol=1e-5, atol=1e-5)
    finally:
        await client.close()
    return client


@pytest.mark.spec("10.6")
def test_client_plans_server_execution_only_on_ready_layers(
    fake: tuple[FakeServer, int], model: Any
) -> None:
    server, port = fake
    asyncio.run(_run_client(model, port))
    assert server.ready, "the client never loaded anything"
    assert server.queries, "with a free server the client should have tried to offload"
    for run in server.queries:
        assert set(run) <= server.ready, (run, server.ready)


@pytest.mark.spec("10.10")
@pytest.mark.parametrize("doc", INVALID_COST_MODELS, ids=range(len(INVALID_COST_MODELS)))
def test_cost_model_validation_refuses_invalid_documents(doc: object) -> None:
    with pytest.raises(PlannerError):
        ServerCostModel.from_doc(doc)
    assert ServerCostModel.from_doc(FAST_SERVER) == ServerCostModel()


@pytest.mark.spec("10.10")
def test_client_falls_back_on_an_invalid_cost_model(
    fake: tuple[FakeServer, int], model: Any
) -> None:
    server, port = fake
    server.cost_model = INVALID_COST_MODELS[0]
    client = asyncio.run(_run_client(model, port, upload=False))
    assert set(client.server_ms) == set(client.client_ms)  # its own estimate, per layer
    assert all(math.isfinite(v) for v in client.server_ms.values())
    # the refused document has all-zero fits: adopting it would predict 0 ms everywhere
    assert any(v > 0 for v in client.server_ms.values())


@pytest.mark.spec("10.2.3")
def test_client_refuses_a_server_that_cannot_prove_the_secret(
    fake: tuple[FakeServer, int], model: Any
) -> None:
    server, port = fake
    server.wrong_proof = True
    asyncio.run(_run_client(model, port, upload=False, secret=b"the secret"))
    assert server.queries == [] and server.ready == set()
    assert server.goaway == Code.AUTH_FAILED, f"expected GOAWAY AUTH_FAILED, got {server.goaway}"
