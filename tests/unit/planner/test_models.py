"""Link, power model, client profiles (and their cache) and the server cost model."""

from __future__ import annotations

import json
import math
import random

import pytest
from planner_graphs import layer

from ionn_net.errors import PlannerError
from ionn_net.model.graph import LayerNode, TensorRef
from ionn_net.planner.costmodel import LinearFit, ServerCostModel, layer_type
from ionn_net.planner.energy import PowerModel, objective_weights
from ionn_net.planner.link import Link
from ionn_net.planner.profiles import ClientProfile, ProfileCache

# -- link and energy ------------------------------------------------------------------------


def test_link_converts_bytes_to_seconds_with_ratios_and_directions() -> None:
    link = Link.from_mbit(80, 2.0, weight_ratio=1.25, tensor_ratios={"a:0": 2.0})
    assert link.bandwidth == 10e6
    assert link.rtt_s == pytest.approx(0.002)
    assert link.transfer_s(10e6) == pytest.approx(1.0)
    assert link.weight_s(10e6) == pytest.approx(0.8)
    assert link.activation_s(TensorRef("a"), 10e6) == pytest.approx(0.5)
    assert link.activation_s(TensorRef("b"), 10e6) == pytest.approx(1.0)
    asym = Link(bandwidth=1e6, down_bandwidth=4e6)
    assert asym.transfer_s(4e6, up=False) == pytest.approx(1.0)
    assert asym.with_bandwidth(2e6).bandwidth == 2e6


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bandwidth": 0.0},
        {"bandwidth": math.inf},
        {"bandwidth": 1.0, "rtt_s": -1.0},
        {"bandwidth": 1.0, "weight_ratio": 0.0},
        {"bandwidth": 1.0, "activation_ratio": math.nan},
        {"bandwidth": 1.0, "tensor_ratios": {"a:0": -2.0}},
        {"bandwidth": 1.0, "down_bandwidth": 0.0},
    ],
)
def test_link_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(PlannerError, match="link"):
        Link(**kwargs)


def test_power_model_and_objective_weights() -> None:
    p = PowerModel()
    assert p.energy_j(compute_s=1.0, transfer_s=1.0, wait_s=1.0) == pytest.approx(
        7.239 + 6.611 + 3.977
    )
    w = objective_weights("energy", PowerModel(1.0, 2.0, 3.0))
    assert (w.compute, w.transfer, w.wait) == (1.0, 2.0, 3.0)
    assert objective_weights("latency").compute == 1.0
    with pytest.raises(PlannerError, match="objective"):
        objective_weights("speed")
    with pytest.raises(PlannerError, match="power"):
        PowerModel(compute_w=-1.0)


# -- client profiles ---------------------------------------------------------------------------


def test_profile_round_trips_and_validates() -> None:
    prof = ClientProfile(model_digest="ab12", device_id="xu4", layer_ms={"a": 1.5}, runs=5)
    again = ClientProfile.from_json(prof.to_json())
    assert again == prof and dict(again.layer_ms) == {"a": 1.5}
    assert prof.scaled(10.0).layer_ms["a"] == pytest.approx(15.0)
    doc = json.loads(prof.to_json())
    for bad in (
        {**doc, "extra": 1},
        {**doc, "format": "other"},
        {**doc, "layer_ms": {"a": math.inf}},
        {**doc, "layer_ms": {"a": -1}},
        {**doc, "layer_ms": {"a": True}},
        {**doc, "model_digest": "../../etc"},
        {**doc, "runs": -1},
    ):
        with pytest.raises(PlannerError, match="profile"):
            ClientProfile.from_json(json.dumps(bad))
    with pytest.raises(PlannerError, match="JSON"):
        ClientProfile.from_json("{not json")


def test_profile_covers_checks_every_layer() -> None:
    from planner_graphs import chain

    g = chain([4, 4, 4])
    full = ClientProfile(model_digest="m", device_id="d", layer_ms=dict.fromkeys(g.order, 1.0))
    full.check_covers(g)
    partial = ClientProfile(model_digest="m", device_id="d", layer_ms={"in": 0.0})
    with pytest.raises(PlannerError, match="missing 2"):
        partial.check_covers(g)


