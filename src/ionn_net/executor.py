"""Compiled execution of any set of layers of a :class:`LayerGraph`.

This module (with :mod:`ionn_net.model.keras_graph` and :mod:`ionn_net.model.layers`)
is where TensorFlow lives. It owns:

* :class:`Executor`: a graph plus ``layer name -> built Keras layer`` (on the client the
  model's own layers, on the server layers rebuilt from specs, added incrementally with
  :meth:`Executor.add_layers`). :meth:`Executor.prepare` compiles *any* set of layers
  whose inputs come from outside the set, not only contiguous ranges, into a
  :class:`CompiledSlice`, cached per set.
* :class:`CompiledSlice`: a warmed-up ``tf.function`` with a fixed input signature;
  calling it validates the input tensors and returns numpy arrays.
* :class:`SliceChain`: compiled pieces run one after another as one slice.

Measuring (per-layer profiles, load times) is :mod:`ionn_net.measure`, built on the
public API here.

Design decisions (numbers from ``bench/executor.py`` on the 2-vCPU machines):

* Layers are called directly on the ``tf.function``'s graph tensors in topological
  order. Calling them on ``keras.Input`` symbolic tensors (``keras.Model`` slicing)
  would append an inbound node to every layer each time a slice is built, turning the
  client's layers into "shared" layers and growing memory; the traced graph is the same
  (checked: identical op count and latency for MobileNetV2).
* Batch dimension: fixed at 1 when ``max_batch == 1`` (IONN queries are single
  samples; a static shape lets grappler specialise), otherwise ``None`` with the
  batch checked against ``max_batch`` at call time (still one trace).
* XLA (``jit_compile=True``) is off by default: on these CPUs it made MobileNetV2 7-12x
  slower (depthwise convolutions) and ResNet50 about 1.1x slower, and took 2-3x longer
  to build.
* Outputs are returned as read-only numpy views of the output tensors (no copy; a
  copy of a 112x112x96 activation cost ~2 ms per call in a partition chain).
* Each slice is warmed up with one call on zeros inside :meth:`Executor.prepare`, so
  tracing never happens on the query path. Building runs off the event loop
  (``asyncio.to_thread``); the cache is guarded by a lock and a set being built by
  one thread is awaited, not rebuilt, by another.
* An ``InputLayer`` inside a set is the identity: its output ``TensorRef(name, 0)``
  is then one of the slice's inputs (the caller supplies the model input).
* AutoGraph is off: ``run`` is a loop over a fixed list of layers, and AutoGraph does not
  convert the layers' own ``call`` (Keras's code is not converted: a custom layer that
  branches on a tensor in Python fails to trace with it as without it), so converting
  only cost time: building the whole MobileNetV2 took 0.55-0.69 s without it against
  0.90-1.42 s with it, ResNet50 1.12-1.17 against 1.14-1.41 (``bench/executor.py``).
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import keras
import numpy as np
import tensorflow as tf

from ionn_net.errors import ExecutorError, GraphError
from ionn_net.model.graph import LayerGraph, TensorRef
from ionn_net.model.keras_graph import (
    CALL_KEY,
    fill_call,
    graph_from_keras,
    layer_weight_bytes,
    model_operations,
    node_class_name,
)

if TYPE_CHECKING:
    from ionn_net.shared_slices import SharedSlices

__all__ = ["DEFAULT_JIT", "INPUT_CLASS", "CompiledSlice", "Executor", "SliceChain"]

#: XLA off by default: measured slower on these CPUs (see module docstring).
DEFAULT_JIT = False

#: The class of a model input in a graph: the identity inside a slice.
INPUT_CLASS = "InputLayer"


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class CompiledSlice:
    """A compiled, warmed-up sub-model for exactly ``layers``.

    ``inputs`` are the tensors it reads (boundary inputs, plus the model input of any
    ``InputLayer`` in the set), ``outputs`` those it returns (boundary outputs), both in
    topological order; ``order`` is the execution order of the layers.
    """

    layers: frozenset[str]
    order: tuple[str, ...]
    inputs: tuple[TensorRef, ...]
    outputs: tuple[TensorRef, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    input_dtypes: tuple[str, ...]
    max_batch: int
    jit: bool
    build_seconds: float
    _fn: Any = field(repr=False)  # the concrete function
    _poly: Any = field(repr=False)  # the tf.function it was traced from

    @property
    def tracing_count(self) -> int:
        """How many times the function was traced (1 after :meth:`Executor.prepare`)."""
        return int(self._poly.experimental_get_tracing_count())

    def __call__(self, tensors: Mapping[TensorRef, np.ndarray]) -> dict[TensorRef, np.ndarray]:
        """Run on ``tensors`` (extra entries are ignored); return the outputs as
        read-only arrays (``batch`` first, the graph's dtype)."""
        feeds = self.validate(tensors)
        return dict(zip(self.outputs, self._run(feeds), strict=True))

    def zero_feeds(self) -> dict[TensorRef, np.ndarray]:
        """Zero inputs of the right shapes and dtypes at batch 1 (for timing)."""
        return {
            r: np.zeros((1, *shape), dtype)
            for r, shape, dtype in zip(
                self.inputs, self.input_shapes, self.input_dtypes, strict=True
            )
        }

    def validate(self, tensors: Mapping[TensorRef, np.ndarray]) -> tuple[np.ndarray, ...]:
        """The input arrays in :attr:`inputs` order, or :class:`ExecutorError` naming the
        tensor, what was expected and what arrived."""
        return _validated(self, tensors)

    def constant_feeds(self, tensors: Mapping[TensorRef, np.ndarray]) -> list[Any]:
        """The validated inputs as TensorFlow constants, for :meth:`run_raw` called many
        times on the same inputs (timing: no conversion inside the measured call)."""
        return [tf.constant(a) for a in self.validate(tensors)]

    def _run(self, feeds: Sequence[Any]) -> list[np.ndarray]:
        # np.asarray views the output buffer (read-only, no copy); .numpy() would copy
        return [np.asarray(r) for r in self.run_raw(feeds)]

    def run_raw(self, feeds: Sequence[Any]) -> list[Any]:
        """The outputs as TensorFlow tensors, for validated ``feeds`` (arrays or tensors)."""
        try:
            return list(self._fn(*feeds))
        except (tf.errors.OpError, ValueError, TypeError) as exc:
            raise ExecutorError(f"slice of {len(self.layers)} layers failed: {exc}") from exc


class _Inputs(Protocol):
    @property
    def inputs(self) -> tuple[TensorRef, ...]: ...
    @property
    def input_shapes(self) -> tuple[tuple[int, ...], ...]: ...
    @property
    def input_dtypes(self) -> tuple[str, ...]: ...
    @property
    def max_batch(self) -> int: ...


def _validated(spec: _Inputs, tensors: Mapping[TensorRef, np.ndarray]) -> tuple[np.ndarray, ...]:
    """``spec``'s input arrays from ``tensors`` in order, or :class:`ExecutorError`
    naming the tensor, what was expected and what arrived."""
    feeds: list[np.ndarray] = []
    batch: int | None = None
    for ref, shape, dtype in zip(spec.inputs, spec.input_shapes, spec.input_dtypes, strict=True):
        if ref not in tensors:
            raise ExecutorError(f"input tensor {ref}: expected {dtype}{list(shape)}, missing")
        arr = tensors[ref]
        if not isinstance(arr, np.ndarray):
            raise ExecutorError(
                f"input tensor {ref}: expected a numpy array, got {type(arr).__name__}"
            )
        want_batch = batch if batch is not None else "1.." + str(spec.max_batch)
        if (
            arr.dtype != np.dtype(dtype)
            or arr.shape[1:] != shape
            or arr.ndim != len(shape) + 1
            or not 1 <= arr.shape[0] <= spec.max_batch
            or (batch is not None and arr.shape[0] != batch)
        ):
            raise ExecutorError(
                f"input tensor {ref}: expected {dtype} of shape "
                f"[{want_batch}, {', '.join(map(str, shape))}], "
                f"got {arr.dtype} of shape {list(arr.shape)}"
            )
        batch = arr.shape[0]
        feeds.append(arr)
    return tuple(feeds)


@dataclass(frozen=True)
class SliceChain:
    """Compiled pieces run one after another as if they were one slice for ``layers``
    (their union): how a server runs a run set without recompiling the layers it
    compiled for earlier partitions (:meth:`LayerGraph.pieces`, protocol.md §10.6).
    Each call costs one slice dispatch per piece instead of one."""

    layers: frozenset[str]
    pieces: tuple[CompiledSlice, ...]
    inputs: tuple[TensorRef, ...]
    outputs: tuple[TensorRef, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    input_dtypes: tuple[str, ...]
    max_batch: int

    def __call__(self, tensors: Mapping[TensorRef, np.ndarray]) -> dict[TensorRef, np.ndarray]:
        """Run on ``tensors`` (the union's inputs; extra entries ignored, the rest
        validated as :meth:`CompiledSlice.validate` does); return the union's outputs as
        read-only arrays. Between pieces tensors stay TensorFlow tensors (no copy)."""
        values: dict[TensorRef, Any] = dict(
            zip(self.inputs, _validated(self, tensors), strict=True)
        )
        for piece in self.pieces:
            feeds = [values[r] for r in piece.inputs]
            values.update(zip(piece.outputs, piece.run_raw(feeds), strict=True))
        return {r: np.asarray(values[r]) for r in self.outputs}


class Executor:
    """Runs sets of layers of ``graph`` with the Keras layers in ``layers``.

    ``layers`` maps layer names to built Keras layers (or raw Keras operations);
    ``InputLayer`` nodes need no entry. Layers may be added later with
    :meth:`add_layers`. ``jit`` selects XLA (default :data:`DEFAULT_JIT`);
    ``max_batch`` bounds the batch dimension of every call. ``shared``: compiled slices
    shared with other executors by content (a server's catalog layers,
    :class:`~ionn_net.shared_slices.SharedSlices`); a set this executor has not compiled
    is looked up there first.
    """

    def __init__(
        self,
        graph: LayerGraph,
        layers: Mapping[str, Any],
        *,
        jit: bool | None = None,
        max_batch: int = 1,
        shared: SharedSlices | None = None,
    ) -> None:
        if not isinstance(graph, LayerGraph):
            raise ExecutorError(f"expected a LayerGraph, got {type(graph).__name__}")
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise ExecutorError(f"max_batch: expected an integer >= 1, got {max_batch!r}")
        self.graph = graph
        self.jit = DEFAULT_JIT if jit is None else bool(jit)
        self.max_batch = max_batch
        self._layers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._cache: dict[frozenset[str], CompiledSlice] = {}
        self._building: dict[frozenset[str], Future[CompiledSlice]] = {}
        self._shared = shared
        self.add_layers(layers)

    @classmethod
    def from_model(
        cls, model: keras.Model, *, jit: bool | None = None, max_batch: int = 1
    ) -> Executor:
        """The client's executor: the model's graph and its own layers."""
        try:
            graph = graph_from_keras(model)
        except GraphError as exc:
            raise ExecutorError(f"cannot describe model {model.name!r}: {exc}") from exc
        return cls(graph, model_operations(model), jit=jit, max_batch=max_batch)

    # -- layers ----------------------------------------------------------------------

    def add_layers(self, layers: Mapping[str, Any]) -> None:
        """Add built layers (any order). Each must be a node of the graph, of the
        node's class, built, with the node's weight size; a name cannot be rebound to a
        different object (cached slices would keep the old one)."""
        checked = {name: self._check_layer(name, layer) for name, layer in layers.items()}
        with self._lock:
            for name, layer in checked.items():
                held = self._layers.get(name)
                if held is not None and held is not layer:
                    raise ExecutorError(f"layer {name!r}: already bound to another object")
            self._layers.update(checked)

    def _check_layer(self, name: str, layer: Any) -> Any:
        if name not in self.graph:
            raise ExecutorError(f"layer {name!r}: not in graph {self.graph.name!r}")
        node = self.graph[name]
        got = node_class_name(layer)
        if got != node.cls:
            raise ExecutorError(f"layer {name!r}: expected class {node.cls}, got {got}")
        if node.weight_bytes and not getattr(layer, "built", True):
            raise ExecutorError(f"layer {name!r}: expected a built layer, got an unbuilt one")
        size = layer_weight_bytes(layer)
        if size != node.weight_bytes:
            raise ExecutorError(
                f"layer {name!r}: expected {node.weight_bytes} weight bytes, got {size}"
            )
        return layer

    def layers(self) -> dict[str, Any]:
        """Every built layer bound here, by name (a copy)."""
        with self._lock:
            return dict(self._layers)

    def layer(self, name: str) -> Any:
        """The built layer bound to ``name`` (e.g. to assign refined weights to its
        variables: compiled slices read them, so no slice needs rebuilding)."""
        with self._lock:
            found = self._layers.get(name)
        if found is None:
            raise ExecutorError(f"layer {name!r}: not loaded here")
        return found

    def has(self, names: Iterable[str]) -> bool:
        """True when every named layer can run here (input layers always can)."""
        return not self.missing(names)

    def missing(self, names: Iterable[str]) -> tuple[str, ...]:
        """The named layers that are neither held nor input layers, in given order."""
        with self._lock:
            held = set(self._layers)
        out = []
        for name in names:
            if name not in held and not (name in self.graph and self.is_input(name)):
                out.append(name)
        return tuple(out)

    def is_input(self, name: str) -> bool:
        """Layer ``name`` is a model input (the identity inside a slice)."""
        return self.graph[name].cls == INPUT_CLASS

    def call_template(self, name: str) -> Mapping[str, object]:
        """How layer ``name`` is called on its inbound tensors (``fill_call``'s template)."""
        template = self.graph[name].params.get(CALL_KEY)
        if template is None:  # graphs rebuilt from a manifest carry no call template
            return _default_call(len(self.graph[name].inbound))
        assert isinstance(template, Mapping)
        return template

    # -- slices ----------------------------------------------------------------------

    def prepare(self, layer_set: Iterable[str]) -> CompiledSlice:
        """The compiled slice for exactly ``layer_set`` (cached; built and warmed up on
        first request; concurrent requests for the same set wait for one build)."""
        key = self._key(layer_set)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                return hit
            pending = self._building.get(key)
            if pending is None:
                mine: Future[CompiledSlice] = Future()
                self._building[key] = mine
        if pending is not None:
            return pending.result()
        try:
            shared = self._shared
            built = self._build(key) if shared is None else shared.prepare(self, key, self._build)
        except BaseException as exc:
            with self._lock:
                del self._building[key]
            mine.set_exception(exc)
            raise
        with self._lock:
            self._cache[key] = built
            del self._building[key]
        mine.set_result(built)
        return built

    def prepare_chain(self, pieces: Sequence[Iterable[str]]) -> CompiledSlice | SliceChain:
        """Compile each piece (cached, so only pieces never seen before cost anything)
        and chain them in the given order, which must let each piece read only
        tensors from outside the union or from earlier pieces. One piece is returned
        as its plain slice."""
        keys = [self._key(p) for p in pieces]
        if not keys:
            raise ExecutorError("chain: expected at least one piece, got none")
        union: frozenset[str] = frozenset().union(*keys)
        if sum(map(len, keys)) != len(union):
            raise ExecutorError("chain: pieces overlap")
        seen: set[str] = set()
        for key in keys:
            ins, _ = self.graph.boundary(key)
            early = sorted(r.layer for r in ins if r.layer in union and r.layer not in seen)
            if early:
                raise ExecutorError(f"chain: a piece reads {early[:3]} before they run")
            seen |= key
        slices = tuple(self.prepare(k) for k in keys)
        if len(slices) == 1:
            return slices[0]
        earlier: set[TensorRef] = set()
        given: dict[TensorRef, None] = {}
        for piece in slices:  # what no earlier piece produces comes from the caller
            given.update((r, None) for r in piece.inputs if r not in earlier)
            earlier.update(piece.outputs)
        inputs = tuple(given)
        _, outputs = self.graph.boundary(union)
        shapes = tuple(self.graph[r.layer].output_shapes[r.index] for r in inputs)
        dtypes = tuple(self.graph[r.layer].output_dtype for r in inputs)
        return SliceChain(union, slices, inputs, outputs, shapes, dtypes, self.max_batch)

    def cached(self, layer_set: Iterable[str]) -> CompiledSlice | None:
        """The slice for ``layer_set`` if already built, without building it."""
        with self._lock:
            return self._cache.get(frozenset(layer_set))

    def discard(self, layer_set: Iterable[str]) -> bool:
        """Drop a cached slice; True if one was cached."""
        with self._lock:
            return self._cache.pop(frozenset(layer_set), None) is not None

    def _key(self, layer_set: Iterable[str]) -> frozenset[str]:
        if isinstance(layer_set, str):
            raise ExecutorError(f"layer set: expected an iterable of names, got {layer_set!r}")
        key = frozenset(layer_set)
        if not key:
            raise ExecutorError("layer set: expected at least one layer, got none")
        unknown = sorted(n for n in key if n not in self.graph)
        if unknown:
            raise ExecutorError(f"layer set: layers not in graph {self.graph.name!r}: {unknown}")
        missing = self.missing(sorted(key, key=self.graph.position))
        if missing:
            raise ExecutorError(f"layer set: layers not loaded here: {list(missing)}")
        return key

    def _build(self, key: frozenset[str]) -> CompiledSlice:
        start = time.perf_counter()
        graph = self.graph
        order = tuple(n for n in graph.order if n in key)
        boundary_in, outputs = graph.boundary(key)
        own_inputs = {TensorRef(n, 0) for n in order if self.is_input(n)}
        inputs = tuple(sorted({*boundary_in, *own_inputs}, key=_ref_key(graph)))
        if not outputs:
            raise ExecutorError(f"layer set {sorted(key)}: produces no tensor used elsewhere")
        with self._lock:
            steps = [self._step(n) for n in order if not self.is_input(n)]
        shapes = tuple(graph[r.layer].output_shapes[r.index] for r in inputs)
        dtypes = tuple(graph[r.layer].output_dtype for r in inputs)
        batch = 1 if self.max_batch == 1 else None
        signature = [
            tf.TensorSpec((batch, *s), tf.as_dtype(d)) for s, d in zip(shapes, dtypes, strict=True)
        ]

        def run(*xs: Any) -> list[Any]:
            values: dict[TensorRef, Any] = dict(zip(inputs, xs, strict=True))
            for step in steps:
                step(values)
            return [values[r] for r in outputs]

        # A concrete function cannot retrace: a call that does not match the signature
        # fails instead of silently compiling on the query path. It is also cheaper to
        # call than the polymorphic function (~0.2 ms vs ~0.34 ms per call here).
        poly = tf.function(run, jit_compile=self.jit, autograph=False)
        zeros = [tf.zeros((1, *s), tf.as_dtype(d)) for s, d in zip(shapes, dtypes, strict=True)]
        try:
            fn = poly.get_concrete_function(*signature)
            fn(*zeros)  # warm-up (and XLA compilation when jit)
        except (tf.errors.OpError, ValueError, TypeError, GraphError) as exc:
            raise ExecutorError(f"layer set {sorted(key)}: build failed: {exc}") from exc
        return CompiledSlice(
            layers=key,
            order=order,
            inputs=inputs,
            outputs=outputs,
            input_shapes=shapes,
            input_dtypes=dtypes,
            max_batch=self.max_batch,
            jit=self.jit,
            build_seconds=time.perf_counter() - start,
            _fn=fn,
            _poly=poly,
        )

    def _step(self, name: str) -> Callable[[dict[TensorRef, Any]], None]:
        """A closure computing layer ``name`` from ``values`` into ``values``."""
        node = self.graph[name]
        op = self._layers[name]
        template = self.call_template(name)
        extra = {}
        if "training" not in _kwargs_of(template) and _accepts_training(op):
            extra["training"] = False  # inference, as Model.predict does
        n_out = len(node.output_shapes)

        def step(values: dict[TensorRef, Any]) -> None:
            args, kwargs = fill_call(template, [values[r] for r in node.inbound])
            result = op(*args, **kwargs, **extra)
            outs = list(result) if isinstance(result, list | tuple) else [result]
            if len(outs) != n_out:
                raise ExecutorError(f"layer {name!r}: expected {n_out} outputs, got {len(outs)}")
            for i, out in enumerate(outs):
                values[TensorRef(name, i)] = out

        return step

    # -- whole model -----------------------------------------------------------------

    def run_local(self, x: np.ndarray | Mapping[str, np.ndarray]) -> dict[TensorRef, np.ndarray]:
        """Run the whole model here on ``x`` (the array for a single-input model, or
        ``input layer name -> array``); return the model outputs."""
        feeds = self._model_feeds(x)
        return self.prepare(self.graph.order)(feeds)

    def predict(self, x: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray | list[np.ndarray]:
        """Like ``model.predict_on_batch``: one array, or a list for several outputs."""
        results = self.run_local(x)
        arrays = [results[r] for r in self.graph.outputs]
        return arrays[0] if len(arrays) == 1 else arrays

    def _model_feeds(self, x: np.ndarray | Mapping[str, np.ndarray]) -> dict[TensorRef, Any]:
        names = self.graph.inputs
        if isinstance(x, Mapping):
            if set(x) != set(names):
                raise ExecutorError(f"model inputs: expected {list(names)}, got {sorted(x)}")
            return {TensorRef(n, 0): x[n] for n in names}
        if len(names) != 1:
            raise ExecutorError(f"model inputs: expected a mapping for {list(names)}")
        return {TensorRef(names[0], 0): x}


def _ref_key(graph: LayerGraph) -> Callable[[TensorRef], tuple[int, int]]:
    return lambda ref: (graph.position(ref.layer), ref.index)


def _default_call(n_inbound: int) -> dict[str, object]:
    """``layer(x)`` for one inbound tensor, ``layer([x0, x1, ...])`` for several."""
    tensors = [{"tensor": i} for i in range(n_inbound)]
    return {"args": tensors if n_inbound == 1 else [tensors], "kwargs": {}}


def _kwargs_of(template: object) -> Mapping[str, object]:
    kwargs = template.get("kwargs") if isinstance(template, Mapping) else None
    return kwargs if isinstance(kwargs, Mapping) else {}


def _accepts_training(op: Any) -> bool:
    call = getattr(op, "call", None)
    if call is None:
        return False
    try:
        return "training" in inspect.signature(call).parameters
    except (TypeError, ValueError):
        return False
