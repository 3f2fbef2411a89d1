"""ionn_net.offthread: work that must not starve the event loop runs at a lower priority."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from ionn_net.offthread import BACKGROUND_NICE, BackgroundWork


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def test_background_work_runs_nicer_than_the_event_loop() -> None:
    # The client's planner runs here: at the loop's priority it starved the upload's writer
    # (and a link emulator sharing the core), which the pacer took for a slower path.
    loop_niceness = _niceness()
    work = BackgroundWork()
    try:
        assert await work.run(threading.get_native_id) != threading.get_native_id()
        assert await work.run(_niceness) == min(loop_niceness + BACKGROUND_NICE, 19)
        assert _niceness() == loop_niceness  # (the loop's own thread is left as it was)
    finally:
        await work.aclose()


async def test_closing_waits_for_the_work_in_progress_and_refuses_more() -> None:
    # A thread cannot be stopped: a plan cancelled with its client would otherwise go on
    # taking the CPU from whatever runs next (the next test, the next client).
    work = BackgroundWork()
    done: list[float] = []
    started = threading.Event()

    def slow() -> None:
        started.set()
        time.sleep(0.3)
        done.append(time.monotonic())

    running = work.run(slow)
    task = asyncio.ensure_future(running)
    while not started.is_set():
        await asyncio.sleep(0.01)
    task.cancel()
    await work.aclose()
    assert done, "aclose returned before the work in progress ended"
    with pytest.raises(RuntimeError):
        await work.run(_niceness)
