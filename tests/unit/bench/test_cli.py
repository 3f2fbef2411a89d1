"""``ionn-bench`` arguments: validation and scenario resolution (nothing is run)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ionn_net.bench import cli
from ionn_net.bench.scenario import default_scenarios_dir, quick_scenario


def test_help_lists_scenarios_models_and_backends(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("--quick", "userspace-proxy", "tbf+pktdelay", "wifi", "lte", "vgg16"):
        assert word in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "alexnet"], "expected a comma-separated list"),
        (["--strategies", "ours,best"], "expected a comma-separated list"),
        (["--quota", "-1"], "expected a value > 0"),
        (["--backend", "tc"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_naming_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_scenario_and_quick_with_names_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["nosuch", "--out", str(tmp_path)]) == 2
    assert "no file" in capsys.readouterr().err
    assert cli.main(["--quick", "wifi", "--out", str(tmp_path)]) == 2
    assert "--quick" in capsys.readouterr().err


def test_overrides_replace_only_what_was_given() -> None:
    args = argparse.Namespace(
        models=("vgg16",),
        strategies=None,
        max_run_s=30.0,
        target_queries=None,
        quota=0.25,
        slowdown=None,
    )
    sc = cli._apply_overrides(quick_scenario(), args)
    assert sc.run.models == ("vgg16",)
    assert sc.run.max_run_s == 30.0
    assert sc.run.strategies == quick_scenario().run.strategies
    assert sc.device.quota == 0.25
    assert sc.device.slowdown == quick_scenario().device.slowdown


def test_scenario_names_resolve_in_the_scenarios_directory(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text(
        'name = "mine"\n[link]\nrate_mbit = 1.0\n[run]\nmodels = ["cnn_small"]\n'
    )
    [sc] = cli._resolve(["mine"], tmp_path)
    assert sc.name == "mine" and sc.link.rate_mbit == 1.0
    [same] = cli._resolve([str(tmp_path / "mine.toml")], Path("/nonexistent"))
    assert same.name == "mine"
    [wifi] = cli._resolve(["wifi"], default_scenarios_dir())
    assert wifi.name == "wifi" and wifi.link.rate_mbit == 80.0


def test_list_shows_the_scenarios_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"scenarios in {default_scenarios_dir()}:"
    assert [line.split()[0] for line in lines[1:]] == ["3g", "lte", "wifi", "wifi_lossy"]
    assert "IONN paper default" in lines[3]
    (tmp_path / "mine.toml").write_text(
        'name = "mine"\n[link]\nrate_mbit = 2.0\nrtt_ms = 30.0\n[run]\nmodels = ["cnn_small"]\n'
    )
    (tmp_path / "broken.toml").write_text('name = "broken"\n')
    assert cli.main(["--list", "--scenarios-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:2] == ["broken", "unusable:"]
    assert out[2].split() == ["mine", "2", "Mbit/s,", "30", "ms", "RTT"]
    assert cli.main(["--list", "--scenarios-dir", str(tmp_path / "none")]) == 2
    assert "no scenario files" in capsys.readouterr().err


def _run_doc(strategy: str, started: str) -> dict[str, object]:
    from ionn_net.bench.results import SCHEMA, run_metrics

    queries = [
        {
            "i": i,
            "t": i * 0.1,
            "end": i * 0.1 + 0.05,
            "ms": 50.0,
            "segments": [["client", [[0, 3]], 50.0, False]],
            "ok": True,
            "fallback": False,
        }
        for i in range(5)
    ]
    doc: dict[str, object] = {
        "schema": SCHEMA,
        "scenario": {"name": "wifi", "link_text": "80 Mbit/s"},
        "model": {"name": "cnn_small", "layers": 4, "weight_bytes": 1e6, "whole_ms": 5.0},
        "strategy": strategy,
        "status": "ok",
        "reason": "complete",
        "link": {"backend": "userspace-proxy", "message": "m", "measured": {}},
        "device": {"kind": "slowdown-factor", "effective_factor": 10.0, "describe": "x10"},
        "versions": {"tensorflow": "2"},
        "machine": {"cpus": 2},
        "command": "ionn-bench wifi",
        "timing": {"started": started, "elapsed_s": 0.5},
        "queries": queries,
        "progress": [],
    }
    doc["metrics"] = run_metrics(doc, n=5)
    return doc


@pytest.mark.slow
def test_report_mode_rebuilds_plots_and_summary_from_run_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    runs = tmp_path / "runs"
    runs.mkdir()
    # written in another order than the bench's: the summary puts local first
    for strategy, started in (("ours", "2026-01-01T00:00:02"), ("local", "2026-01-01T00:00:01")):
        path = runs / f"wifi__cnn_small__{strategy}.json"
        path.write_text(json.dumps(_run_doc(strategy, started)))
    groups = cli.load_groups(tmp_path)
    assert [[d["strategy"] for d in g] for g in groups] == [["local", "ours"]]
    assert cli.main(["--report", str(tmp_path)]) == 0
    text = (tmp_path / "summary.md").read_text()
    assert "| local | 5 |" in text and "| ours | 5 |" in text
    assert (tmp_path / "plots" / "wifi__cnn_small.png").stat().st_size > 10_000
    (runs / "bad.json").write_text("{}")
    assert cli.main(["--report", str(tmp_path)]) == 2
    assert "bad.json" in capsys.readouterr().err
