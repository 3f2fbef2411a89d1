"""Model manifests: parsing, whole-manifest validation, the server's own graph, and
weight-blob splitting (protocol.md §10.3, §14.5).

This module owns the wire form of a model (the *manifest*) and the rule that
nothing in it is trusted. :func:`parse_manifest` checks every value of an
untrusted JSON object (types, depth, sizes, forbidden keys such as ``module`` or
``class_name`` at any depth), every layer against the allowlist and per-class
schema of :mod:`ionn_net.model.schema`, every reference (earlier layers only),
and recomputes every shape, weight shape, parameter count, activation size and
MAC count itself, capped by :class:`SpecLimits`, before returning. It never
imports keras; :mod:`ionn_net.model.layers` is the only place that turns a
validated spec into a Keras object, and it re-validates through
:func:`validate_layer`.

A layer the client keeps local (its class is outside the allowlist) appears with
the pseudo-class ``LocalOnly`` and declares its output shapes, so the layers after
it can still be checked; a server never builds it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from ionn_net.errors import GraphError, SpecError
from ionn_net.model.graph import LayerGraph, LayerNode, TensorRef
from ionn_net.model.limits import DEFAULT_LIMITS, SpecLimits
from ionn_net.model.schema import (
    LOCAL_ONLY,
    WEIGHT_DTYPES,
    LayerInfo,
    infer_layer,
)

if TYPE_CHECKING:  # stages.py imports this module; its names are imported where used
    from ionn_net.model.stages import StageSpec

__all__ = [
    "DEFAULT_LIMITS",
    "FORBIDDEN_KEYS",
    "FORMAT",
    "LOCAL_ONLY",
    "InputSpec",
    "LayerInfo",
    "LayerSpec",
    "ModelManifest",
    "SpecLimits",
    "WeightSpec",
    "canonical_json",
    "check_weights",
    "graph_from_manifest",
    "loads_manifest",
    "parse_manifest",
    "split_blob",
    "validate_layer",
    "validate_manifest",
]

#: Value of the manifest's ``format`` member.
FORMAT = "ionn-manifest/1"

#: Keys that name code or classes in Keras configs; refused at any depth.
FORBIDDEN_KEYS = frozenset({"module", "registered_name", "class_name", "function"})

# protocol.md §10.1.4 allows [A-Za-z0-9_.-]{1,64}; we additionally refuse a leading
# '.' or '-' and '..' anywhere, so a name can never look like a path or an option.
# keras.applications only uses [A-Za-z0-9_] (checked over all supported models).
_NAME = r"(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}"
_NAME_RE = re.compile(_NAME)
_REF_RE = re.compile(rf"({_NAME}):(0|[1-9][0-9]{{0,3}})")
_SHA_RE = re.compile(r"[0-9a-f]{64}")

ConfigValue = object  # a JSON scalar, a tuple of ConfigValues, or a read-only mapping


# -- values ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WeightSpec:
    """One weight tensor on the wire: dtype name, shape, SHA-256 of its raw bytes."""

    dtype: str
    shape: tuple[int, ...]
    sha256: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * WEIGHT_DTYPES.get(self.dtype, 0)

    def to_json_obj(self) -> dict[str, object]:
        return {"dtype": self.dtype, "shape": list(self.shape), "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class InputSpec:
    """A model input: its ``InputLayer`` name, shape without batch, dtype."""

    layer: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_json_obj(self) -> dict[str, object]:
        return {"layer": self.layer, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """One layer of a manifest. ``config`` is read-only (lists become tuples).

    Constructing one checks nothing; :func:`validate_layer` (called by
    :func:`parse_manifest` and by ``layers.build_layer``) does.
    """

    name: str
    cls: str
    config: Mapping[str, ConfigValue] = field(hash=False)
    inbound: tuple[TensorRef, ...] = ()
    weights: tuple[WeightSpec, ...] = ()
    blob_sha256: str | None = None
    blob_size: int = 0
    #: the blob as weight stages (protocol.md §10.12.1): base first; empty when it is
    #: sent whole only
    stages: tuple[StageSpec, ...] = ()

    def to_json_obj(self) -> dict[str, object]:
        obj: dict[str, object] = {
            "name": self.name,
            "class": self.cls,
            "config": _thaw(self.config),
            "inbound": [str(r) for r in self.inbound],
            "weights": [w.to_json_obj() for w in self.weights],
        }
        if self.blob_sha256 is not None:
            blob: dict[str, object] = {"sha256": self.blob_sha256, "size": self.blob_size}
            if self.stages:
                blob["stages"] = [s.to_json_obj() for s in self.stages]
            obj["blob"] = blob
        return obj


@dataclass(frozen=True, slots=True)
class ModelManifest:
    """A whole model as the client describes it (protocol.md §10.3.1)."""

    name: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[TensorRef, ...]
    layers: tuple[LayerSpec, ...]

    def to_json_obj(self) -> dict[str, object]:
        return {
            "format": FORMAT,
            "name": self.name,
            "inputs": [i.to_json_obj() for i in self.inputs],
            "outputs": [str(r) for r in self.outputs],
            "layers": [layer.to_json_obj() for layer in self.layers],
        }

    def to_json_bytes(self) -> bytes:
        """The canonical encoding sent on the wire (keys sorted, no spaces)."""
        return canonical_json(self.to_json_obj())

    def manifest_digest(self) -> str:
        """SHA-256 (hex) of the canonical encoding: the model's id on the wire."""
        return hashlib.sha256(self.to_json_bytes()).hexdigest()

    def layer(self, name: str) -> LayerSpec:
        for spec in self.layers:
            if spec.name == name:
                return spec
        raise SpecError(f"manifest {self.name!r}: no layer named {name!r}")


