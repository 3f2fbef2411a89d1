"""protocol.md §10.11 (timings): the real EdgeServer against the reference peer, and the
library's client against the reference peer playing the server.

Server side: ``timings`` answers only for the session's own manifests, every announced value
is finite, bounded and names a layer the server may run (checked by the peer's own reading of
§10.11), and timing never delays ``manifest_ok`` or another answer. Client side: entries that
are invalid or name no layer of the model are ignored, every other layer keeps the cost
model's prediction, and a server without ``timings`` leaves the client on its cost model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import pytest
from tests.conformance.harness import f32
from tests.conformance.harness import session as harness_session
from tests.conformance.test_s10_client import FakeServer, _run_client
from tests.helpers.edge_server import running_server
from tests.refpeer import RefPeer
from tests.refpeer.manifest import Manifest, timings_problems

from ionn_net.planner.costmodel import LinearFit, ServerCostModel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with running_server() as srv:
        yield srv


session = partial(harness_session, timeout=60.0)


def small_cnn(name: str) -> Manifest:
    rng = np.random.default_rng(0)
    m = Manifest(name)
    x = m.input("x", [16, 16, 3])
    c = m.layer("conv", "Conv2D", {"filters": 8, "kernel_size": [3, 3], "padding": "same"}, [x],
                [f32(rng.normal(0, 0.1, (3, 3, 3, 8))), f32(np.zeros(8))])  # fmt: skip
    r = m.layer("relu", "ReLU", {}, [c])
    g = m.layer("gap", "GlobalAveragePooling2D", {}, [r])
    m.layer(
        "dense", "Dense", {"units": 4}, [g], [f32(rng.normal(0, 0.1, (8, 4))), f32(np.zeros(4))]
    )
    return m


def big_convs(name: str, count: int = 8) -> Manifest:
    """Layers that take the server seconds to build, compile and time (3x3, 256 channels
    at 56x56: about 1.8 G multiply-accumulates each)."""
    m = Manifest(name)
    h = m.input("x", [56, 56, 256])
    for i in range(count):
        kernel = np.zeros((3, 3, 256, 256), np.float32)
        h = m.layer(f"c{i}", "Conv2D", {"filters": 256, "kernel_size": [3, 3], "padding": "same"},
                    [h], [f32(kernel), f32(np.zeros(256))])  # fmt: skip
    return m


def send_manifest(peer: RefPeer, m: Manifest, outputs: list[str]) -> tuple[str, dict[str, Any]]:
    body = m.body(outputs)
    digest = hashlib.sha256(body).hexdigest()
    ok = peer.request({"m": "manifest", "model": digest}, body)
    assert ok.head["m"] == "manifest_ok", ok.head
    return digest, json.loads(body)


def timings(peer: RefPeer, digest: str, wait_ms: int = 0) -> Any:
    return peer.request({"m": "timings", "model": digest, "wait_ms": wait_ms})


@pytest.mark.spec("10.11.1")
def test_timings_answers_for_the_sessions_own_manifests_only(server: Any) -> None:
    owner, other = session(server), session(server)
    digest, _ = send_manifest(owner, small_cnn("mine"), ["dense:0"])
    assert timings(owner, digest).head["m"] == "timings_ok"
    refused = timings(other, digest)  # another session key never sent this manifest
    assert refused.head["m"] == "error" and refused.head["code"] == "unknown_model", refused.head
    unknown = timings(owner, "0" * 64)
    assert unknown.head["code"] == "unknown_model", unknown.head


@pytest.mark.spec("10.11.1")
def test_announced_times_are_finite_bounded_and_name_runnable_layers(server: Any) -> None:
    peer = session(server)
    digest, manifest = send_manifest(peer, small_cnn("bounded"), ["dense:0"])
    answer = timings(peer, digest, wait_ms=60_000)
    assert answer.head["m"] == "timings_ok" and answer.head["done"] is True, answer.head
    assert timings_problems(answer.head, answer.body, manifest) == []
    table = json.loads(answer.body)
    assert set(table["measured"]) == {"conv", "relu", "gap", "dense"}  # it timed them all
    again = timings(peer, digest)  # done: the same table again
    assert json.loads(again.body) == table


@pytest.mark.spec("10.11.1")
def test_timing_delays_neither_manifest_ok_nor_other_answers(server: Any) -> None:
    peer = session(server)
    m = big_convs("slow_to_time")
    started = time.monotonic()
    digest, _ = send_manifest(peer, m, ["c7:0"])
    manifest_s = time.monotonic() - started
    first = timings(peer, digest)
    assert first.head["done"] is False, "timing ran before manifest_ok was sent"
    assert set(json.loads(first.body)["predicted"]) == {f"c{i}" for i in range(8)}
    started = time.monotonic()
    have = peer.request({"m": "have", "model": digest})
    have_s = time.monotonic() - started
    assert have.head["m"] == "have_ok"
    still = timings(peer, digest)
    assert still.head["done"] is False, "the timer finished too fast to show anything"
    # building, compiling and timing these layers takes seconds; answers take milliseconds
    assert manifest_s < 1.5 and have_s < 0.5, (manifest_s, have_s)
    assert timings(peer, digest, wait_ms=60_000).head["done"] is True


# ----- §10.11.2: the client side, against the reference peer as the server -----------------

#: A cost model that predicts 0.5 ms + 1 ms per M MACs for every layer.
PRIOR_MODEL = ServerCostModel(exec_fallback=LinearFit("macs", 1e-6, 0.5)).to_doc()


class TimingServer(FakeServer):
    """The fake server of test_s10_client, answering ``timings`` with a fixed body."""

    def __init__(self, body: bytes) -> None:
        super().__init__(cost_model=PRIOR_MODEL)
        self.body = body
        self.asked = 0

    def answer(self, head: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        if head["m"] == "timings":
            self.asked += 1
            reply = {"m": "timings_ok", "model": head["model"], "done": True, "call_ms": 0.1}
            return reply, self.body
        return super().answer(head)


@pytest.fixture
def model() -> Any:
    import keras

    inputs = keras.Input((8,), name="x")
    h = keras.layers.Dense(16, activation="relu", name="d1")(inputs)
    h = keras.layers.Dense(16, activation="relu", name="d2")(h)
    out = keras.layers.Dense(4, name="d3")(h)
    return keras.Model(inputs, out)


def serve(fake: FakeServer) -> tuple[int, Any]:
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(60)

    def accept() -> None:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        fake.serve(sock)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return listener.getsockname()[1], (listener, thread)


def run_against(fake: FakeServer, model: Any) -> Any:
    port, (listener, thread) = serve(fake)
    try:
        client = asyncio.run(_run_client(model, port, upload=False))
    finally:
        listener.close()
        thread.join(30)
    assert not fake.errors, fake.errors
    return client


def cost_model_ms(client: Any, name: str) -> float:
    node = client.graph[name]
    return 0.5 + 1e-6 * node.macs


BAD_ENTRIES = b'{"measured":{"d1":5.0,"d2":NaN,"d3":-1,"ghost":1.0,"x":2.0},"predicted":{"d2":1e9}}'


@pytest.mark.spec("10.11.2")
def test_the_client_ignores_invalid_entries_and_adopts_valid_ones(model: Any) -> None:
    fake = TimingServer(BAD_ENTRIES)
    client = run_against(fake, model)
    assert fake.asked >= 1
    state = client.plan_state
    assert state.server_ms["d1"] == pytest.approx(5.0)  # valid: adopted
    assert state.timings.source["d1"] == "measured"
    for name in ("d2", "d3"):  # NaN, negative, too large: ignored
        assert state.timings.source[name] == "cost_model"
    assert "ghost" not in state.server_ms  # not a layer of the model
    assert state.timings.source["x"] != "measured"  # an input layer: no server time


@pytest.mark.spec("10.11.2")
def test_layers_without_a_valid_entry_keep_the_cost_models_prediction(model: Any) -> None:
    client = run_against(TimingServer(BAD_ENTRIES), model)
    for name in ("d2", "d3"):
        assert client.plan_state.server_ms[name] == pytest.approx(cost_model_ms(client, name))
    # a malformed body is ignored as a whole: every layer keeps its prediction
    client = run_against(TimingServer(b'{"measured": [1, 2], "predicted": {}}'), model)
    for name in ("d1", "d2", "d3"):
        assert client.plan_state.timings.source[name] == "cost_model"
        assert client.plan_state.server_ms[name] == pytest.approx(cost_model_ms(client, name))


@pytest.mark.spec("10.11.2")
def test_a_server_without_timings_leaves_the_client_on_its_cost_model(model: Any) -> None:
    fake = FakeServer(cost_model=PRIOR_MODEL)  # answers timings with unknown_message
    port, (listener, thread) = serve(fake)
    try:
        client = asyncio.run(_run_client(model, port))  # uploads and runs one query
    finally:
        listener.close()
        thread.join(30)
    assert not fake.errors, fake.errors
    assert fake.ready, "the upload did not go on"
    sources = client.plan_state.timings.source
    assert {sources[n] for n in ("d1", "d2", "d3")} == {"cost_model"}
