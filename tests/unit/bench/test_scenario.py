"""Scenario files: the shipped ones load with the issue's values; bad files are
refused with a message naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

import ionn_net
from ionn_net.bench.scenario import (
    STRATEGIES,
    LinkConfig,
    default_scenarios_dir,
    load_scenario,
    quick_scenario,
    scenario_from_doc,
)
from ionn_net.errors import ConfigError

SCENARIOS = default_scenarios_dir()

GOOD = {
    "name": "t",
    "link": {"rate_mbit": 10.0, "rtt_ms": 4.0},
    "run": {"models": ["mobilenetv2"]},
}


@pytest.mark.parametrize(
    ("name", "mbit", "rtt", "loss"),
    [("wifi", 80, 1, 0), ("lte", 20, 20, 0), ("3g", 5, 50, 0), ("wifi_lossy", 80, 1, 0.01)],
)
def test_shipped_scenarios_have_the_issues_links(
    name: str, mbit: float, rtt: float, loss: float
) -> None:
    sc = load_scenario(SCENARIOS / f"{name}.toml")
    assert sc.name == name
    assert (sc.link.rate_mbit, sc.link.rtt_ms, sc.link.loss) == (mbit, rtt, loss)
    assert sc.run.models == ("mobilenetv2", "resnet50", "inceptionv3", "vgg16")
    assert sc.run.strategies == STRATEGIES
    assert sc.run.target_queries == 100


def test_the_shipped_scenarios_are_package_data() -> None:
    package = Path(ionn_net.__file__).resolve().parent
    assert Path(str(SCENARIOS)).resolve() == package / "bench" / "scenarios"
    assert sorted(f.name for f in SCENARIOS.iterdir() if f.name.endswith(".toml")) == [
        "3g.toml",
        "lte.toml",
        "wifi.toml",
        "wifi_lossy.toml",
    ]


def test_defaults_and_derived_values() -> None:
    sc = scenario_from_doc(GOOD)
    assert sc.run.strategies == STRATEGIES
    assert sc.device.mode == "auto"
    assert sc.link.rate_bps == 10e6
    assert sc.link.delay_ms == 2.0
    assert LinkConfig(rate_mbit=5, rtt_ms=50, loss=0.01).describe() == (
        "5 Mbit/s, 50 ms RTT, 1% loss"
    )


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({**GOOD, "extra": 1}, "top-level keys"),
        ({**GOOD, "link": {"rate_mbit": 10, "rttms": 1}}, "['rttms']"),
        ({**GOOD, "link": {"rate_mbit": 0}}, "link.rate_mbit"),
        ({**GOOD, "link": {"rate_mbit": "fast"}}, "link.rate_mbit"),
        ({**GOOD, "link": {"rate_mbit": 10, "loss": 0.9}}, "link.loss"),
        ({"name": "t", "run": {"models": ["vgg16"]}}, "[link]"),
        ({**GOOD, "run": {"models": ["alexnet"]}}, "model: expected one of"),
        ({**GOOD, "run": {"models": []}}, "run.models"),
        ({**GOOD, "run": {"models": ["vgg16"], "strategies": ["best"]}}, "run.strategies"),
        ({**GOOD, "run": {"models": ["vgg16", "vgg16"]}}, "no duplicates"),
        ({**GOOD, "run": {"models": ["vgg16"], "target_queries": 1.5}}, "target_queries"),
        ({**GOOD, "device": {"mode": "phone"}}, "device.mode"),
        ({**GOOD, "device": {"slowdown": 0.5}}, "device.slowdown"),
        ({**GOOD, "name": "a b"}, "name"),
    ],
)
def test_bad_documents_are_refused_naming_the_problem(doc: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        scenario_from_doc(doc, "x.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("x.toml")


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_scenario(bad)


def test_quick_scenario_is_small_and_bounded() -> None:
    sc = quick_scenario()
    assert sc.run.models == ("cnn_small",)
    assert sc.run.strategies == STRATEGIES
    assert sc.run.max_run_s <= 10
    assert sc.device.mode == "slowdown"
