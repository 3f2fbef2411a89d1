"""LayerGraph.pieces on DAGs with random load batches: the pieces partition the set,
each holds one batch, and they run in the listed order (what the server's chained
slices and the simulator's compile charge rely on, protocol.md §10.6)."""

from __future__ import annotations

import random

import pytest
from planner_graphs import inception, resnet

from ionn_net.model.graph import LayerGraph


def _check(g: LayerGraph, layers: set[str], batch: dict[str, int]) -> list[frozenset[str]]:
    pieces = g.pieces(layers, batch)
    assert frozenset().union(*pieces) == layers
    assert sum(map(len, pieces)) == len(layers)
    done: set[str] = set()
    for piece in pieces:
        assert len({batch[n] for n in piece}) == 1
        ins, _ = g.boundary(piece)
        assert all(r.layer not in layers or r.layer in done for r in ins)
        done |= piece
    return pieces


@pytest.mark.parametrize("make", [inception, resnet])
@pytest.mark.parametrize("seed", range(20))
def test_random_batches_give_runnable_single_batch_pieces(make, seed: int) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    g = make(rng)
    order = list(g.order)
    batches = rng.randint(1, 6)
    batch = {n: rng.randrange(batches) for n in order}
    lo = rng.randrange(len(order))
    hi = rng.randrange(lo, len(order))
    layers = set(order[lo : hi + 1])
    _check(g, layers, batch)


def test_one_batch_is_one_piece() -> None:
    g = resnet(random.Random(1))
    layers = set(g.order)
    assert _check(g, layers, dict.fromkeys(g.order, 3)) == [frozenset(layers)]
