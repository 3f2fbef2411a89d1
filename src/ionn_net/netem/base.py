"""Shared pieces of :mod:`ionn_net.netem`: its errors and input checks.

Everything here is small and dependency-free so that every netem module (and the
``python -m`` entry points that run inside network namespaces) can import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import socket
import struct
from collections.abc import Coroutine

from ionn_net.errors import ConfigError, IonnError

__all__ = [
    "BackendUnavailableError",
    "NetemError",
    "TaskSet",
    "abort_with_rst",
    "check_fraction",
    "check_nonneg",
    "check_positive",
    "is_root",
    "set_nodelay",
    "set_rcvbuf",
    "which",
]


class NetemError(IonnError):
    """An emulation step failed at run time (a command, a cgroup write, a socket)."""


class BackendUnavailableError(NetemError):
    """The requested emulation backend cannot run here; the message says why."""


def check_positive(name: str, value: float | None, *, allow_none: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number > 0."""
    if value is None and allow_none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{name}: expected a finite number > 0, got {value!r}")


def check_nonneg(name: str, value: float, *, upper: float | None = None) -> None:
    """Raise :class:`ConfigError` unless ``0 <= value (<= upper)`` and finite."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (upper is not None and value > upper)
    ):
        bound = f" and <= {upper}" if upper is not None else ""
        raise ConfigError(f"{name}: expected a finite number >= 0{bound}, got {value!r}")


def check_fraction(name: str, value: float) -> None:
    """Raise :class:`ConfigError` unless ``0 <= value < 1``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value < 1
    ):
        raise ConfigError(f"{name}: expected a probability in [0, 1), got {value!r}")


def is_root() -> bool:
    """True when the process runs with effective uid 0."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def which(cmd: str) -> str | None:
    """Path of ``cmd`` on PATH or in the sbin directories (often missing from PATH)."""
    found = shutil.which(cmd)
    if found is not None:
        return found
    extra = os.pathsep.join(("/usr/sbin", "/sbin", "/usr/local/sbin"))
    return shutil.which(cmd, path=extra)


class TaskSet:
    """Tasks spawned by a server callback; cancelled together on close.

    Servers here pass a plain function to :func:`asyncio.start_server` that spawns
    the handler through this set: cancelling a handler task that asyncio itself
    created makes Python 3.11 log a spurious traceback.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def set_nodelay(writer: asyncio.StreamWriter) -> None:
    """Disable Nagle on the writer's socket (an emulator must not add its own delay)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def set_rcvbuf(writer: asyncio.StreamWriter, nbytes: int) -> None:
    """Cap the kernel receive buffer (disables autotuning for this socket)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, nbytes)


def abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0): the peer's next read raises ECONNRESET."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
