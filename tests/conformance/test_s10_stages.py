"""protocol.md §10.12 (weight stages): golden vectors, and the real EdgeServer's MUSTs.

The stage bytes come from the reference peer's encoder (``tests/refpeer/stages.py``, written
from §10.12.2 alone) and are checked against the library's codec both ways on the golden
vectors. Server tests drive a real EdgeServer over a loopback socket with the reference peer;
the model is two Dense layers and a BatchNormalization (whose blob holds no kernel, so it
travels whole), and every answer is checked against numpy in float64, at exact and at base
precision.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.helpers.edge_server import running_server
from tests.refpeer import Message, RefPeer, SocketChannel
from tests.refpeer.manifest import canonical
from tests.refpeer.session import hello
from tests.refpeer.stages import ENCODINGS, StageRefused, W, decode_base, encode, rebuild

VECTORS = Path(__file__).resolve().parent / "vectors" / "stages.json"
IN, HID, OUT = 8, 16, 4


@cache
def _vectors() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))
    return doc


def _weights(vector: dict[str, Any]) -> list[W]:
    return [W(w["dtype"], tuple(w["shape"])) for w in vector["weights"]]


def _layer_spec(vector: dict[str, Any], blob: bytes) -> Any:
    """The library's LayerSpec for a vector (digests of the vector's blob, or zeros)."""
    from ionn_net.model.spec import LayerSpec, WeightSpec

    specs, pos = [], 0
    for w in _weights(vector):
        part = blob[pos : pos + w.nbytes]
        specs.append(WeightSpec(w.dtype, w.shape, hashlib.sha256(part).hexdigest()))
        pos += w.nbytes
    size = sum(w.nbytes for w in _weights(vector))
    digest = hashlib.sha256(blob).hexdigest()
    return LayerSpec("v", vector["class"], {}, (), tuple(specs), digest, size)


# ----- §10.12.2 golden vectors ------------------------------------------------------------


def _valid_cases() -> list[tuple[dict[str, Any], str]]:
    return [(v, p) for v in _vectors()["valid"] for p in ENCODINGS]


@pytest.mark.spec("10.12.2")
@pytest.mark.parametrize(("vector", "precision"), _valid_cases(), ids=lambda v: str(v)[:40])
def test_stage_vectors_both_ways_with_the_library(vector: dict[str, Any], precision: str) -> None:
    from ionn_net.model.stages import decode_base as lib_decode
    from ionn_net.model.stages import encode_layer, reconstruct

    blob = bytes.fromhex(vector["blob_hex"])
    want = vector["stages"][precision]
    spec = _layer_spec(vector, blob)
    encoded = encode_layer(spec, blob, precision)
    assert [s.hex() for s in encoded.stages] == want["hex"]
    assert [s.sha256 for s in encoded.specs] == want["sha256"]
    assert [s.encoding for s in encoded.specs] == want["encodings"]
    stages = [bytes.fromhex(h) for h in want["hex"]]
    assert reconstruct(spec, precision, stages) == blob
    decoded = lib_decode(spec, precision, stages[0])
    assert b"".join(a.astype("<f4").tobytes() for a in decoded).hex() == want["decoded_base_hex"]


@pytest.mark.spec("10.12.2")
@pytest.mark.parametrize(("vector", "precision"), _valid_cases(), ids=lambda v: str(v)[:40])
def test_stage_vectors_both_ways_with_the_reference_peer(
    vector: dict[str, Any], precision: str
) -> None:
    blob = bytes.fromhex(vector["blob_hex"])
    want = vector["stages"][precision]
    weights = _weights(vector)
    base, refinement = encode(vector["class"], weights, blob, precision)
    assert [base.hex(), refinement.hex()] == want["hex"]
    assert rebuild(vector["class"], weights, precision, base, refinement) == blob
    decoded = b"".join(decode_base(vector["class"], weights, precision, base))
    assert decoded.hex() == want["decoded_base_hex"]


@pytest.mark.spec("10.12.2")
@pytest.mark.parametrize("vector", _vectors()["invalid"], ids=lambda v: v["name"])
def test_invalid_base_stages_are_refused_by_both(vector: dict[str, Any]) -> None:
    from ionn_net.errors import StageError
    from ionn_net.model.stages import decode_base as lib_decode

    data = bytes.fromhex(vector["base_hex"])
    with pytest.raises(StageRefused):
        decode_base(vector["class"], _weights(vector), vector["precision"], data)
    with pytest.raises(StageError):
        lib_decode(_layer_spec(vector, b"\0" * 24), vector["precision"], data)


# ----- a staged model written from §10.3.1 and §10.12 -------------------------------------


def _f32(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.normal(0, 1, shape).astype("<f4")


@dataclass
class Staged:
    """Dense(16, relu) -> BatchNormalization -> Dense(4), stages at ``precision``."""

    precision: str
    seed: int = 0
    dims: tuple[int, int, int] = (IN, HID, OUT)
    arrays: dict[str, list[np.ndarray]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)  # blob digest -> bytes
    stages: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)  # layer -> stages
    obj: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        n_in, hid, out = self.dims
        var = (np.abs(_f32(rng, hid)) + 0.5).astype("<f4")
        self.arrays = {
            "d1": [_f32(rng, n_in, hid), _f32(rng, hid)],
            "bn": [_f32(rng, hid), _f32(rng, hid), _f32(rng, hid), var],
            "d2": [_f32(rng, hid, out), _f32(rng, out)],
        }
        configs = {
            "d1": ("Dense", {"units": hid, "activation": "relu"}, ["x:0"]),
            "bn": ("BatchNormalization", {}, ["d1:0"]),
            "d2": ("Dense", {"units": out}, ["bn:0"]),
        }
        layers: list[dict[str, Any]] = [
            {"name": "x", "class": "InputLayer", "config": {"shape": [n_in]}, "inbound": [],
             "weights": []},
        ]  # fmt: skip
        for name, (cls, config, inbound) in configs.items():
            parts = [a.tobytes() for a in self.arrays[name]]
            blob = b"".join(parts)
            digest = hashlib.sha256(blob).hexdigest()
            self.blobs[digest] = blob
            entry: dict[str, Any] = {"sha256": digest, "size": len(blob)}
            if cls == "Dense":
                weights = [W("float32", a.shape) for a in self.arrays[name]]
                base, refinement = encode(cls, weights, blob, self.precision)
                self.stages[name] = (base, refinement)
                entry["stages"] = [
                    {"encoding": enc, "size": len(s), "sha256": hashlib.sha256(s).hexdigest()}
                    for enc, s in zip(ENCODINGS[self.precision], (base, refinement), strict=True)
                ]
            layers.append(
                {
                    "name": name,
                    "class": cls,
                    "config": config,
                    "inbound": inbound,
                    "weights": [
                        {
                            "dtype": "float32",
                            "shape": list(a.shape),
                            "sha256": hashlib.sha256(p).hexdigest(),
                        }
                        for a, p in zip(self.arrays[name], parts, strict=True)
                    ],
                    "blob": entry,
                }
            )
        self.obj = {
            "format": "ionn-manifest/1",
            "name": f"staged{self.seed}",
            "inputs": [{"layer": "x", "shape": [n_in], "dtype": "float32"}],
            "outputs": ["d2:0"],
            "layers": layers,
        }

    @property
    def body(self) -> bytes:
        return canonical(self.obj)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    def blob_of(self, layer: str) -> tuple[str, bytes]:
        entry = next(x for x in self.obj["layers"] if x["name"] == layer)["blob"]
        return entry["sha256"], self.blobs[entry["sha256"]]

    def base_arrays(self, layer: str) -> list[np.ndarray]:
        weights = [W("float32", a.shape) for a in self.arrays[layer]]
        parts = decode_base("Dense", weights, self.precision, self.stages[layer][0])
        shapes = [a.shape for a in self.arrays[layer]]
        return [np.frombuffer(p, "<f4").reshape(sh) for p, sh in zip(parts, shapes, strict=True)]

    def expected(self, x: np.ndarray, base: frozenset[str] = frozenset()) -> np.ndarray:
        """The model's output in float64, ``base`` layers at base precision."""

        def w(layer: str) -> list[np.ndarray]:
            arrays = self.base_arrays(layer) if layer in base else self.arrays[layer]
            return [a.astype(np.float64) for a in arrays]

        k1, b1 = w("d1")
        h = np.maximum(x.astype(np.float64) @ k1 + b1, 0.0)
        gamma, beta, mean, var = (a.astype(np.float64) for a in self.arrays["bn"])
        h = gamma * (h - mean) / np.sqrt(var + 1e-3) + beta
        k2, b2 = w("d2")
        out: np.ndarray = h @ k2 + b2
        return out


