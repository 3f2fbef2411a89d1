"""Keras model -> framework-free :class:`~ionn_net.model.graph.LayerGraph`.

This module owns the translation of a built Keras 3 functional (or Sequential) model
into the graph the planner, the protocol and the executors share: one
:class:`LayerNode` per operation of the model's graph, its inbound tensors, output
shapes without the batch dimension, weight bytes, a multiply-accumulate estimate at
batch 1 and a few planner features in ``params``.

It also owns the *call template* stored in ``params["call"]``: how a layer is called
on its inbound tensors (a single tensor, a list for merge layers, constants such as
the ``3.0`` in MobileNetV3's ``x + 3``, keyword arguments such as ``training=False``).
The template is JSON (lists, dicts, primitives); tensors appear as
``{"tensor": i}`` meaning ``node.inbound[i]``. :func:`fill_call` turns a template
back into ``(args, kwargs)`` for the executor.

Nested functional/Sequential sub-models are flattened: their layers become nodes of
the outer graph and the sub-model itself disappears. Raw Keras operations used in a
functional graph (``keras.ops.add`` etc., class ``Operation`` but not ``Layer``) become
nodes whose ``cls`` is ``"ops.<module>.<Class>"`` (e.g. ``"ops.numpy.Add"``), so an
allowlist keyed by layer class never confuses them with the ``Add`` layer.

Besides :func:`graph_from_keras`, :func:`model_operations` returns the flattened
``name -> operation`` mapping the client-side executor runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras

from ionn_net.errors import GraphError
from ionn_net.model.graph import DTYPE_SIZES, LayerGraph, LayerNode, TensorRef

__all__ = [
    "CALL_KEY",
    "fill_call",
    "graph_from_keras",
    "layer_weight_bytes",
    "model_operations",
    "node_class_name",
]

#: Key of the call template in :attr:`LayerNode.params`.
CALL_KEY = "call"

_JSON_SCALARS = (bool, int, float, str, type(None))


@dataclass(frozen=True, slots=True)
class _Visit:
    """One operation of the flattened graph with its (only) node in that graph."""

    op: Any  # keras.Operation
    node: Any  # keras.src.ops.node.Node
    inbound: tuple[TensorRef, ...]


# -- public API ------------------------------------------------------------------------


def graph_from_keras(model: keras.Model, *, name: str | None = None) -> LayerGraph:
    """Describe ``model`` as a :class:`LayerGraph`.

    Raises :class:`GraphError` when the model cannot be described: not a built
    functional/Sequential model, a layer called more than once (shared layer), a
    ``None`` dimension other than the batch, an input that is not a ``keras.Input``,
    a call argument that is neither a tensor nor a JSON primitive, duplicate names.
    """
    visits, outputs = _flatten(model)
    nodes = [_describe(v) for v in visits]
    graph_name = name if name is not None else str(model.name)
    return LayerGraph(nodes, outputs, name=graph_name)


def model_operations(model: keras.Model) -> dict[str, Any]:
    """``name -> operation`` for every node of ``graph_from_keras(model)`` (layers and
    raw ops, nested sub-models flattened; input layers included)."""
    visits, _ = _flatten(model)
    return {v.op.name: v.op for v in visits}


def node_class_name(op: object) -> str:
    """The ``cls`` recorded for an operation: the class name for layers,
    ``"ops.<module>.<Class>"`` for raw Keras operations."""
    cls = type(op)
    if isinstance(op, keras.layers.Layer):
        return cls.__name__
    module = cls.__module__.rsplit(".", 1)[-1]
    return f"ops.{module}.{cls.__name__}"


def fill_call(template: object, tensors: Sequence[Any]) -> tuple[list[Any], dict[str, Any]]:
    """Turn a call template (``params["call"]``) into ``(args, kwargs)`` with the
    node's inbound ``tensors`` substituted, in inbound order."""
    if not isinstance(template, Mapping) or set(template) != {"args", "kwargs"}:
        raise GraphError(f"call template: expected {{'args', 'kwargs'}}, got {template!r}")
    args = _fill(template["args"], tensors)
    kwargs = _fill(template["kwargs"], tensors)
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise GraphError(f"call template: expected a list and a dict, got {template!r}")
    return args, kwargs


# -- flattening ------------------------------------------------------------------------


def _functional_of(model: object) -> Any:
    """The functional graph behind a model, or GraphError."""
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            raise GraphError(
                f"Sequential model {model.name!r} has no fixed input: "
                "declare keras.Input(shape=...) as its first layer"
            )
        return functional
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
        raise GraphError(
            f"expected a functional or Sequential keras.Model, got {type(model).__name__}"
        )
    return model


def _graph_nodes(functional: Any) -> list[Any]:
    """The nodes of a functional graph in topological order (deepest first, ties in
    the model's operation order so the result is deterministic)."""
    op_rank = {id(op): i for i, op in enumerate(functional.operations)}
    ordered: list[Any] = []
    for depth in sorted(functional._nodes_by_depth, reverse=True):
        level = functional._nodes_by_depth[depth]
        ordered.extend(sorted(level, key=lambda n: op_rank.get(id(n.operation), -1)))
    return ordered


