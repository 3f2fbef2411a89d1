"""protocol.md §15.4.4, the client's side of a move, with the reference peer playing the new server.

The previous server is a real EdgeServer (it gives the grant). The next one is a fake written with
the reference peer (a blocking RefPeer in a thread) that records every request: it reports half of
the blobs a ``fetch`` asks for as fetched (and held), accepts every uploaded blob, declares only the
first layer of each ``load`` ready and answers every ``query`` ``busy`` (the client finishes it
locally). The ionn_net OffloadClient must say ``hello`` with its own session key, send its manifest
before ``fetch``, never upload what the new server reports held, and plan server execution only on
layers the new server declared ready, never on what the previous one held.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from tests.helpers.edge_server import running_server
from tests.refpeer import PeerClosed, PeerTimeout, RefPeer, SocketChannel

from ionn_net.planner.costmodel import ServerCostModel

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

FAST_SERVER = ServerCostModel().to_doc()


@dataclass
class FakeNext:
    requests: list[dict[str, Any]] = field(default_factory=list)
    held: set[str] = field(default_factory=set)
    ready: set[str] = field(default_factory=set)
    queries: list[list[str]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def serve(self, sock: socket.socket) -> None:
        peer = RefPeer(SocketChannel(sock), client=False, timeout=60.0)
        try:
            peer.handshake()
            while True:
                req = peer.accept_request()
                self.requests.append(dict(req.head))
                peer.send_message(req.stream_id, self.answer(req.head))
        except (PeerClosed, PeerTimeout, OSError):
            pass
        except BaseException as exc:  # reported to the test
            self.errors.append(exc)
        finally:
            sock.close()

    def holdings(self) -> dict[str, Any]:
        return {"blobs_held": sorted(self.held), "partial": {}, "layers_ready": sorted(self.ready),
                "refused": {}}  # fmt: skip

    def answer(self, head: dict[str, Any]) -> dict[str, Any]:
        kind = head["m"]
        if kind == "hello":
            return {"m": "welcome", "server": "fake-next", "session": head["session"],
                    "cost_model": FAST_SERVER, "limits": {}}  # fmt: skip
        if kind in ("manifest", "have"):
            return {"m": f"{kind}_ok", "model": head["model"], **self.holdings()}
        if kind == "fetch":
            got = list(head["blobs"])[::2]  # every other blob "arrived"
            self.held.update(got)
            failed = {d: "unknown_blob" for d in head["blobs"] if d not in got}
            return {"m": "fetch_ok", "fetched": got, "failed": failed, **self.holdings()}
        if kind == "blob":
            self.held.add(head["sha256"])
            return {"m": "blob_ok", "sha256": head["sha256"], "offset": head["size"],
                    "complete": True}  # fmt: skip
        if kind == "load":
            self.ready.update(list(head["layers"])[:1])  # only the first layer of each load
            return {"m": "load_ok", "layers_ready": sorted(self.ready), "prepared": [],
                    "load_ms": 1.0}  # fmt: skip
        if kind == "query":
            self.queries.append(list(head["run"]))
            return {"m": "error", "code": "busy", "message": "fake server"}
        return {"m": "error", "code": "unknown_message", "message": kind}


@pytest.fixture(scope="module")
def model() -> Any:
    import keras

    inputs = keras.Input((8,), name="x")
    h = keras.layers.Dense(16, activation="relu", name="d1")(inputs)
    h = keras.layers.Dense(16, activation="relu", name="d2")(h)
    h = keras.layers.Dense(16, activation="relu", name="d3")(h)
    out = keras.layers.Dense(4, name="d4")(h)
    return keras.Model(inputs, out)


@dataclass
class Moved:
    key: str
    fake: FakeNext
    blobs: dict[str, str]  # layer -> blob digest
    outputs_ok: bool


async def _move(model: Any, a_port: int, b_port: int) -> tuple[str, dict[str, str], bool]:
    from ionn_net.client import ClientConfig, OffloadClient

    cfg = ClientConfig(slowdown=300.0)
    client = OffloadClient("127.0.0.1", a_port, model, config=cfg)
    x = np.linspace(-1, 1, 8, dtype="float32").reshape(1, 8)
    want = np.asarray(model(x))
    ok = True
    await client.start()
    try:
        await client.wait_uploaded(timeout=60)
        end = time.monotonic() + 30
        while not client.mobility.holds_grant(f"127.0.0.1:{a_port}") and time.monotonic() < end:
            await asyncio.sleep(0.05)
        assert client.plan_state.ready, "the previous server should have layers ready"
        await client.move_to("127.0.0.1", b_port)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            ok &= bool(np.allclose(await client.infer(x), want, rtol=1e-5, atol=1e-5))
            state = client.plan_state
            if state.partitions and state.loaded_parts == len(state.partitions):
                break
        for _ in range(3):
            ok &= bool(np.allclose(await client.infer(x), want, rtol=1e-5, atol=1e-5))
        blobs = {n: d for n, (d, _) in client.layer_blob.items() if d is not None}
        return client.session_key, blobs, ok
    finally:
        await client.close()


@pytest.fixture(scope="module")
def moved(model: Any) -> Iterator[Moved]:
    fake = FakeNext()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(120)
    b_port = listener.getsockname()[1]

    def accept() -> None:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        fake.serve(sock)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        with running_server() as a:
            key, blobs, ok = asyncio.run(_move(model, a.port, b_port))
        yield Moved(key, fake, blobs, ok)
    finally:
        listener.close()
        thread.join(30)
    assert not fake.errors, fake.errors


@pytest.mark.spec("15.4.4")
def test_the_client_says_hello_with_its_key_and_sends_its_manifest_before_fetch(
    moved: Moved,
) -> None:
    kinds = [r["m"] for r in moved.fake.requests]
    assert kinds[0] == "hello" and moved.fake.requests[0]["session"] == moved.key
    assert "fetch" in kinds, kinds  # it held a grant from the previous server
    assert kinds.index("manifest") < kinds.index("fetch")


@pytest.mark.spec("15.4.4")
def test_the_client_uploads_only_what_the_new_server_does_not_hold(moved: Moved) -> None:
    requests = moved.fake.requests
    fetched = {d for r in requests if r["m"] == "fetch" for d in list(r["blobs"])[::2]}
    uploaded = [r["sha256"] for r in requests if r["m"] == "blob"]
    assert fetched and not fetched & set(uploaded)
    assert len(uploaded) == len(set(uploaded))
    assert set(uploaded) | fetched == set(moved.blobs.values())  # the rest went up


@pytest.mark.spec("15.4.4")
def test_the_client_plans_only_on_what_the_new_server_declared_ready(moved: Moved) -> None:
    fake = moved.fake
    assert moved.outputs_ok  # every answer right, the busy ones finished locally
    assert fake.queries, "with a free server the client should have tried to offload"
    assert len(fake.ready) < len(moved.blobs)  # the previous server had every layer ready
    for run in fake.queries:
        assert set(run) <= fake.ready, (run, fake.ready)