NAMES = ["d1", "bn", "d2"]
X = np.linspace(-1.0, 1.0, IN, dtype="<f4").reshape(1, IN)


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with running_server() as srv:
        yield srv


def _session(srv: Any, key: str | None = None) -> RefPeer:
    peer = RefPeer(SocketChannel.connect("127.0.0.1", srv.port), client=True, timeout=120.0)
    peer.handshake()
    (welcome,) = hello(peer, session=key)
    assert welcome.head["m"] == "welcome"
    return peer


def _send(peer: RefPeer, model: Staged, digest: str, data: bytes, **head: Any) -> Message:
    request = {"m": "blob", "model": model.digest, "sha256": digest, "size": len(data),
               "offset": 0, **head}  # fmt: skip
    return peer.request(request, data, urgency=5, incremental=True)


def _stage(model: Staged, layer: str, index: int) -> tuple[str, bytes]:
    data = model.stages[layer][index]
    return hashlib.sha256(data).hexdigest(), data


def _load(peer: RefPeer, model: Staged, layers: list[str], precision: str | None) -> Message:
    head: dict[str, Any] = {"m": "load", "model": model.digest, "layers": layers}
    if precision is not None:
        head["precision"] = precision
    return peer.request(head)


def _query(peer: RefPeer, model: Staged, *, exact: bool = False, x: np.ndarray = X) -> Message:
    body = x.astype("<f4").tobytes()
    head: dict[str, Any] = {
        "m": "query", "model": model.digest, "qid": "q", "deadline_ms": 60_000, "run": NAMES,
        "tensors": [{"ref": "x:0", "dtype": "float32", "shape": list(x.shape),
                     "nbytes": len(body)}],
    }  # fmt: skip
    if exact:
        head["exact"] = True
    return peer.request(head, body, urgency=1)


