"""ionn_net.planner.prior: the per-class regression fitted on timed chunks.

Synthetic chunks with known per-class costs: the fit must recover each class's costs from
chunk totals alone, fall back to the type and the global vector for classes it has not
seen, share a chunk's time the way it predicts, report held-out errors that are right on
data it can fit and wrong on data it cannot, and refuse malformed cached documents.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from ionn_net.errors import PlannerError
from ionn_net.model.graph import LayerGraph, LayerNode, TensorRef
from ionn_net.planner.prior import (
    PRIOR_FEATURES,
    LayerPrior,
    TimedChunk,
    TimedLayer,
    chunks_of,
    class_key,
    holdout_errors,
    nnls,
)

NF = len(PRIOR_FEATURES)


def coef(**values: float) -> tuple[float, ...]:
    return tuple(values.get(f, 0.0) for f in PRIOR_FEATURES)


def features(macs_m: float, elems_1e4: float) -> tuple[float, ...]:
    # one, macs, in_elems, out_elems, weight_bytes, macs hinges (3), elem hinges (2)
    return (1.0, macs_m, elems_1e4, elems_1e4, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


#: True costs: convolutions 0.02 ms per M MACs + 0.05 ms; ReLU 0.01 ms per 1e4 elements.
TRUE = {
    "Conv2D": coef(one=0.05, macs=0.02),
    "ReLU": coef(in_elems=0.01),
}


def true_ms(layer: TimedLayer) -> float:
    return float(np.dot(TRUE[layer.key], layer.features))


def synthetic_chunks(seed: int, count: int = 60) -> list[TimedChunk]:
    rng = random.Random(seed)
    chunks = []
    for _ in range(count):
        layers = []
        for _ in range(rng.randint(2, 6)):
            if rng.random() < 0.5:
                layers.append(TimedLayer("Conv2D", "conv", features(rng.uniform(1, 200), 5.0)))
            else:
                layers.append(TimedLayer("ReLU", "elementwise", features(0.0, rng.uniform(1, 80))))
        chunks.append(TimedChunk(tuple(layers), sum(true_ms(layer) for layer in layers)))
    return chunks


def test_nnls_solves_non_negative_least_squares() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        a = rng.normal(size=(12, 4))
        b = rng.normal(size=12)
        x = nnls(a, b)
        assert (x >= 0).all()
        # KKT: the gradient is zero on the free variables and points outward elsewhere
        grad = a.T @ (b - a @ x)
        assert np.allclose(grad[x > 1e-9], 0.0, atol=1e-7)
        assert (grad[x <= 1e-9] <= 1e-7).all()


def test_fit_recovers_per_class_costs_from_chunk_totals_alone() -> None:
    prior = LayerPrior.fit(synthetic_chunks(0), ridge=0.0)
    for layer in [c for chunk in synthetic_chunks(1) for c in chunk.layers]:
        assert prior.predict_layer(layer) == pytest.approx(true_ms(layer), rel=1e-3, abs=1e-6)


def test_unseen_classes_fall_back_to_their_type_then_to_the_global_vector() -> None:
    prior = LayerPrior.fit(synthetic_chunks(0))
    assert set(prior.by_class) == {"Conv2D", "ReLU"}
    unseen_conv = TimedLayer("SeparableConv2D", "conv", features(100.0, 5.0))
    assert prior.coef_for("SeparableConv2D", "conv") == prior.by_type["conv"]
    assert prior.predict_layer(unseen_conv) > 0
    assert prior.coef_for("Flatten", "other") == prior.base


def test_split_shares_a_chunk_in_proportion_to_the_prediction() -> None:
    prior = LayerPrior(by_class={"Conv2D": TRUE["Conv2D"], "ReLU": TRUE["ReLU"]})
    conv = TimedLayer("Conv2D", "conv", features(100.0, 5.0))  # 2.05 ms
    relu = TimedLayer("ReLU", "elementwise", features(0.0, 45.0))  # 0.45 ms
    shares = prior.split(TimedChunk((conv, relu), 5.0))
    assert shares == pytest.approx([5.0 * 2.05 / 2.5, 5.0 * 0.45 / 2.5])


def test_holdout_errors_are_small_where_the_classes_generalise() -> None:
    models = {f"m{i}": synthetic_chunks(i, 30) for i in range(4)}
    report = holdout_errors(models, ["m0", "m1"])
    for r in report.values():
        assert r["median_ape"] < 1.0 and r["chunk_ape"] < 1.0 and r["whole_ape"] < 1.0
    # a model whose ReLUs cost 5x more than anywhere else cannot be predicted from the rest
    odd = [
        TimedChunk(c.layers, sum(true_ms(x) * (5.0 if x.key == "ReLU" else 1.0) for x in c.layers))
        for c in synthetic_chunks(9, 30)
    ]
    report = holdout_errors({**models, "odd": odd}, ["odd"])
    assert report["odd"]["whole_ape"] > 20.0


def graph() -> LayerGraph:
    nodes = [
        LayerNode(name="x", cls="InputLayer", inbound=(), output_shapes=((8, 8, 3),)),
        LayerNode(
            name="conv", cls="Conv2D", inbound=(TensorRef("x"),), output_shapes=((8, 8, 4),),
            macs=8 * 8 * 3 * 4 * 9, weight_bytes=4 * (3 * 3 * 3 * 4 + 4),
            params={"activation": "relu"},
        ),
        LayerNode(
            name="act", cls="Activation", inbound=(TensorRef("conv"),),
            output_shapes=((8, 8, 4),), macs=256, params={"activation": "swish"},
        ),
    ]  # fmt: skip
    return LayerGraph(nodes, [TensorRef("act")])


def test_class_keys_and_chunks_of_a_measured_graph() -> None:
    g = graph()
    assert class_key(g["conv"]) == "Conv2D"  # a fused activation does not split the class
    assert class_key(g["act"]) == "Activation:swish"
    chunks = chunks_of(g, [("x",), ("x", "conv"), ("act",)], [0.0, 1.0, 0.5])
    assert [len(c.layers) for c in chunks] == [1, 1]  # the input-only chunk is dropped
    assert chunks[0].layers[0].features[1] == pytest.approx(g["conv"].macs / 1e6)
    prior = LayerPrior(base=coef(one=0.5))
    assert prior.predict_ms(g, "x") == 0.0 and prior.profile(g)["conv"] == 0.5


def test_json_round_trip_and_refusal_of_malformed_documents() -> None:
    prior = LayerPrior.fit(synthetic_chunks(0))
    again = LayerPrior.from_json(prior.to_json())
    assert again == prior
    doc = json.loads(prior.to_json())
    bad = [
        {**doc, "format": "ionn-prior/0"},
        {**doc, "features": ["one"]},
        {**doc, "extra": 1},
        {**doc, "base": [math.inf] * NF},
        {**doc, "base": [0.0] * (NF - 1)},
        {**doc, "by_class": {"": [0.0] * NF}},
        {**doc, "by_type": {"conv": "x"}},
        [],
    ]
    for case in bad:
        with pytest.raises(PlannerError, match="prior"):
            LayerPrior.from_json(json.dumps(case))
    with pytest.raises(PlannerError, match="at most"):
        LayerPrior.from_json(" " * (2 << 20))
    with pytest.raises(PlannerError, match="ms >= 0"):
        TimedChunk((), -1.0)
