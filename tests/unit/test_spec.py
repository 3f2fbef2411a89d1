"""Tests of ionn_net.model.spec / schema: pure manifest validation (protocol.md §10.3).

Nothing here imports keras: every refusal is decided by pure Python before any
framework object could exist (test_layers checks that no Keras layer is built).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from tests.helpers.manifests import SHAPE_CASES, ManifestBuilder, ShapeCase, tiny_cnn

from ionn_net.errors import SpecError, UnsupportedLayerError
from ionn_net.model.graph import TensorRef
from ionn_net.model.limits import DEFAULT_LIMITS, SpecLimits
from ionn_net.model.spec import (
    FORMAT,
    LayerSpec,
    ModelManifest,
    WeightSpec,
    canonical_json,
    graph_from_manifest,
    loads_manifest,
    parse_manifest,
    split_blob,
    validate_layer,
)


def _layer(obj: dict[str, Any], name: str) -> dict[str, Any]:
    return next(layer for layer in obj["layers"] if layer["name"] == name)


def _refused(obj: object, *match: str, exc: type[SpecError] = SpecError) -> str:
    with pytest.raises(exc) as info:
        parse_manifest(obj)
    text = str(info.value)
    for m in match:
        assert m in text, text
    return text


# -- purity and the happy path ---------------------------------------------------------


def test_spec_module_is_pure() -> None:
    code = (
        "import sys, ionn_net.model.spec, ionn_net.model.schema\n"
        "bad = [m for m in ('keras', 'tensorflow') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_tiny_manifest_parses_and_graph_is_computed_by_the_server() -> None:
    obj, _ = tiny_cnn()
    m = parse_manifest(obj)
    assert [s.name for s in m.layers] == [
        "image",
        "conv1",
        "bn1",
        "dw1",
        "add1",
        "gap",
        "predictions",
    ]
    assert m.layer("dw1").inbound == (TensorRef("bn1", 0),)
    g = graph_from_manifest(m)
    assert g["conv1"].output_shapes == ((8, 8, 4),)
    assert g["conv1"].macs == 8 * 8 * 4 * 3 * 3 * 3
    assert g["conv1"].weight_bytes == (3 * 3 * 3 * 4 + 4) * 4
    assert g["dw1"].macs == 8 * 8 * 4 * 1 * 9
    assert g["gap"].output_shapes == ((4,),)
    assert g["predictions"].macs == 4 * 5
    assert g["image"].macs == 0
    assert g["conv1"].params["kernel"] == [3, 3]
    assert g["dw1"].params["depthwise"] is True
    assert g["add1"].params["call"] == {"args": [[{"tensor": 0}, {"tensor": 1}]], "kwargs": {}}
    # inside the branch bn1 -> {dw1, add1} two tensors are live: dw1 is no cut point
    assert "dw1" not in g.cut_points() and {"bn1", "add1"} <= set(g.cut_points())
    assert g.total_weight_bytes == sum(s.blob_size for s in m.layers)


def test_client_declared_shapes_are_never_used() -> None:
    obj, _ = tiny_cnn()
    # an InputLayer that disagrees with the inputs table is refused
    obj["inputs"][0]["shape"] = [16, 16, 3]
    _refused(obj, "manifest.inputs", "expected float32 [8, 8, 3]")


def test_digest_is_sha256_of_canonical_json_and_round_trips() -> None:
    obj, _ = tiny_cnn()
    m = parse_manifest(obj)
    data = m.to_json_bytes()
    assert data == json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    assert m.manifest_digest() == hashlib.sha256(data).hexdigest()
    again = loads_manifest(data, canonical=True)
    assert again == m and again.manifest_digest() == m.manifest_digest()
    with pytest.raises(SpecError, match="canonical"):
        loads_manifest(json.dumps(obj), canonical=True)  # spaces after separators
    _layer(obj, "conv1")["config"]["filters"] = 4.0  # a float is not an int
    _refused(obj, "'filters'", "an integer")
    obj2, _ = tiny_cnn(seed=1)
    assert parse_manifest(obj2).manifest_digest() != m.manifest_digest()


def test_canonical_json_refuses_nan() -> None:
    with pytest.raises(SpecError):
        canonical_json({"x": math.nan})


@pytest.mark.parametrize("case", SHAPE_CASES, ids=lambda c: f"{c.cls}-{c.config}")
def test_shape_inference_per_class(case: ShapeCase) -> None:
    spec = _spec_for(case)
    info = validate_layer(spec, case.inputs)
    assert info.output_shapes == (tuple(case.output),)
    assert [list(w.shape) for w in info.weights] == case.weights
    assert info.macs == case.macs
    assert info.params == sum(math.prod(w) for w in case.weights)


def _spec_for(case: ShapeCase) -> LayerSpec:
    weights = tuple(
        WeightSpec("int64" if (case.cls == "Normalization" and i == 2) else "float32",
                   tuple(shape), "0" * 64)
        for i, shape in enumerate(case.weights)
    )  # fmt: skip
    size = sum(w.nbytes for w in weights)
    inbound = tuple(TensorRef(f"in{i}", 0) for i in range(len(case.inputs)))
    sha = "0" * 64 if weights else None
    return LayerSpec("layer", case.cls, case.config, inbound, weights, sha, size)


# -- malicious manifests: each refused with a typed error ------------------------------


@pytest.mark.parametrize("cls", ["Lambda", "TFSMLayer", "StringLookup", "Embedding", "MyLayer"])
def test_classes_outside_the_allowlist(cls: str) -> None:
    obj, _ = tiny_cnn()
    _layer(obj, "gap")["class"] = cls
    text = _refused(obj, "layer 'gap'", cls, exc=UnsupportedLayerError)
    assert "allowlist" in text


def test_lambda_with_bytecode_config() -> None:
    obj, _ = tiny_cnn()
    _layer(obj, "gap").update(
        {"class": "Lambda", "config": {"function": ["4wEAAAAAAAAA", None, None]}}
    )
    _refused(obj, "'function'", "refused at any depth")


_CVE_ACTIVATION = {
    "module": "keras.config",
    "class_name": "set_epsilon",
    "config": {"epsilon": 1.0},
    "registered_name": "set_epsilon",
}


def test_dict_valued_activation_naming_a_function() -> None:
    obj, _ = tiny_cnn()
    _layer(obj, "predictions")["config"]["activation"] = copy.deepcopy(_CVE_ACTIVATION)
    _refused(obj, "layers[6].config.activation", "refused at any depth")


def test_dict_valued_activation_without_forbidden_keys() -> None:
    obj, _ = tiny_cnn()
    _layer(obj, "predictions")["config"]["activation"] = {"name": "relu"}
    _refused(obj, "layer 'predictions'", "'activation'", "dict-valued activation is refused")


@pytest.mark.parametrize("key", ["module", "registered_name", "class_name", "function"])
@pytest.mark.parametrize("where", ["top", "config", "nested", "weights", "inputs"])
def test_forbidden_keys_at_any_depth(key: str, where: str) -> None:
    obj, _ = tiny_cnn()
    bomb = {key: "os.system"}
    if where == "top":
        obj[key] = "x"
    elif where == "config":
        _layer(obj, "conv1")["config"][key] = "x"
    elif where == "nested":
        _layer(obj, "conv1")["config"]["kernel_size"] = [3, [bomb]]
    elif where == "weights":
        _layer(obj, "conv1")["weights"][0][key] = "x"
    else:
        obj["inputs"][0]["extra"] = [bomb]
    _refused(obj, f"key {key!r} is refused at any depth")


def test_keras_dtype_policy_dict_is_refused() -> None:
    obj, _ = tiny_cnn()
    _layer(obj, "conv1")["config"]["dtype"] = {
        "module": "keras",
        "class_name": "DTypePolicy",
        "config": {"name": "float32"},
        "registered_name": None,
    }
    _refused(obj, "refused at any depth")
    _layer(obj, "conv1")["config"]["dtype"] = {"name": "float32"}
    _refused(obj, "'dtype'", "'float32'")
    _layer(obj, "conv1")["config"]["dtype"] = "mixed_float16"
    _refused(obj, "'dtype'", "'float32'")
    _layer(obj, "conv1")["config"]["dtype"] = "float32"
    parse_manifest(obj)


@pytest.mark.parametrize(
    "key", ["kernel_initializer", "kernel_regularizer", "kernel_constraint", "trainable"]
)
def test_training_only_kwargs_are_refused(key: str) -> None:
    obj, _ = tiny_cnn()
    _layer(obj, "conv1")["config"][key] = None
    _refused(obj, "layer 'conv1'", repr(key), "unknown key")


@pytest.mark.parametrize(
    "value",
    [(1, 2), b"bytes", {1, 2}, object(), math.nan, math.inf, 1j, np.float32(1.0)],
    ids=["tuple", "bytes", "set", "object", "nan", "inf", "complex", "numpy"],
)
def test_non_json_values_are_refused(value: object) -> None:
    obj, _ = tiny_cnn()
    _layer(obj, "conv1")["config"]["filters"] = value
    _refused(obj, "manifest.layers[1].config.filters")


def test_non_string_keys_are_refused() -> None:
    obj, _ = tiny_cnn()
    _layer(obj, "conv1")["config"][3] = 1
    _refused(obj, "expected string keys")


@pytest.mark.parametrize(
    ("layer", "key", "value", "expected"),
    [
        ("predictions", "units", 2**40, "[1, 65536]"),
        ("predictions", "units", 0, "[1, 65536]"),
        ("predictions", "units", True, "an integer"),
        ("conv1", "kernel_size", [10**6, 3], "[1, 31]"),
        ("conv1", "kernel_size", [3], "a list of 2 integers"),
        ("conv1", "strides", [9, 9], "[1, 8]"),
        ("conv1", "padding", "causal", "['valid', 'same']"),
        ("conv1", "data_format", "channels_first", "['channels_last']"),
        ("conv1", "activation", "os.system", "one of"),
        ("conv1", "groups", 2, "a divisor of input channels 3"),
        ("conv1", "dilation_rate", [2, 2], None),
        ("bn1", "epsilon", 0.0, "(0.0, 1.0]"),
        ("bn1", "epsilon", 1e300, "(0.0, 1.0]"),
        ("bn1", "momentum", -0.5, "[0.0, 1.0]"),
        ("bn1", "axis", 0, "an axis"),
        ("bn1", "axis", 7, "an axis"),
    ],
)
def test_kwarg_bounds(layer: str, key: str, value: object, expected: str | None) -> None:
    obj, _ = tiny_cnn()
    _layer(obj, layer)["config"][key] = value
    if expected is None:  # dilation is fine with stride 1: still a valid manifest
        parse_manifest(obj)
        _layer(obj, layer)["config"]["strides"] = [2, 2]
        expected = "Keras refuses both"
    _refused(obj, f"layer {layer!r}", repr(key), expected)


@pytest.mark.parametrize(
    ("cls", "config", "shapes", "message"),
    [
        ("Dropout", {"rate": 1.0}, [[4]], "[0, 1)"),
        ("Rescaling", {"scale": 1e300}, [[4]], "|x| <="),
        ("Rescaling", {"scale": [1.0, 2.0]}, [[4]], "one per channel"),
        ("Reshape", {"target_shape": [7]}, [[2, 3]], "a shape with 6 elements"),
        ("Reshape", {"target_shape": [-1, -1]}, [[2, 3]], "at most one -1"),
        ("Permute", {"dims": [1, 1]}, [[2, 3]], "a permutation"),
        ("Add", {}, [[2, 3], [3, 2]], "cannot broadcast"),
        ("Concatenate", {}, [[2, 3], [3, 3]], "differ outside axis"),
        ("Subtract", {}, [[2], [2], [2]], "expected 2..2 inputs"),
        ("Conv2D", {"filters": 2, "kernel_size": [5, 5]}, [[3, 3, 1]], "smaller than"),
        ("Conv2D", {"filters": 2, "kernel_size": [1, 1]}, [[3, 3]], "rank 3"),
        ("Cropping2D", {"cropping": [[2, 2], [0, 0]]}, [[4, 4, 1]], "empties"),
        ("ZeroPadding2D", {"padding": [[10**9, 0], [0, 0]]}, [[4, 4, 1]], "[0, 256]"),
        ("UpSampling2D", {"interpolation": "lanczos5"}, [[4, 4, 1]], "['nearest', 'bilinear']"),
        ("ReLU", {"max_value": -1.0}, [[4]], "max_value"),
        ("Conv2DTranspose", {"filters": 2, "kernel_size": [3, 3], "output_padding": [1, 1]},
         [[4, 4, 1]], "output_padding"),
    ],
)  # fmt: skip
def test_schema_refusals(
    cls: str, config: dict[str, Any], shapes: list[list[int]], message: str
) -> None:
    inbound = tuple(TensorRef(f"in{i}", 0) for i in range(len(shapes)))
    with pytest.raises(SpecError, match=None) as info:
        validate_layer(LayerSpec("layer", cls, config, inbound), shapes)
    assert message in str(info.value) and "'layer'" in str(info.value)


def test_absurd_activation_bytes() -> None:
    b = ManifestBuilder()
    x = b.input("image", [65536, 65536, 3])  # each dim is legal; the tensor is 48 GiB
    _refused(b.obj([x]), "layer 'image'", "activation bytes at batch 1", "268435456")
    b = ManifestBuilder()
    x = b.input("image", [1024, 1024, 3])
    y = b.add("up", "UpSampling2D", {"size": [16, 16]}, [x])
    _refused(b.obj([y]), "layer 'up'", "activation bytes")


def test_compute_bomb_is_capped() -> None:
    # 9.4 M parameters and 256 MiB of activations (both allowed), but 6.2e11 MACs
    cfg = {"filters": 1024, "kernel_size": [3, 3], "padding": "same", "use_bias": False}
    spec = LayerSpec("conv", "Conv2D", cfg, (TensorRef("image", 0),))
    with pytest.raises(SpecError, match="multiply-accumulates at batch 1"):
        validate_layer(spec, [[256, 256, 1024]])


def test_total_caps_over_the_model() -> None:
    obj, _ = tiny_cnn()
    parse_manifest(obj)
    with pytest.raises(SpecError, match="total parameters"):
        parse_manifest(obj, SpecLimits(max_model_params=100))
    with pytest.raises(SpecError, match=r"manifest\.layers: expected 1\.\.3 items"):
        parse_manifest(obj, SpecLimits(max_layers=3))
    with pytest.raises(SpecError, match="total activation bytes"):
        parse_manifest(obj, SpecLimits(max_model_activation_bytes=4000))


def test_wrong_weight_shape_dtype_and_count() -> None:
    obj, _ = tiny_cnn()
    _layer(obj, "conv1")["weights"][0]["shape"] = [3, 3, 3, 5]
    _refused(obj, "layer 'conv1'", "weight 0 (kernel): expected float32 [3, 3, 3, 4]")
    obj, _ = tiny_cnn()
    _layer(obj, "conv1")["weights"][1]["dtype"] = "float64"
    _refused(obj, "weights[1].dtype", "['float32', 'int64']")
    obj, _ = tiny_cnn()
    _layer(obj, "conv1")["weights"][1]["dtype"] = "int64"
    _refused(obj, "weight 1 (bias): expected float32 [4]")
    obj, _ = tiny_cnn()
    _layer(obj, "conv1")["weights"].pop()
    _refused(obj, "expected 2 weight tensors")


def test_blob_fields() -> None:
    obj, _ = tiny_cnn()
    _layer(obj, "conv1")["blob"]["size"] += 1
    _refused(obj, "blob.size", "sum of weight bytes")
    obj, _ = tiny_cnn()
    _layer(obj, "conv1")["blob"]["sha256"] = "A" * 64
    _refused(obj, "blob.sha256", "64 lowercase hex")
    obj, _ = tiny_cnn()
    _layer(obj, "conv1")["weights"][0]["sha256"] = "0" * 63
    _refused(obj, "weights[0].sha256")
    obj, _ = tiny_cnn()
    del _layer(obj, "conv1")["blob"]
    _refused(obj, "layer 'conv1'", "sha256")
    obj, _ = tiny_cnn()
    _layer(obj, "gap")["blob"] = {"sha256": "0" * 64, "size": 4}
    _refused(obj, "no blob for a layer without weights")


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("predictions:0", "unknown or later layer 'predictions'"),
        ("nowhere:0", "unknown or later layer 'nowhere'"),
        ("bn1:1", "has 1 outputs, got index 1"),
        ("bn1", "'layer:index'"),
        ("bn1:-1", "'layer:index'"),
        ("bn1:01", "'layer:index'"),
        ("gap:0", "unknown or later layer 'gap'"),  # a self-reference
    ],
)
def test_inbound_references(ref: str, message: str) -> None:
    obj, _ = tiny_cnn()
    _layer(obj, "gap")["inbound"] = [ref]
    _refused(obj, message)


@pytest.mark.parametrize(
    "name",
    ["../etc/passwd", "a/b", "a\\b", "a:b", "", "x" * 65, ".hidden", "-rf", "a..b", "\uff41", "a\n",
     "caf\u00e9", "a b", "conv\x00"],
)  # fmt: skip
def test_names_with_path_or_odd_characters(name: str) -> None:
    obj, _ = tiny_cnn()
    _layer(obj, "gap")["name"] = name
    _refused(obj, "name")


@pytest.mark.parametrize("name", ["block_1_expand", "conv1_conv", "mobilenetv2_1.00_224", "a-b"])
def test_names_keras_uses_are_accepted(name: str) -> None:
    obj, _ = tiny_cnn()
    obj["name"] = name
    _layer(obj, "gap")["name"] = name
    _layer(obj, "predictions")["inbound"] = [f"{name}:0"]
    assert parse_manifest(obj).layers[5].name == name


def test_duplicates() -> None:
    obj, _ = tiny_cnn()
    _layer(obj, "gap")["name"] = "bn1"
    _layer(obj, "predictions")["inbound"] = ["bn1:0"]
    _refused(obj, "duplicate layer name")
    obj, _ = tiny_cnn()
    obj["outputs"] = ["predictions:0", "predictions:0"]
    _refused(obj, "duplicate output")


def test_structure_errors() -> None:
    obj, _ = tiny_cnn()
    _refused({**obj, "format": "keras"}, "manifest.format")
    _refused({k: v for k, v in obj.items() if k != "layers"}, "expected key 'layers'")
    _refused({**obj, "extra": 1}, "unexpected key 'extra'")
    _refused([obj], "expected an object")
    _refused({**obj, "outputs": []}, "manifest.outputs: expected 1..64 items")
    obj["inputs"][0]["dtype"] = "int32"
    _refused(obj, "manifest.inputs[0].dtype")


def test_json_too_deep_is_refused_before_decoding() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(SpecError, match="nesting depth"):
        loads_manifest(deep)
    obj, _ = tiny_cnn()
    nested: Any = 1
    for _ in range(20):
        nested = [nested]
    _layer(obj, "conv1")["config"]["kernel_size"] = nested
    _refused(obj, "nesting depth")
    # brackets inside strings do not count
    obj, _ = tiny_cnn()
    obj["name"] = "x"
    text = json.dumps(obj).replace('"name": "x"', '"name": "x"', 1)
    assert loads_manifest(text).name == "x"


@pytest.mark.timeout(30)
def test_adversarial_text_is_decoded_in_linear_time() -> None:
    # escaped quotes that never close: quadratic for a naive regex pre-scan
    for text in ['"' + '\\"' * 2_000_000, "[" * 4_000_000, '{"a":' * 1_000_000]:
        with pytest.raises(SpecError):
            loads_manifest(text)


def test_cyclic_or_deep_hand_built_config_is_refused() -> None:
    loop: list[object] = []
    loop.append(loop)
    deep: object = 1
    for _ in range(100_000):
        deep = (deep,)
    for value in (loop, deep):
        spec = LayerSpec("d", "Dense", {"units": value}, (TensorRef("x", 0),))
        with pytest.raises(SpecError, match="nesting depth"):
            validate_layer(spec, [[4]])


def test_self_referencing_object_terminates() -> None:
    obj, _ = tiny_cnn()
    loop: list[object] = []
    loop.append(loop)
    _layer(obj, "conv1")["config"]["kernel_size"] = loop
    _refused(obj, "nesting depth")


def test_loads_manifest_refusals() -> None:
    obj, _ = tiny_cnn()
    text = json.dumps(obj)
    assert loads_manifest(text.encode()).name == "tiny"
    with pytest.raises(SpecError, match="at most 100 bytes"):
        loads_manifest(text, SpecLimits(max_json_bytes=100))
    with pytest.raises(SpecError, match="finite"):
        loads_manifest(text.replace('"epsilon": 0.001', '"epsilon": NaN'))
    with pytest.raises(SpecError, match="duplicate key"):
        loads_manifest(text.replace('"units": 5', '"units": 5, "units": 6'))
    with pytest.raises(SpecError, match="UTF-8"):
        loads_manifest(b"\xff\xfe" + text.encode())
    with pytest.raises(SpecError, match="expected JSON"):
        loads_manifest(text[:-1])
    with pytest.raises(SpecError, match="expected bytes or str"):
        loads_manifest(obj)  # type: ignore[arg-type]
    long_name = text.replace('"tiny"', '"' + "t" * 300 + '"')
    with pytest.raises(SpecError, match="at most 256 characters"):
        loads_manifest(long_name)


# -- LocalOnly nodes -------------------------------------------------------------------


def _with_local_only(dtype: str = "float32") -> dict[str, Any]:
    obj, _ = tiny_cnn()
    gap = _layer(obj, "gap")
    gap.update({"class": "LocalOnly", "config": {"output_shapes": [[4]], "output_dtype": dtype}})
    return obj


def test_local_only_node_declares_its_outputs() -> None:
    m = parse_manifest(_with_local_only())
    g = graph_from_manifest(m)
    assert g["gap"].cls == "LocalOnly" and g["gap"].output_shapes == ((4,),)
    assert g["gap"].macs == 0 and g["gap"].weight_bytes == 0
    assert g["predictions"].output_shapes == ((5,),)


def test_local_only_output_must_fit_its_consumers() -> None:
    obj = _with_local_only()
    _layer(obj, "gap")["config"]["output_shapes"] = [[7]]
    _refused(obj, "layer 'predictions'", "weight 0 (kernel): expected float32 [7, 5]")
    obj = _with_local_only("int32")
    _refused(obj, "layer 'predictions'", "expected a float32 tensor, got int32")
    obj = _with_local_only()
    _layer(obj, "gap")["config"]["output_shapes"] = [[2**30]]
    _refused(obj, "layer 'gap'")
    obj = _with_local_only()
    _layer(obj, "gap")["inbound"] = []
    _refused(obj, "layer 'gap'", "inputs")


# -- hand-built LayerSpec objects (the path build_layer re-validates) ------------------


@pytest.mark.parametrize(
    "config",
    [
        {"filters": lambda: 1, "kernel_size": [1, 1]},
        {"filters": 2, "kernel_size": (1, object())},
        {"filters": 2, "kernel_size": [1, 1], "activation": {"module": "os"}},
    ],
)
def test_validate_layer_refuses_non_json_configs(config: dict[str, Any]) -> None:
    spec = LayerSpec("c", "Conv2D", config, (TensorRef("x", 0),))
    with pytest.raises(SpecError):
        validate_layer(spec, [[4, 4, 1]])


def test_validate_layer_checks_input_shapes() -> None:
    spec = LayerSpec("d", "Dense", {"units": 2}, (TensorRef("x", 0),))
    for shapes in ([[0]], [[-1]], [["3"]], "abc", [[2**40]], [[1] * 9], [[3], [3]]):
        with pytest.raises(SpecError):
            validate_layer(spec, shapes)  # type: ignore[arg-type]


def test_graph_from_manifest_revalidates() -> None:
    m = parse_manifest(tiny_cnn()[0])
    bad = LayerSpec("gap", "Lambda", {}, (TensorRef("add1", 0),))
    layers = tuple(bad if s.name == "gap" else s for s in m.layers)
    with pytest.raises(UnsupportedLayerError):
        graph_from_manifest(ModelManifest(m.name, m.inputs, m.outputs, layers))


# -- blobs -----------------------------------------------------------------------------


def test_split_blob_returns_checked_copies() -> None:
    obj, b = tiny_cnn()
    m = parse_manifest(obj)
    spec = m.layer("conv1")
    assert spec.blob_sha256 is not None
    raw = bytearray(b.blobs[spec.blob_sha256])
    arrays = split_blob(spec, memoryview(raw))
    for got, want in zip(arrays, b.arrays["conv1"], strict=True):
        assert got.dtype == np.float32 and got.flags.c_contiguous
        assert np.array_equal(got, want)
    raw[:4] = b"\xff\xff\xff\xff"  # the arrays must not alias the buffer
    assert np.array_equal(arrays[0], b.arrays["conv1"][0])


def test_split_blob_refusals() -> None:
    obj, b = tiny_cnn()
    spec = parse_manifest(obj).layer("conv1")
    assert spec.blob_sha256 is not None
    blob = b.blobs[spec.blob_sha256]
    with pytest.raises(SpecError, match=f"expected {len(blob)} bytes, got {len(blob) - 1}"):
        split_blob(spec, blob[:-1])
    tampered = bytes([blob[0] ^ 1]) + blob[1:]
    with pytest.raises(SpecError, match="blob: SHA-256 does not match"):
        split_blob(spec, tampered)
    with pytest.raises(SpecError, match="expected bytes"):
        split_blob(spec, "text")  # type: ignore[arg-type]


def test_split_blob_checks_each_weight_digest() -> None:
    # a consistent blob digest over different weights: the per-weight digest catches it
    obj, b = tiny_cnn()
    spec = parse_manifest(obj).layer("conv1")
    assert spec.blob_sha256 is not None
    blob = bytearray(b.blobs[spec.blob_sha256])
    blob[-4:] = np.float32(7.0).tobytes()
    forged = LayerSpec(spec.name, spec.cls, spec.config, spec.inbound, spec.weights,
                       hashlib.sha256(blob).hexdigest(), spec.blob_size)  # fmt: skip
    with pytest.raises(SpecError, match="weight 1: SHA-256 does not match"):
        split_blob(forged, bytes(blob))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_split_blob_refuses_non_finite_weights(bad: float) -> None:
    b = ManifestBuilder()
    x = b.input("x", [3])
    bias = np.array([0.0, bad, 1.0], dtype=np.float32)
    y = b.add("d", "Dense", {"units": 3}, [x], [np.eye(3, dtype=np.float32), bias])
    spec = parse_manifest(b.obj([y])).layer("d")
    assert spec.blob_sha256 is not None
    with pytest.raises(SpecError, match="weight 1: expected finite values"):
        split_blob(spec, b.blobs[spec.blob_sha256])


def test_normalization_count_is_int64() -> None:
    b = ManifestBuilder()
    x = b.input("x", [4, 3])
    weights = [np.ones(3, np.float32), np.ones(3, np.float32), np.array(9, dtype=np.int64)]
    y = b.add("norm", "Normalization", {"axis": [-1]}, [x], weights)
    spec = parse_manifest(b.obj([y])).layer("norm")
    assert spec.blob_sha256 is not None
    arrays = split_blob(spec, b.blobs[spec.blob_sha256])
    assert arrays[2].shape == () and arrays[2].dtype == np.int64 and int(arrays[2]) == 9


def test_default_limits_admit_vgg16_sized_layers() -> None:
    # VGG16's fc1: 25088 x 4096 = 102.8 M parameters in one layer
    spec = LayerSpec(
        "fc1", "Dense", {"units": 4096}, (TensorRef("flatten", 0),),
        (WeightSpec("float32", (25088, 4096), "0" * 64), WeightSpec("float32", (4096,), "0" * 64)),
        "0" * 64, (25088 * 4096 + 4096) * 4,
    )  # fmt: skip
    info = validate_layer(spec, [[25088]], DEFAULT_LIMITS)
    assert info.params == 25088 * 4096 + 4096
    assert FORMAT == "ionn-manifest/1"