def _output(msg: Message) -> np.ndarray:
    assert msg.head["m"] == "result", msg.head
    return np.frombuffer(msg.body, "<f4").reshape(1, -1)


def _code(msg: Message) -> str | None:
    return str(msg.head["code"]) if msg.head.get("m") == "error" else None


def _at_base(peer: RefPeer, model: Staged) -> RefPeer:
    """manifest, the BN blob, both Dense bases; load at base precision."""
    assert peer.request({"m": "manifest", "model": model.digest}, model.body).head["m"] == (
        "manifest_ok"
    )
    assert _send(peer, model, *model.blob_of("bn")).head["complete"]
    for layer in ("d1", "d2"):
        assert _send(peer, model, *_stage(model, layer, 0)).head["complete"]
    done = _load(peer, model, NAMES, "base")
    assert done.head["m"] == "load_ok", done.head
    assert done.head["layers_base"] == ["d1", "d2"]
    return peer


def _have(peer: RefPeer, model: Staged) -> dict[str, Any]:
    head = dict(peer.request({"m": "have", "model": model.digest}).head)
    assert head["m"] == "have_ok"
    return head


# ----- §10.12.1 declaration ----------------------------------------------------------------


def _tamper(kind: str) -> Staged:
    model = Staged("8bit-first", seed=11)
    layers = {x["name"]: x for x in model.obj["layers"]}
    d1, bn = layers["d1"]["blob"], layers["bn"]["blob"]
    if kind == "unknown_encoding":
        d1["stages"][0]["encoding"] = "int4-channel"
    elif kind == "mixed_precisions":
        d1["stages"][1]["encoding"] = "bf16-low"
    elif kind == "wrong_size":
        d1["stages"][1]["size"] += 4
    elif kind == "one_stage":
        d1["stages"] = d1["stages"][:1]
    elif kind == "refinement_first":
        d1["stages"].reverse()
    elif kind == "no_kernel":
        bn["stages"] = [{"encoding": "int8-channel", "size": bn["size"], "sha256": "a" * 64},
                        {"encoding": "int8-residual", "size": 0, "sha256": "b" * 64}]  # fmt: skip
    elif kind == "stage_is_the_blob":
        d1["stages"][0]["sha256"] = d1["sha256"]
    elif kind == "digest_in_two_roles":
        layers["d2"]["blob"]["stages"][1]["sha256"] = d1["stages"][0]["sha256"]
    elif kind == "extra_member":
        d1["stages"][0]["note"] = "x"
    return model


