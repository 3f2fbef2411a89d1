"""How the benchmark makes the client a slow device, and what it records about it.

Owns :func:`resolve_device` (scenario setting -> :class:`DeviceSetting`) and
:class:`QuotaController` (moves the worker process into and out of a
:class:`ionn_net.netem.device.CpuQuota` cgroup on the worker's request).

Two mechanisms:

* ``cgroup-v1`` / ``cgroup-v2``: a CPU quota (``quota`` cores, CFS period short
  enough that a query is throttled smoothly rather than in 100 ms bursts). The client
  process enters it just before ``OffloadClient.start``: the client measures its own
  whole model there and rescales its per-layer profile to that time, so it learns the
  device's speed only if throttled. Under a quota TensorFlow's tracing slows as much
  as inference (a 2 s whole-model trace takes 20-40 s), an artefact of emulating a
  phone with TensorFlow: the start-up trace costs wall time only (a run's clock starts
  after ``start``), but slices compiled during a run (when a new plan activates) and
  the client's upload planning delay the run itself. The slowdown the quota achieves
  is also measured on the compiled whole model (throttled median / unthrottled
  minimum) and recorded.
* ``slowdown-factor``: no throttling; the client stretches each local segment to
  ``factor`` x its measured time by sleeping (``ClientConfig.slowdown``) and scales
  its profile by ``factor``. The CPU is then free during the stretch (the server and
  the link emulation run faster than they would beside a throttled client).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from ionn_net.bench.scenario import DeviceConfig
from ionn_net.errors import ConfigError
from ionn_net.netem.base import NetemError
from ionn_net.netem.device import CpuQuota, plan_device

__all__ = ["DeviceSetting", "QuotaController", "resolve_device"]

_MIN_QUOTA_US = 1000


@dataclass(frozen=True, slots=True)
class DeviceSetting:
    """The emulation a run uses. ``factor`` is the configured slowdown (``1/quota``
    per core for a quota); the measured one is recorded per run."""

    kind: str
    quota: float | None
    period_us: int | None
    factor: float
    where: str
    note: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def command(self) -> dict[str, object]:
        """The ``device`` field of a worker ``run`` command."""
        if self.kind == "slowdown-factor":
            return {"kind": "slowdown", "factor": self.factor}
        return {"kind": "cgroup", "quota": self.quota}

    def describe(self, measured: float | None = None) -> str:
        if self.kind == "slowdown-factor":
            return (
                f"slowdown factor {self.factor:g} (client sleeps to stretch its local "
                f"segments; {self.note})"
            )
        got = "" if measured is None else f", measured slowdown {measured:.1f}x"
        return (
            f"{self.kind} CPU quota {self.quota:g} core (period {self.period_us} us) at "
            f"{self.where}{got}; the whole client runs under it from OffloadClient.start on"
        )


def _period_us(quota: float) -> int:
    # The shortest period the kernel accepts for this quota (>= 1 ms of quota), at
    # least 10 ms: a short period throttles evenly instead of in long pauses.
    return max(10_000, math.ceil(_MIN_QUOTA_US / quota))


def resolve_device(config: DeviceConfig, *, override: str | None = None) -> DeviceSetting:
    """What a scenario's ``[device]`` (or ``--device``) means on this machine."""
    mode = override or config.mode
    if mode not in ("auto", "cgroup", "slowdown"):
        raise ConfigError(f"device: expected 'auto', 'cgroup' or 'slowdown', got {mode!r}")
    if mode == "slowdown":
        return DeviceSetting("slowdown-factor", None, None, config.slowdown, "", "as configured")
    period = _period_us(config.quota)
    emu = plan_device(config.quota, period_us=period)
    if emu.kind == "slowdown-factor":
        if mode == "cgroup":
            raise ConfigError(f"device: a CPU quota was asked but none is usable ({emu.where})")
        return DeviceSetting(
            "slowdown-factor", None, None, config.slowdown, "", f"no CPU quota: {emu.where}"
        )
    return DeviceSetting(emu.kind, emu.quota, emu.period_us, emu.factor, emu.where, "")


class QuotaController:
    """Context manager: the group's cgroup; moves one process in and out on demand."""

    def __init__(self, setting: DeviceSetting) -> None:
        if setting.quota is None or setting.period_us is None:
            raise ConfigError("QuotaController: expected a cgroup device setting")
        self.setting = setting
        self._cg = CpuQuota(setting.quota, period_us=setting.period_us)
        self._home: dict[int, Path] = {}

    def __enter__(self) -> QuotaController:
        self._cg.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._cg.close()

    def move(self, pid: int, inside: bool) -> None:
        """Put ``pid`` (all its threads) into the quota, or back where it came from."""
        if self._cg.path is None:
            raise NetemError("QuotaController: the cgroup is not set up")
        if inside:
            self._home.setdefault(
                pid, _current_group(pid, Path(self.setting.where), self.setting.kind == "cgroup-v2")
            )
        target = self._cg.path if inside else self._home.get(pid, Path(self.setting.where))
        try:
            (target / "cgroup.procs").write_text(f"{pid}\n")
        except OSError as exc:
            raise NetemError(f"cannot move process {pid} to {target}: {exc}") from exc


def _current_group(pid: int, root: Path, v2: bool) -> Path:
    """The cgroup directory ``pid`` is in now, under the hierarchy mounted at ``root``
    (v1: the line naming the ``cpu`` controller; v2: the ``0::`` line)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError as exc:
        raise NetemError(f"cannot read the cgroup of process {pid}: {exc}") from exc
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if (controllers == "") if v2 else ("cpu" in controllers.split(",")):
            candidate = root / rel.lstrip("/")
            if (candidate / "cgroup.procs").exists():
                return candidate
    return root