def canonical_json(obj: object) -> bytes:
    """Keys sorted, no insignificant whitespace, ASCII, NaN/Infinity refused."""
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"manifest is not encodable as canonical JSON: {exc}") from None
    return text.encode("ascii")


def _thaw(value: object) -> object:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(v) for v in value]
    return value


def _freeze(value: object) -> object:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


# -- generic JSON screening ------------------------------------------------------------

_SCALARS = (str, int, float, bool, type(None))


def _path(parts: Sequence[object]) -> str:
    out = "manifest"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _screen(
    obj: object, limits: SpecLimits, where: Sequence[object] = (), *, frozen: bool = False
) -> None:
    """Walk ``obj`` iteratively and refuse anything that is not plain bounded JSON:
    other types, non-finite floats, non-string keys, long strings, too deep or too
    many values, and any key in :data:`FORBIDDEN_KEYS`. With ``frozen`` (a
    LayerSpec's config), read-only mappings and tuples stand for objects and lists."""
    stack: list[tuple[object, tuple[object, ...]]] = [(obj, tuple(where))]
    count = 0
    while stack:
        value, path = stack.pop()
        count += 1
        if count > limits.max_json_nodes:
            raise SpecError(f"{_path(path)}: expected at most {limits.max_json_nodes} values")
        if len(path) - len(where) >= limits.max_json_depth:
            raise SpecError(
                f"{_path(path)}: expected nesting depth <= {limits.max_json_depth}, got deeper"
            )
        if isinstance(value, dict) or (frozen and isinstance(value, Mapping)):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise SpecError(
                        f"{_path(path)}: expected string keys, got {type(key).__name__}"
                    )
                if key in FORBIDDEN_KEYS:
                    raise SpecError(
                        f"{_path((*path, key))}: key {key!r} is refused at any depth "
                        "(it names code or a class to deserialize)"
                    )
                stack.append((item, (*path, key)))
        elif isinstance(value, list) or (frozen and isinstance(value, tuple)):
            stack.extend((item, (*path, i)) for i, item in enumerate(value))
        elif not isinstance(value, _SCALARS):
            raise SpecError(f"{_path(path)}: expected a JSON value, got {type(value).__name__}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise SpecError(f"{_path(path)}: expected a finite number, got {value!r}")
        elif isinstance(value, str) and len(value) > limits.max_string_chars:
            raise SpecError(
                f"{_path(path)}: expected a string of at most {limits.max_string_chars} "
                f"characters, got {len(value)}"
            )


def _refuse_constant(name: str) -> NoReturn:
    raise SpecError(f"manifest: expected finite numbers, got {name}")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise SpecError(f"manifest: duplicate key {key!r} in one object")
        out[key] = value
    return out


def loads_manifest(
    data: bytes | bytearray | memoryview | str,
    limits: SpecLimits = DEFAULT_LIMITS,
    *,
    canonical: bool = False,
) -> ModelManifest:
    """Decode a manifest from JSON text (bounded size and depth, no NaN, no duplicate
    keys) and :func:`parse_manifest` it. With ``canonical=True`` the text must be
    exactly the canonical encoding (protocol.md §10.3.1), so that the SHA-256 of the
    received body equals :meth:`ModelManifest.manifest_digest`."""
    if isinstance(data, str):
        size = len(data)
    elif isinstance(data, bytes | bytearray | memoryview):
        size = memoryview(data).nbytes
    else:
        raise SpecError(f"manifest: expected bytes or str, got {type(data).__name__}")
    if size > limits.max_json_bytes:
        raise SpecError(f"manifest: expected at most {limits.max_json_bytes} bytes, got {size}")
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"manifest: expected UTF-8 JSON, got {exc.reason}") from None
    try:
        # The C decoder is linear in the input and stops deep nesting with a clean
        # RecursionError (around 1000 levels); _screen then enforces max_json_depth.
        obj = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_no_duplicates)
    except SpecError:
        raise
    except RecursionError:
        raise SpecError(
            f"manifest: expected nesting depth <= {limits.max_json_depth}, got deeper"
        ) from None
    except ValueError as exc:
        raise SpecError(f"manifest: expected JSON, got a decoding error: {exc}") from None
    manifest = parse_manifest(obj, limits)
    if canonical and manifest.to_json_bytes() != text.encode("utf-8"):
        raise SpecError("manifest: expected the canonical encoding (sorted keys, no spaces)")
    return manifest