TAMPERED = ["unknown_encoding", "mixed_precisions", "wrong_size", "one_stage",
            "refinement_first", "no_kernel", "stage_is_the_blob", "digest_in_two_roles",
            "extra_member"]  # fmt: skip


@pytest.mark.spec("10.12.1")
@pytest.mark.parametrize("kind", TAMPERED)
def test_a_manifest_breaking_the_stage_rules_is_bad_manifest(server: Any, kind: str) -> None:
    peer = _session(server)
    model = _tamper(kind)
    reply = peer.request({"m": "manifest", "model": model.digest}, model.body)
    assert _code(reply) == "bad_manifest", reply.head
    good = Staged("8bit-first", seed=11)  # the same model, declared right, is accepted
    assert peer.request({"m": "manifest", "model": good.digest}, good.body).head["m"] == (
        "manifest_ok"
    )


@pytest.mark.spec("10.12")
def test_a_model_without_stages_gets_no_stage_members(server: Any) -> None:
    """A client that declares no stages meets none of §10.12 (the exact path is unchanged)."""
    model = Staged("8bit-first", seed=12)
    for layer in model.obj["layers"]:
        layer.get("blob", {}).pop("stages", None)
    peer = _session(server)
    ok = peer.request({"m": "manifest", "model": model.digest}, model.body).head
    assert ok["m"] == "manifest_ok" and "layers_base" not in ok
    for layer in NAMES:
        assert _send(peer, model, *model.blob_of(layer)).head["complete"]
    done = _load(peer, model, NAMES, None).head
    assert done["m"] == "load_ok" and "layers_base" not in done
    result = _query(peer, model)
    assert "ran_base" not in result.head
    np.testing.assert_allclose(_output(result), model.expected(X), rtol=1e-4, atol=1e-5)
    assert "layers_base" not in _have(peer, model)


# ----- §10.12.3 upload ---------------------------------------------------------------------


@pytest.mark.spec("10.12.3")
def test_a_refinement_before_its_base_is_refused_with_stage_order(server: Any) -> None:
    peer = _session(server)
    model = Staged("16bit-first", seed=1)
    assert peer.request({"m": "manifest", "model": model.digest}, model.body).head["m"] == (
        "manifest_ok"
    )
    before = _have(peer, model)
    digest, data = _stage(model, "d1", 1)
    reply = _send(peer, model, digest, data[:64], size=len(data), body_len=64)
    assert _code(reply) == "stage_order"
    assert _have(peer, model) == before  # nothing changed, not even a partial offset
    assert _send(peer, model, *_stage(model, "d1", 0)).head["complete"]
    assert _send(peer, model, digest, data).head["complete"]  # in order it goes through


@pytest.mark.spec("10.12.3")
def test_a_refinement_of_a_blob_already_held_is_answered_complete(server: Any) -> None:
    peer = _session(server)
    model = Staged("8bit-first", seed=2)
    assert peer.request({"m": "manifest", "model": model.digest}, model.body).head["m"] == (
        "manifest_ok"
    )
    blob_digest, blob = model.blob_of("d1")
    assert _send(peer, model, blob_digest, blob).head["complete"]  # the whole blob first
    digest, data = _stage(model, "d1", 1)
    reply = _send(peer, model, digest, b"", size=len(data), body_len=0)  # nothing is missing
    assert reply.head == {"m": "blob_ok", "sha256": digest, "offset": len(data), "complete": True}


