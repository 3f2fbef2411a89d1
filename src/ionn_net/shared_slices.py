"""Compiled slices shared between the executors of many sessions (:class:`SharedSlices`).

An edge server builds its catalog's layers once, ahead, and every session whose manifest
names a catalog layer gets that very Keras object (``server_catalog``). A compiled slice is
a traced function over the layer objects it calls, so a slice compiled for a set of those
shared objects in one session's graph computes exactly what the same set computes in any
other session's graph: what differs is only the session's layer names and where the set
sits in its model. Keying compiled slices by their *content* rather than by the session's
model therefore lets a fine-tuned head on a catalog backbone (another manifest, the same
backbone layers) run on the slices the server compiled for the catalog model, or for an
earlier head, without compiling anything.

**The content key** of a set of layers in an executor's graph, taken in the graph's
topological order: for each layer the identity of its built layer object (only objects
registered here, i.e. the server's prebuilt catalog layers, count: a set with any other
layer is never shared), its call template and number of outputs, and where each of its
inputs comes from (a position inside the set, or the n-th distinct tensor entering the
set, with that tensor's shape and dtype); then which of the set's tensors leave it (which
depends on the rest of the graph: a set whose outputs differ is another slice), and the
executor's ``jit`` and ``max_batch``. Layer names are not part of it: a slice found for
another graph is returned as a *view* (same compiled function, the names of the asking
graph). Equal keys mean the same objects wired the same way on inputs of the same
shapes: the same traced computation.

**Bounds.** Slices compiled ahead by the operator's warm-up are *pinned* and stay; the
others (compiled by a session's load) are kept for the ``capacity`` most recently used.
A slice holds no weights of its own (it reads the layers' variables), so each costs its
traced graph only. Concurrent requests for one key wait for one compile, except a compile
started in the background (:meth:`SharedSlices.in_background`, the warm-up's, at the lowest
priority): a load never waits for one, it compiles at its own priority.

This module imports no framework: the executor hands it its builder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ionn_net.model.graph import TensorRef

if TYPE_CHECKING:
    from ionn_net.executor import CompiledSlice, Executor

__all__ = ["SharedSlices"]

#: Default number of unpinned shared slices kept (most recently used first).
DEFAULT_CAPACITY = 32

_Token = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class _Content:
    """A set's content key and the token of each tensor of its interface."""

    key: Hashable
    order: tuple[str, ...]
    entering: dict[TensorRef, _Token]

    def token(self, ref: TensorRef) -> _Token:
        if ref in self.entering:
            return self.entering[ref]
        return ("at", self.order.index(ref.layer), ref.index)

    def ref(self, token: _Token) -> TensorRef:
        if token[0] == "at":
            return TensorRef(self.order[token[1]], token[2])
        return next(r for r, t in self.entering.items() if t == token)


@dataclass(frozen=True, slots=True)
class _Entry:
    compiled: CompiledSlice
    inputs: tuple[_Token, ...]
    outputs: tuple[_Token, ...]


