"""LayerGraph <-> JSON, for caching graphs (benches, planner fixtures).

This module owns a small, validated JSON form of a :class:`LayerGraph`: name, outputs
and per layer its name, class, inbound references, output shapes, dtype, weight bytes,
MACs and the JSON-representable part of ``params``. It is pure (no keras) and
symmetric: ``graph_from_json(graph_to_json(g))`` describes the same graph. It is *not*
the wire manifest (protocol.md §10.3), which carries configs and weight digests.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from ionn_net.errors import GraphError
from ionn_net.model.graph import DTYPE_SIZES, LayerGraph, LayerNode, TensorRef

__all__ = ["graph_from_json", "graph_to_json"]

FORMAT = "ionn-graph/1"
_MAX_TEXT = 64 * 1024 * 1024
_MAX_LAYERS = 100_000
_MAX_INT = 2**62


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def graph_to_json(graph: LayerGraph) -> str:
    """Serialise ``graph`` (params members that are not plain JSON are dropped)."""
    layers = []
    for node in graph:
        params = {str(k): v for k, v in node.params.items() if _jsonable(v)}
        layers.append(
            {
                "name": node.name,
                "cls": node.cls,
                "inbound": [str(r) for r in node.inbound],
                "output_shapes": [list(s) for s in node.output_shapes],
                "output_dtype": node.output_dtype,
                "weight_bytes": node.weight_bytes,
                "macs": node.macs,
                "params": params,
            }
        )
    doc = {
        "format": FORMAT,
        "name": graph.name,
        "outputs": [str(r) for r in graph.outputs],
        "layers": layers,
    }
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)


def _int(value: object, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _MAX_INT:
        raise GraphError(f"graph JSON {what}: expected an integer >= {low}, got {value!r}")
    return value


def _str(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 1024:
        raise GraphError(f"graph JSON {what}: expected a non-empty string, got {value!r}")
    return value


def _node(doc: object, i: int) -> LayerNode:
    if not isinstance(doc, dict):
        raise GraphError(f"graph JSON layers[{i}]: expected an object, got {type(doc).__name__}")
    keys = {"name", "cls", "inbound", "output_shapes", "output_dtype", "weight_bytes", "macs"}
    if not keys <= set(doc) <= keys | {"params"}:
        raise GraphError(f"graph JSON layers[{i}]: expected keys {sorted(keys)} (+ params)")
    name = _str(doc["name"], f"layers[{i}].name")
    inbound = doc["inbound"]
    shapes = doc["output_shapes"]
    if not isinstance(inbound, list) or not isinstance(shapes, list) or not shapes:
        raise GraphError(f"graph JSON layer {name!r}: expected inbound and output_shapes lists")
    dtype = doc["output_dtype"]
    if dtype not in DTYPE_SIZES:
        raise GraphError(f"graph JSON layer {name!r}: unknown dtype {dtype!r}")
    params = doc.get("params", {})
    if not isinstance(params, Mapping):
        raise GraphError(f"graph JSON layer {name!r}: params must be an object")
    out_shapes: list[tuple[int, ...]] = []
    for shape in shapes:
        if not isinstance(shape, list) or len(shape) > 8:
            raise GraphError(f"graph JSON layer {name!r}: bad output shape {shape!r}")
        out_shapes.append(tuple(_int(d, f"{name}.output_shapes", 1) for d in shape))
    return LayerNode(
        name=name,
        cls=_str(doc["cls"], f"{name}.cls"),
        inbound=tuple(TensorRef.parse(_str(r, f"{name}.inbound")) for r in inbound),
        output_shapes=tuple(out_shapes),
        output_dtype=dtype,
        weight_bytes=_int(doc["weight_bytes"], f"{name}.weight_bytes"),
        macs=_int(doc["macs"], f"{name}.macs"),
        params=dict(params),
    )


def graph_from_json(text: str | bytes) -> LayerGraph:
    """Parse and validate a graph written by :func:`graph_to_json`."""
    if len(text) > _MAX_TEXT:
        raise GraphError(f"graph JSON: expected at most {_MAX_TEXT} bytes, got {len(text)}")
    try:
        doc: Any = json.loads(text, parse_constant=lambda c: math.nan)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GraphError(f"graph JSON: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise GraphError(f"graph JSON: expected an object with format {FORMAT!r}")
    if set(doc) != {"format", "name", "outputs", "layers"}:
        raise GraphError(
            f"graph JSON: expected keys format, name, outputs, layers; got {sorted(doc)}"
        )
    layers = doc["layers"]
    outputs = doc["outputs"]
    if not isinstance(layers, list) or not 0 < len(layers) <= _MAX_LAYERS:
        raise GraphError(f"graph JSON layers: expected 1..{_MAX_LAYERS} layers")
    if not isinstance(outputs, list):
        raise GraphError("graph JSON outputs: expected a list of 'layer:index'")
    nodes = [_node(d, i) for i, d in enumerate(layers)]
    refs = [TensorRef.parse(_str(r, "outputs")) for r in outputs]
    return LayerGraph(nodes, refs, name=_str(doc["name"], "name"))
