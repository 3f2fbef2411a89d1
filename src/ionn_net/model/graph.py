"""Framework-free layer graph: the one description of a model that the planner,
the wire protocol and the executors share.

This module owns the *shape* of a model (layers, tensors, edges, sizes, costs) and
the graph algorithms the planner needs: topological order, single-tensor cut points
(the layers that dominate everything after them), and the boundary tensors of any
set of layers. It never imports keras; :mod:`ionn_net.model.keras_graph` builds a
:class:`LayerGraph` from a Keras model.

Tensors are named by :class:`TensorRef` ``(layer, index)``: output ``index`` of
layer ``layer``. A model input is the output 0 of its ``InputLayer`` node.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from ionn_net.errors import GraphError

__all__ = ["DTYPE_SIZES", "LayerGraph", "LayerNode", "TensorRef"]

#: Bytes per element of the dtypes a graph may carry (see protocol.md §9.1).
DTYPE_SIZES: Mapping[str, int] = {
    "float32": 4,
    "float16": 2,
    "float64": 8,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "bool": 1,
}


@dataclass(frozen=True, slots=True, order=True)
class TensorRef:
    """Output ``index`` of layer ``layer``."""

    layer: str
    index: int = 0

    def __str__(self) -> str:
        return f"{self.layer}:{self.index}"

    @classmethod
    def parse(cls, text: str) -> TensorRef:
        """Parse ``"name:index"`` (or a bare ``"name"`` meaning index 0)."""
        name, sep, idx = text.rpartition(":")
        if not sep:
            return cls(text, 0)
        if not idx.isdigit():
            raise GraphError(f"tensor reference {text!r}: expected 'layer:index'")
        return cls(name, int(idx))


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerNode:
    """One layer: identity, edges and the sizes/costs the planner needs.

    ``output_shapes`` exclude the batch dimension. ``weight_bytes`` is the size of the
    layer's weight blob on the wire (uncompressed); ``macs`` estimates multiply-
    accumulates at batch 1 (elementwise operations count one per output element).
    """

    name: str
    cls: str
    inbound: tuple[TensorRef, ...]
    output_shapes: tuple[tuple[int, ...], ...]
    output_dtype: str = "float32"
    weight_bytes: int = 0
    macs: int = 0
    params: Mapping[str, object] = field(default_factory=dict, compare=False, hash=False)

    @property
    def output_elements(self) -> int:
        return sum(math.prod(s) for s in self.output_shapes)

    @property
    def output_bytes(self) -> int:
        """Bytes of all outputs at batch 1."""
        return self.output_elements * DTYPE_SIZES[self.output_dtype]

    def tensor_bytes(self, index: int) -> int:
        return math.prod(self.output_shapes[index]) * DTYPE_SIZES[self.output_dtype]

    @property
    def outputs(self) -> tuple[TensorRef, ...]:
        return tuple(TensorRef(self.name, i) for i in range(len(self.output_shapes)))


class LayerGraph:
    """An immutable DAG of :class:`LayerNode` with the model's inputs and outputs.

    ``nodes`` may be given in any order; the graph stores them in a deterministic
    topological order (Kahn's algorithm, ties broken by the given order).
    """

    def __init__(
        self,
        nodes: Iterable[LayerNode],
        outputs: Sequence[TensorRef],
        *,
        name: str = "model",
    ) -> None:
        given = list(nodes)
        self.name = name
        by_name: dict[str, LayerNode] = {}
        for node in given:
            if node.name in by_name:
                raise GraphError(f"duplicate layer name {node.name!r}")
            by_name[node.name] = node
        for node in given:
            for ref in node.inbound:
                self._check_ref(by_name, ref, f"input of {node.name!r}")
        for ref in outputs:
            self._check_ref(by_name, ref, "model output")
        if not outputs:
            raise GraphError("a model needs at least one output")
        order = _topological(given)
        self._nodes: dict[str, LayerNode] = {n: by_name[n] for n in order}
        self._index = {n: i for i, n in enumerate(order)}
        self.outputs: tuple[TensorRef, ...] = tuple(outputs)
        self.inputs: tuple[str, ...] = tuple(n for n in order if not by_name[n].inbound)
        consumers: dict[TensorRef, list[str]] = {}
        for node in self._nodes.values():
            for ref in node.inbound:
                consumers.setdefault(ref, [])
                if node.name not in consumers[ref]:
                    consumers[ref].append(node.name)
        self._consumers = {k: tuple(v) for k, v in consumers.items()}

    @staticmethod
    def _check_ref(by_name: Mapping[str, LayerNode], ref: TensorRef, what: str) -> None:
        node = by_name.get(ref.layer)
        if node is None:
            raise GraphError(f"{what}: unknown layer {ref.layer!r}")
        if not 0 <= ref.index < len(node.output_shapes):
            raise GraphError(
                f"{what}: layer {ref.layer!r} has {len(node.output_shapes)} outputs, "
                f"got index {ref.index}"
            )

    # -- basic access -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[LayerNode]:
        return iter(self._nodes.values())

    def __contains__(self, name: object) -> bool:
        return name in self._nodes

    def __getitem__(self, name: str) -> LayerNode:
        try:
            return self._nodes[name]
        except KeyError:
            raise GraphError(f"unknown layer {name!r}") from None

    @property
    def order(self) -> tuple[str, ...]:
        """Layer names in topological order."""
        return tuple(self._nodes)

    def position(self, name: str) -> int:
        return self._index[name]

    def consumers(self, ref: TensorRef) -> tuple[str, ...]:
        """Layers that read tensor ``ref``."""
        return self._consumers.get(ref, ())

    def successors(self, name: str) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for ref in self[name].outputs:
            for c in self.consumers(ref):
                seen[c] = None
        return tuple(seen)

    def tensor_bytes(self, ref: TensorRef) -> int:
        return self[ref.layer].tensor_bytes(ref.index)

    @property
    def total_weight_bytes(self) -> int:
        return sum(n.weight_bytes for n in self._nodes.values())

    # -- cuts and boundaries ------------------------------------------------------

    def live_after(self, position: int) -> tuple[TensorRef, ...]:
        """Tensors produced at or before ``position`` (topological index) that are
        still needed after it: by a later layer or as a model output."""
        order = self.order
        live: list[TensorRef] = []
        for name in order[: position + 1]:
            for ref in self[name].outputs:
                later = any(self._index[c] > position for c in self.consumers(ref))
                if later or (ref in self.outputs and position < len(order) - 1):
                    live.append(ref)
        return tuple(live)

    def cut_points(self) -> tuple[str, ...]:
        """Layers after which exactly one tensor is live: cutting the model there
        splits it into two parts joined by that single tensor. These are the layers
        that dominate the model output (IONN's collapse points; articulation points
        of the chain of super-layers). The last layer is always included."""
        points = []
        for pos, name in enumerate(self.order):
            live = self.live_after(pos)
            if pos == len(self) - 1 or (len(live) == 1 and live[0].layer == name):
                points.append(name)
        return tuple(points)

    def boundary(
        self, layers: Iterable[str]
    ) -> tuple[tuple[TensorRef, ...], tuple[TensorRef, ...]]:
        """For a set of layers, the tensors flowing in (produced outside, read
        inside) and out (produced inside, read outside or a model output), each in
        deterministic (topological, index) order."""
        inside = set(layers)
        for name in inside:
            if name not in self._nodes:
                raise GraphError(f"unknown layer {name!r}")
        ins: dict[TensorRef, None] = {}
        outs: dict[TensorRef, None] = {}
        for name in self.order:
            if name not in inside:
                continue
            node = self._nodes[name]
            for ref in node.inbound:
                if ref.layer not in inside:
                    ins[ref] = None
            for ref in node.outputs:
                readers = self.consumers(ref)
                if ref in self.outputs or any(r not in inside for r in readers):
                    outs[ref] = None
        key = self._ref_key
        return tuple(sorted(ins, key=key)), tuple(sorted(outs, key=key))

    def pieces(self, layers: Iterable[str], batch_of: Mapping[str, int]) -> list[frozenset[str]]:
        """Split ``layers`` into pieces of one batch each (``batch_of[name]``, e.g. the
        load that brought the layer), listed so that every piece reads only tensors
        from outside ``layers`` or from earlier pieces. Runs them in this order and
        each piece can be compiled once and reused by every later run set (the
        server's chained slices, protocol.md §10.6; the simulator counts the same
        pieces). A topological sort that stays in the current batch while it can and
        otherwise moves to the smallest ready batch keeps the pieces few; ties go to
        the earlier layer, so both peers of a computation get the same answer."""
        inside = {n: self._index[n] for n in layers}
        missing = [n for n in inside if n not in batch_of]
        if missing:
            raise GraphError(f"pieces: no batch given for layers {sorted(missing)[:5]}")
        waiting: dict[str, int] = {}
        users: dict[str, list[str]] = {}
        for name in inside:
            producers = {r.layer for r in self[name].inbound if r.layer in inside}
            waiting[name] = len(producers)
            for p in producers:
                users.setdefault(p, []).append(name)
        ready: dict[int, list[tuple[int, str]]] = {}  # batch -> heap of (position, name)
        for name, pos in inside.items():
            if waiting[name] == 0:
                heapq.heappush(ready.setdefault(batch_of[name], []), (pos, name))
        pieces: list[frozenset[str]] = []
        current: list[str] = []
        batch = -1
        while any(ready.values()):
            if not ready.get(batch):
                batch = min(b for b, heap in ready.items() if heap)
                if current:
                    pieces.append(frozenset(current))
                current = []
            _, name = heapq.heappop(ready[batch])
            current.append(name)
            for user in users.get(name, ()):
                waiting[user] -= 1
                if waiting[user] == 0:
                    heapq.heappush(ready.setdefault(batch_of[user], []), (inside[user], user))
        if current:
            pieces.append(frozenset(current))
        return pieces

    def _ref_key(self, ref: TensorRef) -> tuple[int, int]:
        return (self._index[ref.layer], ref.index)

    def is_closed(self, layers: Iterable[str], available: Iterable[TensorRef]) -> bool:
        """True when every input of ``layers`` is in ``available`` or produced inside."""
        ins, _ = self.boundary(layers)
        have = set(available)
        return all(r in have for r in ins)

    def ancestors(self, name: str) -> frozenset[str]:
        seen: set[str] = set()
        stack = [r.layer for r in self[name].inbound]
        while stack:
            cur = stack.pop()
            if cur not in seen:
                seen.add(cur)
                stack.extend(r.layer for r in self._nodes[cur].inbound)
        return frozenset(seen)

    def immediate_dominators(self) -> dict[str, str | None]:
        """Immediate dominator of each layer in the graph from a virtual source that
        feeds every input layer (Cooper-Harvey-Kennedy iterative algorithm over the
        topological order). Input layers map to ``None`` (the virtual source)."""
        idom: dict[str, str | None] = {}
        preds = {
            n: sorted({r.layer for r in self[n].inbound}, key=self.position) for n in self.order
        }
        for name in self.order:
            if not preds[name]:
                idom[name] = None
                continue
            cur: str | None = preds[name][0]
            for p in preds[name][1:]:
                cur = self._intersect(idom, cur, p)
            idom[name] = cur
        return idom

    def _intersect(
        self, idom: Mapping[str, str | None], a: str | None, b: str | None
    ) -> str | None:
        while a != b:
            if a is None or b is None:
                return None
            if self._index[a] > self._index[b]:
                a = idom[a]
            else:
                b = idom[b]
        return a


def _topological(nodes: Sequence[LayerNode]) -> list[str]:
    rank = {n.name: i for i, n in enumerate(nodes)}
    indeg = {n.name: len({r.layer for r in n.inbound}) for n in nodes}
    children: dict[str, list[str]] = {n.name: [] for n in nodes}
    for n in nodes:
        for parent in {r.layer for r in n.inbound}:
            children[parent].append(n.name)
    ready = sorted((name for name, d in indeg.items() if d == 0), key=rank.__getitem__)
    order: list[str] = []
    heap = [(rank[n], n) for n in ready]
    heapq.heapify(heap)
    while heap:
        _, name = heapq.heappop(heap)
        order.append(name)
        for child in children[name]:
            indeg[child] -= 1
            if indeg[child] == 0:
                heapq.heappush(heap, (rank[child], child))
    if len(order) != len(nodes):
        raise GraphError("the layer graph has a cycle")
    return order
