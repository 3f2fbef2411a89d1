"""Tests of ionn_net.model.keras_graph: Keras models -> LayerGraph."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest

from ionn_net.errors import GraphError
from ionn_net.model.graph import TensorRef
from ionn_net.model.keras_graph import (
    CALL_KEY,
    fill_call,
    graph_from_keras,
    model_operations,
    node_class_name,
)

L = keras.layers


def _dag() -> keras.Model:
    """in -> c1 -> {b1, b2}; add(b1, c1) [skip]; cat(add, b2) -> pool -> dense."""
    inp = keras.Input((8, 8, 3), name="in")
    c1 = L.Conv2D(4, 3, padding="same", name="c1")(inp)
    b1 = L.Conv2D(4, 1, name="b1")(c1)
    b2 = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="b2")(c1)
    s = L.Add(name="add")([b1, c1])
    cat = L.Concatenate(name="cat")([s, b2])
    p = L.GlobalAveragePooling2D(name="gap")(cat)
    out = L.Dense(5, name="dense")(p)
    return keras.Model(inp, out, name="dag")


def test_dag_nodes_edges_shapes() -> None:
    model = _dag()
    g = graph_from_keras(model)
    assert len(g) == len(model.layers) == 8
    assert g.name == "dag"
    assert g.inputs == ("in",)
    assert g.outputs == (TensorRef("dense", 0),)
    assert g["in"].cls == "InputLayer" and g["in"].inbound == ()
    assert g["add"].inbound == (TensorRef("b1"), TensorRef("c1"))
    assert g["cat"].inbound == (TensorRef("add"), TensorRef("b2"))
    assert g["cat"].output_shapes == ((8, 8, 12),)
    assert g["b2"].output_shapes == ((8, 8, 8),)
    assert g["dense"].output_shapes == ((5,),)
    assert all(n.output_dtype == "float32" for n in g)
    # order is topological: every inbound layer comes earlier
    for node in g:
        for ref in node.inbound:
            assert g.position(ref.layer) < g.position(node.name)


def test_dag_weights_and_macs() -> None:
    g = graph_from_keras(_dag())
    assert g["c1"].weight_bytes == (3 * 3 * 3 * 4 + 4) * 4
    assert g["b2"].weight_bytes == (3 * 3 * 4 * 2 + 8) * 4
    assert g["dense"].weight_bytes == (12 * 5 + 5) * 4
    assert g["in"].weight_bytes == 0 and g["in"].macs == 0
    assert g["c1"].macs == 8 * 8 * 4 * 3 * 3 * 3
    assert g["b1"].macs == 8 * 8 * 4 * 1 * 1 * 4
    # depthwise: one 3x3 window per output element, not times in_c again
    assert g["b2"].macs == 8 * 8 * (4 * 2) * 3 * 3
    assert g["add"].macs == 8 * 8 * 4
    assert g["gap"].macs == 8 * 8 * 12
    assert g["dense"].macs == 12 * 5
    assert g.total_weight_bytes == 4 * sum(math.prod(w.shape) for w in _dag().weights)


def test_dag_cut_points_and_boundaries() -> None:
    g = graph_from_keras(_dag())
    # c1 feeds the skip and both branches; cat/gap/dense are a chain.
    assert g.cut_points() == ("in", "c1", "cat", "gap", "dense")
    ins, outs = g.boundary({"b1", "b2", "add"})
    assert ins == (TensorRef("c1"),)
    assert outs == (TensorRef("add"), TensorRef("b2"))


def test_params_are_json_and_carry_features() -> None:
    g = graph_from_keras(_dag())
    for node in g:
        json.dumps(dict(node.params))  # only JSON-encodable values
    assert g["c1"].params["kernel"] == [3, 3]
    assert g["c1"].params["filters"] == 4
    assert g["c1"].params["strides"] == [1, 1]
    assert g["b2"].params["depthwise"] is True
    assert g["b2"].params["depth_multiplier"] == 2
    assert g["dense"].params["units"] == 5
    assert g["add"].params[CALL_KEY] == {"args": [[{"tensor": 0}, {"tensor": 1}]], "kwargs": {}}
    assert g["c1"].params[CALL_KEY] == {"args": [{"tensor": 0}], "kwargs": {}}


def test_sequential_includes_its_input_layer() -> None:
    model = keras.Sequential(
        [
            keras.Input((16,)),
            L.Dense(8, activation="relu", name="d1"),
            L.Dropout(0.5, name="drop"),
            L.Dense(3, name="d2"),
        ]
    )
    g = graph_from_keras(model)
    # Sequential.layers hides the InputLayer; the graph keeps it as a node.
    assert len(g) == len(model.layers) + 1
    assert g.order[1:] == ("d1", "drop", "d2")
    assert g[g.order[0]].cls == "InputLayer"
    assert g["d1"].params["activation"] == "relu"
    assert g["drop"].macs == 0
    assert g["d2"].macs == 8 * 3
    assert g.cut_points() == g.order


def test_unbuilt_sequential_is_refused() -> None:
    with pytest.raises(GraphError, match="no fixed input"):
        graph_from_keras(keras.Sequential([L.Dense(3)]))


def test_none_spatial_dimension_is_refused() -> None:
    inp = keras.Input((None, None, 3))
    model = keras.Model(inp, L.Conv2D(2, 3)(inp))
    with pytest.raises(GraphError, match="fixed dimensions"):
        graph_from_keras(model)


def test_shared_layer_is_refused() -> None:
    inp = keras.Input((4,))
    shared = L.Dense(4, name="shared")
    model = keras.Model(inp, shared(shared(inp)))
    with pytest.raises(GraphError, match="'shared' is called more than once"):
        graph_from_keras(model)


def test_subclassed_model_is_refused() -> None:
    class Sub(keras.Model):
        def call(self, x: object) -> object:
            return x

    with pytest.raises(GraphError, match="functional or Sequential"):
        graph_from_keras(Sub())


def test_nested_models_are_flattened() -> None:
    inner = keras.Sequential(
        [keras.Input((6,)), L.Dense(5, name="in_d1"), L.Dense(4, name="in_d2")], name="inner"
    )
    inp = keras.Input((6,), name="x")
    y = inner(inp)
    out = L.Add(name="sum")([y, L.Dense(4, name="side")(inp)])
    model = keras.Model(inp, out)
    g = graph_from_keras(model)
    assert set(g.order) == {"x", "in_d1", "in_d2", "side", "sum"}
    assert g["in_d1"].inbound == (TensorRef("x"),)
    assert g["sum"].inbound == (TensorRef("in_d2"), TensorRef("side"))
    ops = model_operations(model)
    assert set(ops) == set(g.order)
    assert ops["in_d2"] is inner.get_layer("in_d2")


def test_raw_ops_with_constants_become_nodes() -> None:
    inp = keras.Input((4,), name="x")
    y = keras.ops.multiply(keras.ops.add(inp, 3.0), 0.5)
    model = keras.Model(inp, L.Dropout(0.1, name="drop")(y, training=False))
    g = graph_from_keras(model)
    add = next(n for n in g if n.cls == "ops.numpy.Add")
    assert add.params[CALL_KEY] == {"args": [{"tensor": 0}, 3.0], "kwargs": {}}
    assert g["drop"].params[CALL_KEY] == {"args": [{"tensor": 0}], "kwargs": {"training": False}}
    ops = model_operations(model)
    assert node_class_name(ops[add.name]) == "ops.numpy.Add"
    # replaying the templates reproduces the model
    x = np.arange(8, dtype="float32").reshape(2, 4)
    values = {TensorRef("x"): x}
    for node in g:
        if node.cls == "InputLayer":
            continue
        args, kwargs = fill_call(node.params[CALL_KEY], [values[r] for r in node.inbound])
        values[TensorRef(node.name)] = keras.ops.convert_to_numpy(ops[node.name](*args, **kwargs))
    np.testing.assert_allclose(values[g.outputs[0]], (x + 3.0) * 0.5)


def test_fill_call_validates_template() -> None:
    with pytest.raises(GraphError, match="args"):
        fill_call({"args": []}, [])
    with pytest.raises(GraphError, match="out of range"):
        fill_call({"args": [{"tensor": 2}], "kwargs": {}}, ["a"])
    args, kwargs = fill_call({"args": [[{"tensor": 1}, {"tensor": 0}]], "kwargs": {"k": 1}}, "ab")
    assert args == [["b", "a"]] and kwargs == {"k": 1}


def test_inception_like_module_boundary_has_several_tensors() -> None:
    inp = keras.Input((16, 16, 8), name="in")
    stem = L.Conv2D(8, 1, name="stem")(inp)
    b1 = L.Conv2D(4, 1, name="b1")(stem)
    b2a = L.Conv2D(4, 1, name="b2a")(stem)
    b2 = L.Conv2D(4, 3, padding="same", name="b2b")(b2a)
    b3a = L.MaxPooling2D(3, strides=1, padding="same", name="b3a")(stem)
    b3 = L.Conv2D(4, 1, name="b3b")(b3a)
    cat = L.Concatenate(name="mixed")([b1, b2, b3])
    g = graph_from_keras(keras.Model(inp, cat))
    assert "stem" in g.cut_points() and "mixed" in g.cut_points()
    assert not {"b1", "b2a", "b2b", "b3a", "b3b"} & set(g.cut_points())
    # cutting after the first layer of each branch leaves three tensors live
    ins, outs = g.boundary({"in", "stem", "b1", "b2a", "b3a"})
    assert ins == ()
    assert set(outs) == {TensorRef("b1"), TensorRef("b2a"), TensorRef("b3a")}
    assert g["b3a"].macs == 16 * 16 * 8 * 9


@pytest.fixture(scope="module")
def mobilenet_v2() -> keras.Model:
    return keras.applications.MobileNetV2(weights=None)


def test_mobilenet_v2(mobilenet_v2: keras.Model) -> None:
    model = mobilenet_v2
    g = graph_from_keras(model)
    assert len(g) == len(model.layers) == 156
    assert g.total_weight_bytes == 4 * model.count_params()
    # 74 interior single-tensor cuts; cut_points() also lists the input
    # layer (its output alone is live) and, by definition, the last layer.
    cuts = g.cut_points()
    assert cuts[0] == "input_layer" or g[cuts[0]].cls == "InputLayer"
    assert cuts[-1] == g.order[-1]
    assert len(cuts) - 2 == 74
    # every cut really is a single-tensor boundary
    for name in cuts[:-1]:
        upto = g.order[: g.position(name) + 1]
        assert g.boundary(upto)[1] == (TensorRef(name),)
    # first depthwise conv: 112x112x32 output, 3x3 kernel
    dw = g["expanded_conv_depthwise"]
    assert dw.params["depthwise"] is True
    assert dw.output_shapes == ((112, 112, 32),)
    assert dw.macs == 112 * 112 * 32 * 9
    # ~300 M multiply-accumulates is the published figure for MobileNetV2 1.0/224
    total = sum(n.macs for n in g)
    assert 290e6 < total < 330e6


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "MobileNet",
        "MobileNetV3Small",
        "MobileNetV3Large",
        "ResNet50",
        "ResNet50V2",
        "InceptionV3",
        "Xception",
        "DenseNet121",
        "EfficientNetB0",
        "VGG16",
        "NASNetMobile",
    ],
)
def test_applications_convert(name: str) -> None:
    kwargs = {"input_shape": (224, 224, 3)} if name.startswith("MobileNetV3") else {}
    model = getattr(keras.applications, name)(weights=None, **kwargs)
    g = graph_from_keras(model)
    assert len(g) == len(model.operations)
    assert set(g.order) == set(model_operations(model))
    weights = sum(math.prod(w.shape) * np.dtype(w.dtype).itemsize for w in model.weights)
    assert g.total_weight_bytes == weights
    assert len(g.cut_points()) >= 3
    assert all(n.macs >= 0 for n in g)
