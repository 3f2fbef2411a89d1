"""Plots and the markdown summary from synthetic run documents."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from ionn_net.bench.report import common_window, plot_group, plot_prediction, summary_markdown
from ionn_net.bench.results import run_metrics


def make_doc(strategy: str, done: float | None, status: str = "ok") -> dict[str, Any]:
    queries = []
    t = 0.0
    for i in range(40):
        offl = done is not None and t > done / 2
        ms = 50.0 if offl else 400.0
        seg = [["server" if offl else "client", [[0, 9]], ms, False]]
        queries.append(
            {"i": i, "t": t, "end": t + ms / 1000, "ms": ms, "segments": seg, "ok": True}
        )
        t += ms / 1000
    progress = []
    if done is not None:
        progress = [
            {"t": done * k / 4, "sent": 25 * k, "total": 100, "done": k == 4} for k in range(1, 5)
        ]
    d: dict[str, Any] = {
        "scenario": {"name": "wifi", "link_text": "80 Mbit/s, 1 ms RTT"},
        "model": {
            "name": "mobilenetv2",
            "layers": 10,
            "weight_bytes": 14e6,
            "whole_ms": 35.0,
            "weight_ratio": 1.2,
        },
        "strategy": strategy,
        "status": status,
        "reason": "complete" if status == "ok" else "boom",
        "link": {
            "backend": "userspace-proxy",
            "message": "link emulation: using userspace-proxy (preferred)",
            "measured": {
                "up": {
                    "measured_rate_bps": 79e6,
                    "configured_rate_bps": 80e6,
                    "configured_rtt_ms": 1.0,
                    "rtt_ms_p50": 1.3,
                }
            },
        },
        "device": {"kind": "slowdown-factor", "effective_factor": 10.0, "describe": "x10"},
        "timing": {"elapsed_s": t},
        "queries": queries if status == "ok" else [],
        "progress": progress,
    }
    d["metrics"] = run_metrics(d, n=30)
    d["prediction"] = {
        "queries": [[q["t"], q["ms"] * 0.9, 0] for q in queries],
        "metrics": {"mean_during_upload_ms": 300.0, "upload_done_s": done},
        "errors": {"mape_pct": 10.0},
    }
    return d


def docs() -> list[dict[str, Any]]:
    return [
        make_doc("local", None),
        make_doc("all_at_once", 6.0),
        make_doc("neurosurgeon", None, status="skipped"),
        make_doc("ionn", 4.0),
        make_doc("efficiency", 3.0),
        make_doc("ours", 2.0),
    ]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.slow
def test_group_and_prediction_plots_are_real_images(tmp_path: Path) -> None:
    shown = [d for d in docs() if d["queries"]]
    main = plot_group(shown, tmp_path / "g.png")
    pred = plot_prediction(shown, tmp_path / "p.png")
    for path in (main, pred):
        assert path.stat().st_size > 20_000
        w, h = png_size(path)
        assert w >= 800 and h >= 400


def test_summary_has_one_row_per_strategy_and_the_common_window() -> None:
    ds = docs()
    assert common_window(ds) == 6.0  # all_at_once's upload time
    text = summary_markdown(
        [ds],
        command="ionn-bench wifi",
        machine={"cpu": "x"},
        versions={"tensorflow": "2"},
        plots={("wifi", "mobilenetv2"): ["plots/a.png"]},
    )
    assert "Command: `ionn-bench wifi`" in text
    rows = first_table(text)
    assert [r.split("|")[1].strip() for r in rows[1:]] == [d["strategy"] for d in ds]
    assert "mean latency in first 6.0 s" in rows[0]
    skipped = next(r for r in rows if r.startswith("| neurosurgeon"))
    assert "skipped: boom" in skipped
    assert "![plots/a.png](plots/a.png)" in text
    assert "measured 79.0 Mbit/s (98.8% of configured)" in text
    local = next(r for r in rows if r.startswith("| local"))
    assert "| 400.0 |" in local  # local: every query is 'during upload'
    # the simulator table: measured / simulated, the error, for every run that ran
    sim = text.split("Simulator (replaying")[1]
    sim_rows = first_table(sim)[1:]
    assert [r.split("|")[1].strip() for r in sim_rows] == [
        d["strategy"] for d in ds if d["status"] == "ok"
    ]
    ours = next(r for r in sim_rows if r.startswith("| ours"))
    assert "/ 300.0 |" in ours and "| 10% /" in ours


def first_table(text: str) -> list[str]:
    """The rows (header first) of the first markdown table in ``text``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if "---" not in line:
            rows.append(line)
    return rows


def _with_window(doc: dict[str, Any], measured: float, simulated: float) -> dict[str, Any]:
    doc["metrics"]["mean_in_window_ms"] = measured
    doc["prediction"]["metrics"]["mean_in_window_ms"] = simulated
    return doc


def test_precision_first_lines_compare_with_ionn_in_the_lossless_window() -> None:
    from ionn_net.bench.report import precision_lines

    groups = []
    for model, (ionn, ours8, sim8) in {
        "a": (100.0, 50.0, 40.0),
        "b": (100.0, 102.0, 100.0),
    }.items():
        group = [
            _with_window(make_doc("ionn", 4.0), ionn, 100.0),
            _with_window(make_doc("ours-8", 2.0), ours8, sim8),
        ]
        for d in group:
            d["model"]["name"] = model
        groups.append(group)
    lines = precision_lines(groups)
    summary = next(line for line in lines if line.startswith("- ours-8"))
    # measured gains 2.0 and 0.980: geomean 1.400; simulated 2.5 and 1.0: 1.581
    assert "geomean gain over ionn 1.400x measured, 1.581x simulated" in summary
    assert "(measured vs simulated -11%)" in summary
    assert "worst group wifi / b 0.980x" in summary
    assert summary.endswith("no more than 3% behind ionn in every group: yes (2 groups)")
    groups[1][1]["metrics"]["mean_in_window_ms"] = 104.0  # 0.962x: 3.8% behind
    assert "every group: no" in next(ln for ln in precision_lines(groups) if "ours-8" in ln[:8])
    assert precision_lines([[make_doc("ionn", 4.0), make_doc("ours", 2.0)]]) == []
