"""Keras <-> layer specs: the ONLY place that turns a spec into a Keras object.

This module owns two directions (protocol.md §10.3):

- :func:`extract_manifest` (client side) describes a built Keras model as a
  :class:`~ionn_net.model.spec.ModelManifest` plus its weight blobs. It copies only
  the config kwargs the schema knows, turns Keras's dtype-policy dict into the
  plain string ``"float32"``, drops initializers, regularizers and constraints
  (inference does not need them), and runs the server's own validator on every
  layer. A node the allowlist cannot express becomes a ``LocalOnly`` node (the
  client keeps it) and is reported with its reason instead of failing.
- :func:`build_layer` (server side) re-validates a spec through the pure validator,
  maps the class through :data:`_KERAS_CLASSES` (our table, never a registry), calls
  ``cls(**checked_kwargs, dtype="float32", name=...)`` with activations passed as
  function objects from our own table, builds it on symbolic inputs, checks that
  Keras agrees with the computed output shape, and sets the checked weights.

No Keras deserializer (``from_config``, ``deserialize_keras_object``,
``model_from_json``, ``load_model``, ``keras.activations.get``) is ever called.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from ionn_net.errors import GraphError, SpecError, UnsupportedLayerError
from ionn_net.model.graph import LayerNode
from ionn_net.model.keras_graph import CALL_KEY, graph_from_keras, model_operations
from ionn_net.model.limits import DEFAULT_LIMITS, SpecLimits
from ionn_net.model.schema import BUILDABLE_CLASSES, LOCAL_ONLY
from ionn_net.model.spec import (
    InputSpec,
    LayerInfo,
    LayerSpec,
    ModelManifest,
    WeightSpec,
    check_weights,
    parse_manifest,
    split_blob,
    validate_layer,
    validate_manifest,
)

__all__ = ["build_layer", "build_layers", "build_placeholder_layer", "extract_manifest"]

L = keras.layers
A = keras.activations

#: Allowlisted class name -> Keras class. The only classes a server instantiates.
_KERAS_CLASSES: dict[str, Callable[..., Any]] = {
    "InputLayer": L.InputLayer,
    "Conv2D": L.Conv2D,
    "Conv2DTranspose": L.Conv2DTranspose,
    "DepthwiseConv2D": L.DepthwiseConv2D,
    "SeparableConv2D": L.SeparableConv2D,
    "Dense": L.Dense,
    "BatchNormalization": L.BatchNormalization,
    "LayerNormalization": L.LayerNormalization,
    "Normalization": L.Normalization,
    "ReLU": L.ReLU,
    "Activation": L.Activation,
    "Softmax": L.Softmax,
    "LeakyReLU": L.LeakyReLU,
    "ELU": L.ELU,
    "Add": L.Add,
    "Subtract": L.Subtract,
    "Multiply": L.Multiply,
    "Average": L.Average,
    "Maximum": L.Maximum,
    "Minimum": L.Minimum,
    "Concatenate": L.Concatenate,
    "MaxPooling2D": L.MaxPooling2D,
    "AveragePooling2D": L.AveragePooling2D,
    "GlobalAveragePooling2D": L.GlobalAveragePooling2D,
    "GlobalMaxPooling2D": L.GlobalMaxPooling2D,
    "ZeroPadding2D": L.ZeroPadding2D,
    "Cropping2D": L.Cropping2D,
    "Reshape": L.Reshape,
    "Flatten": L.Flatten,
    "Dropout": L.Dropout,
    "Rescaling": L.Rescaling,
    "Permute": L.Permute,
    "Identity": L.Identity,
    "UpSampling2D": L.UpSampling2D,
}
assert set(_KERAS_CLASSES) == BUILDABLE_CLASSES, "schema and Keras table disagree"

#: Activation name -> built-in function object (so no name lookup happens in Keras).
_ACTIVATIONS: dict[str, Callable[..., Any]] = {
    "linear": A.linear,
    "relu": A.relu,
    "relu6": A.relu6,
    "sigmoid": A.sigmoid,
    "tanh": A.tanh,
    "softmax": A.softmax,
    "swish": A.silu,
    "silu": A.silu,
    "gelu": A.gelu,
    "hard_sigmoid": A.hard_sigmoid,
    "hard_swish": A.hard_silu,
    "hard_silu": A.hard_silu,
    "elu": A.elu,
    "selu": A.selu,
    "softplus": A.softplus,
    "softsign": A.softsign,
    "leaky_relu": A.leaky_relu,
    "exponential": A.exponential,
    "mish": A.mish,
}

#: Classes called on a list of tensors.
_LIST_INPUT = frozenset(
    {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"}
)


# -- server side: spec -> Keras layer ----------------------------------------------------


def build_layer(
    spec: LayerSpec,
    input_shapes: Sequence[Sequence[int]],
    weights: Sequence[np.ndarray],
    *,
    limits: SpecLimits = DEFAULT_LIMITS,
) -> Any:
    """Build one allowlisted Keras layer from a spec, with its weights set.

    ``input_shapes`` exclude the batch dim and must come from the server's own
    graph (:func:`~ionn_net.model.spec.graph_from_manifest`). The spec is validated
    again here, and ``weights`` are checked (count, dtype, shape, finiteness and the
    spec's SHA-256s) before any Keras object exists. Raises :class:`SpecError`, or
    :class:`UnsupportedLayerError` for ``LocalOnly`` and unknown classes.
    """
    info = validate_layer(spec, input_shapes, limits)
    if spec.cls not in _KERAS_CLASSES:
        raise UnsupportedLayerError(f"layer {spec.name!r}: class {spec.cls!r} is never built")
    return _construct(spec, info, input_shapes, check_weights(spec, info, weights))


def build_placeholder_layer(
    spec: LayerSpec,
    input_shapes: Sequence[Sequence[int]],
    *,
    limits: SpecLimits = DEFAULT_LIMITS,
    seed: int = 0,
) -> Any:
    """:func:`build_layer` with placeholder weights of the declared shapes and dtypes
    instead of the client's (small positive floats, ones for integers): the same
    computation at the same cost, for timing a layer before its blob arrives
    (protocol.md §10.11). The spec is validated as in :func:`build_layer`."""
    info = validate_layer(spec, input_shapes, limits)
    if spec.cls not in _KERAS_CLASSES:
        raise UnsupportedLayerError(f"layer {spec.name!r}: class {spec.cls!r} is never built")
    rng = np.random.default_rng(seed)
    arrays = []
    for w in info.weights:
        if w.dtype == "float32":
            a = rng.random(w.shape, dtype=np.float32)  # in place: no float64 copy
            a *= 0.5
            a += 0.5
        else:
            a = np.ones(w.shape, dtype=w.dtype)
        arrays.append(a)
    return _construct(spec, info, input_shapes, arrays)


def _construct(
    spec: LayerSpec,
    info: LayerInfo,
    input_shapes: Sequence[Sequence[int]],
    arrays: list[np.ndarray],
) -> Any:
    """The Keras layer of a validated spec, called on symbolic inputs of the server's
    shapes (checked against the validator's output shape), its weights set."""
    factory = _KERAS_CLASSES[spec.cls]
    kwargs = dict(info.kwargs)
    if "activation" in kwargs:
        kwargs["activation"] = _ACTIVATIONS[str(kwargs["activation"])]
    if spec.cls == "InputLayer":
        return factory(shape=kwargs["shape"], dtype="float32", name=spec.name)
    layer = factory(**kwargs, dtype="float32", name=spec.name)
    # Bare symbolic tensors (not keras.Input, which builds an InputLayer each time).
    symbolic = [keras.KerasTensor((None, *s), dtype="float32") for s in _int_shapes(input_shapes)]
    out = layer(symbolic if spec.cls in _LIST_INPUT else symbolic[0])
    got = tuple(out.shape[1:])
    if got != info.output_shapes[0]:
        raise SpecError(
            f"layer {spec.name!r} ({spec.cls}): Keras computes output shape {list(got)}, "
            f"the validator computed {list(info.output_shapes[0])}; refusing"
        )
    if arrays:
        layer.set_weights(arrays)
        # Layers that derive tensors from their variables (Normalization's mean and
        # variance) compute them here, as Keras's own loading does; without it they keep
        # their initial state and ignore the weights. Most classes have no such method.
        finalize = getattr(layer, "finalize_state", None)
        if callable(finalize):
            finalize()
    return layer


def _int_shapes(input_shapes: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Input shapes as tuples of Python ints (already validated by the caller)."""
    return [tuple(int(d) for d in s) for s in input_shapes]


def build_layers(
    manifest: ModelManifest,
    blobs: Mapping[str, bytes | bytearray | memoryview],
    *,
    names: Sequence[str] | None = None,
    limits: SpecLimits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """Build the named layers (default: every buildable layer) of a manifest from
    blobs keyed by SHA-256, using the server's own computed shapes."""
    infos = validate_manifest(manifest, limits)
    wanted = set(names) if names is not None else None
    todo: list[tuple[LayerSpec, list[tuple[int, ...]], list[np.ndarray]]] = []
    for spec in manifest.layers:  # check every blob before building anything
        if spec.cls == LOCAL_ONLY or (wanted is not None and spec.name not in wanted):
            continue
        shapes = [infos[r.layer].output_shapes[r.index] for r in spec.inbound]
        arrays: list[np.ndarray] = []
        if spec.blob_sha256 is not None:
            blob = blobs.get(spec.blob_sha256)
            if blob is None:
                raise SpecError(f"layer {spec.name!r}: blob {spec.blob_sha256} is missing")
            arrays = split_blob(spec, blob, limits)
        todo.append((spec, shapes, arrays))
    return {spec.name: build_layer(spec, sh, arr, limits=limits) for spec, sh, arr in todo}


# -- client side: Keras model -> manifest ------------------------------------------------


class _KeepLocal(Exception):
    """Internal: this node cannot be expressed as an allowlisted spec (reason)."""


#: get_config keys that do not matter for inference and are dropped.
_IGNORED_KEYS = frozenset(
    {"name", "trainable", "dtype", "seed", "noise_shape", "synchronized", "renorm_momentum"}
)
_IGNORED_SUFFIXES = ("_initializer", "_regularizer", "_constraint")
#: get_config keys that must hold their neutral value, or the layer stays local.
_NEUTRAL = {
    "renorm": False,
    "renorm_clipping": None,
    "quantization_config": None,
    "lora_rank": None,
    "lora_alpha": None,
    "rms_scaling": False,
    "mean": None,
    "variance": None,
}
_SCALAR_OPS = {"ops.numpy.Add", "ops.numpy.Subtract", "ops.numpy.Multiply"}


def extract_manifest(
    model: Any, *, name: str | None = None, limits: SpecLimits = DEFAULT_LIMITS
) -> tuple[ModelManifest, dict[str, bytes], dict[str, str]]:
    """Describe a built Keras model (fixed input shapes) as a manifest.

    Returns ``(manifest, blobs, local_only)``: ``blobs`` maps each blob's SHA-256 to
    its bytes; ``local_only`` maps the name of each node the server will not run
    (class outside the allowlist, unsupported kwarg, ...) to the reason. The
    manifest has passed :func:`~ionn_net.model.spec.parse_manifest` after a JSON
    round trip. Raises :class:`SpecError` when the model as a whole cannot be
    described (shared layers, ``None`` dims, invalid names, caps exceeded).
    """
    try:
        graph = graph_from_keras(model, name=name)
        ops = model_operations(model)
    except GraphError as exc:
        raise SpecError(f"model {getattr(model, 'name', '?')!r}: {exc}") from exc
    specs: list[LayerSpec] = []
    blobs: dict[str, bytes] = {}
    local_only: dict[str, str] = {}
    for node in graph:
        in_shapes = [graph[r.layer].output_shapes[r.index] for r in node.inbound]
        in_dtypes = {graph[r.layer].output_dtype for r in node.inbound}
        try:
            if in_dtypes - {"float32"}:
                raise _KeepLocal(f"input dtypes {sorted(in_dtypes)} are not all float32")
            spec, blob = _layer_spec(node, ops[node.name])
            info = validate_layer(spec, in_shapes, limits)
            if info.output_shapes != node.output_shapes or node.output_dtype != "float32":
                raise _KeepLocal(
                    f"the validator computes {[list(s) for s in info.output_shapes]}, Keras "
                    f"{[list(s) for s in node.output_shapes]} ({node.output_dtype})"
                )
        except (_KeepLocal, SpecError) as exc:
            if node.cls == "InputLayer":
                raise SpecError(f"model input {node.name!r} cannot be described: {exc}") from exc
            local_only[node.name] = str(exc)
            spec, blob = _local_spec(node), b""
        specs.append(spec)
        if spec.blob_sha256 is not None:
            blobs[spec.blob_sha256] = blob
    inputs = tuple(
        InputSpec(n, graph[n].output_shapes[0]) for n in graph.inputs if n not in local_only
    )
    manifest = ModelManifest(graph.name, inputs, graph.outputs, tuple(specs))
    # The server's validator is the judge: the manifest must survive the wire form.
    checked = parse_manifest(json.loads(manifest.to_json_bytes()), limits)
    return checked, blobs, local_only


def _local_spec(node: LayerNode) -> LayerSpec:
    config = {
        "output_shapes": tuple(node.output_shapes),
        "output_dtype": node.output_dtype,
    }
    return LayerSpec(node.name, LOCAL_ONLY, config, node.inbound)


def _layer_spec(node: LayerNode, op: Any) -> tuple[LayerSpec, bytes]:
    """An allowlisted spec for ``node`` and its blob, or :class:`_KeepLocal`."""
    if node.cls in _SCALAR_OPS:
        return _scalar_op_spec(node), b""
    cls = node.cls
    if _KERAS_CLASSES.get(cls) is not type(op):
        raise _KeepLocal(f"class {cls} is not in the allowlist")
    if cls == "InputLayer":
        return LayerSpec(node.name, cls, {"shape": node.output_shapes[0]}, ()), b""
    _check_plain_call(node, cls in _LIST_INPUT)
    policy = getattr(getattr(op, "dtype_policy", None), "name", None)
    if policy != "float32":
        raise _KeepLocal(f"dtype policy {policy!r} is not float32")
    config = _config(op.get_config())
    weights, blob = _weights(op.get_weights())
    sha = hashlib.sha256(blob).hexdigest() if weights else None
    spec = LayerSpec(node.name, cls, config, node.inbound, weights, sha, len(blob))
    return spec, blob


def _check_plain_call(node: LayerNode, as_list: bool) -> None:
    """The layer must be called on its inbound tensors only (``training=False`` or
    ``None`` is what a server does anyway), or the server would compute something
    else."""
    call = node.params.get(CALL_KEY)
    tensors = [{"tensor": i} for i in range(len(node.inbound))]
    args = [tensors] if as_list else tensors
    ok = isinstance(call, dict) and call.get("args") == args
    kwargs = call.get("kwargs") if isinstance(call, dict) else None
    ok = (
        ok
        and isinstance(kwargs, dict)
        and all(k == "training" and v in (None, False) for k, v in kwargs.items())
    )
    if not ok:
        raise _KeepLocal(f"called with extra arguments {call!r:.120}")


def _config(raw: Mapping[str, Any]) -> dict[str, object]:
    config: dict[str, object] = {"dtype": "float32"}
    for key, value in raw.items():
        if key in _NEUTRAL:
            if value != _NEUTRAL[key] and not (value is None and _NEUTRAL[key] is False):
                raise _KeepLocal(f"config {key}={value!r:.60} is not supported")
        elif key not in _IGNORED_KEYS and not key.endswith(_IGNORED_SUFFIXES):
            config[key] = _json_value(value)
    return config


def _json_value(value: Any) -> object:
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    return value


def _weights(arrays: Sequence[np.ndarray]) -> tuple[tuple[WeightSpec, ...], bytes]:
    specs: list[WeightSpec] = []
    parts: list[bytes] = []
    for a in arrays:
        array = np.asarray(a)
        wire = array.dtype.newbyteorder("<")
        data = array.astype(wire, order="C").tobytes()
        specs.append(WeightSpec(array.dtype.name, tuple(array.shape), _sha(data)))
        parts.append(data)
    return tuple(specs), b"".join(parts)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _scalar_op_spec(node: LayerNode) -> LayerSpec:
    """``x + c``, ``x - c``, ``c - x``, ``x * c`` (raw Keras ops, e.g. MobileNetV3's
    hard-sigmoid ``relu6(x + 3) * (1/6)``) as an exact ``Rescaling``; ``x + y`` etc.
    as the matching merge layer."""
    call = node.params.get(CALL_KEY)
    args = call.get("args") if isinstance(call, dict) and call.get("kwargs") == {} else None
    if not isinstance(args, list) or len(args) != 2:
        raise _KeepLocal(f"operation {node.cls} called as {call!r:.120}")
    op = node.cls.rsplit(".", 1)[1]
    tensor = [isinstance(a, dict) for a in args]
    if all(tensor):
        return LayerSpec(node.name, op, {}, node.inbound)
    const = args[tensor.index(False)]
    if isinstance(const, bool) or not isinstance(const, int | float):
        raise _KeepLocal(f"operation {node.cls} with constant {const!r:.60}")
    c = float(const)
    scale, offset = {
        "Add": (1.0, c),
        "Multiply": (c, 0.0),
        "Subtract": (1.0, -c) if tensor[0] else (-1.0, c),
    }[op]
    return LayerSpec(node.name, "Rescaling", {"scale": scale, "offset": offset}, node.inbound)
