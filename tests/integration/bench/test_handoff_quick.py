"""``ionn-bench handoff --quick`` end to end: two real edge server processes and a client process;
the client moves from the first to the second mid-upload, with every strategy.

It runs as users run it: the ``ionn-bench`` console script of the project's wheel installed in
a fresh environment, from a directory outside the source tree. As root it runs in network
namespaces (tbf + the userspace packet delay line, the link to the first server cut at the
move); elsewhere on userspace proxies, and says which.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tests.helpers.wheel_env import venv_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

LINE = re.compile(
    r"^handoff (?P<strategy>[a-z-]+): first offload after move (?P<first>>?[0-9.]+) s, "
    r"mean after move (?P<mean>[0-9.]+|-) ms, wireless MB after move (?P<mb>[0-9.]+|-), "
    r"lost (?P<lost>[0-9]+), wrong (?P<wrong>[0-9]+)$"
)


@pytest.fixture(scope="module")
def quick_handoff(
    tmp_path_factory: pytest.TempPathFactory, wheel_venv: Path, calibration_dir: Path
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("handoff")
    out = root / "out"
    # the servers' calibration of this machine is the session's (it takes minutes afresh)
    shutil.copytree(calibration_dir, root / "cache")
    argv = [str(wheel_venv / "ionn-bench"), "handoff", "--quick", "--out", str(out)]
    argv += ["--cache-dir", str(root / "cache")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=560, check=False,
                          cwd=root, env=venv_env(wheel_venv))  # fmt: skip
    return out, proc


def test_every_strategy_moves_without_losing_an_answer(quick_handoff: Any) -> None:
    out, proc = quick_handoff
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = {m["strategy"]: m for m in map(LINE.match, proc.stdout.splitlines()) if m}
    assert set(lines) == {"ionn", "ours", "ours-premigrate"}, proc.stdout
    for m in lines.values():
        assert m["lost"] == "0" and m["wrong"] == "0"
    assert not lines["ours"]["first"].startswith(">")  # the new server served in the window
    assert re.search(r"== handoff quick: (netns|userspace-proxy)", proc.stderr)
    assert f"summary: {out / 'summary.md'}" in proc.stdout


def test_the_runs_record_the_move_and_what_moved(quick_handoff: Any) -> None:
    out, _ = quick_handoff
    docs = {
        d["strategy"]: d
        for d in map(json.loads, map(Path.read_text, (out / "runs").glob("*.json")))
    }
    for doc in docs.values():
        assert doc["status"] == "ok", doc["reason"]
        move = doc["move_t"]
        assert move > 0 and any(q["t"] < move for q in doc["queries"])
        assert any(q["t"] >= move and q["offloaded"] for q in doc["queries"])
        assert doc["move"]["sent_before"] >= 0.5 * doc["move"]["total"]  # mid-upload
    assert docs["ours"]["client_stats"]["fetched_blobs"] > 0
    assert docs["ionn"]["client_stats"]["fetched_blobs"] == 0
    assert docs["ours-premigrate"]["client_stats"]["pushed_blobs"] > 0
    assert (out / "plots" / "handoff__quick__cnn_small.png").stat().st_size > 10_000
    assert "| quick / cnn_small | ours |" in (out / "summary.md").read_text()
