"""Device emulation (root): a CPU quota slows a CPU-bound probe by about 1 / quota."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ionn_net.errors import ConfigError
from ionn_net.netem.device import CpuQuota, cpu_quota_support, measure_slowdown, plan_device

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _needs_quota() -> None:
    kind, where = cpu_quota_support()
    if kind == "slowdown-factor":
        pytest.skip(f"no usable cgroup CPU quota here: {where}")


def test_quota_slows_cpu_bound_probe_by_about_the_quota() -> None:
    result = measure_slowdown(0.05, period_us=20_000)
    assert result.measured
    assert result.emulation.kind in ("cgroup-v1", "cgroup-v2")
    assert result.emulation.factor == pytest.approx(20.0)
    # Wall time over the probe's own CPU time: ~20 at 5% of a core.
    assert 13 <= result.slowdown_cpu <= 30, result
    # Against what the same loop costs unthrottled (its CPU time: other load on
    # the machine stretches wall time, not CPU time -- but it does inflate CPU time
    # somewhat through shared caches and cores: a busy CI host measured 11.4 here with
    # slowdown_cpu at 19.9, so the bound only asks for clearly throttled; without the
    # quota this is ~1). The other way, the loop can cost twice its unthrottled CPU time
    # under the quota (a run measured slowdown 40.1 with slowdown_cpu 20.3: caches are
    # cold after every throttled period), so the upper bound leaves room for that.
    assert 8 <= result.slowdown <= 60, result


def test_cgroup_settings_and_cleanup() -> None:
    with CpuQuota(0.1, period_us=50_000) as cg:
        path = cg.path
        assert path is not None and path.is_dir()
        if cg.emulation.kind == "cgroup-v1":
            assert (path / "cpu.cfs_quota_us").read_text().strip() == "5000"
            assert (path / "cpu.cfs_period_us").read_text().strip() == "50000"
        else:
            assert (path / "cpu.max").read_text().split() == ["5000", "50000"]
        sleeper = cg.popen(["sleep", "30"])
        out = cg.run([sys.executable, "-c", "print(open('/proc/self/cgroup').read())"])
        assert path.name in out.stdout
    assert not path.exists()
    assert sleeper.poll() is not None  # killed with the cgroup


def test_cleanup_when_the_body_raises() -> None:
    path: Path | None = None
    with pytest.raises(RuntimeError, match="boom"), CpuQuota(0.2) as cg:
        path = cg.path
        cg.popen(["sleep", "30"], stdout=subprocess.DEVNULL)
        raise RuntimeError("boom")
    assert path is not None and not path.exists()


def test_plan_and_validation() -> None:
    emu = plan_device(0.05)
    assert (emu.kind, emu.quota, emu.factor) == (cpu_quota_support()[0], 0.05, 20.0)
    with pytest.raises(ConfigError, match="quota"):
        plan_device(0)
    with pytest.raises(ConfigError, match="kernel minimum"):
        plan_device(0.001, period_us=100_000)
    with pytest.raises(ConfigError, match="period_us"):
        plan_device(0.5, period_us=10)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
def test_unprivileged_user_gets_the_slowdown_factor_fallback() -> None:
    code = (
        "from ionn_net.netem.device import plan_device, measure_slowdown\n"
        "e = plan_device(0.05); r = measure_slowdown(0.05)\n"
        "print(e.kind, e.factor, r.measured, r.slowdown)\n"
    )
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0 and "Permission denied" in proc.stderr:
        pytest.skip(f"the unprivileged user cannot run this interpreter: {proc.stderr[-200:]}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["slowdown-factor", "20.0", "False", "20.0"]
