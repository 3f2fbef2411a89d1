"""ionn_net.offthread: work that must not starve the event loop runs at a lower priority."""

from __future__ import annotations

import os
import threading

from ionn_net.offthread import BACKGROUND_NICE, at_lower_priority


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def test_background_work_runs_nicer_than_the_event_loop() -> None:
    # The client's planner runs here: at the loop's priority it starved the upload's writer
    # (and a link emulator sharing the core), which the pacer took for a slower path.
    loop_niceness = _niceness()
    worker = await at_lower_priority(threading.get_native_id)
    assert worker != threading.get_native_id()
    expected = min(loop_niceness + BACKGROUND_NICE, 19)
    assert await at_lower_priority(_niceness) == expected
    assert _niceness() == loop_niceness  # (the loop's own thread is left as it was)