def _flatten(model: keras.Model) -> tuple[list[_Visit], list[TensorRef]]:
    visits: list[_Visit] = []
    resolved: dict[int, TensorRef] = {}  # id(KerasTensor) -> ref in the flat graph
    outputs = _flatten_into(_functional_of(model), None, resolved, visits)
    return visits, outputs


def _flatten_into(
    functional: Any,
    bound_inputs: Sequence[TensorRef] | None,
    resolved: dict[int, TensorRef],
    visits: list[_Visit],
) -> list[TensorRef]:
    """Append the nodes of ``functional`` to ``visits``. ``bound_inputs`` are the outer
    tensors feeding a nested sub-model (None for the top-level model)."""
    inputs = list(functional.inputs)
    if bound_inputs is not None:
        if len(bound_inputs) != len(inputs):
            raise GraphError(
                f"nested model {functional.name!r}: expected {len(inputs)} inputs, "
                f"called with {len(bound_inputs)}"
            )
        for tensor, ref in zip(inputs, bound_inputs, strict=True):
            resolved[id(tensor)] = ref
    else:
        for tensor in inputs:
            if not isinstance(tensor._keras_history.operation, keras.layers.InputLayer):
                raise GraphError(
                    f"model input {tensor.name!r}: expected a keras.Input, got an "
                    "intermediate tensor"
                )
    seen_ops: set[int] = set()
    for node in _graph_nodes(functional):
        op = node.operation
        if bound_inputs is not None and node.is_input:
            continue  # the nested model's InputLayer is replaced by the outer tensor
        if id(op) in seen_ops:
            raise GraphError(
                f"layer {op.name!r} is called more than once in the model: shared "
                "layers are unsupported (each layer must be called once)"
            )
        seen_ops.add(id(op))
        inbound = tuple(_resolve(t, resolved, op.name) for t in node.arguments.keras_tensors)
        if isinstance(op, keras.Model):
            inner = _functional_of(op)
            inner_outs = _flatten_into(inner, inbound, resolved, visits)
            for tensor, ref in zip(node.output_tensors, inner_outs, strict=True):
                resolved[id(tensor)] = ref
            continue
        visits.append(_Visit(op=op, node=node, inbound=inbound))
        for index, tensor in enumerate(node.output_tensors):
            resolved[id(tensor)] = TensorRef(str(op.name), index)
    return [_resolve(t, resolved, "model output") for t in functional.outputs]


def _resolve(tensor: Any, resolved: Mapping[int, TensorRef], what: str) -> TensorRef:
    try:
        return resolved[id(tensor)]
    except KeyError:
        raise GraphError(
            f"{what}: tensor {getattr(tensor, 'name', tensor)!r} is not produced inside "
            "the model graph"
        ) from None


# -- node description ------------------------------------------------------------------


def _describe(visit: _Visit) -> LayerNode:
    op, node = visit.op, visit.node
    name = str(op.name)
    out_shapes = tuple(_shape(name, t.shape) for t in node.output_tensors)
    in_shapes = tuple(_shape(name, t.shape) for t in node.arguments.keras_tensors)
    dtypes = {str(t.dtype) for t in node.output_tensors}
    if len(dtypes) != 1 or next(iter(dtypes)) not in DTYPE_SIZES:
        raise GraphError(
            f"layer {name!r}: expected one output dtype among {sorted(DTYPE_SIZES)}, "
            f"got {sorted(dtypes)}"
        )
    params: dict[str, object] = {CALL_KEY: _call_template(name, node)}
    params.update(_features(op))
    return LayerNode(
        name=name,
        cls=node_class_name(op),
        inbound=visit.inbound,
        output_shapes=out_shapes,
        output_dtype=next(iter(dtypes)),
        weight_bytes=layer_weight_bytes(op),
        macs=_macs(op, in_shapes, out_shapes),
        params=params,
    )


def _shape(name: str, shape: Sequence[int | None]) -> tuple[int, ...]:
    """The shape without its batch dimension; every other dimension must be fixed."""
    dims = tuple(shape)
    if not dims:
        raise GraphError(f"layer {name!r}: expected a batched tensor, got a scalar")
    rest = dims[1:]
    if any(d is None for d in rest):
        raise GraphError(
            f"layer {name!r}: expected fixed dimensions after the batch, got {dims}; "
            "build the model with a fixed input shape"
        )
    return tuple(int(d) for d in rest if d is not None)


def layer_weight_bytes(op: object) -> int:
    """Bytes of all weights (trainable or not) at their own dtype, e.g. 4 per float32."""
    total = 0
    for w in getattr(op, "weights", ()):
        size = DTYPE_SIZES.get(str(w.dtype), 4)
        total += math.prod(int(d) for d in w.shape) * size
    return total


