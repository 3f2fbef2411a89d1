"""Run documents: metrics on hand-made timelines, layout validation, segment ranges."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ionn_net.bench.results import (
    SCHEMA,
    QueryPoint,
    check_run_doc,
    metrics_from_points,
    run_metrics,
)
from ionn_net.bench.worker import ranges
from ionn_net.errors import ConfigError


def q(t: float, ms: float, server: bool = False, fallback: bool = False) -> dict[str, Any]:
    segs: list[list[Any]] = [["client", [[0, 0]], 1.0, False]]
    if server:
        segs.append(["server", [[1, 3]], ms - 1.0, fallback])
    else:
        segs[0][1] = [[0, 3]]
    return {
        "i": 0,
        "t": t,
        "end": t + ms / 1000,
        "ms": ms,
        "pred_ms": ms,
        "fallback": fallback,
        "server_layers": 3 if server else 0,
        "ok": True,
        "segments": segs,
    }


def doc(strategy: str = "ours") -> dict[str, Any]:
    queries = [q(0.0, 500), q(0.5, 500), q(1.0, 100, server=True), q(1.1, 50, server=True)]
    for i, x in enumerate(queries):
        x["i"] = i
    return {
        "schema": SCHEMA,
        "scenario": {"name": "s"},
        "model": {"name": "m"},
        "strategy": strategy,
        "status": "ok",
        "link": {},
        "device": {},
        "versions": {},
        "machine": {},
        "queries": queries,
        "progress": [
            {"t": 0.4, "sent": 10, "total": 20, "done": False},
            {"t": 1.05, "sent": 20, "total": 20, "done": True},
        ],
        "metrics": {},
    }


def test_metrics_of_a_hand_made_timeline() -> None:
    m = run_metrics(doc(), n=3)
    # issued before 1.05 s: 500, 500, 100
    assert m["mean_during_upload_ms"] == pytest.approx(1100 / 3)
    assert m["queries_during_upload"] == 3
    assert m["mean_after_upload_ms"] == pytest.approx(50)
    assert m["first_offloaded_s"] == 1.0
    assert m["time_to_n_s"] == pytest.approx(1.1)  # the 3rd query ended at 1.0 + 0.1
    assert m["upload_done_s"] == 1.05
    assert m["upload_complete"] is True
    assert m["uploaded_bytes"] == 20
    assert (m["fallbacks"], m["wrong_outputs"]) == (0, 0)
    assert m["client_prediction_mape_pct"] == 0.0  # q() predicts exactly


def test_client_prediction_error_is_relative_to_the_measured_latency() -> None:
    d = doc()
    d["queries"][0]["pred_ms"] = 250.0  # measured 500: 50% off
    assert run_metrics(d)["client_prediction_mape_pct"] == pytest.approx(50.0 / 4)


def test_local_runs_count_every_query_as_during_upload() -> None:
    m = run_metrics(doc("local"), n=10)
    assert m["mean_during_upload_ms"] == pytest.approx(1150 / 4)
    assert m["upload_done_s"] is None
    assert m["time_to_n_s"] is None  # only 4 queries


def test_fallback_queries_are_not_offloaded() -> None:
    points = [QueryPoint(0.0, 0.1, 100.0, False), QueryPoint(0.1, 0.2, 100.0, True)]
    assert metrics_from_points(points, None, uploads=True)["first_offloaded_s"] == 0.1
    d = doc()
    d["queries"][2] = q(1.0, 100, server=True, fallback=True)
    assert run_metrics(d)["first_offloaded_s"] == 1.1


def test_an_unfinished_upload_puts_every_query_in_the_upload_window() -> None:
    points = [QueryPoint(0.0, 0.1, 100.0, False), QueryPoint(0.1, 0.2, 300.0, True)]
    m = metrics_from_points(points, None, uploads=True)
    assert m["mean_during_upload_ms"] == 200.0
    assert m["upload_complete"] is False


def test_valid_documents_pass_the_layout_check() -> None:
    d = doc()
    before = copy.deepcopy(d)
    assert check_run_doc(d) is d  # the document itself, for ``doc = check_run_doc(...)``
    assert d == before  # unchanged


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("queries"), "'queries'"),
        (lambda d: d.update(schema="other/1"), "schema"),
        (lambda d: d.update(status="meh"), "status"),
        (lambda d: d["queries"][1].update(t=-1.0), "impossible times"),
        (lambda d: d["queries"][1].pop("ok"), "'ok'"),
        (lambda d: d["queries"][1].update(segments=[]), "no segment"),
        (lambda d: d["queries"][1]["segments"].append(["moon", [], 1, False]), "malformed"),
        (lambda d: d["queries"][1]["segments"][0].__setitem__(1, [[3, 1]]), "malformed"),
        (lambda d: d["queries"][3].update(t=0.2), "issued before"),
        (lambda d: d["progress"][0].update(sent=30), "sent 30 > total"),
        (lambda d: d["progress"][0].pop("done"), "'done'"),
    ],
)
def test_malformed_documents_are_refused(edit: Any, message: str) -> None:
    d = copy.deepcopy(doc())
    edit(d)
    with pytest.raises(ConfigError) as info:
        check_run_doc(d)
    assert message in str(info.value)


def test_ranges_compress_positions() -> None:
    assert ranges([7, 1, 2, 3]) == [[1, 3], [7, 7]]
    assert ranges([]) == []
    assert ranges([5]) == [[5, 5]]
