"""Synthetic layer graphs and an independent plan evaluator for the planner tests.

The evaluator here is deliberately naive (it walks segments and asks
``LayerGraph.boundary`` for every one) so that it shares no code with the dynamic
programme it checks.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Mapping, Sequence

from ionn_net.model.graph import LayerGraph, LayerNode, TensorRef
from ionn_net.planner.link import Link


def layer(
    name: str,
    *inputs: str,
    elems: int = 1000,
    weight_bytes: int = 4000,
    macs: int = 10_000,
    cls: str | None = None,
) -> LayerNode:
    return LayerNode(
        name=name,
        cls=cls or ("Conv2D" if inputs else "InputLayer"),
        inbound=tuple(TensorRef.parse(i) for i in inputs),
        output_shapes=((elems,),),
        weight_bytes=weight_bytes if inputs else 0,
        macs=macs if inputs else 0,
    )


def chain(sizes: Sequence[int], weights: Sequence[int] | None = None) -> LayerGraph:
    """``in -> l0 -> l1 ...``; ``sizes[0]`` is the input's element count."""
    nodes = [layer("in", elems=sizes[0])]
    for i, elems in enumerate(sizes[1:]):
        wb = weights[i] if weights is not None else 4000
        nodes.append(layer(f"l{i}", "in" if i == 0 else f"l{i - 1}", elems=elems, weight_bytes=wb))
    return LayerGraph(nodes, [TensorRef(nodes[-1].name)], name="chain")


def diamond(rng: random.Random) -> LayerGraph:
    """in -> a -> {b1 -> b2, c} -> add -> d."""
    e = lambda: rng.choice([200, 1000, 5000, 20000])  # noqa: E731
    nodes = [
        layer("in", elems=e()),
        layer("a", "in", elems=e()),
        layer("b1", "a", elems=e()),
        layer("b2", "b1", elems=e()),
        layer("c", "a", elems=e()),
        layer("add", "b2", "c", elems=e(), cls="Add", weight_bytes=0),
        layer("d", "add", elems=e()),
    ]
    return LayerGraph(nodes, [TensorRef("d")], name="diamond")


def inception(rng: random.Random) -> LayerGraph:
    """in -> stem -> {a, b1 -> b2, c1 -> c2 -> c3, pool -> p1} -> concat -> head."""
    e = lambda: rng.choice([100, 1000, 4000, 30000])  # noqa: E731
    nodes = [
        layer("in", elems=e()),
        layer("stem", "in", elems=e()),
        layer("a", "stem", elems=e()),
        layer("b1", "stem", elems=e()),
        layer("b2", "b1", elems=e()),
        layer("c1", "stem", elems=e()),
        layer("c2", "c1", elems=e()),
        layer("c3", "c2", elems=e()),
        layer("pool", "stem", elems=e(), cls="MaxPooling2D", weight_bytes=0),
        layer("p1", "pool", elems=e()),
        layer("concat", "a", "b2", "c3", "p1", elems=e(), cls="Concatenate", weight_bytes=0),
        layer("head", "concat", elems=e()),
    ]
    return LayerGraph(nodes, [TensorRef("head")], name="inception")


def resnet(rng: random.Random) -> LayerGraph:
    """Two residual blocks, the second with a projection shortcut."""
    e = lambda: rng.choice([100, 2000, 8000, 30000])  # noqa: E731
    nodes = [
        layer("in", elems=e()),
        layer("conv0", "in", elems=e()),
        layer("r1a", "conv0", elems=e()),
        layer("r1b", "r1a", elems=e()),
        layer("add1", "conv0", "r1b", elems=e(), cls="Add", weight_bytes=0),
        layer("r2a", "add1", elems=e()),
        layer("r2b", "r2a", elems=e()),
        layer("proj", "add1", elems=e()),
        layer("add2", "proj", "r2b", elems=e(), cls="Add", weight_bytes=0),
        layer("relu", "add2", elems=e(), cls="ReLU", weight_bytes=0),
        layer("fc", "relu", elems=10, cls="Dense"),
    ]
    return LayerGraph(nodes, [TensorRef("fc")], name="resnet")


def two_outputs(rng: random.Random) -> LayerGraph:
    """A graph with an auxiliary output read by a later layer as well."""
    e = lambda: rng.choice([100, 3000, 20000])  # noqa: E731
    nodes = [
        layer("in", elems=e()),
        layer("a", "in", elems=e()),
        layer("aux", "a", elems=e()),
        layer("b", "a", elems=e()),
        layer("c", "b", "aux", elems=e()),
        layer("d", "c", elems=e()),
    ]
    return LayerGraph(nodes, [TensorRef("aux"), TensorRef("d")], name="two_outputs")


def random_times(
    graph: LayerGraph, rng: random.Random, *, gap: float = 20.0
) -> tuple[dict[str, float], dict[str, float]]:
    """Client and server ms per layer: server 0.1-5 ms, client ``gap`` x (+-50%)."""
    server = {n: rng.uniform(0.1, 5.0) for n in graph.order}
    client = {n: server[n] * gap * rng.uniform(0.5, 1.5) for n in graph.order}
    return client, server


def runs(graph: LayerGraph, server: Iterable[str]) -> list[tuple[str, tuple[str, ...]]]:
    on = set(server)
    out: list[tuple[str, list[str]]] = []
    for name in graph.order:
        loc = "server" if name in on else "client"
        if out and out[-1][0] == loc:
            out[-1][1].append(name)
        else:
            out.append((loc, [name]))
    return [(loc, tuple(names)) for loc, names in out]


def naive_cost(
    graph: LayerGraph,
    segments: Sequence[tuple[str, Sequence[str]]],
    client_ms: Mapping[str, float],
    server_ms: Mapping[str, float],
    link: Link,
    *,
    power: tuple[float, float, float] | None = None,
) -> float:
    """Latency (or energy with ``power = (compute, transmit, idle)`` watts) of running
    ``segments`` in order, each server segment as one request."""
    wc, wt, wi = power if power is not None else (1.0, 1.0, 1.0)
    total = 0.0
    for loc, names in segments:
        if loc == "client":
            total += wc * sum(client_ms[n] for n in names) / 1000
            continue
        ins, outs = graph.boundary(names)
        up = sum(graph.tensor_bytes(r) / link.ratio_of(r) for r in ins) / link.bandwidth
        down = sum(graph.tensor_bytes(r) / link.ratio_of(r) for r in outs) / link.down
        total += wi * (link.rtt_s + sum(server_ms[n] for n in names) / 1000) + wt * (up + down)
    return total


def brute_force(
    graph: LayerGraph,
    client_ms: Mapping[str, float],
    server_ms: Mapping[str, float],
    held: Iterable[str],
    link: Link,
    *,
    power: tuple[float, float, float] | None = None,
) -> float:
    """Minimum over every subset of the held non-input layers placed on the server."""
    candidates = [n for n in graph.order if n in set(held) and n not in graph.inputs]
    best = float("inf")
    for k in range(len(candidates) + 1):
        for subset in itertools.combinations(candidates, k):
            segs = runs(graph, subset)
            best = min(best, naive_cost(graph, segs, client_ms, server_ms, link, power=power))
    return best