# -- structural parsing ----------------------------------------------------------------


def _obj(
    value: object, where: str, required: set[str], optional: frozenset[str] = frozenset()
) -> dict[str, object]:
    if not isinstance(value, dict):
        raise SpecError(f"{where}: expected an object, got {type(value).__name__}")
    missing = required - value.keys()
    extra = value.keys() - required - optional
    if missing:
        raise SpecError(f"{where}: expected key {sorted(missing)[0]!r}, got keys {sorted(value)}")
    if extra:
        allowed = sorted(required | optional)
        raise SpecError(f"{where}: unexpected key {sorted(extra)[0]!r} (expected {allowed})")
    return value


def _list(value: object, where: str, lo: int, hi: int) -> list[object]:
    if not isinstance(value, list):
        raise SpecError(f"{where}: expected a list, got {type(value).__name__}")
    if not lo <= len(value) <= hi:
        raise SpecError(f"{where}: expected {lo}..{hi} items, got {len(value)}")
    return value


def _name(value: object, where: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise SpecError(
            f"{where}: expected a name matching {_NAME_RE.pattern!r}, got {value!r:.80}"
        )
    return value


def _ref(value: object, where: str) -> TensorRef:
    match = _REF_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise SpecError(f"{where}: expected a tensor reference 'layer:index', got {value!r:.80}")
    return TensorRef(match.group(1), int(match.group(2)))


def _sha(value: object, where: str) -> str:
    if not isinstance(value, str) or not _SHA_RE.fullmatch(value):
        raise SpecError(f"{where}: expected 64 lowercase hex digits, got {value!r:.80}")
    return value


def _shape(value: object, where: str, limits: SpecLimits, *, min_dims: int) -> tuple[int, ...]:
    dims: list[int] = []
    for d in _list(value, where, min_dims, limits.max_dims):
        if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= limits.max_dim:
            raise SpecError(f"{where}: expected dimensions in [1, {limits.max_dim}], got {d!r:.40}")
        dims.append(d)
    return tuple(dims)


def _weight_from_obj(value: object, where: str, limits: SpecLimits) -> WeightSpec:
    obj = _obj(value, where, {"dtype", "shape", "sha256"})
    dtype = obj["dtype"]
    if not isinstance(dtype, str) or dtype not in WEIGHT_DTYPES:
        raise SpecError(
            f"{where}.dtype: expected one of {sorted(WEIGHT_DTYPES)}, got {dtype!r:.40}"
        )
    shape = _shape(obj["shape"], f"{where}.shape", limits, min_dims=0)
    return WeightSpec(str(dtype), shape, _sha(obj["sha256"], f"{where}.sha256"))


def _layer_from_obj(value: object, index: int, limits: SpecLimits) -> LayerSpec:
    where = f"manifest.layers[{index}]"
    keys = {"name", "class", "config", "inbound", "weights"}
    obj = _obj(value, where, keys, frozenset({"blob"}))
    name = _name(obj["name"], f"{where}.name")
    where = f"layer {name!r}"
    cls = obj["class"]
    if not isinstance(cls, str):
        raise SpecError(f"{where}: expected a class name string, got {type(cls).__name__}")
    config = obj["config"]
    if not isinstance(config, dict):
        raise SpecError(f"{where}.config: expected an object, got {type(config).__name__}")
    inbound = tuple(
        _ref(r, f"{where}.inbound[{i}]")
        for i, r in enumerate(_list(obj["inbound"], f"{where}.inbound", 0, limits.max_inbound))
    )
    raw_weights = _list(obj["weights"], f"{where}.weights", 0, limits.max_weights_per_layer)
    weights = tuple(
        _weight_from_obj(w, f"{where}.weights[{i}]", limits) for i, w in enumerate(raw_weights)
    )
    blob_sha, blob_size = None, 0
    stages: tuple[StageSpec, ...] = ()
    if "blob" in obj:
        blob = _obj(obj["blob"], f"{where}.blob", {"sha256", "size"}, frozenset({"stages"}))
        blob_sha = _sha(blob["sha256"], f"{where}.blob.sha256")
        size = blob["size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise SpecError(f"{where}.blob.size: expected a positive integer, got {size!r:.40}")
        blob_size = size
        if "stages" in blob:
            stages = _stages_from_obj(blob["stages"], f"{where}.blob.stages")
    frozen = MappingProxyType({k: _freeze(v) for k, v in config.items()})
    return LayerSpec(name, cls, frozen, inbound, weights, blob_sha, blob_size, stages)


def _stages_from_obj(value: object, where: str) -> tuple[StageSpec, ...]:
    """§10.12.1: the declared stages of a blob (their format; what they must be for the
    layer is checked by :func:`validate_manifest`)."""
    from ionn_net.model.stages import StageSpec

    items = _list(value, where, 2, 8)
    return tuple(StageSpec.from_json_obj(s, f"{where}[{i}]") for i, s in enumerate(items))


def _input_from_obj(value: object, index: int, limits: SpecLimits) -> InputSpec:
    where = f"manifest.inputs[{index}]"
    obj = _obj(value, where, {"layer", "shape", "dtype"})
    if obj["dtype"] != "float32":
        raise SpecError(f"{where}.dtype: expected 'float32', got {obj['dtype']!r:.40}")
    shape = _shape(obj["shape"], f"{where}.shape", limits, min_dims=1)
    return InputSpec(_name(obj["layer"], f"{where}.layer"), shape)


def parse_manifest(obj: object, limits: SpecLimits = DEFAULT_LIMITS) -> ModelManifest:
    """Validate an untrusted, already-decoded JSON manifest completely and return it.

    Raises :class:`SpecError` (or :class:`UnsupportedLayerError` for a class outside
    the allowlist) naming the layer, the key, what was expected and what arrived.
    Nothing is allocated beyond the parsed values; nothing is built.
    """
    _screen(obj, limits)
    top = _obj(obj, "manifest", {"format", "name", "inputs", "outputs", "layers"})
    if top["format"] != FORMAT:
        raise SpecError(f"manifest.format: expected {FORMAT!r}, got {top['format']!r:.40}")
    inputs = _list(top["inputs"], "manifest.inputs", 1, limits.max_inputs)
    outputs = _list(top["outputs"], "manifest.outputs", 1, limits.max_outputs)
    layers = _list(top["layers"], "manifest.layers", 1, limits.max_layers)
    manifest = ModelManifest(
        name=_name(top["name"], "manifest.name"),
        inputs=tuple(_input_from_obj(v, i, limits) for i, v in enumerate(inputs)),
        outputs=tuple(_ref(v, f"manifest.outputs[{i}]") for i, v in enumerate(outputs)),
        layers=tuple(_layer_from_obj(v, i, limits) for i, v in enumerate(layers)),
    )
    validate_manifest(manifest, limits)
    return manifest


# -- semantic validation ---------------------------------------------------------------


def _check_input_shapes(
    name: str, shapes: object, limits: SpecLimits
) -> tuple[tuple[int, ...], ...]:
    if not isinstance(shapes, Sequence) or isinstance(shapes, str):
        raise SpecError(f"layer {name!r}: expected a sequence of input shapes, got {shapes!r:.60}")
    out = []
    for i, shape in enumerate(shapes):
        where = f"layer {name!r}: input shape {i}"
        seq = list(shape) if isinstance(shape, Sequence) and not isinstance(shape, str) else None
        if seq is None:
            raise SpecError(f"{where}: expected a sequence of ints, got {shape!r:.60}")
        out.append(_shape(seq, where, limits, min_dims=1))
    return tuple(out)


def _check_structure(spec: LayerSpec, limits: SpecLimits) -> None:
    """Everything about one LayerSpec that does not need its input shapes."""
    _name(spec.name, "layer name")
    where = f"layer {spec.name!r}"
    if not isinstance(spec.cls, str):
        raise SpecError(f"{where}: expected a class name string, got {type(spec.cls).__name__}")
    if not isinstance(spec.config, Mapping):
        raise SpecError(f"{where}.config: expected a mapping, got {type(spec.config).__name__}")
    _screen(spec.config, limits, ("layers", spec.name, "config"), frozen=True)
    if not isinstance(spec.inbound, tuple) or not all(_is_ref(r) for r in spec.inbound):
        raise SpecError(f"{where}.inbound: expected a tuple of TensorRef('layer', index)")
    if not isinstance(spec.weights, tuple):
        raise SpecError(f"{where}.weights: expected a tuple of WeightSpec")
    if len(spec.weights) > limits.max_weights_per_layer:
        raise SpecError(
            f"{where}.weights: expected at most {limits.max_weights_per_layer}, "
            f"got {len(spec.weights)}"
        )
    for i, w in enumerate(spec.weights):
        ok = isinstance(w, WeightSpec) and _is_weight_dtype(w.dtype)
        if not ok or not isinstance(w.shape, tuple):
            raise SpecError(
                f"{where}.weights[{i}]: expected a WeightSpec of {sorted(WEIGHT_DTYPES)}"
            )
        _shape(list(w.shape), f"{where}.weights[{i}].shape", limits, min_dims=0)
        _sha(w.sha256, f"{where}.weights[{i}].sha256")
    from ionn_net.model.stages import check_stage_specs  # stages.py imports this module

    check_stage_specs(spec.stages, f"{where}.blob.stages")


def _check_blob(spec: LayerSpec) -> None:
    where = f"layer {spec.name!r}"
    total = sum(w.nbytes for w in spec.weights)
    if spec.weights:
        _sha(spec.blob_sha256, f"{where}.blob.sha256")
        if spec.blob_size != total:
            raise SpecError(
                f"{where}.blob.size: expected {total} (sum of weight bytes), got {spec.blob_size!r}"
            )
    elif spec.blob_sha256 is not None or spec.blob_size != 0:
        raise SpecError(f"{where}.blob: expected no blob for a layer without weights")


def _check_declared(spec: LayerSpec, info: LayerInfo) -> None:
    where = f"layer {spec.name!r} ({spec.cls})"
    if len(spec.weights) != len(info.weights):
        raise SpecError(
            f"{where}: expected {len(info.weights)} weight tensors "
            f"{[e.role for e in info.weights]}, got {len(spec.weights)}"
        )
    for i, (w, e) in enumerate(zip(spec.weights, info.weights, strict=True)):
        if w.dtype != e.dtype or w.shape != e.shape:
            raise SpecError(
                f"{where}: weight {i} ({e.role}): expected {e.dtype} {list(e.shape)}, "
                f"got {w.dtype} {list(w.shape)}"
            )


def validate_layer(
    spec: LayerSpec, input_shapes: Sequence[Sequence[int]], limits: SpecLimits = DEFAULT_LIMITS
) -> LayerInfo:
    """Validate one layer spec given its input shapes (batch excluded) and return what
    the server computed for it. Checks names, config (JSON only, no forbidden key,
    per-class schema and bounds), declared weights (count, dtype, shape exactly as
    computed), blob size, and the per-layer caps."""
    _check_structure(spec, limits)
    shapes = _check_input_shapes(spec.name, input_shapes, limits)
    if len(shapes) != len(spec.inbound):
        raise SpecError(
            f"layer {spec.name!r}: expected one input shape per inbound reference "
            f"({len(spec.inbound)}), got {len(shapes)}"
        )
    info = infer_layer(spec.name, spec.cls, spec.config, shapes, limits)
    _check_declared(spec, info)
    _check_blob(spec)
    return info


def validate_manifest(
    m: ModelManifest, limits: SpecLimits = DEFAULT_LIMITS
) -> dict[str, LayerInfo]:
    """Validate a whole manifest (see :func:`parse_manifest`); return each layer's info
    in manifest (topological) order."""
    if not isinstance(m, ModelManifest):
        raise SpecError(f"expected a ModelManifest, got {type(m).__name__}")
    _name(m.name, "manifest.name")
    if not isinstance(m.layers, tuple) or not 1 <= len(m.layers) <= limits.max_layers:
        raise SpecError(f"manifest.layers: expected a tuple of 1..{limits.max_layers} LayerSpec")
    infos: dict[str, LayerInfo] = {}
    params = act = macs = 0
    for spec in m.layers:
        if not isinstance(spec, LayerSpec):
            raise SpecError(f"manifest.layers: expected LayerSpec items, got {type(spec).__name__}")
        _check_structure(spec, limits)
        if spec.name in infos:
            raise SpecError(f"layer {spec.name!r}: duplicate layer name")
        shapes = [_producer_shape(spec, ref, infos) for ref in spec.inbound]
        info = validate_layer(spec, shapes, limits)
        infos[spec.name] = info
        params, act, macs = params + info.params, act + info.activation_bytes, macs + info.macs
        _cap_total("parameters", params, limits.max_model_params, spec.name)
        _cap_total("activation bytes at batch 1", act, limits.max_model_activation_bytes, spec.name)
        _cap_total("multiply-accumulates at batch 1", macs, limits.max_model_macs, spec.name)
    _check_inputs(m, infos, limits)
    if any(spec.stages for spec in m.layers):
        from ionn_net.model.stages import check_manifest_stages

        check_manifest_stages(m.layers, limits)
    seen: set[TensorRef] = set()
    if not isinstance(m.outputs, tuple) or not 1 <= len(m.outputs) <= limits.max_outputs:
        raise SpecError(f"manifest.outputs: expected a tuple of 1..{limits.max_outputs} refs")
    for ref in m.outputs:
        _producer_shape(None, ref, infos)
        if ref in seen:
            raise SpecError(f"manifest.outputs: duplicate output {ref}")
        seen.add(ref)
    return infos


def _producer_shape(
    spec: LayerSpec | None, ref: TensorRef, infos: Mapping[str, LayerInfo]
) -> tuple[int, ...]:
    where = f"layer {spec.name!r}: inbound" if spec else "manifest.outputs"
    if not _is_ref(ref):
        raise SpecError(f"{where}: expected TensorRef('layer', index), got {ref!r:.80}")
    producer = infos.get(ref.layer)
    if producer is None:
        raise SpecError(
            f"{where} {ref}: expected a reference to an earlier layer, "
            f"got an unknown or later layer {ref.layer!r}"
        )
    if not 0 <= ref.index < len(producer.output_shapes):
        raise SpecError(
            f"{where} {ref}: layer {ref.layer!r} has {len(producer.output_shapes)} "
            f"outputs, got index {ref.index}"
        )
    if spec is not None and spec.cls != LOCAL_ONLY and producer.output_dtype != "float32":
        raise SpecError(f"{where} {ref}: expected a float32 tensor, got {producer.output_dtype}")
    return producer.output_shapes[ref.index]


def _is_ref(ref: object) -> bool:
    """A TensorRef with a str layer and a non-negative int index (hashable)."""
    return (
        isinstance(ref, TensorRef)
        and isinstance(ref.layer, str)
        and isinstance(ref.index, int)
        and not isinstance(ref.index, bool)
        and ref.index >= 0
    )


def _is_weight_dtype(dtype: object) -> bool:
    return isinstance(dtype, str) and dtype in WEIGHT_DTYPES


def _cap_total(what: str, total: int, cap: int, at: str) -> None:
    if total > cap:
        raise SpecError(
            f"manifest: total {what}: expected at most {cap}, got {total} at layer {at!r}"
        )


def _check_inputs(m: ModelManifest, infos: Mapping[str, LayerInfo], limits: SpecLimits) -> None:
    declared = {spec.name: spec for spec in m.layers if spec.cls == "InputLayer"}
    if not isinstance(m.inputs, tuple) or not 1 <= len(m.inputs) <= limits.max_inputs:
        raise SpecError(f"manifest.inputs: expected a tuple of 1..{limits.max_inputs} InputSpec")
    for i in m.inputs:
        if not isinstance(i, InputSpec) or not isinstance(i.shape, tuple):
            raise SpecError(f"manifest.inputs: expected InputSpec items, got {i!r:.80}")
        _name(i.layer, "manifest.inputs[].layer")
    names = [i.layer for i in m.inputs]
    if sorted(names) != sorted(declared) or len(set(names)) != len(names):
        raise SpecError(
            f"manifest.inputs: expected each InputLayer once {sorted(declared)}, got {names}"
        )
    for i in m.inputs:
        shape = infos[i.layer].output_shapes[0]
        if i.dtype != "float32" or i.shape != shape:
            raise SpecError(
                f"manifest.inputs: {i.layer!r}: expected float32 {list(shape)}, "
                f"got {i.dtype} {list(i.shape)}"
            )


# -- the server's graph ----------------------------------------------------------------

_FEATURE_KEYS = {
    "kernel_size": "kernel",
    "strides": "strides",
    "dilation_rate": "dilation",
    "pool_size": "pool",
    "filters": "filters",
    "units": "units",
    "groups": "groups",
    "depth_multiplier": "depth_multiplier",
}
_ACTIVATION_ALIASES = {"swish": "silu", "hard_swish": "hard_silu"}
_LIST_INPUT = frozenset(
    {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"}
)


def _features(spec: LayerSpec, info: LayerInfo) -> dict[str, object]:
    """Planner features in the same vocabulary as ``keras_graph`` (plus the call
    template: one tensor, or a list for merge layers)."""
    out: dict[str, object] = {}
    for key, feature in _FEATURE_KEYS.items():
        value = info.kwargs.get(key)
        if value is not None:
            out[feature] = _thaw(value)
    if isinstance(info.kwargs.get("padding"), str):
        out["padding"] = info.kwargs["padding"]
    act = info.kwargs.get("activation")
    if isinstance(act, str):
        out["activation"] = _ACTIVATION_ALIASES.get(act, act)
    if spec.cls == "DepthwiseConv2D":
        out["depthwise"] = True
    if spec.cls == "SeparableConv2D":
        out["separable"] = True
    tensors = [{"tensor": i} for i in range(len(spec.inbound))]
    args: list[object] = [tensors] if spec.cls in _LIST_INPUT else list(tensors)
    out["call"] = {"args": args, "kwargs": {}}
    return out


def graph_from_manifest(m: ModelManifest, limits: SpecLimits = DEFAULT_LIMITS) -> LayerGraph:
    """The server's own :class:`LayerGraph` of a manifest, from shapes, weight bytes and
    MACs it computed itself (nothing the client declared about shapes is used, except
    the output shapes of ``LocalOnly`` nodes, which the server never runs)."""
    infos = validate_manifest(m, limits)
    nodes = [
        LayerNode(
            name=spec.name,
            cls=spec.cls,
            inbound=spec.inbound,
            output_shapes=info.output_shapes,
            output_dtype=info.output_dtype,
            weight_bytes=info.weight_bytes,
            macs=info.macs,
            params=_features(spec, info),
        )
        for spec, info in zip(m.layers, infos.values(), strict=True)
    ]
    try:
        return LayerGraph(nodes, m.outputs, name=m.name)
    except GraphError as exc:  # validate_manifest already checked what LayerGraph checks
        raise SpecError(f"manifest {m.name!r}: {exc}") from exc


# -- weights ---------------------------------------------------------------------------

_NP_DTYPES: Mapping[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "int64": np.dtype("<i8")}


def split_blob(
    spec: LayerSpec, blob: bytes | bytearray | memoryview, limits: SpecLimits = DEFAULT_LIMITS
) -> list[np.ndarray]:
    """Split a layer's weight blob into arrays after checking its size, its SHA-256,
    each weight's SHA-256, and finiteness. Returns native-order, C-contiguous copies
    (float32, or int64 for a Normalization ``count``) that never alias ``blob``."""
    _check_structure(spec, limits)
    _check_blob(spec)
    where = f"layer {spec.name!r}: blob"
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise SpecError(f"{where}: expected bytes, got {type(blob).__name__}")
    view = memoryview(blob).cast("B")
    if view.nbytes != spec.blob_size:
        raise SpecError(f"{where}: expected {spec.blob_size} bytes, got {view.nbytes}")
    if spec.weights and hashlib.sha256(view).hexdigest() != spec.blob_sha256:
        raise SpecError(f"{where}: SHA-256 does not match {spec.blob_sha256}")
    arrays: list[np.ndarray] = []
    offset = 0
    for i, w in enumerate(spec.weights):
        chunk = view[offset : offset + w.nbytes]
        offset += w.nbytes
        arrays.append(_decode_weight(spec.name, i, w, chunk))
    return arrays


def _decode_weight(
    layer: str, i: int, w: WeightSpec, chunk: memoryview, *, digest: bool = True
) -> np.ndarray:
    where = f"layer {layer!r}: weight {i}"
    if digest and hashlib.sha256(chunk).hexdigest() != w.sha256:
        raise SpecError(f"{where}: SHA-256 does not match {w.sha256}")
    wire = _NP_DTYPES[w.dtype]
    # astype copies (never aliases the buffer) in C order; ascontiguousarray would
    # turn a 0-d weight (Normalization's count) into shape (1,).
    native = wire.newbyteorder("=")
    array = np.frombuffer(chunk, dtype=wire).reshape(w.shape).astype(native, order="C")
    if array.dtype.kind == "f" and not bool(np.isfinite(array).all()):
        raise SpecError(f"{where}: expected finite values, got NaN or infinity")
    return array


def check_weights(
    spec: LayerSpec, info: LayerInfo, weights: Iterable[object], *, digests: bool = True
) -> list[np.ndarray]:
    """Check arrays against what the validator expects for ``spec`` (count, dtype,
    shape, finiteness) and against the spec's declared SHA-256s (unless ``digests`` is
    False: weights decoded from a base stage, §10.12.4); return C-contiguous native-order
    copies. Used by ``layers.build_layer``."""
    where = f"layer {spec.name!r} ({spec.cls})"
    if not isinstance(weights, list | tuple):
        raise SpecError(f"{where}: expected a list of weight arrays, got {type(weights).__name__}")
    arrays = list(weights)
    if len(arrays) != len(info.weights):
        raise SpecError(f"{where}: expected {len(info.weights)} weight arrays, got {len(arrays)}")
    out = []
    for i, (a, e, w) in enumerate(zip(arrays, info.weights, spec.weights, strict=True)):
        if not isinstance(a, np.ndarray | np.generic):  # Keras returns 0-d weights as scalars
            raise SpecError(f"{where}: weight {i}: expected a numpy array, got {type(a).__name__}")
        if a.dtype != np.dtype(e.dtype) or tuple(a.shape) != e.shape:
            raise SpecError(
                f"{where}: weight {i} ({e.role}): expected {e.dtype} {list(e.shape)}, "
                f"got {a.dtype} {list(a.shape)}"
            )
        wire = np.asarray(a).astype(_NP_DTYPES[e.dtype], order="C", copy=False)
        chunk = wire.reshape(-1).view(np.uint8).data
        out.append(_decode_weight(spec.name, i, w, chunk, digest=digests))
    return out
