"""protocol.md §10.3.3 (`blobs_public`), §10.3.4 (the public marking), §10.6 (what a load may
build from) and §14.5.1 (what a server reveals, and to whom), against the real EdgeServer with
the reference peer (tests/refpeer/holdings.py, written from the text).

Three tenants play the scenarios: A uploads privately, B publishes, C only asks. The model is a
two-layer Dense network built with the peer's own manifest builder; a catalog holding it is
exported with the library's ``ionn-catalog`` code (the catalog's format is the server's own).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.conformance.harness import f32
from tests.helpers.edge_server import running_server
from tests.refpeer import RefPeer, SocketChannel
from tests.refpeer.holdings import holdings_problems, manifest_head, public_layers
from tests.refpeer.manifest import Manifest
from tests.refpeer.session import hello

from ionn_net.catalog import add_manifest
from ionn_net.model.spec import loads_manifest
from ionn_net.server import ServerConfig
from ionn_net.store import DirectoryStore

pytestmark = pytest.mark.timeout(120)


def dense_model(seed: int = 0) -> tuple[Manifest, bytes, dict[str, np.ndarray]]:
    """x[4] -> Dense(3, relu) "d1" -> Dense(2) "d2"."""
    rng = np.random.default_rng(seed)
    w = {k: rng.normal(0, 0.5, s) for k, s in
         (("k1", (4, 3)), ("b1", (3,)), ("k2", (3, 2)), ("b2", (2,)))}  # fmt: skip
    m = Manifest(f"dense{seed}")
    x = m.input("x", [4])
    h = m.layer(
        "d1", "Dense", {"units": 3, "activation": "relu"}, [x], [f32(w["k1"]), f32(w["b1"])]
    )
    m.layer("d2", "Dense", {"units": 2}, [h], [f32(w["k2"]), f32(w["b2"])])
    return m, m.body(["d2:0"]), w


def reference(w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    h = np.maximum(x.astype(np.float64) @ w["k1"] + w["b1"], 0.0)
    out: np.ndarray = h @ w["k2"] + w["b2"]
    return out


MODEL, BODY, WEIGHTS = dense_model()
DIGEST = hashlib.sha256(BODY).hexdigest()
D1, BLOB1 = MODEL.blob_of("d1")
D2, BLOB2 = MODEL.blob_of("d2")


def tenant(srv: Any, key: str | None = None) -> RefPeer:
    peer = RefPeer(SocketChannel.connect("127.0.0.1", srv.port), client=True, timeout=30.0)
    peer.handshake()
    (welcome,) = hello(peer, session=key or os.urandom(16).hex())
    assert welcome.head["m"] == "welcome", welcome.head
    return peer


def manifest(peer: RefPeer, public: object = None) -> dict[str, Any]:
    reply = peer.request(manifest_head(DIGEST, public), BODY)
    return dict(reply.head)


def blob(peer: RefPeer, sha: str, data: bytes, offset: int = 0, size: int = 0) -> dict[str, Any]:
    head = {"m": "blob", "model": DIGEST, "sha256": sha, "size": size or len(data),
            "offset": offset}  # fmt: skip
    return dict(peer.request(head, data, urgency=5, incremental=True).head)


def public_seen(srv: Any) -> list[str]:
    """What a fresh third tenant C learns is held publicly of the model."""
    ok = manifest(tenant(srv))
    assert ok["m"] == "manifest_ok", ok
    return list(ok["blobs_public"])


def load(peer: RefPeer, layers: list[str]) -> dict[str, Any]:
    return dict(peer.request({"m": "load", "model": DIGEST, "layers": layers}).head)


def query(peer: RefPeer, x: np.ndarray) -> np.ndarray:
    body = np.ascontiguousarray(x, dtype="<f4").tobytes()
    desc = {"ref": "x:0", "dtype": "float32", "shape": list(x.shape), "nbytes": len(body)}
    head = {"m": "query", "model": DIGEST, "qid": "q", "deadline_ms": 30_000,
            "run": ["d1", "d2"], "tensors": [desc]}  # fmt: skip
    reply = peer.request(head, body, urgency=1)
    assert reply.head["m"] == "result", reply.head
    return np.frombuffer(reply.body, "<f4").reshape(1, 2)


@pytest.fixture
def server() -> Iterator[Any]:
    with running_server() as srv:
        yield srv


@pytest.fixture
def catalog_server(tmp_path: Path) -> Iterator[Any]:
    manifest_obj = loads_manifest(BODY, canonical=True)
    add_manifest(tmp_path / "catalog", manifest_obj, MODEL.blobs, name="dense")
    with running_server(catalog=tmp_path / "catalog") as srv:
        yield srv


# ----- §10.3.3: blobs_public in manifest_ok and have_ok --------------------------------------


@pytest.mark.spec("10.3.3")
def test_manifest_ok_and_have_ok_carry_blobs_public(server: Any, catalog_server: Any) -> None:
    for srv, expected in ((server, []), (catalog_server, sorted([D1, D2]))):
        peer = tenant(srv)
        ok = manifest(peer)
        assert ok["m"] == "manifest_ok" and not holdings_problems(ok), ok
        assert ok["blobs_public"] == expected and ok["blobs_held"] == []
        have = dict(peer.request({"m": "have", "model": DIGEST}).head)
        assert have["m"] == "have_ok" and not holdings_problems(have), have
        assert have["blobs_public"] == expected
    assert public_layers(json.loads(BODY), ok["blobs_public"]) == ["d1", "d2"]


# ----- §10.3.4: the public marking ----------------------------------------------------------


@pytest.mark.spec("10.3.4")
@pytest.mark.parametrize("marking", [5, "yes", {"d1": True}, [3], ["nonesuch"], ["d1", "x y"]])
def test_a_malformed_marking_is_bad_request_and_nothing_is_acted_on(
    server: Any, marking: object
) -> None:
    peer = tenant(server)
    reply = manifest(peer, marking)
    assert reply["m"] == "error" and reply["code"] == "bad_request", reply
    have = dict(peer.request({"m": "have", "model": DIGEST}).head)
    assert have.get("code") == "unknown_model", have  # the model was not added


@pytest.mark.spec("10.3.4")
def test_a_malformed_marking_does_not_change_the_one_in_force(server: Any) -> None:
    b = tenant(server)
    assert manifest(b, ["d1"])["m"] == "manifest_ok"
    assert manifest(b, ["nonesuch"])["code"] == "bad_request"
    assert blob(b, D1, BLOB1)["complete"] is True
    assert public_seen(server) == [D1]  # the marking of the last valid request applies


@pytest.mark.spec("10.3.4")
def test_a_marking_publishes_nothing_until_the_upload_completes(server: Any) -> None:
    b = tenant(server)
    assert manifest(b, True)["m"] == "manifest_ok"
    half = len(BLOB1) // 2
    assert blob(b, D1, BLOB1[:half], size=len(BLOB1))["complete"] is False
    assert public_seen(server) == []  # marked, never finished: nothing revealed
    assert blob(b, D1, BLOB1[half:], offset=half, size=len(BLOB1))["complete"] is True
    assert public_seen(server) == [D1]  # D2 is marked too, but never uploaded


@pytest.mark.spec("10.3.4")
def test_a_marked_upload_of_other_bytes_is_digest_mismatch_and_publishes_nothing(
    server: Any,
) -> None:
    b = tenant(server)
    assert manifest(b, True)["m"] == "manifest_ok"
    forged = bytes(reversed(BLOB1))  # the right size, not the right bytes
    reply = blob(b, D1, forged)
    assert reply["m"] == "error" and reply["code"] == "digest_mismatch", reply
    assert public_seen(server) == []
    assert manifest(b)["blobs_held"] == []


@pytest.mark.spec("10.3.4")
def test_a_blob_held_before_the_marking_is_published_by_it(server: Any) -> None:
    b = tenant(server)
    assert manifest(b)["m"] == "manifest_ok"
    assert blob(b, D1, BLOB1)["complete"] is True
    assert blob(b, D2, BLOB2)["complete"] is True
    assert public_seen(server) == []  # private so far
    ok = manifest(b, ["d2"])
    assert ok["blobs_held"] == sorted([D1, D2])  # still its own
    assert public_seen(server) == [D2]
    assert manifest(b, False)["m"] == "manifest_ok"
    assert public_seen(server) == [D2]  # publishing is not taken back


# ----- §10.6: what a load may build from -----------------------------------------------------


@pytest.mark.spec("10.6")
def test_a_blob_another_session_uploaded_privately_cannot_be_loaded(server: Any) -> None:
    a = tenant(server)
    assert manifest(a)["m"] == "manifest_ok"
    for sha, data in ((D1, BLOB1), (D2, BLOB2)):
        assert blob(a, sha, data)["complete"] is True
    assert load(a, ["d1", "d2"])["m"] == "load_ok"
    c = tenant(server)
    ok = manifest(c)
    assert ok["blobs_held"] == [] and ok["blobs_public"] == []
    reply = load(c, ["d1", "d2"])
    assert reply["m"] == "error" and reply["code"] == "missing_blobs", reply
    assert reply["layers"] == ["d1", "d2"]


@pytest.mark.spec("10.6")
def test_public_layers_load_and_run_without_an_upload(catalog_server: Any) -> None:
    c = tenant(catalog_server)
    ok = manifest(c)
    layers = public_layers(json.loads(BODY), ok["blobs_public"])
    assert load(c, layers)["m"] == "load_ok"
    x = np.random.default_rng(1).normal(0, 1, (1, 4)).astype(np.float32)
    np.testing.assert_allclose(query(c, x), reference(WEIGHTS, x), rtol=1e-4, atol=1e-5)
    have = dict(c.request({"m": "have", "model": DIGEST}).head)
    assert have["blobs_held"] == []  # using public blobs uploads nothing of one's own
    reply = blob(c, D1, BLOB1)  # §10.5.1: answered complete at once, still not its own
    assert reply["complete"] is True and reply["offset"] == len(BLOB1)
    assert manifest(c)["blobs_held"] == []


# ----- §14.5.1: what a server reveals, and to whom -------------------------------------------


@pytest.mark.spec("14.5.1")
def test_a_digest_uploaded_privately_and_publicly_is_revealed_only_by_the_public_upload(
    server: Any,
) -> None:
    a = tenant(server)  # A uploads D1 and D2 privately
    assert manifest(a)["m"] == "manifest_ok"
    for sha, data in ((D1, BLOB1), (D2, BLOB2)):
        assert blob(a, sha, data)["complete"] is True
    assert public_seen(server) == []
    b = tenant(server)  # B marks only d1 public, and uploads both
    assert manifest(b, ["d1"])["m"] == "manifest_ok"
    half = len(BLOB1) // 2
    assert blob(b, D1, BLOB1[:half], size=len(BLOB1))["complete"] is False
    assert public_seen(server) == []  # A's private copy reveals nothing meanwhile
    assert blob(b, D1, BLOB1[half:], offset=half, size=len(BLOB1))["complete"] is True
    assert blob(b, D2, BLOB2)["complete"] is True
    assert public_seen(server) == [D1]  # D2: uploaded by A and B, privately both times
    c = tenant(server)
    assert manifest(c)["m"] == "manifest_ok"
    assert load(c, ["d1"])["m"] == "load_ok"
    assert load(c, ["d2"])["code"] == "missing_blobs"


@pytest.mark.spec("14.5.1")
def test_a_public_blob_discarded_as_corrupt_is_not_public_again_after_a_private_upload(
    tmp_path: Path,
) -> None:
    store = DirectoryStore(tmp_path / "store")
    with running_server(config=ServerConfig(catalog_warm="none"), store=store) as srv:
        b = tenant(srv)
        assert manifest(b, True)["m"] == "manifest_ok"
        assert blob(b, D1, BLOB1)["complete"] is True
        assert public_seen(srv) == [D1]
        path = tmp_path / "store" / "blobs" / D1[:2] / D1
        path.write_bytes(bytes(reversed(path.read_bytes())))  # bit rot
        c = tenant(srv)
        assert manifest(c)["blobs_public"] == [D1]  # not read yet
        reply = load(c, ["d1"])  # read, fails verification, discarded with its record
        assert reply["code"] == "missing_blobs", reply
        a = tenant(srv)
        assert manifest(a)["m"] == "manifest_ok"
        assert blob(a, D1, BLOB1)["complete"] is True  # stored again, privately
        assert public_seen(srv) == []


# ----- §14.5.1: public and private layers of the same digest ---------------------------------


def twin_model() -> tuple[bytes, str, str, bytes]:
    """x[4] -> Dense(4) "t1" -> Dense(4) "t2", the two layers with the very same weights (one
    blob, one digest): (body, model digest, blob digest, blob)."""
    rng = np.random.default_rng(7)
    k, b = f32(rng.normal(0, 0.5, (4, 4))), f32(rng.normal(0, 0.5, (4,)))
    m = Manifest("twin")
    h = m.layer("t1", "Dense", {"units": 4}, [m.input("x", [4])], [k, b])
    m.layer("t2", "Dense", {"units": 4}, [h], [k, b])
    body = m.body(["t2:0"])
    sha, data = m.blob_of("t1")
    assert m.blob_of("t2")[0] == sha
    return body, hashlib.sha256(body).hexdigest(), sha, data


def head_model() -> tuple[bytes, str, str, bytes]:
    """MODEL's "d1" (the same blob D1) under a new head "h2" of its own weights: (body, model
    digest, the head's blob digest, its blob)."""
    rng = np.random.default_rng(11)
    m = Manifest("dense0-head")
    h = m.layer(
        "d1", "Dense", {"units": 3, "activation": "relu"}, [m.input("x", [4])],
        [f32(WEIGHTS["k1"]), f32(WEIGHTS["b1"])],
    )  # fmt: skip
    m.layer(
        "h2",
        "Dense",
        {"units": 2},
        [h],
        [f32(rng.normal(0, 0.5, (3, 2))), f32(rng.normal(0, 0.5, (2,)))],
    )
    assert m.blob_of("d1")[0] == D1
    sha, data = m.blob_of("h2")
    body = m.body(["h2:0"])
    return body, hashlib.sha256(body).hexdigest(), sha, data