class _State:
    """What every handle of one :class:`SharedSlices` shares."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.lock = threading.Lock()
        self.objects: dict[int, Any] = {}  # id -> object: kept alive, so ids stay unique
        self.slices: OrderedDict[Hashable, _Entry] = OrderedDict()
        self.pinned: set[Hashable] = set()
        #: content -> (the compile under way, whether it runs in the background)
        self.building: dict[Hashable, tuple[Future[_Entry], bool]] = {}
        self.compiled = 0
        self.reused = 0
        self.local = threading.local()  # .background: this thread compiles in the background


class SharedSlices:
    """Compiled slices over registered layer objects, shared by content (see the module
    docstring). Thread-safe. ``compiled`` and ``reused`` count the slices compiled here
    and those served to an executor from a compile it did not do."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if type(capacity) is not int or capacity < 0:
            raise ValueError(f"capacity: expected an integer >= 0, got {capacity!r}")
        self._state = _State(capacity)

    @contextlib.contextmanager
    def in_background(self) -> Iterator[None]:
        """Mark the compiles this thread starts inside as background ones (a warm-up at the
        lowest priority): nobody waits for them, so a load that asks for the same content
        meanwhile compiles it at its own priority instead."""
        self._state.local.background = True
        try:
            yield
        finally:
            self._state.local.background = False

    @property
    def capacity(self) -> int:
        return self._state.capacity

    @property
    def compiled(self) -> int:
        """Slices over shared layers compiled so far (by a warm-up or a load)."""
        with self._state.lock:
            return self._state.compiled

    @property
    def reused(self) -> int:
        """Times an executor got a shared slice without compiling it."""
        with self._state.lock:
            return self._state.reused

    def __len__(self) -> int:
        with self._state.lock:
            return len(self._state.slices)

    def register(self, layers: Iterable[Any]) -> None:
        """Let slices over these built layer objects be shared. The caller guarantees that
        they are never changed in place (the server's prebuilt catalog layers)."""
        with self._state.lock:
            for layer in layers:
                self._state.objects[id(layer)] = layer

    def prepare(
        self,
        executor: Executor,
        layers: frozenset[str],
        build: Callable[[frozenset[str]], CompiledSlice],
    ) -> CompiledSlice:
        """The slice for ``layers`` of ``executor``: a shared one with the same content
        (as a view in ``executor``'s names; waiting for its compile if one is under way,
        unless that one runs in the background), else ``build(layers)``, shared from then
        on when every layer of the set is registered."""
        content = self._content(executor, layers)
        if content is None:
            return build(layers)
        state, key = self._state, content.key
        background = bool(getattr(state.local, "background", False))
        mine: Future[_Entry] | None = None
        with state.lock:
            entry = state.slices.get(key)
            pending = None if entry is not None else state.building.get(key)
            if entry is not None:
                state.slices.move_to_end(key)
                state.reused += 1
            elif pending is None or (pending[1] and not background):
                mine = Future()
                state.building[key] = (mine, background)
        if mine is None:
            if entry is None:
                assert pending is not None
                entry = pending[0].result()
                with state.lock:
                    state.reused += 1
            return _view(entry, content, layers)
        return self._build(content, layers, build, mine)

    def _build(
        self,
        content: _Content,
        layers: frozenset[str],
        build: Callable[[frozenset[str]], CompiledSlice],
        mine: Future[_Entry],
    ) -> CompiledSlice:
        """Compile, share and resolve ``mine`` whatever happens: a future left pending in
        ``building`` would block every later request for the same content for good."""
        state, key = self._state, content.key
        try:
            compiled = build(layers)
            entry = _Entry(
                compiled,
                tuple(content.token(r) for r in compiled.inputs),
                tuple(content.token(r) for r in compiled.outputs),
            )
            with state.lock:
                self._forget(key, mine)
                state.compiled += 1
                entry = state.slices.setdefault(key, entry)  # a concurrent compile may be first
                self._evict()
        except BaseException as exc:
            with state.lock:
                self._forget(key, mine)
            mine.set_exception(exc)
            raise
        mine.set_result(entry)
        return compiled

    def _forget(self, key: Hashable, mine: Future[_Entry]) -> None:
        """No longer list ``mine`` as the compile under way for ``key`` (the caller holds
        the lock; a later compile may have taken its place)."""
        building = self._state.building
        if building.get(key, (None, False))[0] is mine:
            del building[key]

    def pin(self, executor: Executor, layers: Iterable[str]) -> bool:
        """Keep the shared slice of ``layers`` of ``executor`` whatever the capacity (a
        slice the operator chose to compile ahead); True if there is one."""
        content = self._content(executor, frozenset(layers))
        state = self._state
        with state.lock:
            if content is None or content.key not in state.slices:
                return False
            state.pinned.add(content.key)
            return True

    def _evict(self) -> None:
        state = self._state  # the caller holds its lock
        unpinned = [k for k in state.slices if k not in state.pinned]  # oldest first
        for key in unpinned[: max(0, len(unpinned) - state.capacity)]:
            del state.slices[key]

    def _content(self, executor: Executor, layers: frozenset[str]) -> _Content | None:
        """The content key of ``layers`` in ``executor`` (module docstring), or None when
        a layer of the set is not a registered object."""
        graph = executor.graph
        order = tuple(n for n in graph.order if n in layers)
        position = {n: i for i, n in enumerate(order)}
        entering: dict[TensorRef, _Token] = {}
        signature: list[Any] = []

        def token(ref: TensorRef) -> _Token:
            if ref.layer in position:
                return ("at", position[ref.layer], ref.index)
            if ref not in entering:
                entering[ref] = ("in", len(entering))
                node = graph[ref.layer]
                signature.append((tuple(node.output_shapes[ref.index]), node.output_dtype))
            return entering[ref]

        items: list[Any] = []
        for name in order:
            node = graph[name]
            if executor.is_input(name):
                items.append(("input", tuple(map(tuple, node.output_shapes)), node.output_dtype))
                continue
            op = executor.layer(name)
            with self._state.lock:
                registered = self._state.objects.get(id(op)) is op
            if not registered:
                return None
            call = json.dumps(executor.call_template(name), sort_keys=True, default=str)
            inbound = tuple(token(r) for r in node.inbound)
            items.append((id(op), call, len(node.output_shapes), inbound))
        _, outputs = graph.boundary(layers)
        leaving = tuple(sorted(token(r) for r in outputs))
        key = (executor.jit, executor.max_batch, tuple(items), tuple(signature), leaving)
        return _Content(key, order, entering)


def _view(entry: _Entry, content: _Content, layers: frozenset[str]) -> CompiledSlice:
    """``entry``'s compiled function under the names of the asking graph (its inputs and
    outputs in the same positions: the function is positional)."""
    return dataclasses.replace(
        entry.compiled,
        layers=layers,
        order=content.order,
        inputs=tuple(content.ref(t) for t in entry.inputs),
        outputs=tuple(content.ref(t) for t in entry.outputs),
    )
