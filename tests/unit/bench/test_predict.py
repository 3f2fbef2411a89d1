"""The simulator's timeline of a run: hand-computed on a chain, and the error metrics."""

from __future__ import annotations

from typing import Any

import pytest

from ionn_net.bench.predict import latency_errors, predict_run
from ionn_net.bench.results import QueryPoint, query_points
from ionn_net.model.graph import LayerGraph, LayerNode, TensorRef


def chain() -> LayerGraph:
    def node(name: str, src: str | None, elems: int, wb: int) -> LayerNode:
        return LayerNode(
            name=name,
            cls="Conv2D" if src else "InputLayer",
            inbound=(TensorRef(src),) if src else (),
            output_shapes=((elems,),),
            weight_bytes=wb,
            macs=1000 if src else 0,
        )

    nodes = [node("in", None, 250, 0), node("a", "in", 250, 100_000), node("b", "a", 25, 0)]
    return LayerGraph(nodes, [TensorRef("b")], name="chain")


def run_doc(strategy: str, partitions: list[list[str]]) -> dict[str, Any]:
    return {
        "strategy": strategy,
        "model": {"weight_ratio": 2.0},
        # 8 Mbit/s = 1 MB/s each way, 10 ms round trip
        "link": {
            "configured": {"rate_bps": 8e6, "rtt_ms": 10.0},
            "measured": {
                "up": {"measured_rate_bps": 8e6, "rtt_ms_p50": 10.0},
                "down": {"measured_rate_bps": 8e6, "rtt_ms_p50": 11.0},
            },
        },
        "per_layer": {
            "client_ms": {"in": 0.0, "a": 100.0, "b": 20.0},
            "server_ms": {"in": 0.0, "a": 1.0, "b": 1.0},
            "load_ms": {"a": 5.0},
        },
        "plan": {"partitions": partitions, "policy": {"objective": "latency"}},
        "metrics": {"n": 3},
    }


def points(*rows: tuple[float, float, bool]) -> list[QueryPoint]:
    return [QueryPoint(t, t + ms / 1000, ms, off) for t, ms, off in rows]


def test_local_prediction_is_the_client_profile_and_exact_measurements_score_zero() -> None:
    measured = points((0.0, 120.0, False), (0.12, 120.0, False), (0.24, 120.0, False))
    out = predict_run(run_doc("local", []), chain(), measured)
    assert [q[1] for q in out["queries"]] == pytest.approx([120.0, 120.0, 120.0])
    assert out["errors"]["mape_pct"] == pytest.approx(0.0)
    assert out["metrics"]["upload_done_s"] is None
    assert out["link"]["rtt_ms"] == pytest.approx(10.0)  # the smaller probe round trip
    assert out["link"]["half_duplex"] is False


def test_upload_completion_and_offloaded_latency_by_hand() -> None:
    measured = points(*((0.12 * i, 120.0, False) for i in range(5)))
    out = predict_run(run_doc("ours", [["a", "b"]]), chain(), measured)
    # 100 000 weight bytes / ratio 2 at 1 MB/s = 50 ms, + 5 ms load
    assert out["partitions"][0][1] == pytest.approx(0.05)
    assert out["metrics"]["upload_done_s"] == pytest.approx(0.055)
    # the first query (issued at 0) ran locally; the second started at 120 ms offloaded:
    # 1 ms up (1000 B) + 10 ms RTT + 2 ms server + 0.1 ms down
    lat = [q[1] for q in out["queries"]]
    assert lat[0] == pytest.approx(120.0)
    assert lat[1] == pytest.approx(13.1)
    assert out["metrics"]["first_offloaded_s"] == pytest.approx(0.12)


def test_latency_errors_compare_each_query_with_the_one_predicted_at_its_issue_time() -> None:
    predicted = points((0.0, 100.0, False), (0.1, 10.0, True))
    measured = points((0.05, 200.0, False), (0.2, 10.0, True), (0.3, 5.0, True))
    err = latency_errors(measured, predicted)
    # |100-200|/200 = 50%, 0%, |10-5|/5 = 100%
    assert err["mape_pct"] == pytest.approx(50.0)
    assert err["median_ape_pct"] == pytest.approx(50.0)
    assert err["mean_signed_pct"] == pytest.approx((-50.0 + 0.0 + 100.0) / 3)
    assert latency_errors([], predicted)["mape_pct"] is None


def test_query_points_mark_offloaded_queries_but_not_fallbacks() -> None:
    qs = [
        {"t": 0.0, "end": 0.1, "ms": 100.0, "segments": [["client", [[0, 2]], 100.0, False]]},
        {"t": 0.1, "end": 0.2, "ms": 100.0, "segments": [["server", [[1, 2]], 99.0, True]]},
        {"t": 0.2, "end": 0.3, "ms": 100.0, "segments": [["server", [[1, 2]], 99.0, False]]},
    ]
    assert [p.offloaded for p in query_points(qs)] == [False, False, True]


def test_a_precision_first_run_is_replayed_with_its_stages() -> None:
    """The base goes up at a quarter of the raw bytes, then the refinement; queries on the
    base are marked approximate, and the plan's refinements are charged."""
    doc = run_doc("ours-8", [["a", "b"]])
    doc["plan"]["refinements"] = [[["a"], 1]]
    doc["plan"]["stages"] = {
        "precision": "8bit-first",
        "wire_fraction": [0.25, 0.6],
        "decode_ms_per_mb": [0.0, 0.0],
        "swap_ms_per_mb": 0.0,
        "swap_ms_per_layer": 0.0,
    }
    measured = points(*((0.12 * i, 120.0, False) for i in range(5)))
    out = predict_run(doc, chain(), measured)
    # 100 000 raw bytes x 0.25 at 1 MB/s = 25 ms, + 5 ms load; then 60 ms of refinement
    base, refinement = out["partitions"]
    assert base[1] == pytest.approx(0.025) and base[4] == 0
    assert refinement[4] == 1 and refinement[1] == pytest.approx(0.085)
    assert out["metrics"]["upload_done_s"] == pytest.approx(0.085)
    exact = [q[3] for q in out["queries"]]
    assert exact[0] and exact[-1]  # local at first; exact after the refinement
    assert out["metrics"]["window_s"] is None  # this document has no model bytes


def test_the_lossless_window_is_the_raw_bytes_at_the_measured_rate() -> None:
    from ionn_net.bench.results import lossless_window_s, metrics_from_points

    doc = run_doc("ours", [["a", "b"]])
    doc["model"]["weight_bytes"] = 2_000_000
    doc["link"]["configured"]["rate_bps"] = 10e6  # the probed rate wins over it
    assert lossless_window_s(doc) == pytest.approx(2.0)  # 16 Mbit at 8 Mbit/s
    del doc["link"]["measured"]["up"]
    doc["link"]["configured"]["rate_bps"] = 16e6
    assert lossless_window_s(doc) == pytest.approx(1.0)
    pts = points((0.0, 100.0, False), (0.5, 10.0, True), (1.5, 20.0, True))
    m = metrics_from_points(pts, 3.0, uploads=True, window_s=1.0)
    assert m["mean_in_window_ms"] == pytest.approx(55.0) and m["window_s"] == 1.0
