"""Weak-device emulation: run a subprocess under a CPU quota.

Owns :class:`DeviceEmulation` (what is used), :func:`plan_device` (pick a
mechanism), :class:`CpuQuota` (a cgroup that exists for the ``with`` block, or
until interpreter exit at the latest) and
:func:`measure_slowdown` (a short CPU-bound probe, throttled against unthrottled).

Mechanisms, in order: cgroup v2 ``cpu.max`` (when a cgroup2 hierarchy has the
``cpu`` controller), cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``.
Both need write access to the hierarchy (root, usually). A quota of 0.05 lets the
process run 5% of each period on one core, so CPU-bound work takes about 20x as
long in wall time. When neither is available :func:`plan_device` returns
``kind="slowdown-factor"``: nothing is throttled and the caller multiplies the
execution times it measures by ``factor`` (= 1 / quota) instead — a documented
estimate that ignores caches, memory bandwidth and I/O.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from ionn_net.errors import ConfigError
from ionn_net.netem.base import BackendUnavailableError, NetemError

__all__ = [
    "CpuQuota",
    "DeviceEmulation",
    "SlowdownResult",
    "cpu_quota_support",
    "measure_slowdown",
    "plan_device",
]

Kind = Literal["cgroup-v2", "cgroup-v1", "slowdown-factor"]
_PREFIX = "ionn-"
_counter = itertools.count()
_MIN_QUOTA_US = 1000  # the kernel refuses smaller CFS quotas
_open_quotas: set[CpuQuota] = set()


@atexit.register
def _close_open_quotas() -> None:
    for quota in list(_open_quotas):
        quota.close()


@dataclass(frozen=True, slots=True)
class DeviceEmulation:
    """How a weak device is emulated: ``kind``, the CPU share and the expected slowdown.

    ``where`` is the cgroup hierarchy used, or why none could be used.
    """

    kind: Kind
    quota: float
    period_us: int
    factor: float
    where: str


def _mounts() -> list[tuple[str, str, set[str]]]:
    try:
        text = Path("/proc/self/mounts").read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            out.append((fields[1], fields[2], set(fields[3].split(","))))
    return out


def cpu_quota_support() -> tuple[Kind, str]:
    """The usable quota mechanism and its hierarchy, or ("slowdown-factor", why not)."""
    reasons = []
    for mountpoint, fstype, _ in _mounts():
        if fstype != "cgroup2":
            continue
        controllers = Path(mountpoint, "cgroup.controllers")
        with contextlib.suppress(OSError):
            if "cpu" in controllers.read_text().split():
                if os.access(mountpoint, os.W_OK):
                    return "cgroup-v2", mountpoint
                reasons.append(f"{mountpoint} (cgroup v2) is not writable")
                continue
        reasons.append(f"{mountpoint} (cgroup v2) has no cpu controller")
    for mountpoint, fstype, options in _mounts():
        if fstype == "cgroup" and "cpu" in options:
            if Path(mountpoint, "cpu.cfs_quota_us").exists() and os.access(mountpoint, os.W_OK):
                return "cgroup-v1", mountpoint
            reasons.append(f"{mountpoint} (cgroup v1 cpu) is not writable or has no CFS quota")
    return "slowdown-factor", "; ".join(reasons) or "no cgroup cpu controller mounted"


def _check_quota(quota: float, period_us: int) -> None:
    if isinstance(quota, bool) or not isinstance(quota, int | float) or not 0 < quota <= 64:
        raise ConfigError(f"quota: expected a fraction of one core in (0, 64], got {quota!r}")
    if isinstance(period_us, bool) or not isinstance(period_us, int):
        raise ConfigError(f"period_us: expected an int, got {period_us!r}")
    if not 1000 <= period_us <= 1_000_000:
        raise ConfigError(f"period_us: expected 1000..1000000, got {period_us}")
    if quota * period_us < _MIN_QUOTA_US:
        raise ConfigError(
            f"quota * period_us: expected >= {_MIN_QUOTA_US} us (kernel minimum), got "
            f"{quota * period_us:.0f}; use a longer period"
        )


def plan_device(quota: float, *, period_us: int = 100_000) -> DeviceEmulation:
    """The emulation that :class:`CpuQuota` would use here for ``quota`` of one core."""
    _check_quota(quota, period_us)
    kind, where = cpu_quota_support()
    return DeviceEmulation(kind, float(quota), period_us, 1 / quota, where)


class CpuQuota:
    """Context manager: a cgroup limited to ``quota`` of one core; removed on exit.

    ``run`` / ``popen`` start processes inside it; they are killed on exit.
    Raises :class:`BackendUnavailableError` when no quota mechanism is usable.
    """

    def __init__(self, quota: float, *, period_us: int = 100_000) -> None:
        self.emulation = plan_device(quota, period_us=period_us)
        self.path: Path | None = None
        self._procs: list[subprocess.Popen[str]] = []

    def __enter__(self) -> CpuQuota:
        emu = self.emulation
        if emu.kind == "slowdown-factor":
            raise BackendUnavailableError(f"CpuQuota: no CPU quota mechanism: {emu.where}")
        path = Path(emu.where, f"{_PREFIX}{os.getpid()}-{next(_counter)}")
        quota_us = max(_MIN_QUOTA_US, round(emu.quota * emu.period_us))
        try:
            path.mkdir()
            self.path = path
            _open_quotas.add(self)
            if emu.kind == "cgroup-v2":
                _enable_cpu_controller(Path(emu.where))
                (path / "cpu.max").write_text(f"{quota_us} {emu.period_us}\n")
            else:
                (path / "cpu.cfs_period_us").write_text(f"{emu.period_us}\n")
                (path / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
        except OSError as exc:
            self.close()
            raise NetemError(f"CpuQuota: cannot set up {path}: {exc}") from exc
        return self

    def _argv(self, argv: Sequence[str]) -> list[str]:
        if self.path is None:
            raise NetemError("CpuQuota: use it inside its 'with' block")
        if not argv:
            raise ConfigError("argv: expected a non-empty command")
        # The shell joins the cgroup, then becomes the command: no preexec_fn needed.
        script = 'echo $$ > "$0" && exec "$@"'
        return ["/bin/sh", "-c", script, str(self.path / "cgroup.procs"), *argv]

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        """Start ``argv`` inside the cgroup (text mode); killed when the block ends."""
        proc: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
            self._argv(argv), text=True, **kwargs
        )
        self._procs.append(proc)
        return proc

    def run(
        self, argv: Sequence[str], *, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the cgroup and wait (output captured)."""
        proc = self.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise NetemError(f"CpuQuota.run: {argv[0]} exceeded {timeout} s") from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def close(self) -> None:
        """Kill what still runs inside, then remove the cgroup (idempotent)."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self._procs.clear()
        if self.path is None:
            return
        procs_file = self.path / "cgroup.procs"
        for _ in range(100):  # bounded: 100 x 20 ms
            with contextlib.suppress(OSError):
                pids = procs_file.read_text().split()
                if not pids:
                    break
                for pid in pids:  # only processes started in this cgroup, i.e. ours
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), 9)
            time.sleep(0.02)
        with contextlib.suppress(FileNotFoundError):
            self.path.rmdir()
        self.path = None
        _open_quotas.discard(self)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _enable_cpu_controller(root: Path) -> None:
    control = root / "cgroup.subtree_control"
    if "cpu" not in control.read_text().split():
        control.write_text("+cpu\n")


@dataclass(frozen=True, slots=True)
class SlowdownResult:
    """A CPU-bound probe run unthrottled and under the quota.

    ``slowdown`` = throttled wall time / unthrottled CPU time: how much longer the
    work takes on the emulated device than it costs at full speed. The CPU time is
    used because other load on a shared machine stretches the unthrottled *wall*
    time; ``slowdown_wall`` is the plain wall-time ratio, for reference.
    ``slowdown_cpu`` = throttled wall time / its own CPU time. For
    ``kind="slowdown-factor"`` nothing ran: all three are the factor and
    ``measured`` is False.
    """

    emulation: DeviceEmulation
    measured: bool
    baseline_wall_s: float
    baseline_cpu_s: float
    throttled_wall_s: float
    throttled_cpu_s: float
    slowdown: float
    slowdown_wall: float
    slowdown_cpu: float


_PROBE = (
    "import time\n"
    "t, c = time.perf_counter(), time.process_time()\n"
    "x = 0\n"
    "for i in range({n}):\n"
    "    x += i * i\n"
    "print(time.perf_counter() - t, time.process_time() - c)\n"
)


def _parse_probe(proc: subprocess.CompletedProcess[str]) -> tuple[float, float]:
    if proc.returncode != 0:
        raise NetemError(f"slowdown probe failed: {proc.stderr.strip()}")
    wall, cpu = proc.stdout.split()
    return float(wall), float(cpu)


def measure_slowdown(
    quota: float = 0.05, *, period_us: int = 20_000, iterations: int = 400_000
) -> SlowdownResult:
    """Run a CPU-bound loop (``iterations`` squares) without and with the quota."""
    if not isinstance(iterations, int) or not 1000 <= iterations <= 100_000_000:
        raise ConfigError(f"iterations: expected 1000..100000000, got {iterations!r}")
    emu = plan_device(quota, period_us=period_us)
    if emu.kind == "slowdown-factor":
        f = emu.factor
        return SlowdownResult(emu, False, 0.0, 0.0, 0.0, 0.0, f, f, f)
    argv = [sys.executable, "-c", _PROBE.format(n=iterations)]
    base = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    base_wall, base_cpu = _parse_probe(base)
    with CpuQuota(quota, period_us=period_us) as cg:
        wall, cpu = _parse_probe(cg.run(argv, timeout=max(60.0, 200 * base_wall / quota)))
    return SlowdownResult(
        emu, True, base_wall, base_cpu, wall, cpu, wall / base_cpu, wall / base_wall, wall / cpu
    )
