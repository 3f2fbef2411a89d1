"""CPU isolation of the benchmark's processes: the edge server on its own core(s).

Owns :class:`Isolation` and :func:`resolve_isolation`. A deployment runs the edge server on
its own machine and the client on the device, so on this host the two must not take CPU
from each other. In ``cores`` mode (the default) the server process is pinned to the
upper half of the CPUs this process may use, and everything else the benchmark starts
(the client worker, the link emulation's delay lines and proxy, the orchestration) to the
lower half. The server's cost model is calibrated inside the server process, so it is
measured pinned too; its cache is kept per mode (:meth:`Isolation.cache_dir`). ``shared``
leaves every process free to run on every CPU (how the earlier tables were measured).

Affinity is inherited by threads created later and by child processes, so the runner pins
its own threads (:meth:`Isolation.pin_self`) before it starts the link and its children,
and each server child pins itself right after ``fork`` (:meth:`Isolation.server_preexec`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ionn_net.errors import ConfigError

__all__ = ["ISOLATION_MODES", "Isolation", "resolve_isolation"]

ISOLATION_MODES = ("cores", "shared")


def _allowed_cpus() -> tuple[int, ...]:
    getter = getattr(os, "sched_getaffinity", None)
    if getter is None:
        return tuple(range(os.cpu_count() or 1))
    return tuple(sorted(getter(0)))


@dataclass(frozen=True, slots=True)
class Isolation:
    """Which CPUs the server and the client side run on (empty: unrestricted)."""

    mode: str
    server_cpus: tuple[int, ...] = ()
    client_cpus: tuple[int, ...] = ()

    @property
    def pinned(self) -> bool:
        return self.mode == "cores"

    def describe(self) -> str:
        if not self.pinned:
            return "shared: server, client and link emulation share every CPU"
        return (
            f"cores: edge server on CPU {_cpus(self.server_cpus)}, client, link emulation "
            f"and orchestration on CPU {_cpus(self.client_cpus)}"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "server_cpus": list(self.server_cpus),
            "client_cpus": list(self.client_cpus),
            "describe": self.describe(),
        }

    def cache_dir(self, base: Path) -> Path:
        """Where the server's calibrated cost model is cached: it depends on how many
        CPUs the server may use, so each mode has its own."""
        return base if not self.pinned else base / f"server-cpus{len(self.server_cpus)}"

    def server_preexec(self) -> Callable[[], None] | None:
        """Run in the server child after ``fork``: pin it (None when unpinned)."""
        if not self.pinned:
            return None
        cpus = set(self.server_cpus)
        return lambda: os.sched_setaffinity(0, cpus)

    @contextlib.contextmanager
    def pin_self(self) -> Iterator[None]:
        """Pin every thread of this process to the client CPUs meanwhile (so that the
        link emulation and the client worker it starts inherit them); restore after."""
        if not self.pinned:
            yield
            return
        before = _thread_affinities()
        try:
            for tid in before:
                with contextlib.suppress(OSError):  # a thread that ended meanwhile
                    os.sched_setaffinity(tid, set(self.client_cpus))
            yield
        finally:
            for tid, cpus in before.items():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(tid, cpus)
            with contextlib.suppress(OSError):  # threads started meanwhile: main's set
                main = before.get(os.getpid())
                if main is not None:
                    for tid in _thread_affinities():
                        if tid not in before:
                            os.sched_setaffinity(tid, main)


def _thread_affinities() -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for entry in Path(f"/proc/{os.getpid()}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            tid = int(entry.name)
            out[tid] = set(os.sched_getaffinity(tid))
    return out


def _cpus(cpus: tuple[int, ...]) -> str:
    return ",".join(str(c) for c in cpus)


def resolve_isolation(mode: str) -> Isolation:
    """The isolation for ``mode`` on this machine; ``cores`` needs two CPUs and Linux."""
    if mode not in ISOLATION_MODES:
        raise ConfigError(f"isolation: expected one of {', '.join(ISOLATION_MODES)}, got {mode!r}")
    if mode == "shared":
        return Isolation("shared")
    cpus = _allowed_cpus()
    if len(cpus) < 2 or not hasattr(os, "sched_setaffinity"):
        raise ConfigError(
            f"isolation cores: expected at least 2 CPUs with sched_setaffinity, this process "
            f"may use {len(cpus)}; use --isolation shared"
        )
    half = len(cpus) // 2
    return Isolation("cores", server_cpus=cpus[half:], client_cpus=cpus[:half])
