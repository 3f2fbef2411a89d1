"""Hypothesis fuzzing of the manifest validator: whatever arrives, the only outcomes
are a validated manifest or a :class:`SpecError` (or subclass), never another
exception, a hang or a crash (protocol.md §10.3.2). And what must be refused is: input
that holds a key naming code or a class at any depth, a non-finite number or a value
that is not JSON is never accepted, and each known-bad edit of a valid manifest is
refused for its own reason (a validator that accepted everything would fail here)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.helpers.manifests import SHAPE_CASES, tiny_cnn

from ionn_net.errors import SpecError, UnsupportedLayerError
from ionn_net.model.graph import TensorRef
from ionn_net.model.schema import SCHEMAS
from ionn_net.model.spec import (
    FORBIDDEN_KEYS,
    FORMAT,
    LayerSpec,
    ModelManifest,
    WeightSpec,
    graph_from_manifest,
    loads_manifest,
    parse_manifest,
    split_blob,
    validate_layer,
)
from ionn_net.model.stages import StageSpec

FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_KEYS = sorted(
    {
        "format", "name", "inputs", "outputs", "layers", "class", "config", "inbound",
        "weights", "blob", "dtype", "shape", "sha256", "size", "layer", "module",
        "class_name", "registered_name", "function", "filters", "kernel_size", "strides",
        "padding", "activation", "units", "axis", "rate", "scale", "offset", "pool_size",
        "target_shape", "dims", "output_shapes", "use_bias", "epsilon", "groups",
    }
)  # fmt: skip
_INTS = st.sampled_from([0, 1, -1, 3, 8, 2**31, 2**63, -(2**63), 10**30, 2**1100])
_FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e-300, 1e300])
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | _INTS
    | _FLOATS
    | st.text(max_size=20)
    | st.sampled_from([*sorted(SCHEMAS), "Lambda", "conv1:0", "x" * 300, "a" * 64])
)
_ODD = st.sampled_from([(1, 2), b"bytes", frozenset({1}), object(), 1j, np.float32(2.0)])
_JSONISH = st.recursive(
    _SCALARS | _ODD,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


def _outcome(fn: Any, *args: Any) -> object:
    """Call ``fn``; a SpecError is an accepted outcome (None), anything else propagates."""
    try:
        return fn(*args)
    except SpecError:
        return None


_JSON_SCALARS = (str, int, float, bool, type(None))


def _must_refuse(obj: object, *, config: bool = False) -> str | None:
    """Why ``obj`` can never be (part of) an accepted manifest, or None: a key of
    FORBIDDEN_KEYS at any depth, a non-finite float, a value that is not JSON (a tuple
    counts as a list: hand-built specs freeze lists), and with ``config`` (a layer's
    config, whose members are primitives or lists of them) any nested object."""
    todo: list[tuple[object, int]] = [(obj, 0)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, dict):
            if config and depth > 0:
                return "a dict inside a layer config"
            for key, item in value.items():
                if key in FORBIDDEN_KEYS:
                    return f"forbidden key {key!r}"
                todo.append((item, depth + 1))
        elif isinstance(value, list | tuple):
            todo.extend((item, depth + 1) for item in value)
        elif not isinstance(value, _JSON_SCALARS):
            return f"not JSON: {type(value).__name__}"
        elif isinstance(value, float) and not math.isfinite(value):
            return f"non-finite {value}"
    return None


def _check_refused(outcome: object, obj: object, *, config: bool = False) -> None:
    reason = _must_refuse(obj, config=config)
    assert reason is None or outcome is None, f"accepted despite {reason}: {obj!r:.300}"


@FUZZ
@given(_JSONISH)
def test_random_objects(obj: object) -> None:
    manifest = _outcome(parse_manifest, obj)
    _check_refused(manifest, obj)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        assert manifest is None, obj


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(obj: Any, data: st.DataObject) -> Any:
    path = data.draw(st.sampled_from(_paths(obj)))
    if not path:
        return data.draw(_JSONISH)
    parent = obj
    for p in path[:-1]:
        parent = parent[p]
    key = path[-1]
    action = data.draw(st.sampled_from(["replace", "delete", "insert", "extreme", "dup"]))
    if action == "delete" and isinstance(parent, dict):
        del parent[key]
    elif action == "delete" and isinstance(parent, list):
        parent.pop(key)
    elif action == "insert" and isinstance(parent, dict):
        parent[data.draw(st.sampled_from(_KEYS))] = data.draw(_JSONISH)
    elif action == "dup" and isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]))
    elif action == "extreme":
        parent[key] = data.draw(_INTS | _FLOATS)
    else:
        parent[key] = data.draw(_JSONISH)
    return obj


def _local_variant() -> dict[str, Any]:
    obj, _ = tiny_cnn()
    gap = next(layer for layer in obj["layers"] if layer["name"] == "gap")
    gap.update({"class": "LocalOnly", "config": {"output_shapes": [[4]]}})
    return obj


@FUZZ
@given(st.data(), st.booleans())
def test_mutated_valid_manifests(data: st.DataObject, local: bool) -> None:
    obj = _local_variant() if local else tiny_cnn()[0]
    for _ in range(data.draw(st.integers(1, 3))):
        obj = _mutate(obj, data)
    manifest = _outcome(parse_manifest, obj)
    _check_refused(manifest, obj)
    if isinstance(manifest, ModelManifest):  # a harmless mutation: everything still holds
        graph = graph_from_manifest(manifest)
        assert len(graph) == len(manifest.layers)
        assert loads_manifest(manifest.to_json_bytes(), canonical=True) == manifest


@FUZZ
@given(st.data())
def test_mutated_manifest_text(data: st.DataObject) -> None:
    text = bytearray(json.dumps(tiny_cnn()[0]).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(text) - 1))
        text[i] = data.draw(st.sampled_from(b'[]{}:,"0123456789.-eE \\naNI\xff'))
    manifest = _outcome(loads_manifest, bytes(text))
    try:
        obj = json.loads(bytes(text))
    except ValueError:  # not JSON (UnicodeDecodeError included): nothing to accept
        assert manifest is None, bytes(text)
        return
    _check_refused(manifest, obj)


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_random_text(data: bytes | str) -> None:
    # The smallest valid manifest is ~190 bytes of exact JSON: never drawn at random.
    assert _outcome(loads_manifest, data) is None, data


@FUZZ
@given(
    st.sampled_from(sorted(SCHEMAS)),
    st.dictionaries(st.sampled_from(_KEYS), _JSONISH, max_size=6),
    st.lists(st.lists(st.integers(-2, 70), min_size=0, max_size=4), min_size=0, max_size=3),
)
def test_random_layer_configs(cls: str, config: dict[str, Any], shapes: list[list[int]]) -> None:
    inbound = tuple(TensorRef(f"in{i}", 0) for i in range(len(shapes)))
    info = _outcome(validate_layer, LayerSpec("layer", cls, config, inbound), shapes)
    _check_refused(info, config, config=True)


@FUZZ
@given(st.sampled_from(SHAPE_CASES), st.data())
def test_perturbed_shape_cases(case: Any, data: st.DataObject) -> None:
    config = copy.deepcopy(case.config)
    if config:
        key = data.draw(st.sampled_from(sorted(config)))
        config[key] = data.draw(_JSONISH)
    shapes = [[data.draw(st.integers(1, 40)) for _ in s] for s in case.inputs]
    inbound = tuple(TensorRef(f"in{i}", 0) for i in range(len(shapes)))
    info = _outcome(validate_layer, LayerSpec("layer", case.cls, config, inbound), shapes)
    _check_refused(info, config, config=True)


@FUZZ
@given(st.binary(max_size=700), st.data())
def test_split_blob_random(blob: bytes, data: st.DataObject) -> None:
    obj, b = tiny_cnn()
    spec = parse_manifest(obj).layer("conv1")
    if data.draw(st.booleans()):
        weights = tuple(
            WeightSpec(
                data.draw(st.sampled_from(["float32", "int64", "float64", "<f4", ""])),
                tuple(data.draw(st.lists(st.integers(-1, 2**40), max_size=9))),
                w.sha256,
            )
            for w in spec.weights
        )
        spec = dataclasses.replace(spec, weights=weights)
    if data.draw(st.booleans()) and spec.blob_sha256 in b.blobs:
        blob = b.blobs[spec.blob_sha256]
    arrays = _outcome(split_blob, spec, blob)
    if arrays is not None:  # only the very bytes the spec's digests name are accepted
        assert hashlib.sha256(blob).hexdigest() == spec.blob_sha256
        assert blob == b.blobs[spec.blob_sha256]


_MANIFEST = parse_manifest(tiny_cnn()[0])


@FUZZ
@given(st.data())
def test_hand_built_objects(data: st.DataObject) -> None:
    """Code may construct LayerSpec/ModelManifest directly (no parsing): the
    re-validation in graph_from_manifest must refuse any odd field cleanly."""
    m = _MANIFEST
    if data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(m.layers) - 1))
        field = data.draw(st.sampled_from([f.name for f in dataclasses.fields(LayerSpec)]))
        value = data.draw(_JSONISH | st.just((TensorRef([1], 0),)))  # type: ignore[arg-type]
        layer = dataclasses.replace(m.layers[i], **{field: value})
        m = dataclasses.replace(m, layers=(*m.layers[:i], layer, *m.layers[i + 1 :]))
    else:
        field = data.draw(st.sampled_from(["name", "inputs", "outputs", "layers"]))
        value = data.draw(_JSONISH)
        m = dataclasses.replace(m, **{field: value})
    graph = _outcome(graph_from_manifest, m)
    reason = _must_refuse(value)
    if reason is not None and not reason.startswith("not JSON"):  # hand-built: any type
        assert graph is None, f"accepted despite {reason}: {value!r:.300}"


@pytest.mark.parametrize(
    "stages",
    [True, [1], (1,), ("q8",), (StageSpec("x", 1, "a" * 64),), (StageSpec("int8-channel", 1, []),)],
    ids=["bool", "list", "int item", "str item", "unknown encoding", "unhashable sha256"],
)
def test_hand_built_stages_of_any_type_are_refused_as_a_spec_error(stages: object) -> None:
    """What hypothesis once found: ``stages=True`` reached the stage checks and raised a
    TypeError instead of a SpecError."""
    m = _MANIFEST
    layer = dataclasses.replace(m.layers[1], stages=stages)  # type: ignore[arg-type]
    m = dataclasses.replace(m, layers=(m.layers[0], layer, *m.layers[2:]))
    with pytest.raises(SpecError, match=r"blob\.stages"):
        graph_from_manifest(m)


# -- known-bad edits of a valid manifest: each refused for its own reason -------------------

_CLEAN = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12)
_NOT_ALLOWLISTED = st.sampled_from(
    ["Lambda", "TFSMLayer", "StringLookup", "TextVectorization", "dense", "conv2d", "Conv2d",
     "keras.layers.Dense", "Dense ", "Functional", "Sequential", "Layer", "__init__"]
) | st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_", min_size=1,
            max_size=20).filter(lambda c: c not in SCHEMAS)  # fmt: skip
_BAD_NAMES = st.sampled_from(["", "a" * 65, "has space", "../etc", "-lead", "é", "a/b", "a:0"])


def _dict_paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return [p for p in _paths(obj, prefix) if isinstance(_at(obj, p), dict)]


def _at(obj: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def _nest(value: object, data: st.DataObject) -> object:
    """``value`` wrapped in 0-3 levels of lists and objects."""
    for _ in range(data.draw(st.integers(0, 3))):
        if data.draw(st.booleans()):
            value = [value]
        else:
            value = {data.draw(st.sampled_from(["a", "config", "items", "x"])): value}
    return value


def _bad_edit(obj: dict[str, Any], edit: str, data: st.DataObject) -> tuple[str, type]:
    """Apply ``edit`` somewhere in ``obj``; return the text the refusal must contain and
    the exception type it must have."""
    layers = [layer for layer in obj["layers"] if layer["class"] != "InputLayer"]
    layer = data.draw(st.sampled_from(layers))
    if edit == "forbidden_key":  # at any depth: a key naming code or a class
        path = data.draw(st.sampled_from(_dict_paths(obj)))
        key = data.draw(st.sampled_from(sorted(FORBIDDEN_KEYS)))
        inner = {key: data.draw(_CLEAN)}
        _at(obj, path)[data.draw(st.sampled_from(["extra", "config", "value"]))] = _nest(
            inner, data
        )
        if data.draw(st.booleans()):
            _at(obj, path).update(inner)
        return "refused at any depth", SpecError
    if edit == "class_outside_allowlist":
        layer["class"] = data.draw(_NOT_ALLOWLISTED)
        return "not in the allowlist", UnsupportedLayerError
    if edit == "dict_config_value":
        configured = [la for la in layers if la["config"]]
        layer = data.draw(st.sampled_from(configured))
        key = data.draw(st.sampled_from(sorted(layer["config"])))
        layer["config"][key] = data.draw(st.dictionaries(st.sampled_from(["a", "name"]), _CLEAN))
        return "a dict", SpecError
    if edit == "non_finite":
        leaf = data.draw(st.sampled_from([p for p in _paths(obj) if p]))
        value = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        _at(obj, leaf[:-1])[leaf[-1]] = _nest(value, data)
        return "finite", SpecError
    if edit == "bad_name":
        layer["name"] = data.draw(_BAD_NAMES)
        return "expected a name matching", SpecError
    if edit == "unknown_config_key":
        layer["config"]["zz_" + data.draw(st.text("abcdefgh_", max_size=8))] = data.draw(_CLEAN)
        return "unknown key", SpecError
    assert edit == "weight_shape"
    weighted = [la for la in layers if la["weights"]]
    weight = data.draw(st.sampled_from(data.draw(st.sampled_from(weighted))["weights"]))
    axis = data.draw(st.integers(0, len(weight["shape"]) - 1))
    weight["shape"][axis] += data.draw(st.sampled_from([1, 2, 7]))
    return "expected float32", SpecError


BAD_EDITS = [
    "forbidden_key",
    "class_outside_allowlist",
    "dict_config_value",
    "non_finite",
    "bad_name",
    "unknown_config_key",
    "weight_shape",
]


@pytest.mark.parametrize("edit", BAD_EDITS)
@settings(FUZZ, max_examples=60)
@given(data=st.data(), local=st.booleans())
def test_known_bad_edits_are_refused_for_their_reason(
    edit: str, data: st.DataObject, local: bool
) -> None:
    obj = _local_variant() if local else tiny_cnn()[0]
    assert isinstance(parse_manifest(copy.deepcopy(obj)), ModelManifest)  # valid before
    text, kind = _bad_edit(obj, edit, data)
    with pytest.raises(kind) as refused:
        parse_manifest(obj)
    assert text in str(refused.value), (edit, str(refused.value))
