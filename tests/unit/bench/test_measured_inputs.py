"""ionn_net.bench.measured: the simulator's inputs read from what a run recorded."""

from __future__ import annotations

from typing import Any

import pytest

from ionn_net.bench.measured import measured_inputs

ORDER = ["in", "a", "b", "c"]


def segment(first: int, last: int) -> list[Any]:
    return ["server", [[first, last]], 0.0, False]


def query(t: float, end: float, server_ms: float, first: int = 1, last: int = 3) -> dict[str, Any]:
    return {"t": t, "end": end, "segments": [segment(first, last)], "server_ms": [server_ms]}


def local(t: float, ms: float) -> dict[str, Any]:
    return {"t": t, "end": t + ms / 1000, "ms": ms, "segments": [["client", [[0, 3]], ms, False]]}


def doc() -> dict[str, Any]:
    # cost model: 10 ms per layer; loads from 1 to 3 s and from 5 to 6 s
    return {
        "strategy": "ours",
        "per_layer": {
            "client_ms": dict.fromkeys(ORDER, 25.0),
            "server_ms": dict.fromkeys(ORDER, 10.0),
            "load_ms": {"a": 100.0, "b": 100.0, "c": 100.0},
        },
        "queries": [
            query(0.0, 0.5, 60.0),  # idle: 2x the model
            query(0.5, 0.9, 60.0),
            query(3.5, 3.9, 62.0),
            query(4.0, 4.5, 58.0),
            query(1.5, 1.9, 110.0),  # during a load: 50 ms more than 2x
            query(2.0, 2.5, 100.0),
            query(5.2, 5.6, 120.0),
            local(0.9, 120.0),  # run on the client during the upload: 100 ms profiled
            local(2.5, 130.0),
            local(4.5, 125.0),
            local(7.0, 300.0),  # after the upload: not the upload's doing
            query(9.0, 9.5, 1e9, 1, 1),  # an outlier: medians ignore it
        ],
        "timing": {
            "loads": [[1.0, 3.0, 2, 1500.0], [5.0, 6.0, 1, 800.0]],
            "activations": [[3.0, 3.25], [6.0, 6.0]],
        },
        "progress": [
            {"t": 0.5, "pace_mbit": None},
            {"t": 1.0, "pace_mbit": 80.0},
            {"t": 1.2, "pace_mbit": 40.0},  # too soon after the last change
            {"t": 2.0, "pace_mbit": 78.0},  # within 10%
            {"t": 3.0, "pace_mbit": 40.0},
            {"t": 9.0, "pace_mbit": 10.0},  # after the upload: not the upload's
        ],
        "metrics": {"upload_done_s": 6.0},
    }


def test_each_input_comes_from_its_own_measurement() -> None:
    d = doc()
    d["queries"].pop()  # (kept aside: see the next test)
    m = measured_inputs(d, ORDER, [["a", "b"], ["c"]], overhead_ms=50.0)
    assert m.exec_scale == pytest.approx(2.0)
    assert m.loader_extra_s == pytest.approx(0.050)
    assert m.load_s == pytest.approx((1.5, 0.8))
    assert m.activation_s == pytest.approx((0.25, 0.0))
    assert m.client_extra_s == pytest.approx(0.025)
    assert [t for t, _ in m.pace] == [1.0, 3.0]
    assert [r * 8e-6 for _, r in m.pace] == pytest.approx([80.0, 40.0])
    # loads' measured total over the model's (3 layers x 100 ms + 2 x 50 ms overhead)
    assert m.load_scale == pytest.approx(2300.0 / 400.0)


def test_without_enough_samples_nothing_is_claimed() -> None:
    d = doc()
    d["queries"] = d["queries"][:2]  # two idle segments, no loading one
    d["timing"] = {}
    d["progress"] = []
    m = measured_inputs(d, ORDER, [["a", "b", "c"]], overhead_ms=0.0)
    assert m.exec_scale == pytest.approx(2.0)  # the median of what there is
    assert m.loader_extra_s == 0.0
    assert m.load_s == () and m.activation_s == () and m.pace == ()
    assert m.client_extra_s == 0.0
    assert m.load_scale == 1.0


def test_more_loads_than_partitions_are_not_mapped_onto_them() -> None:
    m = measured_inputs(doc(), ORDER, [["a", "b", "c"]], overhead_ms=0.0)
    assert m.load_s == ()
