"""Work in worker threads that the event loop waits for to the end, even when cancelled.

Owns :func:`to_thread_to_the_end`, used by the server for everything slow (hashing and
storing blobs, building layers, inference) and by the handoff service (§15),
:func:`lower_priority`, the initializer of threads whose work must yield to queries, and
:class:`BackgroundWork`, the client's threads for planning.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["BackgroundWork", "lower_priority", "to_thread_to_the_end"]

_T = TypeVar("_T")
#: How much nicer than the event loop the threads of :class:`BackgroundWork` run.
BACKGROUND_NICE = 10

logger = logging.getLogger("ionn_net.server")


async def to_thread_to_the_end(
    func: Callable[..., Any], *args: Any, pool: ThreadPoolExecutor | None = None
) -> Any:
    """``asyncio.to_thread`` (or ``pool``) that, when cancelled (a RESET, a vanished
    client, §14.3), waits for the thread to finish before re-raising: a thread cannot be
    stopped, so the locks and slots its caller holds (session queries, inference threads,
    the model lock) stay taken until the work has really stopped (Rapid Reset,
    MadeYouReset). Without this a client dropping connections mid-query could queue
    unbounded inference."""
    if pool is None:
        work = asyncio.ensure_future(asyncio.to_thread(func, *args))
    else:
        work = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(pool, func, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.wait({work})
        raise


def lower_priority(nice: int) -> None:
    """Initializer of a worker thread: raise its niceness (Linux: per thread), so that
    the scheduler runs query threads first. Best effort: where it is not allowed the
    thread keeps the server's priority."""
    if nice <= 0:
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + nice, 19))
    except (OSError, AttributeError) as exc:  # not Linux, or not permitted
        logger.debug("worker thread keeps its priority: %s", exc)


class BackgroundWork:
    """Threads at a lower priority than the event loop (niced by :data:`BACKGROUND_NICE`),
    for seconds of CPU that must not starve the loop's writes. The client's planner is such
    work (ResNet50: ~2 s); in a thread at the loop's priority it held the upload's writer,
    and on one core a link emulator, to 50 of 76 Mbit/s, which the pacer then took for the
    path's rate (ionn-bench over 80 Mbit/s Wi-Fi). Its owner closes it: :meth:`aclose`
    waits for the work in progress (a thread cannot be stopped, and a cancelled plan's
    would otherwise go on taking the CPU from whatever runs next)."""

    def __init__(self, threads: int = 2) -> None:
        # (two: a cancelled plan's thread runs to its end, and must not hold up the next)
        self._pool = ThreadPoolExecutor(
            max_workers=threads,
            thread_name_prefix="ionn-background",
            initializer=lower_priority,
            initargs=(BACKGROUND_NICE,),
        )

    async def run(self, func: Callable[..., _T], *args: Any) -> _T:
        """``func(*args)`` in one of the threads."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, func, *args)

    async def aclose(self) -> None:
        """Refuse new work, drop what has not started, and wait for what has."""
        await asyncio.to_thread(functools.partial(self._pool.shutdown, cancel_futures=True))
