"""The server's cached cost model: reused when made by this calibration method, never
when made by an older one (a stale fit once predicted ResNet50 10x too slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ionn_net import calibrate
from ionn_net.calibrate import Calibration
from ionn_net.planner.costmodel import LinearFit, ServerCostModel
from ionn_net.planner.prior import LayerPrior


def _calibration(cost: ServerCostModel) -> Calibration:
    return Calibration(cost_model=cost, prior=LayerPrior())


def test_cache_name_carries_the_calibration_method(tmp_path: Path) -> None:
    path = calibrate._cache_path(tmp_path)
    assert path.parent == tmp_path
    assert path.name.endswith(f"-c{calibrate.CALIBRATION_VERSION}.json")


def test_cached_model_is_reused_without_calibrating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = ServerCostModel(exec_fits={"conv": LinearFit("macs", 0.0, 2.0)})
    calibrate._cache_path(tmp_path).write_text(_calibration(cached).to_json())

    def fail() -> None:
        raise AssertionError("calibrated although a valid cache exists")

    monkeypatch.setattr(calibrate, "calibrate", fail)
    assert calibrate.load_or_calibrate(tmp_path) == cached


def test_model_cached_by_an_older_method_is_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = ServerCostModel(exec_fits={"conv": LinearFit("macs", 0.0, 99.0)})
    fresh = ServerCostModel(exec_fits={"conv": LinearFit("macs", 0.0, 2.0)})
    current = calibrate._cache_path(tmp_path)
    old_name = current.name.replace(f"-c{calibrate.CALIBRATION_VERSION}", "")
    (tmp_path / old_name).write_text(_calibration(stale).to_json())
    monkeypatch.setattr(calibrate, "calibrate", lambda: _calibration(fresh))
    assert calibrate.load_or_calibrate(tmp_path) == fresh
    assert Calibration.from_json(current.read_text()).cost_model == fresh
