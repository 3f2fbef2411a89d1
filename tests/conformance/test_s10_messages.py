"""protocol.md §10 (application messages) and §14.5 (tenants), against the real EdgeServer.

The client side is the reference peer over a loopback socket; manifests, blobs and tensors are
built here from the text of §10.3 (canonical JSON, SHA-256, little-endian C-order weights), not
with the library. §10.1.2's framing rules are checked on the sans-I/O core directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from tests.conformance.harness import CoreUnderTest, Outcome, check_invalid_vector
from tests.conformance.vectors import category, vid
from tests.helpers.edge_server import running_server
from tests.refpeer import Code, Message, PeerClosed, RefPeer, SocketChannel
from tests.refpeer import wire as rw
from tests.refpeer.session import hello

from ionn_net.config import Limits
from ionn_net.proto import events as ev

# ----- a model manifest written from §10.3.1 ------------------------------------------------


def canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Model:
    body: bytes
    digest: str
    blob: bytes
    blob_sha: str
    kernel: np.ndarray
    bias: np.ndarray


def dense_model(seed: int = 0, inputs: int = 6, units: int = 3, module: bool = False) -> Model:
    rng = np.random.default_rng(seed)
    kernel = rng.normal(0, 1, (inputs, units)).astype("<f4")
    bias = rng.normal(0, 1, units).astype("<f4")
    parts = [kernel.tobytes(order="C"), bias.tobytes()]
    blob = b"".join(parts)
    config: dict[str, Any] = {"units": units}
    if module:  # §10.3.2: no member named "module" at any depth
        config["kernel_initializer"] = {"module": "keras.initializers", "class_name": "Zeros"}
    manifest = {
        "format": "ionn-manifest/1",
        "name": f"dense{seed}",
        "inputs": [{"layer": "x", "shape": [inputs], "dtype": "float32"}],
        "outputs": ["d:0"],
        "layers": [
            {
                "name": "x",
                "class": "InputLayer",
                "config": {"shape": [inputs]},
                "inbound": [],
                "weights": [],
            },
            {
                "name": "d",
                "class": "Dense",
                "config": config,
                "inbound": ["x:0"],
                "weights": [
                    {
                        "dtype": "float32",
                        "shape": [inputs, units],
                        "sha256": hashlib.sha256(parts[0]).hexdigest(),
                    },
                    {
                        "dtype": "float32",
                        "shape": [units],
                        "sha256": hashlib.sha256(parts[1]).hexdigest(),
                    },
                ],
                "blob": {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)},
            },
        ],
    }
    body = canonical(manifest)
    return Model(
        body, hashlib.sha256(body).hexdigest(), blob, hashlib.sha256(blob).hexdigest(), kernel, bias
    )


# ----- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with running_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def auth_server() -> Iterator[Any]:
    from ionn_net.server import ServerConfig

    with running_server(ServerConfig(secret=b"s3cret")) as srv:
        yield srv


def connect(srv: Any) -> RefPeer:
    peer = RefPeer(SocketChannel.connect("127.0.0.1", srv.port), client=True, timeout=10.0)
    peer.handshake()
    return peer


def session(srv: Any, key: str | None = None) -> RefPeer:
    peer = connect(srv)
    (welcome,) = hello(peer, session=key)
    assert welcome.head["m"] == "welcome"
    return peer


def manifest(peer: RefPeer, model: Model) -> Message:
    return peer.request({"m": "manifest", "model": model.digest}, model.body)


def blob(peer: RefPeer, model: Model, data: bytes, offset: int = 0, **extra: Any) -> Message:
    head = {
        "m": "blob",
        "model": model.digest,
        "sha256": model.blob_sha,
        "size": len(model.blob),
        "offset": offset,
        **extra,
    }
    return peer.request(head, data, urgency=5, incremental=True)


def have(peer: RefPeer, model: Model) -> dict[str, Any]:
    return peer.request({"m": "have", "model": model.digest}).head


def error_code(msg: Message) -> str | None:
    return str(msg.head["code"]) if msg.head.get("m") == "error" else None


# ----- §10.1 envelope -------------------------------------------------------------------------


@pytest.mark.spec("10.1.1")
def test_each_request_gets_exactly_one_response_on_its_stream(server: Any) -> None:
    peer = session(server)
    model = dense_model(1)
    sids = [
        peer.open_stream({"m": "have", "model": model.digest}, end_stream=True) for _ in range(5)
    ]
    replies = [peer.read_message(sid) for sid in sids]
    assert [r.head["m"] for r in replies] == ["error"] * 5  # unknown_model, one each
    peer.ping()  # anything extra (a second HEADERS) would have been a stream error by now
    assert not [i for i in peer.log if i.kind == "stream_error"]


@pytest.mark.spec("10.1.1")
def test_an_answer_given_before_the_body_is_read_reaches_the_client(server: Any) -> None:
    peer = session(server)
    model = dense_model(17)
    manifest(peer, model)
    head = {"m": "blob", "model": model.digest, "sha256": "0" * 64, "size": 1, "offset": 0}
    reply = peer.request(head, bytes(4 << 20))  # unknown_blob, answered at HEADERS time
    assert error_code(reply) == "unknown_blob"


@pytest.mark.spec("10.1.2")
@pytest.mark.parametrize("vector", category("invalid", "10.1.2"), ids=vid)
def test_body_len_rules_as_golden_vectors(vector: dict[str, object]) -> None:
    check_invalid_vector(vector)


@pytest.mark.spec("10.1.2")
def test_body_announced_without_body_len_is_a_stream_error() -> None:
    core = CoreUnderTest().handshake()
    core.feed(rw.headers_frame(1, {"m": "blob"}))
    assert core.outcome() == Outcome("stream", "PROTOCOL_ERROR", 1)


@pytest.mark.spec("10.1.2")
@pytest.mark.parametrize(
    ("declared", "sent", "code"), [(10, 11, "MESSAGE_TOO_LARGE"), (10, 9, "PROTOCOL_ERROR")]
)
def test_body_beyond_or_short_of_body_len(declared: int, sent: int, code: str) -> None:
    core = CoreUnderTest().handshake()
    core.feed(rw.headers_frame(1, {"m": "blob", "body_len": declared}))
    core.feed(rw.data_frame(1, b"x" * (sent - 1)) + rw.data_frame(1, b"y", end_stream=True))
    assert core.outcome() == Outcome("stream", code, 1)
    got = b"".join(e.data for e in core.events if isinstance(e, ev.DataReceived))
    assert len(got) <= declared


@pytest.mark.spec("10.1.2")
def test_body_len_above_max_message_size_is_refused_before_any_body() -> None:
    core = CoreUnderTest(limits=Limits(max_message_size=1 << 20)).handshake()
    core.feed(rw.headers_frame(1, {"m": "blob", "body_len": 2 << 20}))
    assert core.outcome() == Outcome("stream", "MESSAGE_TOO_LARGE", 1)
    assert not [e for e in core.events if isinstance(e, ev.HeadersReceived)]
    core.feed(rw.data_frame(1, b"x" * 1000))  # the body that follows is ignored, not buffered
    assert not [e for e in core.events if isinstance(e, ev.DataReceived)]


@pytest.mark.spec("10.1.3")
def test_unknown_head_members_are_ignored(server: Any) -> None:
    peer = connect(server)
    nonce, key = os.urandom(16).hex(), os.urandom(16).hex()
    reply = peer.request(
        {
            "m": "hello",
            "client": "t",
            "session": key,
            "nonce": nonce,
            "future": {"nested": [1, 2]},
            "x-extension": True,
        }
    )
    assert reply.head["m"] == "welcome" and reply.head["session"] == key
    model = dense_model(2)
    ok = peer.request({"m": "manifest", "model": model.digest, "comment": "ignored"}, model.body)
    assert ok.head["m"] == "manifest_ok"


@pytest.mark.spec("10.1.3")
@pytest.mark.parametrize("m", ["frobnicate", "HELLO", "", "x" * 60])
def test_unknown_message_type_is_answered_with_unknown_message(server: Any, m: str) -> None:
    peer = session(server)
    assert error_code(peer.request({"m": m})) == "unknown_message"
    assert peer.request({"m": "have", "model": "0" * 64}).head["m"] == "error"  # still usable


# ----- §10.2 session --------------------------------------------------------------------------


@pytest.mark.spec("10.2.1")
@pytest.mark.parametrize("m", ["have", "load", "query", "blob"])
def test_requests_before_hello_get_no_session(server: Any, m: str) -> None:
    peer = connect(server)
    reply = peer.request({"m": m, "model": "a" * 64, "layers": ["d"], "run": ["d"]})
    assert error_code(reply) == "no_session"


@pytest.mark.spec("10.2.1")
def test_a_request_before_hello_is_not_acted_on(server: Any) -> None:
    peer = connect(server)
    model = dense_model(3)
    assert error_code(manifest(peer, model)) == "no_session"
    hello(peer)
    assert error_code(peer.request({"m": "have", "model": model.digest})) == "unknown_model"


@pytest.mark.spec("10.2.1")
def test_welcome_echoes_the_session_and_carries_a_cost_model(server: Any) -> None:
    peer = connect(server)
    key = os.urandom(16).hex()
    (welcome,) = hello(peer, session=key)
    assert welcome.head["session"] == key
    cost = welcome.head["cost_model"]
    assert isinstance(cost, dict) and cost["format"] == "ionn-costmodel/1"


@pytest.mark.spec("10.2.3")
def test_challenge_proves_the_secret_and_auth_is_welcomed(auth_server: Any) -> None:
    peer = connect(auth_server)
    first, second = hello(peer, secret=b"s3cret")  # hello() verifies the server's proof
    assert first.head["m"] == "challenge" and second.head["m"] == "welcome"


@pytest.mark.spec("10.2.3")
def test_wrong_proof_closes_with_auth_failed(auth_server: Any) -> None:
    peer = connect(auth_server)
    challenge = peer.request(
        {
            "m": "hello",
            "client": "t",
            "session": os.urandom(16).hex(),
            "nonce": os.urandom(16).hex(),
        }
    )
    assert challenge.head["m"] == "challenge"
    sid = peer.open_stream({"m": "auth", "proof": "0" * 64}, end_stream=True)
    goaway = None
    try:
        for _ in range(50):
            inc = peer.poll()
            if inc.kind == "goaway":
                goaway = inc
                break
    except PeerClosed:
        pass
    assert goaway is not None and goaway.code == Code.AUTH_FAILED, peer.log[-3:]
    reply = peer.streams[sid].head
    assert reply is None or "cost_model" not in reply


@pytest.mark.spec("10.2.3")
@pytest.mark.parametrize("m", ["have", "manifest"])
def test_other_messages_while_auth_pending_close_with_auth_failed(auth_server: Any, m: str) -> None:
    peer = connect(auth_server)
    model = dense_model(4)
    challenge = peer.request(
        {
            "m": "hello",
            "client": "t",
            "session": os.urandom(16).hex(),
            "nonce": os.urandom(16).hex(),
        }
    )
    assert challenge.head["m"] == "challenge"
    body = model.body if m == "manifest" else b""
    head: dict[str, object] = {"m": m, "model": model.digest}
    if body:
        head["body_len"] = len(body)
    sid = peer.open_stream(head, end_stream=not body)
    if body:
        peer.send_body(sid, body)
    peer.timeout = 1.5  # silence past this deadline is a failure (no GOAWAY came)
    seen = peer.drain()
    goaways = [i for i in seen if i.kind == "goaway"]
    assert goaways and goaways[0].code == Code.AUTH_FAILED, [i.kind for i in seen]
    leaked = [i.head for i in seen if i.head is not None and i.head.get("m") != "error"]
    assert leaked == [], "nothing about models may be revealed before auth"


# ----- §10.3 manifest, §10.4 have, §10.5 blob, §14.5 tenants ----------------------------------


@pytest.mark.spec("10.3.1")
def test_manifest_digest_must_match_its_body(server: Any) -> None:
    peer = session(server)
    model = dense_model(5)
    wrong = peer.request(
        {"m": "manifest", "model": hashlib.sha256(b"other").hexdigest()}, model.body
    )
    assert error_code(wrong) == "bad_manifest"
    assert error_code(peer.request({"m": "have", "model": model.digest})) == "unknown_model"
    ok = manifest(peer, model)
    assert ok.head["m"] == "manifest_ok" and ok.head["model"] == model.digest


@pytest.mark.spec("10.3.2")
@pytest.mark.parametrize("flaw", ["module", "forward_ref", "weight_shape", "lambda_deser"])
def test_invalid_manifests_are_refused_whole(server: Any, flaw: str) -> None:
    model = dense_model(6, module=flaw == "module")
    doc = json.loads(model.body)
    if flaw == "forward_ref":
        doc["layers"][1]["inbound"] = ["d:0"]
    elif flaw == "weight_shape":
        doc["layers"][1]["weights"][0]["shape"] = [5, 3]
    elif flaw == "lambda_deser":
        doc["layers"][1]["config"]["function"] = {"class_name": "__lambda__", "config": "AAAA"}
    body = canonical(doc)
    digest = hashlib.sha256(body).hexdigest()
    peer = session(server)
    reply = peer.request({"m": "manifest", "model": digest}, body)
    assert error_code(reply) == "bad_manifest", reply.head
    assert error_code(peer.request({"m": "have", "model": digest})) == "unknown_model"


@pytest.mark.spec("10.3.2")
def test_the_server_computes_shapes_itself_and_accepts_a_valid_manifest(server: Any) -> None:
    peer = session(server)
    ok = manifest(peer, dense_model(7))
    assert ok.head["m"] == "manifest_ok"
    assert ok.head["blobs_held"] == [] and ok.head["layers_ready"] == []
    assert ok.head["refused"] == {}


@pytest.mark.spec("10.5.1")
@pytest.mark.parametrize("what", ["sha", "size"])
def test_blob_not_named_by_the_manifest_is_unknown(server: Any, what: str) -> None:
    peer = session(server)
    model = dense_model(8)
    manifest(peer, model)
    head: dict[str, Any] = {
        "m": "blob",
        "model": model.digest,
        "sha256": model.blob_sha,
        "size": len(model.blob),
        "offset": 0,
    }
    if what == "sha":
        head["sha256"] = hashlib.sha256(b"not in the manifest").hexdigest()
    else:
        head["size"] = len(model.blob) + 1
    # No body: an answer given before the body is read is lost today (see the early-answer test)
    assert error_code(peer.request(head)) == "unknown_blob"


@pytest.mark.spec("10.5.2")
def test_offset_conflict_changes_nothing_and_names_the_offset(server: Any) -> None:
    peer = session(server)
    model = dense_model(9)
    manifest(peer, model)
    first = blob(peer, model, model.blob[:40])
    assert first.head["m"] == "blob_ok" and first.head["offset"] == 40
    assert first.head["complete"] is False
    conflict = blob(peer, model, b"", offset=10)  # no body: see the early-answer test
    assert error_code(conflict) == "offset_conflict" and conflict.head["offset"] == 40
    assert have(peer, model)["partial"] == {model.blob_sha: 40}
    rest = blob(peer, model, model.blob[40:], offset=40)
    assert rest.head == {
        "m": "blob_ok",
        "sha256": model.blob_sha,
        "offset": len(model.blob),
        "complete": True,
    }


@pytest.mark.spec("10.5.3")
def test_digest_is_verified_and_a_mismatch_discards_the_partial(server: Any) -> None:
    peer = session(server)
    model = dense_model(10)
    manifest(peer, model)
    bad = bytearray(model.blob)
    bad[-1] ^= 0xFF
    assert blob(peer, model, bytes(bad[:30])).head["m"] == "blob_ok"
    assert error_code(blob(peer, model, bytes(bad[30:]), offset=30)) == "digest_mismatch"
    state = have(peer, model)
    assert state["blobs_held"] == [] and model.blob_sha not in state["partial"]
    assert blob(peer, model, model.blob).head["complete"] is True
    assert have(peer, model)["blobs_held"] == [model.blob_sha]


@pytest.mark.spec("10.5.3")
def test_blob_ok_reports_the_new_offset(server: Any) -> None:
    peer = session(server)
    model = dense_model(11)
    manifest(peer, model)
    offsets = []
    for start in range(0, len(model.blob), 25):
        reply = blob(peer, model, model.blob[start : start + 25], offset=start)
        offsets.append((reply.head["offset"], reply.head["complete"]))
    assert offsets[-1] == (len(model.blob), True)
    assert [o for o, _ in offsets] == sorted(o for o, _ in offsets)


@pytest.mark.spec("10.4")
@pytest.mark.spec("14.5")
def test_other_tenants_blobs_are_never_revealed(server: Any) -> None:
    model = dense_model(12)
    alice = session(server)
    manifest(alice, model)
    assert blob(alice, model, model.blob).head["complete"] is True
    partial_model = dense_model(13)
    manifest(alice, partial_model)
    blob(alice, partial_model, partial_model.blob[:16])
    assert have(alice, model)["blobs_held"] == [model.blob_sha]

    bob = session(server)
    for m in (model, partial_model):
        ok = manifest(bob, m)
        assert ok.head["blobs_held"] == [] and ok.head["partial"] == {}
        state = have(bob, m)
        assert state["blobs_held"] == [] and state["partial"] == {}
    conflict = blob(bob, partial_model, b"", offset=16)
    assert error_code(conflict) == "offset_conflict" and conflict.head["offset"] == 0


@pytest.mark.spec("10.4")
def test_the_same_session_key_sees_its_blobs_after_reconnecting(server: Any) -> None:
    key = os.urandom(16).hex()
    model = dense_model(14)
    first = session(server, key)
    manifest(first, model)
    blob(first, model, model.blob)
    first.goaway(Code.NO_ERROR)
    again = session(server, key)
    assert have(again, model)["blobs_held"] == [model.blob_sha]


# ----- §10.6 load, §10.7 query (build real layers: keras on the server) ------------------------


def query(peer: RefPeer, model: Model, x: np.ndarray, run: list[str], ref: str = "x:0") -> Message:
    body = x.astype("<f4").tobytes()
    desc = {"ref": ref, "dtype": "float32", "shape": list(x.shape), "nbytes": len(body)}
    head = {
        "m": "query",
        "model": model.digest,
        "qid": "q1",
        "deadline_ms": 60_000,
        "run": run,
        "tensors": [desc],
    }
    return peer.request(head, body, urgency=1)


@pytest.fixture(scope="module")
def loaded(server: Any) -> tuple[RefPeer, Model]:
    """A session holding dense_model(15) with layer ``d`` loaded (keras runs on the server)."""
    peer = session(server)
    peer.timeout = 120.0  # the first load imports keras and builds layers on the server
    model = dense_model(15)
    manifest(peer, model)
    x = np.ones((1, 6), dtype="<f4")
    assert error_code(query(peer, model, x, ["d"])) == "layer_not_ready"
    missing = peer.request({"m": "load", "model": model.digest, "layers": ["d"]})
    assert error_code(missing) == "missing_blobs"
    blob(peer, model, model.blob)
    loaded = peer.request({"m": "load", "model": model.digest, "layers": ["d"]})
    assert loaded.head["m"] == "load_ok" and "d" in loaded.head["layers_ready"]
    return peer, model


@pytest.mark.slow
@pytest.mark.spec("10.7")
def test_query_runs_ready_layers_on_the_boundary_inputs(loaded: tuple[RefPeer, Model]) -> None:
    peer, model = loaded
    x = np.arange(6, dtype="<f4").reshape(1, 6) / 10
    result = query(peer, model, x, ["d"])
    assert result.head["m"] == "result" and result.head["ran"] == ["d"]
    assert result.head["last"] == "d" and result.head["qid"] == "q1"
    (desc,) = result.head["tensors"]
    assert desc["ref"] == "d:0" and desc["shape"] == [1, 3] and desc["dtype"] == "float32"
    got = np.array(struct.unpack("<3f", result.body)).reshape(1, 3)
    np.testing.assert_allclose(got, x @ model.kernel + model.bias, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.spec("10.7")
def test_query_on_layers_not_ready_runs_nothing(server: Any) -> None:
    peer = session(server)
    model = dense_model(16)
    manifest(peer, model)
    blob(peer, model, model.blob)  # held but not loaded
    x = np.ones((1, 6), dtype="<f4")
    assert error_code(query(peer, model, x, ["d"])) == "layer_not_ready"
    assert error_code(query(peer, model, x, ["nonexistent"])) in ("layer_not_ready", "bad_request")


@pytest.mark.slow
@pytest.mark.spec("9.3")
def test_query_with_a_non_finite_input_is_bad_tensor(loaded: tuple[RefPeer, Model]) -> None:
    peer, model = loaded
    x = np.ones((1, 6), dtype="<f4")
    x[0, 2] = np.inf
    assert error_code(query(peer, model, x, ["d"])) == "bad_tensor"


@pytest.mark.slow
@pytest.mark.spec("10.7")
@pytest.mark.parametrize("flaw", ["ref", "shape"])
def test_query_tensors_must_be_the_boundary_inputs(
    loaded: tuple[RefPeer, Model], flaw: str
) -> None:
    peer, model = loaded
    x = np.ones((1, 6), dtype="<f4")
    reply = (
        query(peer, model, x, ["d"], ref="d:0")
        if flaw == "ref"
        else query(peer, model, x.reshape(1, 2, 3), ["d"])
    )
    assert error_code(reply) == "bad_request"
