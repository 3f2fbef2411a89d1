"""Hypothesis fuzzing of the manifest validator: whatever arrives, the only outcomes
are a validated manifest or a :class:`SpecError` (or subclass), never another
exception, a hang or a crash (protocol.md §10.3.2)."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.helpers.manifests import SHAPE_CASES, tiny_cnn

from ionn_net.errors import SpecError
from ionn_net.model.graph import TensorRef
from ionn_net.model.schema import SCHEMAS
from ionn_net.model.spec import (
    LayerSpec,
    ModelManifest,
    WeightSpec,
    graph_from_manifest,
    loads_manifest,
    parse_manifest,
    split_blob,
    validate_layer,
)

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
    """Call ``fn``; a SpecError is an accepted outcome, anything else propagates."""
    try:
        return fn(*args)
    except SpecError:
        return None


@FUZZ
@given(_JSONISH)
def test_random_objects(obj: object) -> None:
    _outcome(parse_manifest, obj)


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
    _outcome(loads_manifest, bytes(text))


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_random_text(data: bytes | str) -> None:
    _outcome(loads_manifest, data)


@FUZZ
@given(
    st.sampled_from(sorted(SCHEMAS)),
    st.dictionaries(st.sampled_from(_KEYS), _JSONISH, max_size=6),
    st.lists(st.lists(st.integers(-2, 70), min_size=0, max_size=4), min_size=0, max_size=3),
)
def test_random_layer_configs(cls: str, config: dict[str, Any], shapes: list[list[int]]) -> None:
    inbound = tuple(TensorRef(f"in{i}", 0) for i in range(len(shapes)))
    _outcome(validate_layer, LayerSpec("layer", cls, config, inbound), shapes)


@FUZZ
@given(st.sampled_from(SHAPE_CASES), st.data())
def test_perturbed_shape_cases(case: Any, data: st.DataObject) -> None:
    config = copy.deepcopy(case.config)
    if config:
        key = data.draw(st.sampled_from(sorted(config)))
        config[key] = data.draw(_JSONISH)
    shapes = [[data.draw(st.integers(1, 40)) for _ in s] for s in case.inputs]
    inbound = tuple(TensorRef(f"in{i}", 0) for i in range(len(shapes)))
    _outcome(validate_layer, LayerSpec("layer", case.cls, config, inbound), shapes)


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
    _outcome(split_blob, spec, blob)


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
        m = dataclasses.replace(m, **{field: data.draw(_JSONISH)})
    _outcome(graph_from_manifest, m)
