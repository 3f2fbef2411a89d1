"""LayerGraph: topology, cut points, boundaries and dominators on synthetic graphs."""

from __future__ import annotations

import pytest

from ionn_net.errors import GraphError
from ionn_net.model.graph import LayerGraph, LayerNode, TensorRef


def node(name: str, *inputs: str, shape: tuple[int, ...] = (4,), outputs: int = 1) -> LayerNode:
    return LayerNode(
        name=name,
        cls="Dense" if inputs else "InputLayer",
        inbound=tuple(TensorRef.parse(i) for i in inputs),
        output_shapes=(shape,) * outputs,
        weight_bytes=16 if inputs else 0,
        macs=10,
    )


def chain(n: int) -> LayerGraph:
    nodes = [node("in")] + [node(f"l{i}", "in" if i == 0 else f"l{i - 1}") for i in range(n)]
    return LayerGraph(nodes, [TensorRef(f"l{n - 1}")])


def inception() -> LayerGraph:
    # in -> stem -> {a, b1 -> b2, c} -> concat -> head
    nodes = [
        node("head", "concat"),
        node("concat", "a", "b2", "c"),
        node("in"),
        node("stem", "in"),
        node("a", "stem"),
        node("b1", "stem"),
        node("b2", "b1"),
        node("c", "stem"),
    ]
    return LayerGraph(nodes, [TensorRef("head")])


def test_topological_order_puts_producers_before_consumers() -> None:
    g = inception()
    for n in g:
        for ref in n.inbound:
            assert g.position(ref.layer) < g.position(n.name)
    assert g.inputs == ("in",)


def test_cut_points_of_a_chain_are_every_layer() -> None:
    g = chain(5)
    assert g.cut_points() == ("in", "l0", "l1", "l2", "l3", "l4")


def test_cut_points_skip_the_inside_of_a_branching_module() -> None:
    assert inception().cut_points() == ("in", "stem", "concat", "head")


def test_boundary_of_a_branch_set_carries_several_tensors() -> None:
    g = inception()
    ins, outs = g.boundary({"a", "b1", "b2"})
    assert ins == (TensorRef("stem"),)
    assert set(outs) == {TensorRef("a"), TensorRef("b2")}
    ins, outs = g.boundary({"concat", "head"})
    assert set(ins) == {TensorRef("a"), TensorRef("b2"), TensorRef("c")}
    assert outs == (TensorRef("head"),)


def test_live_after_lists_tensors_still_needed() -> None:
    g = inception()
    live = g.live_after(g.position("a"))
    assert TensorRef("stem") in live and TensorRef("a") in live


def test_immediate_dominators_collapse_the_module_onto_its_stem() -> None:
    idom = inception().immediate_dominators()
    assert idom["in"] is None
    assert idom["concat"] == "stem"
    assert idom["b2"] == "b1"
    assert idom["head"] == "concat"


def test_sizes() -> None:
    g = chain(2)
    assert g["l0"].output_bytes == 16
    assert g.total_weight_bytes == 32
    assert g.tensor_bytes(TensorRef("l1")) == 16


@pytest.mark.parametrize(
    ("nodes", "outputs", "message"),
    [
        ([node("in"), node("in")], ["in"], "duplicate"),
        ([node("in"), node("x", "nope")], ["x"], "unknown layer 'nope'"),
        ([node("in"), node("x", "in:3")], ["x"], "has 1 outputs, got index 3"),
        ([node("in")], ["ghost"], "unknown layer 'ghost'"),
        ([node("in")], [], "at least one output"),
        ([node("in"), node("a", "b"), node("b", "a")], ["a"], "cycle"),
    ],
)
def test_malformed_graphs_are_refused(
    nodes: list[LayerNode], outputs: list[str], message: str
) -> None:
    with pytest.raises(GraphError, match=message):
        LayerGraph(nodes, [TensorRef.parse(o) for o in outputs])


def test_tensor_ref_parse_and_str_round_trip() -> None:
    assert TensorRef.parse("block_1:2") == TensorRef("block_1", 2)
    assert str(TensorRef("x", 1)) == "x:1"
    with pytest.raises(GraphError):
        TensorRef.parse("a:b")


def _runs_in_order(g: LayerGraph, layers: set[str], pieces: list[frozenset[str]]) -> bool:
    done: set[str] = set()
    for piece in pieces:
        ins, _ = g.boundary(piece)
        if any(r.layer in layers and r.layer not in done for r in ins):
            return False
        done |= piece
    return True


def test_pieces_of_a_chain_follow_the_batches() -> None:
    g = chain(6)
    batch = {"l0": 0, "l1": 0, "l2": 1, "l3": 1, "l4": 0, "l5": 2}
    pieces = g.pieces(["l1", "l2", "l3", "l4", "l5"], batch)
    # a chain cannot reorder: l4 (batch 0) after l3 is a piece of its own
    assert pieces == [{"l1"}, {"l2", "l3"}, {"l4"}, {"l5"}]
    assert g.pieces([], batch) == []


def test_pieces_stay_in_one_batch_across_parallel_branches() -> None:
    g = inception()
    # branch b (b1, b2) came in a later load than everything else: a plain
    # topological walk would switch batches 4 times (stem a b1 b2 c ...), this one twice
    batch = dict.fromkeys(g.order, 0) | {"b1": 1, "b2": 1}
    layers = {"stem", "a", "b1", "b2", "c", "concat", "head"}
    pieces = g.pieces(layers, batch)
    assert pieces == [{"stem", "a", "c"}, {"b1", "b2"}, {"concat", "head"}]
    assert _runs_in_order(g, layers, pieces)


def test_pieces_need_a_batch_for_every_layer() -> None:
    with pytest.raises(GraphError, match="no batch given for layers"):
        chain(3).pieces(["l0", "l1"], {"l0": 0})