def test_profile_cache_stores_loads_and_treats_bad_files_as_misses(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cache = ProfileCache(tmp_path / "profiles")
    assert cache.load("m1", "dev") is None
    prof = ClientProfile(model_digest="m1", device_id="dev", layer_ms={"x": 2.0})
    path = cache.store(prof)
    assert path.exists() and cache.load("m1", "dev") == prof
    assert cache.load("m1", "other") is None
    assert cache.key("m1", "dev") != cache.key("m1", "dev2")
    path.write_text("garbage")
    assert cache.load("m1", "dev") is None
    # a file holding another pair's profile is a miss, not that profile
    other = ClientProfile(model_digest="m2", device_id="dev", layer_ms={"x": 1.0})
    path.write_text(other.to_json())
    assert cache.load("m1", "dev") is None
    assert not list((tmp_path / "profiles").glob(".profile-*"))  # no temp files left


# -- server cost model ------------------------------------------------------------------------


def _conv(name: str, macs: int, elems: int = 1000, cls: str = "Conv2D") -> LayerNode:
    return layer(name, "in", macs=macs, elems=elems, cls=cls, weight_bytes=macs // 10)


def test_layer_types() -> None:
    assert layer_type("Conv2D") == "conv"
    assert layer_type("DepthwiseConv2D") == "depthwise"
    assert layer_type("Dense") == "dense"
    assert layer_type("BatchNormalization") == "bn"
    assert layer_type("ReLU") == layer_type("ops.numpy.Add") == "elementwise"
    assert layer_type("GlobalAveragePooling2D") == "pool"
    assert layer_type("Flatten") == "other"


def test_fit_recovers_per_type_lines_and_falls_back_for_rare_types() -> None:
    rng = random.Random(0)
    samples = []
    for i in range(12):
        macs = rng.randint(10**6, 10**8)
        samples.append((_conv(f"c{i}", macs), 0.3 + 2e-6 * macs))
    for i in range(8):  # depthwise: same MACs cost 5x more per MAC (memory bound)
        macs = rng.randint(10**5, 10**7)
        samples.append((_conv(f"d{i}", macs, cls="DepthwiseConv2D"), 0.1 + 1e-5 * macs))
    for i in range(6):
        elems = rng.randint(10**3, 10**6)
        node = layer(f"r{i}", "in", elems=elems, cls="ReLU", macs=elems, weight_bytes=0)
        samples.append((node, 0.02 + 1e-5 * elems))
    rare = [(layer("flat", "in", cls="Flatten", macs=1000, weight_bytes=0), 0.05)]
    model = ServerCostModel.fit(samples + rare)
    conv = model.exec_fits["conv"]
    assert conv.feature == "macs"
    assert conv.slope == pytest.approx(2e-6, rel=1e-6) and conv.intercept == pytest.approx(0.3)
    assert model.exec_fits["depthwise"].slope == pytest.approx(1e-5, rel=1e-6)
    assert "other" not in model.exec_fits  # one sample: the pooled fallback applies
    assert model.evaluate(samples)["mape"] < 1e-6
    assert model.predict_exec_ms(rare[0][0]) == pytest.approx(
        model.exec_fallback.predict(rare[0][0])
    )
    assert model.predict_exec_ms(layer("in")) == 0.0


def test_fit_keeps_coefficients_non_negative_and_reports_errors() -> None:
    # decreasing time with size: a negative slope would predict negative times
    samples = [(_conv(f"c{i}", 10**6 * (i + 1)), 10.0 - i) for i in range(5)]
    fit = ServerCostModel.fit(samples).exec_fits["conv"]
    assert fit.slope >= 0 and fit.intercept >= 0
    model = ServerCostModel(exec_fits={"conv": LinearFit("macs", 0.0, 2.0)})
    report = model.evaluate([(_conv("a", 1), 1.0), (_conv("b", 1), 4.0), (_conv("c", 1), 2.0)])
    assert report["mape"] == pytest.approx((100 + 50 + 0) / 3)
    assert report["median_ape"] == pytest.approx(50)
    with pytest.raises(PlannerError, match="at least one"):
        model.evaluate([])
    with pytest.raises(PlannerError, match="sample"):
        ServerCostModel.fit([(_conv("a", 1), -1.0)])


def test_load_model_and_profiles_of_a_graph() -> None:
    from planner_graphs import chain

    g = chain([10, 10, 10], weights=[1000, 3000])
    loads = [(g["l0"], 1.0 + 0.001 * 1000), (g["l1"], 1.0 + 0.001 * 3000)] * 2
    model = ServerCostModel.fit([(g["l0"], 1.0)], loads, partition_overhead_ms=50.0)
    assert model.predict_load_ms(g["l1"]) == pytest.approx(4.0)
    assert model.load_profile(g) == pytest.approx({"in": 0.0, "l0": 2.0, "l1": 4.0})
    assert set(model.exec_profile(g)) == set(g.order)


def test_cost_model_json_round_trip_and_validation() -> None:
    samples = [(_conv(f"c{i}", 10**6 * (i + 1)), 0.5 + i) for i in range(4)]
    model = ServerCostModel.fit(samples, partition_overhead_ms=120.0)
    again = ServerCostModel.from_json(model.to_json())
    assert again == model
    doc = json.loads(model.to_json())
    assert doc["format"] == "ionn-costmodel/1"
    bad_docs = [
        {**doc, "surprise": 1},
        {**doc, "format": "ionn-costmodel/2"},
        {**doc, "exec": {"warp": doc["exec"]["conv"]}},
        {**doc, "exec": {"conv": {**doc["exec"]["conv"], "slope": -1}}},
        {**doc, "exec": {"conv": {**doc["exec"]["conv"], "feature": "flops"}}},
        {**doc, "exec": {"conv": {**doc["exec"]["conv"], "extra": 0}}},
        {**doc, "exec_fallback": "x"},
        {**doc, "partition_overhead_ms": True},
        {**doc, "partition_overhead_ms": -5},
        [],
    ]
    for bad in bad_docs:
        with pytest.raises(PlannerError, match="cost model"):
            ServerCostModel.from_json(json.dumps(bad))
    nan_doc = model.to_json().replace(
        '"partition_overhead_ms":120.0', '"partition_overhead_ms":NaN'
    )
    assert "NaN" in nan_doc
    with pytest.raises(PlannerError, match="partition_overhead_ms"):
        ServerCostModel.from_json(nan_doc)
    with pytest.raises(PlannerError, match="at most"):
        ServerCostModel.from_json(" " * 70_000)
    with pytest.raises(PlannerError, match="JSON"):
        ServerCostModel.from_json(b"\xff\xfe")
