"""LayerGraph <-> JSON: round trip and validation."""

from __future__ import annotations

import json

import pytest

from ionn_net.errors import GraphError
from ionn_net.model.graph import LayerGraph, LayerNode, TensorRef
from ionn_net.model.graph_io import graph_from_json, graph_to_json


def _graph() -> LayerGraph:
    nodes = [
        LayerNode(name="in", cls="InputLayer", inbound=(), output_shapes=((8, 8, 3),)),
        LayerNode(
            name="conv",
            cls="Conv2D",
            inbound=(TensorRef("in"),),
            output_shapes=((8, 8, 4),),
            weight_bytes=448,
            macs=6912,
            params={"kernel": [3, 3], "fn": object()},
        ),
        LayerNode(
            name="split",
            cls="Split",
            inbound=(TensorRef("conv"),),
            output_shapes=((8, 8, 2), (8, 8, 2)),
            output_dtype="float16",
        ),
        LayerNode(
            name="add",
            cls="Add",
            inbound=(TensorRef("split", 0), TensorRef("split", 1)),
            output_shapes=((8, 8, 2),),
        ),
    ]
    return LayerGraph(nodes, [TensorRef("add"), TensorRef("split", 1)], name="tiny")


def test_round_trip_keeps_structure_sizes_and_json_params() -> None:
    g = _graph()
    again = graph_from_json(graph_to_json(g))
    assert again.name == "tiny"
    assert again.order == g.order
    assert again.outputs == g.outputs
    for a, b in zip(g, again, strict=True):
        assert (a.name, a.cls, a.inbound, a.output_shapes, a.output_dtype) == (
            b.name,
            b.cls,
            b.inbound,
            b.output_shapes,
            b.output_dtype,
        )
        assert (a.weight_bytes, a.macs) == (b.weight_bytes, b.macs)
    assert dict(again["conv"].params) == {"kernel": [3, 3]}  # the object is dropped
    assert again.cut_points() == g.cut_points()


def _doc() -> dict:
    return json.loads(graph_to_json(_graph()))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(format="other"),
        lambda d: d.update(extra=1),
        lambda d: d.update(layers=[]),
        lambda d: d["layers"][1].update(weight_bytes=-1),
        lambda d: d["layers"][1].update(macs=1.5),
        lambda d: d["layers"][1].update(output_dtype="complex64"),
        lambda d: d["layers"][1].update(output_shapes=[[0, 3]]),
        lambda d: d["layers"][1].update(inbound=["nowhere:0"]),
        lambda d: d["layers"][1].update(surprise=True),
        lambda d: d.update(outputs=["add:7"]),
    ],
)
def test_invalid_documents_raise_graph_error(mutate) -> None:  # type: ignore[no-untyped-def]
    doc = _doc()
    mutate(doc)
    with pytest.raises(GraphError):
        graph_from_json(json.dumps(doc))


def test_not_json_raises_graph_error() -> None:
    with pytest.raises(GraphError, match="JSON"):
        graph_from_json("{")
