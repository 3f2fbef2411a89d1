"""Tests of ionn_net.model.layers: Keras model -> manifest -> rebuilt Keras layers.

Round trips must give bit-identical weights and outputs; every malicious spec must be
refused before a single Keras layer is constructed, and no refusal may change a
process-global Keras setting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import pytest
from tests.helpers.manifests import SHAPE_CASES, ManifestBuilder, ShapeCase, encode_weights

from ionn_net.errors import SpecError, UnsupportedLayerError
from ionn_net.model import layers as layers_mod
from ionn_net.model.graph import LayerGraph, TensorRef
from ionn_net.model.keras_graph import CALL_KEY, fill_call, graph_from_keras, model_operations
from ionn_net.model.layers import build_layer, build_layers, extract_manifest
from ionn_net.model.schema import ACTIVATIONS
from ionn_net.model.spec import (
    LayerSpec,
    WeightSpec,
    graph_from_manifest,
    loads_manifest,
    parse_manifest,
)

L = keras.layers
_EPSILON = keras.config.epsilon()


@pytest.fixture
def constructions(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Records the class of every Keras layer constructed while the test runs."""
    seen: list[str] = []
    original = keras.layers.Layer.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(type(self).__name__)
        original(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Layer, "__init__", counting)
    yield seen


def _assemble(graph: LayerGraph, built: dict[str, Any]) -> keras.Model:
    """A functional model calling the rebuilt layers in the server graph's order."""
    tensors: dict[TensorRef, Any] = {}
    inputs = []
    for node in graph:
        if node.cls == "InputLayer":
            x = keras.Input(shape=node.output_shapes[0], name=f"{node.name}_in")
            inputs.append(x)
            tensors[TensorRef(node.name, 0)] = x
            continue
        args, kwargs = fill_call(node.params[CALL_KEY], [tensors[r] for r in node.inbound])
        tensors[TensorRef(node.name, 0)] = built[node.name](*args, **kwargs)
    outputs = [tensors[r] for r in graph.outputs]
    if len(inputs) == 1 and len(outputs) == 1:  # same structure as the originals
        return keras.Model(inputs[0], outputs[0])
    return keras.Model(inputs, outputs)


