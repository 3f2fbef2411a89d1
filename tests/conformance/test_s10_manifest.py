"""protocol.md §10.3.1 (manifest details), §10.6.1 (weights checked at load) and §10.10 (cost
model), against the real EdgeServer and the library's own client side.

The reference peer builds manifests from the text and Appendix B alone (tests/refpeer/manifest.py)
and must interoperate on the first try; the library's manifests of real Keras models must list
weights in Appendix B's order with per-weight digests over exactly each weight's bytes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from tests.conformance.harness import f32, session
from tests.helpers.edge_server import running_server
from tests.refpeer import RefPeer, SocketChannel
from tests.refpeer.manifest import Manifest, cost_model_problems
from tests.refpeer.session import hello, welcome_cost_model

from ionn_net.errors import PlannerError
from ionn_net.model.schema import SCHEMAS
from ionn_net.planner.costmodel import ServerCostModel


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with running_server() as srv:
        yield srv


def upload(peer: RefPeer, m: Manifest, body: bytes) -> str:
    digest = hashlib.sha256(body).hexdigest()
    ok = peer.request({"m": "manifest", "model": digest}, body)
    assert ok.head["m"] == "manifest_ok", ok.head
    for sha, blob in m.blobs.items():
        head = {"m": "blob", "model": digest, "sha256": sha, "size": len(blob), "offset": 0}
        reply = peer.request(head, blob, urgency=5, incremental=True)
        assert reply.head.get("complete") is True, reply.head
    return digest


def query(peer: RefPeer, digest: str, run: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    body = np.ascontiguousarray(x, dtype="<f4").tobytes()
    desc = {"ref": "x:0", "dtype": "float32", "shape": list(x.shape), "nbytes": len(body)}
    head = {"m": "query", "model": digest, "qid": "q", "deadline_ms": 30_000, "run": run,
            "tensors": [desc]}  # fmt: skip
    reply = peer.request(head, body, urgency=1)
    assert reply.head["m"] == "result", reply.head
    out, offset = {}, 0
    for d in reply.head["tensors"]:  # type: ignore[union-attr]
        n = d["nbytes"]
        out[d["ref"]] = np.frombuffer(reply.body[offset : offset + n], "<f4").reshape(d["shape"])
        offset += n
    return out


# ----- §10.3.1: a manifest written from the text and Appendix B alone ------------------------


def cnn(rng: np.random.Generator) -> tuple[Manifest, dict[str, np.ndarray]]:
    """x[6,6,2] -> Conv2D(3, 3x3) -> BatchNormalization -> ReLU -> GAP -> Dense(4)."""
    w = {
        "kernel": rng.normal(0, 0.5, (3, 3, 2, 3)),
        "bias": rng.normal(0, 0.1, 3),
        "gamma": rng.uniform(0.5, 1.5, 3),
        "beta": rng.normal(0, 0.1, 3),
        "mean": rng.normal(0, 0.1, 3),
        "var": rng.uniform(0.5, 1.5, 3),
        "dense": rng.normal(0, 0.5, (3, 4)),
        "dense_bias": rng.normal(0, 0.1, 4),
    }
    m = Manifest("appendix_cnn")
    x = m.input("x", [6, 6, 2])  # no batch dimension (§10.3.1)
    c = m.layer("conv", "Conv2D", {"filters": 3, "kernel_size": [3, 3]}, [x],
                [f32(w["kernel"]), f32(w["bias"])])  # fmt: skip
    bn_weights = [f32(w[k]) for k in ("gamma", "beta", "mean", "var")]  # Appendix B.2 order
    b = m.layer("bn", "BatchNormalization", {"epsilon": 0.001}, [c], bn_weights)
    r = m.layer("relu", "ReLU", {}, [b])
    g = m.layer("gap", "GlobalAveragePooling2D", {}, [r])
    m.layer("dense", "Dense", {"units": 4}, [g], [f32(w["dense"]), f32(w["dense_bias"])])
    return m, w


def cnn_reference(w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))  # b,4,4,2,3,3
    conv = np.einsum("bhwcij,ijcf->bhwf", windows, w["kernel"]) + w["bias"]
    bn = (conv - w["mean"]) / np.sqrt(w["var"] + 0.001) * w["gamma"] + w["beta"]
    gap = np.maximum(bn, 0.0).mean(axis=(1, 2))
    out: np.ndarray = gap @ w["dense"] + w["dense_bias"]
    return out


@pytest.mark.spec("10.3.1")
def test_a_manifest_written_from_the_text_is_accepted_loaded_and_run(server: Any) -> None:
    m, w = cnn(np.random.default_rng(3))
    peer = session(server)
    body = m.body(["dense:0"])
    digest = upload(peer, m, body)
    names = ["conv", "bn", "relu", "gap", "dense"]
    loaded = peer.request({"m": "load", "model": digest, "layers": names})
    assert loaded.head["m"] == "load_ok", loaded.head
    x = np.random.default_rng(4).normal(0, 1, (1, 6, 6, 2)).astype(np.float32)
    got = query(peer, digest, names, x)["dense:0"]
    np.testing.assert_allclose(got, cnn_reference(w, x.astype(np.float64)), rtol=1e-4, atol=1e-5)


@pytest.mark.spec("10.3.2")
@pytest.mark.parametrize("flaw", ["batch_in_input_shape", "input_not_in_inputs", "bias_first"])
def test_manifest_details_of_10_3_1_are_enforced(server: Any, flaw: str) -> None:
    m, _ = cnn(np.random.default_rng(5))
    obj = json.loads(m.body(["dense:0"]))
    if flaw == "batch_in_input_shape":  # shapes leave out the batch dimension
        obj["inputs"][0]["shape"] = [1, 6, 6, 2]
    elif flaw == "input_not_in_inputs":
        obj["inputs"] = [{"layer": "conv", "shape": [4, 4, 3], "dtype": "float32"}]
    else:  # weights out of Appendix B order: the declared shapes differ
        conv = next(layer for layer in obj["layers"] if layer["name"] == "conv")
        conv["weights"].reverse()
    body = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    reply = session(server).request(
        {"m": "manifest", "model": hashlib.sha256(body).hexdigest()}, body
    )
    assert reply.head.get("code") == "bad_manifest", reply.head


# ----- §10.3.1: the library's manifests of Keras models ---------------------------------------


@pytest.fixture(scope="module")
def keras_manifest() -> tuple[Any, Any, dict[str, bytes]]:
    import keras

    from ionn_net.model.layers import extract_manifest

    x = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3, name="conv")(x)
    y = keras.layers.BatchNormalization(name="bn")(y)
    y = keras.layers.SeparableConv2D(5, 3, depth_multiplier=2, name="sep")(y)
    y = keras.layers.LayerNormalization(name="ln")(y)
    y = keras.layers.Dense(3, use_bias=False, name="dense")(y)
    model = keras.Model(x, y, name="order")
    rng = np.random.default_rng(0)
    for layer in model.layers:
        layer.set_weights([rng.normal(0, 1, v.shape).astype(v.dtype) for v in layer.weights])
    manifest, blobs, local_only = extract_manifest(model)
    assert not local_only
    return model, manifest, blobs


@pytest.mark.slow
@pytest.mark.spec("10.3.1")
def test_client_lists_weights_in_appendix_order(keras_manifest: Any) -> None:
    model, manifest, _ = keras_manifest
    for spec in manifest.layers:
        if spec.cls == "InputLayer":
            continue
        layer = model.get_layer(spec.name)
        keras_roles = [v.path.rsplit("/", 1)[-1] for v in layer.weights]
        schema = SCHEMAS[spec.cls]
        kwargs = layer.get_config()
        appendix = [w.role for w in schema.weights if not w.present_if or kwargs[w.present_if]]
        assert keras_roles == appendix, spec.name
        arrays = layer.get_weights()
        assert [list(w.shape) for w in spec.weights] == [list(a.shape) for a in arrays]


@pytest.mark.slow
@pytest.mark.spec("10.3.1")
def test_client_digests_cover_exactly_each_weights_bytes(keras_manifest: Any) -> None:
    model, manifest, blobs = keras_manifest
    for spec in manifest.layers:
        if not spec.weights:
            continue
        blob = blobs[spec.blob_sha256]
        assert hashlib.sha256(blob).hexdigest() == spec.blob_sha256
        offset = 0
        arrays = model.get_layer(spec.name).get_weights()
        for w, a in zip(spec.weights, arrays, strict=True):
            raw = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
            assert blob[offset : offset + len(raw)] == raw  # little-endian, C order
            assert hashlib.sha256(raw).hexdigest() == w.sha256
            offset += len(raw)
        assert offset == len(blob) == spec.blob_size


# ----- §10.6.1: per-weight digests and finiteness are checked at load -------------------------


def dense_with(kernel: np.ndarray, bias: np.ndarray, lie: bool = False) -> Manifest:
    m = Manifest(f"dense_{os.urandom(4).hex()}")
    x = m.input("x", [kernel.shape[0]])
    weights = [f32(kernel), f32(bias)]
    m.layer("d", "Dense", {"units": kernel.shape[1]}, [x], weights)
    if lie:  # a blob digest that matches, over a bias whose declared digest does not
        m.layers[-1]["weights"][1]["sha256"] = hashlib.sha256(b"another bias").hexdigest()
    return m


def load_and_have(peer: RefPeer, m: Manifest, layers: list[str]) -> tuple[Any, Any]:
    body = m.body([f"{layers[-1]}:0"])
    digest = upload(peer, m, body)  # every blob is accepted: its whole digest matches
    loaded = peer.request({"m": "load", "model": digest, "layers": layers})
    have = peer.request({"m": "have", "model": digest})
    return loaded.head, have.head


@pytest.mark.spec("10.6.1")
def test_a_wrong_per_weight_digest_is_refused_at_load(server: Any) -> None:
    m = dense_with(np.ones((3, 2)), np.zeros(2), lie=True)
    loaded, have = load_and_have(session(server), m, ["d"])
    assert loaded.get("code") == "bad_request", loaded
    assert "'d'" in str(loaded["message"]) and "weight 1" in str(loaded["message"])
    assert have["layers_ready"] == []


@pytest.mark.spec("10.6.1")
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_weight_is_refused_at_load(server: Any, bad: float) -> None:
    kernel = np.ones((3, 2))
    kernel[1, 1] = bad
    loaded, have = load_and_have(session(server), dense_with(kernel, np.zeros(2)), ["d"])
    assert loaded.get("code") == "bad_request", loaded
    assert "finite" in str(loaded["message"]) and "'d'" in str(loaded["message"])
    assert have["layers_ready"] == []


@pytest.mark.spec("10.6.1")
def test_a_load_with_one_bad_layer_builds_none_of_its_layers(server: Any) -> None:
    m = Manifest("two_dense")
    x = m.input("x", [3])
    h = m.layer("good", "Dense", {"units": 3}, [x], [f32(np.eye(3)), f32(np.zeros(3))])
    nan_kernel = np.ones((3, 2))
    nan_kernel[0, 0] = math.nan
    m.layer("bad", "Dense", {"units": 2}, [h], [f32(nan_kernel), f32(np.zeros(2))])
    peer = session(server)
    loaded, have = load_and_have(peer, m, ["good", "bad"])
    assert loaded.get("code") == "bad_request", loaded
    assert have["layers_ready"] == []
    # The good layer alone loads: nothing of the refused load was kept half-built.
    digest = hashlib.sha256(m.body(["bad:0"])).hexdigest()
    again = peer.request({"m": "load", "model": digest, "layers": ["good"]})
    assert again.head["m"] == "load_ok" and again.head["layers_ready"] == ["good"]


# ----- §10.10: the cost model ----------------------------------------------------------------

VALID = ServerCostModel().to_doc()
FIT = {"feature": "macs", "slope": 0.5, "intercept": 0.0, "samples": 3}


def _invalid_docs() -> list[tuple[str, object]]:
    def edit(path: list[str], value: object) -> dict[str, Any]:
        doc: dict[str, Any] = copy.deepcopy({**VALID, "exec": {"conv": dict(FIT)}})
        target = doc
        for part in path[:-1]:
            target = target[part]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return doc

    return [
        ("missing_member", edit(["load_fallback"], KeyError)),
        ("extra_member", edit(["extra"], 1)),
        ("format", edit(["format"], "ionn-costmodel/2")),
        ("unknown_type", edit(["exec", "lstm"], dict(FIT))),
        ("fit_extra_member", edit(["exec", "conv", "r2"], 0.9)),
        ("fit_missing_member", edit(["exec", "conv", "samples"], KeyError)),
        ("unknown_feature", edit(["exec", "conv", "feature"], "flops")),
        ("negative_slope", edit(["exec", "conv", "slope"], -0.1)),
        ("huge_intercept", edit(["exec", "conv", "intercept"], 2e9)),
        ("bool_slope", edit(["exec", "conv", "slope"], True)),
        ("string_intercept", edit(["exec_fallback", "intercept"], "1")),
        ("float_samples", edit(["load_fallback", "samples"], 1.5)),
        ("negative_samples", edit(["exec", "conv", "samples"], -1)),
        ("overhead_negative", edit(["partition_overhead_ms"], -1.0)),
        ("overhead_nan", edit(["partition_overhead_ms"], math.nan)),
        ("overhead_huge", edit(["partition_overhead_ms"], 1e10)),
        ("not_an_object", [VALID]),
    ]


@pytest.mark.spec("10.10")
def test_the_server_sends_a_cost_model_that_follows_every_rule(server: Any) -> None:
    peer = RefPeer(SocketChannel.connect("127.0.0.1", server.port), client=True, timeout=30.0)
    peer.handshake()
    (welcome,) = hello(peer)
    doc = welcome.head["cost_model"]
    assert cost_model_problems(doc) == [], cost_model_problems(doc)
    assert welcome_cost_model(welcome) == doc
    limits = welcome.head["limits"]
    assert isinstance(limits, dict)
    assert set(limits) >= {"max_message_size", "max_batch", "max_models", "max_bytes"}


@pytest.mark.spec("10.10")
@pytest.mark.parametrize(("case", "doc"), _invalid_docs(), ids=[c for c, _ in _invalid_docs()])
def test_clients_refuse_every_rule_violation(case: str, doc: object) -> None:
    """Both clients (the library and the reference peer, each from the rules) refuse it."""
    assert cost_model_problems(doc), case
    with pytest.raises(PlannerError):
        ServerCostModel.from_doc(doc)


@pytest.mark.spec("10.10")
def test_clients_accept_a_model_within_the_bounds() -> None:
    doc = {**VALID, "exec": {t: dict(FIT, feature="out_elems") for t in ("conv", "dense")},
           "load": {"other": dict(FIT, slope=1e9, intercept=0, samples=10**9)},
           "partition_overhead_ms": 1e9}  # fmt: skip
    assert cost_model_problems(doc) == []
    model = ServerCostModel.from_doc(doc)
    assert model.to_doc()["partition_overhead_ms"] == 1e9
