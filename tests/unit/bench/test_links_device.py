"""The bench's link (userspace proxy: probed, forwards) and device emulation settings."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ionn_net.bench.device import QuotaController, resolve_device
from ionn_net.bench.links import BenchLink
from ionn_net.bench.scenario import DeviceConfig, LinkConfig
from ionn_net.errors import ConfigError
from ionn_net.netem.device import cpu_quota_support
from ionn_net.netem.netns import PREFIX, environment_problem, list_namespaces


async def test_userspace_link_is_probed_and_forwards_to_the_server() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(5))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        config = LinkConfig(rate_mbit=20.0, rtt_ms=20.0)
        async with BenchLink(config, backend="userspace-proxy", probe_s=0.5) as link:
            report = link.report
            assert report is not None
            assert report.backend == "userspace-proxy"
            assert "userspace-proxy" in report.message
            for direction in ("up", "down"):
                probe = report.probes[direction]
                assert probe.configured_rate_bps == 20e6
                assert 0.85 < (probe.rate_ratio() or 0) < 1.1
                assert probe.rtt_ms_p50 is not None and 19.0 < probe.rtt_ms_p50 < 35.0
            assert link.prefix("client") == [] and link.server_host == "127.0.0.1"
            host, proxied = await link.attach(port)
            assert proxied != port
            reader, writer = await asyncio.open_connection(host, proxied)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            writer.write(b"hello")
            assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
            assert loop.time() - t0 >= 0.019  # one round trip through the delay line
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_an_explicit_backend_that_cannot_run_is_refused_not_replaced() -> None:
    if environment_problem() is None:
        pytest.skip("namespace links can run here (root with iproute2)")
    with pytest.raises(Exception, match="unavailable"):
        async with BenchLink(LinkConfig(rate_mbit=10.0), backend="tbf+pktdelay"):
            pass


def own_namespaces() -> set[str]:
    """This process's namespaces (named ``ionn-<pid>-...``): other test runs on the same
    machine create and delete theirs meanwhile."""
    mine = f"{PREFIX}{os.getpid()}-"
    return {name for name in list_namespaces() if name.startswith(mine)}


@pytest.mark.root
@pytest.mark.slow
async def test_namespace_link_runs_tbf_within_10_percent_and_cleans_up() -> None:
    problem = environment_problem()
    if problem is not None:
        pytest.skip(f"namespace links unavailable: {problem}")
    before = own_namespaces()
    config = LinkConfig(rate_mbit=20.0, rtt_ms=10.0)
    async with BenchLink(config, probe_s=1.0) as link:
        report = link.report
        assert report is not None
        assert report.backend in ("netem", "tbf+pktdelay")
        if report.backend != "netem":
            assert "not netem" in report.message  # says why netem was skipped
        ratio = report.probes["up"].rate_ratio()
        assert ratio is not None and 0.9 <= ratio <= 1.1, report.describe()
        assert link.prefix("server")[:3] == ["ip", "netns", "exec"]
    assert own_namespaces() == before


def test_device_modes_resolve_to_what_runs_here() -> None:
    slow = resolve_device(DeviceConfig(mode="slowdown", slowdown=20.0))
    assert (slow.kind, slow.factor, slow.quota) == ("slowdown-factor", 20.0, None)
    assert slow.command() == {"kind": "slowdown", "factor": 20.0}
    auto = resolve_device(DeviceConfig(mode="auto", quota=0.1, slowdown=7.0))
    kind, where = cpu_quota_support()
    if kind == "slowdown-factor":
        assert auto.kind == "slowdown-factor" and auto.factor == 7.0
        assert where in auto.note
        with pytest.raises(ConfigError, match="CPU quota"):
            resolve_device(DeviceConfig(mode="cgroup"))
    else:
        assert auto.kind == kind and auto.quota == 0.1
        assert auto.period_us is not None and auto.period_us >= 10_000
        assert auto.command() == {"kind": "cgroup", "quota": 0.1}
    with pytest.raises(ConfigError, match="device"):
        resolve_device(DeviceConfig(), override="phone")


def _cpu_group(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, rel = line.split(":", 2)
        if "cpu" in controllers.split(",") or controllers == "":
            return rel
    return ""


@pytest.mark.root
def test_quota_controller_moves_a_process_in_and_back_and_removes_its_cgroup() -> None:
    kind, where = cpu_quota_support()
    if kind == "slowdown-factor":
        pytest.skip(f"no CPU quota mechanism: {where}")
    setting = resolve_device(DeviceConfig(mode="cgroup", quota=0.2))
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        home = _cpu_group(proc.pid)
        with QuotaController(setting) as quota:
            quota.move(proc.pid, True)
            inside = _cpu_group(proc.pid)
            assert inside != home and inside.rsplit("/", 1)[-1].startswith("ionn-")
            quota.move(proc.pid, False)
            assert _cpu_group(proc.pid) == home
            made = Path(where, inside.lstrip("/"))
            assert made.is_dir()
        assert not made.exists()
        assert proc.poll() is None  # moved out before the cgroup was removed: still alive
    finally:
        proc.kill()
        proc.wait(10)
