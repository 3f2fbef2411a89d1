"""The project as users install it: its wheel in a fresh environment, run from outside
the source tree.

The fixtures (tests/integration/conftest.py, built by tests/helpers/wheel_env.py) build
the wheel offline and install it into fresh virtual environments, one with every
dependency, one without the ``bench`` extra and one without the ``redis`` extra. Here the
console scripts answer ``--help``, ``ionn-bench`` finds the scenario files shipped in the
wheel, and without an extra a script (or option) that needs it stops with one line naming
it and status 2.
``ionn-bench --quick`` from the same installed wheel is
tests/integration/bench/test_bench_quick.py (one quick run serves both).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tests.helpers.wheel_env import ROOT, venv_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SCRIPTS = ("ionn-server", "ionn-demo", "ionn-bench", "ionn-catalog")
SHIPPED = ("3g", "lte", "wifi", "wifi_lossy")
HINT = "pip install 'ionn_net[bench]'"


def run(
    bin_dir: Path, cwd: Path, *argv: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``argv`` with its program from ``bin_dir``, run in ``cwd`` (outside the sources)."""
    return subprocess.run(
        [str(bin_dir / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        env=venv_env(bin_dir),
    )


def site_packages(bin_dir: Path) -> Path:
    [path] = (bin_dir.parent / "lib").glob("python3*/site-packages")
    return path


def test_the_installed_package_runs_not_the_sources(wheel_venv: Path, tmp_path: Path) -> None:
    venv = wheel_venv.parent
    assert not venv.resolve().is_relative_to(ROOT)
    code = (
        "import ionn_net, ionn_net.bench.scenario as s; "
        "print(ionn_net.__file__); print(s.default_scenarios_dir())"
    )
    proc = run(wheel_venv, tmp_path, "python", "-c", code)
    assert proc.returncode == 0, proc.stderr
    module, scenarios = proc.stdout.split()
    installed = site_packages(wheel_venv) / "ionn_net"
    assert Path(module) == installed / "__init__.py"
    assert Path(scenarios) == installed / "bench" / "scenarios"
    for script in SCRIPTS:  # pip wrote them for this environment's interpreter
        first = (wheel_venv / script).read_text().splitlines()[0]
        assert first == f"#!{wheel_venv / 'python'}", (script, first)


def test_every_console_script_answers_help(wheel_venv: Path, tmp_path: Path) -> None:
    for script, words in (
        ("ionn-server", ("usage: ionn-server", "--secret-file")),
        ("ionn-demo", ("usage: ionn-demo", "--planner")),
        ("ionn-bench", ("usage: ionn-bench", "--quick", "--list", *SHIPPED)),
        ("ionn-catalog", ("usage: ionn-catalog", "add", "list", "verify")),
    ):
        proc = run(wheel_venv, tmp_path, script, "--help")
        assert proc.returncode == 0, (script, proc.stderr)
        for word in words:
            assert word in proc.stdout, (script, word)


def test_bench_finds_the_scenarios_shipped_in_the_wheel(wheel_venv: Path, tmp_path: Path) -> None:
    proc = run(wheel_venv, tmp_path, "ionn-bench", "--list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"scenarios in {site_packages(wheel_venv) / 'ionn_net/bench/scenarios'}:"
    assert [line.split()[0] for line in lines[1:]] == list(SHIPPED)
    assert "unusable" not in proc.stdout  # each one loaded
    proc = run(wheel_venv, tmp_path, "ionn-bench", "nosuch")
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith(f"(known: {', '.join(SHIPPED)})"), proc.stderr


def test_without_the_bench_extra_one_line_names_it(
    wheel_venv_without_bench: Path, tmp_path: Path
) -> None:
    bin_dir = wheel_venv_without_bench
    premise = run(bin_dir, tmp_path, "python", "-c", "import matplotlib")
    assert premise.returncode != 0 and "No module named 'matplotlib'" in premise.stderr
    # --help first: were the check missing, it would answer at once rather than start a run
    for argv in (("--help",), ("--list",), ("wifi", "--models", "cnn_small"), ("--quick",)):
        proc = run(bin_dir, tmp_path, "ionn-bench", *argv)
        assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
        assert proc.stdout == ""
        assert (
            proc.stderr == f"ionn-bench: needs matplotlib, not installed; install it with: {HINT}\n"
        )
    # the server and the demo need nothing beyond the base dependencies
    for script in ("ionn-server", "ionn-demo"):
        proc = run(bin_dir, tmp_path, script, "--help")
        assert proc.returncode == 0, (script, proc.stderr)
        assert f"usage: {script}" in proc.stdout


def test_without_the_redis_extra_a_redis_store_names_it(
    wheel_venv_without_redis: Path, tmp_path: Path
) -> None:
    bin_dir = wheel_venv_without_redis
    premise = run(bin_dir, tmp_path, "python", "-c", "import redis")
    assert premise.returncode != 0 and "No module named 'redis'" in premise.stderr
    proc = run(bin_dir, tmp_path, "ionn-server", "--store", "redis://127.0.0.1:6379/0")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert proc.stderr == (
        "ionn-server: --store redis:// needs redis, not installed; "
        "install it with: pip install 'ionn_net[redis]'\n"
    )
    # the library names it too, and the other stores need nothing more
    code = (
        "from ionn_net.store import open_store\n"
        "print(type(open_store(None)).__name__)\n"
        "open_store('redis://127.0.0.1:6379/0')"
    )
    proc = run(bin_dir, tmp_path, "python", "-c", code)
    assert proc.stdout == "MemoryStore\n"
    assert "StoreError: store redis://127.0.0.1:6379/0: a Redis store needs redis" in proc.stderr
