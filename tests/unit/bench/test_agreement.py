"""bench/agreement.py: the criteria it reports as missed are the ones the run documents miss."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "agreement.py"


@pytest.fixture(scope="module")
def agreement() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_agreement", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(
    strategy: str,
    ms: float,
    *,
    sim_ms: float | None = None,
    done: float | None = 10.0,
    first_byte: float | None = 5.0,
) -> dict[str, Any]:
    """A run document as ionn-bench writes it, reduced to what the tables read: queries
    every second for 20 s at ``ms`` (measured) and ``sim_ms`` (the replay)."""
    sim = ms if sim_ms is None else sim_ms
    return {
        "scenario": {"name": "wifi"},
        "model": {"name": "m"},
        "strategy": strategy,
        "status": "ok",
        "metrics": {"mean_during_upload_ms": ms, "upload_done_s": done},
        "timing": {"first_byte_delay_ms": first_byte, "planned_s": 0.1, "elapsed_s": 20.0},
        "machine": {"loadavg": [1.0, 1.0, 1.0]},
        "queries": [{"t": float(t), "ms": ms} for t in range(20)],
        "prediction": {
            "errors": {"mean_during_upload_pct": (sim / ms - 1) * 100},
            "metrics": {"mean_during_upload_ms": sim},
            "queries": [[float(t), sim, 0] for t in range(20)],
        },
    }


def group(ours_ms: float, **ours: Any) -> list[dict[str, Any]]:
    return [
        run("all_at_once", 500.0, done=15.0),
        run("ionn", 300.0),
        run("efficiency", 310.0),
        run("ours", ours_ms, **ours),
    ]


def test_ours_within_three_percent_of_both_passes(agreement: ModuleType) -> None:
    rows, fails = agreement.window_rows([group(306.0)])
    assert fails == []
    assert "+2.0%" in rows[-1]


def test_ours_more_than_three_percent_behind_is_reported(agreement: ModuleType) -> None:
    _, fails = agreement.window_rows([group(315.0)])
    assert fails == ["wifi / m: ours +5.0% against ionn"]


def test_ours_not_ahead_where_the_replay_puts_it_ahead_is_reported(
    agreement: ModuleType,
) -> None:
    _, fails = agreement.window_rows([group(300.0, sim_ms=250.0)])
    assert fails == ["wifi / m: ours not ahead of ionn (simulated -16.7%)"]


def test_simulator_error_and_first_byte_beyond_their_bounds_are_reported(
    agreement: ModuleType,
) -> None:
    docs = group(300.0)
    docs[1] = run("ionn", 300.0, sim_ms=260.0, first_byte=51.0)
    _, fails = agreement.run_rows([docs])
    assert fails == ["wifi / m ionn: first byte 51.0 ms"]  # -13.3% is within 15%
    docs[1] = run("ionn", 300.0, sim_ms=250.0)
    _, fails = agreement.run_rows([docs])
    assert fails == ["wifi / m ionn: simulator -16.7%"]
