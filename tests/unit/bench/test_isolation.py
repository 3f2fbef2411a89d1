"""ionn_net.bench.isolation: the server on its own CPUs, everything else on the others."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ionn_net.bench.isolation import resolve_isolation
from ionn_net.bench.procs import Child
from ionn_net.bench.worker import PREFIX
from ionn_net.errors import ConfigError

needs_two = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux and at least 2 CPUs this process may use",
)

AFFINITY = (
    "import json, os; "
    f"print({PREFIX!r} + json.dumps({{'ev': 'cpus', 'cpus': sorted(os.sched_getaffinity(0))}}))"
)


@needs_two
def test_cores_split_the_cpus_and_shared_leaves_them_alone(tmp_path: Path) -> None:
    iso = resolve_isolation("cores")
    assert iso.server_cpus and iso.client_cpus
    assert not set(iso.server_cpus) & set(iso.client_cpus)
    assert set(iso.server_cpus) | set(iso.client_cpus) == os.sched_getaffinity(0)
    assert iso.cache_dir(tmp_path) != tmp_path  # calibrated on its own CPUs: own cache
    shared = resolve_isolation("shared")
    assert shared.server_preexec() is None and shared.cache_dir(tmp_path) == tmp_path
    assert iso.to_dict()["mode"] == "cores" and "CPU" in iso.describe()
    with pytest.raises(ConfigError, match="isolation"):
        resolve_isolation("some")


@needs_two
async def test_the_server_child_and_this_process_run_where_they_are_put(tmp_path: Path) -> None:
    iso = resolve_isolation("cores")
    before = os.sched_getaffinity(0)
    argv = [sys.executable, "-c", AFFINITY]
    server = await Child("server", argv, tmp_path / "s.log", preexec=iso.server_preexec()).start()
    try:
        ev = await server.expect("cpus", 30.0)
    finally:
        await server.close()
    assert ev["cpus"] == list(iso.server_cpus)
    with iso.pin_self():
        assert os.sched_getaffinity(0) == set(iso.client_cpus)
        client = await Child("client", argv, tmp_path / "c.log").start()  # inherits
        try:
            ev = await client.expect("cpus", 30.0)
        finally:
            await client.close()
        assert ev["cpus"] == list(iso.client_cpus)
    assert os.sched_getaffinity(0) == before