@pytest.mark.spec("10.12.3")
def test_a_corrupt_refinement_is_digest_mismatch_and_changes_nothing(server: Any) -> None:
    peer = _at_base(_session(server), Staged("8bit-first", seed=3))
    model = Staged("8bit-first", seed=3)
    before = _have(peer, model)
    base_out = _output(_query(peer, model))
    digest, data = _stage(model, "d1", 1)
    corrupt = bytearray(data)
    corrupt[len(corrupt) // 2] ^= 0x40
    half = len(data) // 2
    first = _send(peer, model, digest, bytes(corrupt[:half]), size=len(data), body_len=half)
    assert first.head["offset"] == half
    assert _have(peer, model)["partial"] == {digest: half}
    rest = {"offset": half, "body_len": len(data) - half, "size": len(data)}
    assert _code(_send(peer, model, digest, bytes(corrupt[half:]), **rest)) == "digest_mismatch"
    assert _have(peer, model) == before  # the partial is gone, the blob not held
    still = _query(peer, model)
    assert still.head["ran_base"] == ["d1", "d2"]  # the layer keeps its base precision
    np.testing.assert_array_equal(_output(still), base_out)
    assert _send(peer, model, digest, data).head["complete"]  # sent again, from offset 0
    assert model.blob_of("d1")[0] in _have(peer, model)["blobs_held"]


@pytest.mark.spec("10.12.3")
def test_a_refinement_that_does_not_rebuild_the_blob_stores_nothing(server: Any) -> None:
    """Its own SHA-256 matches its declaration, but base + refinement is not the blob."""
    model = Staged("16bit-first", seed=4)
    d1 = next(x for x in model.obj["layers"] if x["name"] == "d1")["blob"]
    base, refinement = model.stages["d1"]
    wrong = bytes(len(refinement))  # zero low halves: a different blob
    d1["stages"][1]["sha256"] = hashlib.sha256(wrong).hexdigest()
    model.stages["d1"] = (base, wrong)
    peer = _at_base(_session(server), model)
    before = _have(peer, model)
    assert _code(_send(peer, model, *_stage(model, "d1", 1))) == "digest_mismatch"
    after = _have(peer, model)
    assert after == before and model.blob_of("d1")[0] not in after["blobs_held"]
    assert _code(_load(peer, model, ["d1"], None)) == "missing_blobs"
    assert _query(peer, model).head["ran_base"] == ["d1", "d2"]


# ----- §10.12.4 load ------------------------------------------------------------------------


def _bad_base(kind: str) -> Staged:
    model = Staged("16bit-first", seed=5)
    d1 = next(x for x in model.obj["layers"] if x["name"] == "d1")
    base, refinement = model.stages["d1"]
    if kind == "nan_kernel":
        bad = struct.pack("<H", 0x7FC0) + base[2:]
    else:  # the bias travels whole: it must match its own sha256 in the manifest
        bad = base[:-4] + struct.pack("<f", 0.125)
    d1["blob"]["stages"][0]["sha256"] = hashlib.sha256(bad).hexdigest()
    model.stages["d1"] = (bad, refinement)
    return model


@pytest.mark.spec("10.12.4")
@pytest.mark.parametrize("kind", ["nan_kernel", "whole_weight_digest"])
def test_a_base_that_fails_its_checks_is_not_built(server: Any, kind: str) -> None:
    model = _bad_base(kind)
    peer = _session(server)
    assert peer.request({"m": "manifest", "model": model.digest}, model.body).head["m"] == (
        "manifest_ok"
    )
    for layer in ("d1", "d2"):
        assert _send(peer, model, *_stage(model, layer, 0)).head["complete"]  # digests match
    assert _send(peer, model, *model.blob_of("bn")).head["complete"]
    reply = _load(peer, model, NAMES, "base")
    assert _code(reply) == "bad_request" and "d1" in reply.head["message"]
    assert _have(peer, model)["layers_ready"] == []  # nothing of that load was built
    assert _code(_query(peer, model)) == "layer_not_ready"


@pytest.mark.spec("10.12.4")
@pytest.mark.parametrize("precision", ["base", "exact", None])
def test_a_load_makes_a_base_layer_exact_once_its_blob_is_held(
    server: Any, precision: str | None
) -> None:
    model = Staged("8bit-first", seed=6)
    peer = _at_base(_session(server), model)
    at_base = _query(peer, model)
    assert at_base.head["ran_base"] == ["d1", "d2"]
    base_out = model.expected(X, frozenset({"d1", "d2"}))
    np.testing.assert_allclose(_output(at_base), base_out, rtol=1e-4, atol=1e-5)
    assert _send(peer, model, *_stage(model, "d2", 1)).head["complete"]
    assert _query(peer, model).head["ran_base"] == ["d1", "d2"]  # held, not loaded yet
    done = _load(peer, model, ["d2"], precision)
    assert done.head["m"] == "load_ok" and done.head["layers_base"] == ["d1"]
    mixed = _query(peer, model)
    assert mixed.head["ran_base"] == ["d1"]
    want = model.expected(X, frozenset({"d1"}))
    np.testing.assert_allclose(_output(mixed), want, rtol=1e-4, atol=1e-5)
    assert _send(peer, model, *_stage(model, "d1", 1)).head["complete"]
    assert _load(peer, model, ["d1"], precision).head["layers_base"] == []
    exact = _query(peer, model)
    assert exact.head["ran_base"] == []
    np.testing.assert_allclose(_output(exact), model.expected(X), rtol=1e-4, atol=1e-5)
    assert _have(peer, model)["layers_base"] == []


def test_a_base_load_without_the_base_is_missing_blobs(server: Any) -> None:
    model = Staged("8bit-first", seed=7)
    peer = _session(server)
    peer.request({"m": "manifest", "model": model.digest}, model.body)
    reply = _load(peer, model, ["d1"], "base")
    assert _code(reply) == "missing_blobs" and reply.head["layers"] == ["d1"]


@pytest.mark.spec("10.12.4")
@pytest.mark.slow
def test_no_query_sees_weights_change_while_it_runs(server: Any) -> None:
    """Queries from two connections run back to back while both layers are swapped in:
    every answer matches exactly the precision it reports (a query that saw a swap mid-way
    would match neither). Layers of a few MB make a query and a swap last long enough to
    overlap."""
    model = Staged("8bit-first", seed=8, dims=(512, 1024, 512))
    x = np.linspace(-1.0, 1.0, 512, dtype="<f4").reshape(1, 512)
    key = os.urandom(16).hex()
    peer = _at_base(_session(server, key), model)
    outputs = {
        frozenset(base): model.expected(x, frozenset(base))
        for base in ({"d1", "d2"}, {"d1"}, {"d2"}, set())
    }
    started = threading.Barrier(3)
    stop = threading.Event()
    seen: list[tuple[frozenset[str], np.ndarray]] = []
    failures: list[BaseException] = []

    def hammer() -> None:
        try:
            other = _session(server, key)
            for i in range(100_000):
                if i == 5:
                    started.wait(60)
                if stop.is_set():
                    return
                reply = _query(other, model, x=x)
                seen.append((frozenset(reply.head["ran_base"]), _output(reply)))
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        started.wait(60)  # both connections are sending queries
        for layer in ("d1", "d2"):
            assert _send(peer, model, *_stage(model, layer, 1)).head["complete"]
        assert _load(peer, model, ["d1", "d2"], None).head["layers_base"] == []
        for _ in range(20):  # some queries after the swaps, too
            assert _query(peer, model, x=x).head["ran_base"] == []
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures
    assert {base for base, _ in seen} >= {frozenset({"d1", "d2"})}
    for base, out in seen:  # float32 sums of 1024 terms against float64: scaled tolerance
        want = outputs[base]
        np.testing.assert_allclose(out, want, rtol=0, atol=1e-5 * np.abs(want).max())


# ----- §10.12.5 queries and results --------------------------------------------------------


def _pausing_lock() -> Any:
    """A weight lock whose first reader, once it has run and released the lock, waits in its
    worker thread for ``go`` (``ran`` tells the test it got there): the query has computed
    its output and is about to make its result, and a swap can take the lock meanwhile."""
    from ionn_net.server_stages import WeightLock

    class PausingLock(WeightLock):
        def __init__(self) -> None:
            super().__init__()
            self.ran = threading.Event()
            self.go = threading.Event()

        @contextlib.contextmanager
        def reading(self) -> Iterator[None]:
            with super().reading():
                yield
            if not self.ran.is_set():
                self.ran.set()
                self.go.wait(60)

    return PausingLock()


@pytest.mark.spec("10.12.5")
def test_ran_base_names_the_weights_a_query_ran_on_when_a_swap_lands_before_its_result(
    server: Any,
) -> None:
    """A query runs at base; before the server has made its result, the refinements arrive
    and a ``load`` swaps both layers to exact (``load_ok``: none at base). The result must
    still say that both ran at base, and its output must be the base model's: ``ran_base``
    is what the query ran on, not what the layers are when the result leaves."""
    model = Staged("8bit-first", seed=11)
    key = os.urandom(16).hex()
    peer = _at_base(_session(server, key), model)
    session = server.find_session(hashlib.sha256(key.encode()).hexdigest()[:32])
    stages = session.models[model.digest].stages
    lock = stages.lock = _pausing_lock()
    other = _session(server, key)
    replies: list[Message] = []
    query = threading.Thread(target=lambda: replies.append(_query(other, model)))
    query.start()
    try:
        assert lock.ran.wait(60), "the query never ran"
        for layer in ("d1", "d2"):
            assert _send(peer, model, *_stage(model, layer, 1)).head["complete"]
        assert _load(peer, model, ["d1", "d2"], None).head["layers_base"] == []
    finally:
        lock.go.set()
        query.join(60)
    (reply,) = replies
    base = model.expected(X, frozenset({"d1", "d2"}))
    np.testing.assert_allclose(_output(reply), base, rtol=1e-4, atol=1e-5)
    assert reply.head["ran_base"] == ["d1", "d2"]
    assert _query(peer, model).head["ran_base"] == []  # the next query runs exact


@pytest.mark.spec("10.12.5")
def test_every_result_of_a_staged_model_says_which_layers_ran_at_base(server: Any) -> None:
    model = Staged("16bit-first", seed=9)
    peer = _at_base(_session(server), model)
    reply = _query(peer, model)
    assert reply.head["ran_base"] == ["d1", "d2"]
    np.testing.assert_allclose(
        _output(reply), model.expected(X, frozenset({"d1", "d2"})), rtol=1e-4, atol=1e-5
    )
    part = peer.request(
        {"m": "query", "model": model.digest, "qid": "p", "deadline_ms": 60_000, "run": ["bn"],
         "tensors": [{"ref": "d1:0", "dtype": "float32", "shape": [1, HID], "nbytes": 4 * HID}]},
        bytes(4 * HID), urgency=1,
    )  # fmt: skip
    assert part.head["m"] == "result" and part.head["ran_base"] == []


@pytest.mark.spec("10.12.5")
def test_an_exact_query_never_runs_on_base_weights(server: Any) -> None:
    model = Staged("8bit-first", seed=10)
    peer = _at_base(_session(server), model)
    refused = _query(peer, model, exact=True)
    assert _code(refused) == "layer_not_ready"
    assert "d1" in refused.head["message"] and "d2" in refused.head["message"]
    for layer in ("d1", "d2"):
        assert _send(peer, model, *_stage(model, layer, 1)).head["complete"]
    assert _load(peer, model, ["d1", "d2"], None).head["layers_base"] == []
    exact = _query(peer, model, exact=True)
    assert exact.head["ran_base"] == []
    np.testing.assert_allclose(_output(exact), model.expected(X), rtol=1e-4, atol=1e-5)