def _call_template(name: str, node: Any) -> dict[str, object]:
    index = {id(t): i for i, t in enumerate(node.arguments.keras_tensors)}
    kwargs = {
        k: v
        for k, v in node.arguments.kwargs.items()
        if not (k == "mask" and v is None)  # Keras records the default mask=None
    }
    return {
        "args": _encode(name, list(node.arguments.args), index),
        "kwargs": {str(k): _encode(name, v, index) for k, v in kwargs.items()},
    }


def _encode(name: str, value: object, index: Mapping[int, int]) -> object:
    if id(value) in index and keras.backend.is_keras_tensor(value):
        return {"tensor": index[id(value)]}
    if isinstance(value, list | tuple):
        return [_encode(name, v, index) for v in value]
    if isinstance(value, _JSON_SCALARS):
        return value
    raise GraphError(
        f"layer {name!r}: call argument of type {type(value).__name__} is neither a "
        "tensor, a list of them nor a JSON primitive"
    )


def _fill(value: object, tensors: Sequence[Any]) -> object:
    if isinstance(value, dict):
        if set(value) == {"tensor"}:
            i = value["tensor"]
            if not isinstance(i, int) or not 0 <= i < len(tensors):
                raise GraphError(f"call template: tensor index {i!r} out of range")
            return tensors[i]
        return {str(k): _fill(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, tensors) for v in value]
    return value


# -- features and MACs -----------------------------------------------------------------

_ZERO_COST = (
    keras.layers.InputLayer,
    keras.layers.Reshape,
    keras.layers.Flatten,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.Identity,
)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_TRANSPOSE = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_GLOBAL_POOL = (
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
)
_POOL = (
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
)


def _channels(op: Any, shape: tuple[int, ...]) -> int:
    """Channel count of a (batch-less) conv input/output shape."""
    return (
        shape[0] if getattr(op, "data_format", "channels_last") == "channels_first" else shape[-1]
    )


def _macs(op: Any, ins: tuple[tuple[int, ...], ...], outs: tuple[tuple[int, ...], ...]) -> int:
    """Multiply-accumulates at batch 1 (see module docstring of graph.py)."""
    out_elems = sum(math.prod(s) for s in outs)
    if isinstance(op, _ZERO_COST):
        return 0
    kernel = math.prod(getattr(op, "kernel_size", (1,)))
    if isinstance(op, _DEPTHWISE):
        # out channels = in_c * depth_multiplier already: one kernel window per output
        return out_elems * kernel
    if isinstance(op, _SEPARABLE):
        in_c, out_c = _channels(op, ins[0]), _channels(op, outs[0])
        spatial = out_elems // out_c
        mid = in_c * int(op.depth_multiplier)
        return spatial * mid * kernel + spatial * mid * out_c
    if isinstance(op, _TRANSPOSE):
        in_elems = math.prod(ins[0])
        return in_elems * kernel * _channels(op, outs[0]) // int(op.groups)
    if isinstance(op, _CONV):
        return out_elems * kernel * _channels(op, ins[0]) // int(op.groups)
    if isinstance(op, keras.layers.Dense):
        return out_elems * ins[0][-1]
    if isinstance(op, _GLOBAL_POOL):
        return math.prod(ins[0])
    if isinstance(op, _POOL):
        return out_elems * math.prod(int(p) for p in op.pool_size)
    return out_elems


def _ints(value: object) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, Sequence):
        return [int(v) for v in value]
    return []


def _activation_name(op: Any) -> str | None:
    act = getattr(op, "activation", None)
    if act is None:
        return None
    name = getattr(act, "__name__", None)
    return str(name) if name is not None else type(act).__name__


_FEATURES: tuple[tuple[str, Callable[[Any], object]], ...] = (
    ("kernel", lambda op: _ints(getattr(op, "kernel_size", None))),
    ("strides", lambda op: _ints(getattr(op, "strides", None))),
    ("dilation", lambda op: _ints(getattr(op, "dilation_rate", None))),
    ("pool", lambda op: _ints(getattr(op, "pool_size", None))),
    ("filters", lambda op: getattr(op, "filters", None)),
    ("units", lambda op: getattr(op, "units", None)),
    ("groups", lambda op: getattr(op, "groups", None)),
    ("depth_multiplier", lambda op: getattr(op, "depth_multiplier", None)),
    ("padding", lambda op: getattr(op, "padding", None)),
    ("activation", _activation_name),
)


def _features(op: Any) -> Iterator[tuple[str, object]]:
    """Planner-useful hyper-parameters as JSON primitives (absent ones omitted)."""
    for key, get in _FEATURES:
        value = get(op)
        if value is None or value == []:
            continue
        if isinstance(value, (list, *_JSON_SCALARS)):
            yield key, value
    if isinstance(op, _DEPTHWISE):
        yield "depthwise", True
    if isinstance(op, _SEPARABLE):
        yield "separable", True
