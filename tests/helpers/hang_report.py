"""When an async test is about to hit pytest-timeout, print where each asyncio task waits.

pytest-timeout dumps thread stacks, and in a hung asyncio test those show only an idle event
loop: the await that never finishes lives in a coroutine, not on a thread's stack. This
fixture schedules, on the test's own loop, a report of every pending task's stack a few
seconds before the test's timeout, so that a hang seen once in CI names its await. It is
autouse wherever it is imported into a conftest; in a synchronous test its loop never runs,
so it never reports.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest

#: How long before the timeout the report is printed: enough for pytest-timeout not to kill
#: the process first, short enough that a slow but healthy test never prints it.
REPORT_BEFORE_TIMEOUT = 10.0


def timeout_of(request: pytest.FixtureRequest) -> float | None:
    marker = request.node.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    value = request.config.getoption("timeout", default=None)
    return float(value) if value else None


def report_tasks(name: str) -> None:
    print(f"\n=== {name}: asyncio tasks still pending near the timeout ===", file=sys.stderr)
    for task in asyncio.all_tasks():
        print(f"--- {task!r}", file=sys.stderr)
        task.print_stack(limit=40, file=sys.stderr)
    sys.stderr.flush()


@pytest.fixture(autouse=True)
async def hang_report(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    timeout = timeout_of(request)
    if timeout is None or timeout <= REPORT_BEFORE_TIMEOUT:
        yield
        return
    loop = asyncio.get_running_loop()
    handle = loop.call_later(timeout - REPORT_BEFORE_TIMEOUT, report_tasks, request.node.nodeid)
    try:
        yield
    finally:
        handle.cancel()