def send(peer: RefPeer, head: dict[str, Any], body: bytes = b"") -> dict[str, Any]:
    return dict(peer.request(head, body, urgency=5, incremental=True).head)


def upload(peer: RefPeer, model: str, sha: str, data: bytes) -> dict[str, Any]:
    head = {"m": "blob", "model": model, "sha256": sha, "size": len(data), "offset": 0}
    return send(peer, head, data)


@pytest.mark.spec("14.5.1", "10.3.4")
def test_a_blob_a_marked_layer_shares_with_an_unmarked_one_is_published(server: Any) -> None:
    body, model, sha, data = twin_model()
    b = tenant(server)
    assert send(b, manifest_head(model, ["t1"]), body)["m"] == "manifest_ok"  # t2 unmarked
    assert upload(b, model, sha, data)["complete"] is True
    c = tenant(server)
    ok = send(c, manifest_head(model), body)
    assert ok["blobs_public"] == [sha] and ok["blobs_held"] == [], ok
    assert public_layers(json.loads(body), ok["blobs_public"]) == ["t1", "t2"]
    reply = send(c, {"m": "load", "model": model, "layers": ["t1", "t2"]})
    assert reply["m"] == "load_ok", reply  # the unmarked layer too: the same bytes


@pytest.mark.spec("14.5.1")
def test_a_private_head_on_a_public_backbone_stays_private(catalog_server: Any) -> None:
    body, model, head_sha, head_blob = head_model()
    a = tenant(catalog_server)  # the catalog holds d1's blob; A's head is its own
    ok = send(a, manifest_head(model), body)
    assert ok["blobs_public"] == [D1] and ok["blobs_held"] == [], ok
    assert upload(a, model, head_sha, head_blob)["complete"] is True
    assert send(a, {"m": "load", "model": model, "layers": ["d1", "h2"]})["m"] == "load_ok"
    assert send(a, {"m": "have", "model": model})["blobs_held"] == [head_sha]
    c = tenant(catalog_server)  # names the same model: learns the backbone, not the head
    ok = send(c, manifest_head(model), body)
    assert ok["blobs_public"] == [D1] and ok["blobs_held"] == [], ok
    reply = send(c, {"m": "load", "model": model, "layers": ["d1", "h2"]})
    assert reply["m"] == "error" and reply["code"] == "missing_blobs", reply
    assert reply["layers"] == ["h2"]


@pytest.mark.spec("14.5.1")
def test_an_uploader_keeps_its_own_copy_when_the_same_digest_turns_public(server: Any) -> None:
    key = os.urandom(16).hex()
    a = tenant(server, key)  # A: D1 and D2, privately
    assert manifest(a)["m"] == "manifest_ok"
    for sha, data in ((D1, BLOB1), (D2, BLOB2)):
        assert blob(a, sha, data)["complete"] is True
    b = tenant(server)  # B publishes D1 by its own upload
    assert manifest(b, ["d1"])["m"] == "manifest_ok"
    assert blob(b, D1, BLOB1)["complete"] is True
    a_again = tenant(server, key)  # A, reconnected: D1 both its own and public, D2 its own
    ok = manifest(a_again)
    assert ok["blobs_held"] == sorted([D1, D2]) and ok["blobs_public"] == [D1], ok
    c = tenant(server)  # C: D1 public only; A's private D2 never shows
    ok = manifest(c)
    assert ok["blobs_held"] == [] and ok["blobs_public"] == [D1], ok
    assert load(c, ["d2"])["code"] == "missing_blobs"