def _randomize(model: keras.Model, seed: int = 0) -> None:
    """Perturb every float weight (so no two BN layers or biases are trivially equal)
    while keeping the scale Keras initialized, so deep models stay finite."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        new = []
        for w in layer.get_weights():
            if w.dtype != np.float32:
                new.append(w)
                continue
            noisy = rng.uniform(0.9, 1.1, w.shape) * w + rng.normal(0.0, 0.01, w.shape)
            noisy = np.abs(noisy) if w.min() > 0 else noisy  # keep variances positive
            new.append(noisy.astype(np.float32))
        layer.set_weights(new)


def _small_cnn() -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(4, 3, activation="relu", name="conv"),
            L.BatchNormalization(name="bn"),
            L.MaxPooling2D(name="pool"),
            L.Flatten(name="flat"),
            L.Dropout(0.3, name="drop"),
            L.Dense(10, activation="softmax", name="out"),
        ],
        name="small_cnn",
    )
    _randomize(model)
    return model


def _round_trip(model: keras.Model, x: np.ndarray) -> dict[str, Any]:
    manifest, blobs, local_only = extract_manifest(model)
    assert local_only == {}
    text = manifest.to_json_bytes().decode()
    server = loads_manifest(text, canonical=True)  # what a server receives and checks
    built = build_layers(server, blobs)
    originals = model_operations(model)
    for name, layer in built.items():
        assert layer is not originals.get(name)
        want = getattr(originals[name], "get_weights", list)()  # raw ops have no weights
        got = layer.get_weights()
        assert len(got) == len(want) and all(
            np.array_equal(g, w) and g.dtype == w.dtype for g, w in zip(got, want, strict=True)
        ), name
    rebuilt = _assemble(graph_from_manifest(server), built)
    want = np.asarray(model(x, training=False))  # eager: no tf.function tracing to pay for
    assert np.isfinite(want).all()
    assert np.array_equal(np.asarray(rebuilt(x, training=False)), want)
    return built


def test_small_sequential_cnn_round_trip() -> None:
    model = _small_cnn()
    x = np.random.default_rng(1).standard_normal((3, 8, 8, 1)).astype(np.float32)
    built = _round_trip(model, x)
    assert set(built) == set(model_operations(model))
    assert built["conv"].activation is keras.activations.relu
    assert built["out"].activation is keras.activations.softmax


@pytest.mark.slow
@pytest.mark.parametrize("app", ["MobileNetV2", "MobileNetV3Small"])
def test_application_round_trip(app: str) -> None:
    model = getattr(keras.applications, app)(weights=None, input_shape=(224, 224, 3))
    _randomize(model)
    x = np.random.default_rng(2).random((2, 224, 224, 3), dtype=np.float32) * 255
    built = _round_trip(model, x)
    if app == "MobileNetV3Small":  # its `x + 3` and `x * (1/6)` are raw Keras ops
        raw = [op.name for op in model.operations if not isinstance(op, keras.layers.Layer)]
        assert raw and all(type(built[n]).__name__ == "Rescaling" for n in raw)


# One model per feature family (MobileNetV2/V3 are round-tripped above; all eleven
# supported applications are checked by bench/spec_apps.py, which is too slow here).
_APPS = ["InceptionV3", "Xception", "EfficientNetB0", "NASNetMobile"]


@pytest.mark.slow
def test_applications_convert_fully() -> None:
    """Extract + validate (no rebuild): the server's own shapes, MACs and weight bytes
    equal what keras_graph reads from Keras, and nothing is left local."""
    for app in _APPS:
        kwargs = {"input_shape": (224, 224, 3)} if app.startswith("MobileNetV3") else {}
        model = getattr(keras.applications, app)(weights=None, **kwargs)
        manifest, blobs, local_only = extract_manifest(model)
        assert local_only == {}, app
        server = graph_from_manifest(loads_manifest(manifest.to_json_bytes(), canonical=True))
        client = graph_from_keras(model)
        assert server.order == client.order, app
        for node in client:
            mine = server[node.name]
            assert mine.output_shapes == node.output_shapes, (app, node.name)
            assert mine.macs == node.macs and mine.weight_bytes == node.weight_bytes, node.name
        sizes = {s.blob_sha256: s.blob_size for s in manifest.layers if s.blob_sha256}
        assert {k: len(v) for k, v in blobs.items()} == sizes, app  # identical blobs dedupe
        assert sum(s.blob_size for s in manifest.layers) == server.total_weight_bytes
        del model


# -- extraction keeps what it cannot express local ------------------------------------


class Conv2D(L.Conv2D):  # a look-alike: same class name, different code
    def call(self, inputs: Any) -> Any:
        return super().call(inputs) * 2.0


def test_extraction_marks_unsupported_nodes_local_only() -> None:
    inp = keras.Input((6, 6, 2), name="image")
    x = L.Conv2D(3, 3, name="c1")(inp)
    y = L.Lambda(lambda t: t * 3.0, name="triple")(x)
    z = Conv2D(3, 1, name="lookalike")(y)
    n = L.Normalization(mean=[1.0, 2.0, 3.0], variance=[1.0, 1.0, 1.0], name="fixed_norm")(z)
    d = L.Dropout(0.5, name="always_drop")(n, training=True)
    out = L.Dense(4, name="head")(L.Flatten(name="flat")(d))
    model = keras.Model(inp, out, name="mixed")
    manifest, _blobs, local_only = extract_manifest(model)
    assert set(local_only) == {"triple", "lookalike", "fixed_norm", "always_drop"}
    assert "not in the allowlist" in local_only["triple"]
    assert "not in the allowlist" in local_only["lookalike"]
    assert "mean" in local_only["fixed_norm"]
    assert "training" in local_only["always_drop"]
    spec = manifest.layer("triple")
    assert spec.cls == "LocalOnly" and spec.weights == ()
    graph = graph_from_manifest(manifest)
    assert graph["triple"].output_shapes == ((4, 4, 3),)
    assert graph["head"].output_shapes == ((4,),)
    assert json.dumps(manifest.to_json_obj()).count("Lambda") == 0


def test_extraction_keeps_non_float32_layers_local() -> None:
    inp = keras.Input((5,), name="x")
    h = L.Dense(3, dtype="mixed_float16", name="half")(inp)
    out = L.Dense(2, name="after")(h)
    _manifest, _blobs, local_only = extract_manifest(keras.Model(inp, out))
    assert "float32" in local_only["half"]
    assert "input dtypes" in local_only["after"]


def test_raw_scalar_ops_become_exact_rescaling() -> None:
    inp = keras.Input((4, 4, 2), name="x")
    a = inp + 3.0
    b = 2.5 * a
    c = 1.0 - b
    d = c - 0.25
    e = L.Add(name="merge")([d, a])
    f = e * d  # two tensors: the Multiply merge layer
    model = keras.Model(inp, f)
    manifest, blobs, local_only = extract_manifest(model)
    assert local_only == {}
    classes = [s.cls for s in manifest.layers]
    assert classes.count("Rescaling") == 4 and classes[-1] == "Multiply"
    built = build_layers(manifest, blobs)
    rebuilt = _assemble(graph_from_manifest(manifest), built)
    x = np.random.default_rng(3).standard_normal((2, 4, 4, 2)).astype(np.float32)
    want = np.asarray(model(x, training=False))
    assert np.array_equal(np.asarray(rebuilt(x, training=False)), want)


def test_model_level_problems_raise() -> None:
    with pytest.raises(SpecError, match="fixed"):
        extract_manifest(keras.applications.MobileNetV3Small(weights=None))
    shared = L.Dense(3, name="shared")
    inp = keras.Input((3,))
    with pytest.raises(SpecError, match="more than once"):
        extract_manifest(keras.Model(inp, shared(shared(inp))))
    inp = keras.Input((3,), name="bad name")
    with pytest.raises(SpecError, match="name"):
        extract_manifest(keras.Model(inp, L.Dense(2)(inp)))


# -- build_layer agrees with Keras on every allowlisted class --------------------------


def _case_spec(case: ShapeCase, seed: int = 0) -> tuple[LayerSpec, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    arrays = []
    for i, shape in enumerate(case.weights):
        if case.cls == "Normalization" and i == 2:
            arrays.append(np.array(7, dtype=np.int64))
        else:
            arrays.append(np.asarray(np.abs(rng.standard_normal(shape)) + 0.1, np.float32))
    entries, blob = encode_weights(arrays)
    weights = tuple(WeightSpec(e["dtype"], tuple(e["shape"]), e["sha256"]) for e in entries)
    sha = hashlib.sha256(blob).hexdigest() if arrays else None
    inbound = tuple(TensorRef(f"in{i}", 0) for i in range(len(case.inputs)))
    spec = LayerSpec("layer", case.cls, case.config, inbound, weights, sha, len(blob))
    return spec, arrays


@pytest.mark.parametrize("case", SHAPE_CASES, ids=lambda c: f"{c.cls}-{c.config}")
def test_build_layer_matches_keras(case: ShapeCase) -> None:
    spec, arrays = _case_spec(case)
    layer = build_layer(spec, case.inputs, arrays)  # raises if Keras disagrees on shape
    assert type(layer) is getattr(keras.layers, case.cls)
    assert [list(w.shape) for w in layer.get_weights()] == case.weights
    assert all(np.array_equal(g, w) for g, w in zip(layer.get_weights(), arrays, strict=True))
    xs = [np.ones((1, *s), np.float32) for s in case.inputs]
    y = layer(xs if len(xs) > 1 else xs[0])
    assert list(y.shape[1:]) == case.output


def test_build_layer_ignores_keras_global_defaults() -> None:
    spec, arrays = _case_spec(SHAPE_CASES[0])
    keras.config.set_image_data_format("channels_first")
    try:
        layer = build_layer(spec, SHAPE_CASES[0].inputs, arrays)
    finally:
        keras.config.set_image_data_format("channels_last")
    assert layer.data_format == "channels_last" and layer.dtype == "float32"


def test_activation_table_matches_keras_names() -> None:
    for name in ACTIVATIONS:
        assert layers_mod._ACTIVATIONS[name] is keras.activations.get(name), name


def test_constructions_fixture_counts(constructions: list[str]) -> None:
    spec, arrays = _case_spec(SHAPE_CASES[0])
    build_layer(spec, SHAPE_CASES[0].inputs, arrays)
    assert "Conv2D" in constructions


# -- malicious specs: refused before any Keras object exists ---------------------------


def _dense_spec(**changes: Any) -> tuple[LayerSpec, list[np.ndarray]]:
    case = ShapeCase("Dense", {"units": 3}, [[4]], [3], [[4, 3], [3]], 12)
    spec, arrays = _case_spec(case)
    return dataclasses.replace(spec, **changes), arrays


_CVE = {"module": "keras.config", "class_name": "set_epsilon", "config": {"epsilon": 1.0}}


@pytest.mark.parametrize(
    ("changes", "shapes", "error"),
    [
        ({"cls": "Lambda"}, [[4]], UnsupportedLayerError),
        ({"cls": "TFSMLayer"}, [[4]], UnsupportedLayerError),
        ({"cls": "LocalOnly", "config": {"output_shapes": [[3]]}}, [[4]], SpecError),
        ({"config": {"units": 3, "activation": _CVE}}, [[4]], SpecError),
        ({"config": {"units": 3, "activation": {"name": "relu"}}}, [[4]], SpecError),
        ({"config": {"units": 3, "extra": [[{"registered_name": "x"}]]}}, [[4]], SpecError),
        ({"config": {"units": 3, "kernel_initializer": "zeros"}}, [[4]], SpecError),
        ({"config": {"units": 2**40}}, [[4]], SpecError),
        ({"config": {"units": 3, "dtype": "float64"}}, [[4]], SpecError),
        ({"name": "../../etc/passwd"}, [[4]], SpecError),
        ({"name": "a:b"}, [[4]], SpecError),
        ({"config": {"units": 3, "deep": [[[[[[[[[[[1]]]]]]]]]]]}}, [[4]], SpecError),
        ({}, [[5]], SpecError),  # declared kernel [4, 3] but the input has 5 features
        ({}, [[4], [4]], SpecError),  # two input shapes for one inbound reference
    ],
)
def test_malicious_specs_build_nothing(
    constructions: list[str],
    changes: dict[str, Any],
    shapes: list[list[int]],
    error: type[Exception],
) -> None:
    spec, arrays = _dense_spec(**changes)
    with pytest.raises(error):
        build_layer(spec, shapes, arrays)
    assert constructions == []
    assert keras.config.epsilon() == _EPSILON


def test_huge_kernel_and_activation_bomb_build_nothing(constructions: list[str]) -> None:
    conv = LayerSpec("c", "Conv2D", {"filters": 2, "kernel_size": [10**6, 10**6]},
                     (TensorRef("x", 0),))  # fmt: skip
    with pytest.raises(SpecError, match="kernel_size"):
        build_layer(conv, [[8, 8, 1]], [])
    up = LayerSpec("u", "UpSampling2D", {"size": [16, 16]}, (TensorRef("x", 0),))
    with pytest.raises(SpecError, match="activation bytes"):
        build_layer(up, [[4096, 4096, 3]], [])
    assert constructions == []


@pytest.mark.parametrize("problem", ["shape", "dtype", "digest", "nan", "count", "type"])
def test_bad_weights_build_nothing(constructions: list[str], problem: str) -> None:
    spec, arrays = _dense_spec()
    if problem == "shape":
        arrays[0] = arrays[0].reshape(3, 4)
    elif problem == "dtype":
        arrays[0] = arrays[0].astype(np.float64)
    elif problem == "digest":
        arrays[0] = arrays[0] + 1.0
    elif problem == "nan":  # a spec whose digests really describe a NaN weight
        arrays[1] = np.array([0.0, np.nan, 1.0], np.float32)
        entries, blob = encode_weights(arrays)
        weights = tuple(WeightSpec(e["dtype"], tuple(e["shape"]), e["sha256"]) for e in entries)
        spec = dataclasses.replace(
            spec, weights=weights, blob_sha256=hashlib.sha256(blob).hexdigest()
        )
    elif problem == "count":
        arrays = arrays[:1]
    else:
        arrays = "not a list"  # type: ignore[assignment]
    with pytest.raises(SpecError):
        build_layer(spec, [[4]], arrays)
    assert constructions == []


def test_bad_manifests_build_nothing(constructions: list[str]) -> None:
    b = ManifestBuilder()
    x = b.input("x", [4])
    rng = np.random.default_rng(0)
    w = [rng.standard_normal((4, 3)).astype(np.float32), np.zeros(3, np.float32)]
    y = b.add("d", "Dense", {"units": 3}, [x], w)
    obj = b.obj([y])
    manifest = parse_manifest(obj)
    obj["layers"][1]["inbound"] = ["d:0"]  # a reference to itself (a later layer)
    with pytest.raises(SpecError, match="unknown or later layer"):
        parse_manifest(obj)
    forged = dataclasses.replace(manifest.layers[1], inbound=(TensorRef("ghost", 0),))
    bad = dataclasses.replace(manifest, layers=(manifest.layers[0], forged))
    with pytest.raises(SpecError, match="ghost"):
        build_layers(bad, b.blobs)
    with pytest.raises(SpecError, match="nesting depth"):
        loads_manifest("[" * 50_000 + "]" * 50_000)
    with pytest.raises(SpecError, match="missing"):
        build_layers(manifest, {})
    assert constructions == []


def test_cve_payload_never_changes_epsilon(constructions: list[str]) -> None:
    b = ManifestBuilder()
    x = b.input("x", [4])
    y = b.add("d", "Dense", {"units": 3, "activation": dict(_CVE)}, [x],
              [np.ones((4, 3), np.float32), np.zeros(3, np.float32)])  # fmt: skip
    with pytest.raises(SpecError, match="refused at any depth"):
        parse_manifest(b.obj([y]))
    with pytest.raises(SpecError):
        loads_manifest(json.dumps(b.obj([y])))
    assert constructions == []
    assert keras.config.epsilon() == _EPSILON


def test_epsilon_unchanged_after_all_refusals() -> None:
    # runs last in this module (pytest keeps file order): nothing above touched it
    assert keras.config.epsilon() == _EPSILON == 1e-7
