"""``bench/transport.py`` head-of-line part, smallest run: one paced case over the userspace
link (no root needed). Checks the script runs its peers end to end and prints the per-query
diagnostics (when the query's head reached the socket, the congestion window samples) that
located the BBR ProbeRTT tail (BENCHMARKS.md, transport, stop 14)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[3]


def test_hol_bench_runs_a_paced_case_and_prints_its_diagnostics() -> None:
    argv = [sys.executable, str(ROOT / "bench" / "transport.py"), "--only", "hol", "--quick"]
    argv += ["--backend", "userspace-proxy", "--links", "20/0", "--cases", "given"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "FAILED" not in out, out[-2000:]
    row = next(line for line in out.splitlines() if "ionn_net + pacing at given rate " in line)
    assert "retrans" in row  # the client's TCP_INFO was read
    assert "ionn_net + pacing at given rate: p99" in out  # the verdict line
    if sys.platform == "linux":
        slowest = next(line for line in out.splitlines() if line.startswith("  slowest queries"))
        assert "[written" in slowest and "cwnd=" in slowest
        assert "congestion states of 'ionn_net + pacing at given rate'" in out
