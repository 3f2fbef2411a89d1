"""Run an :class:`ionn_net.server.EdgeServer` on loopback in a background thread.

For tests that drive the server with a blocking client (the reference peer): the server gets
its own event loop in a daemon thread, a fixed neutral cost model (no calibration run) and an
in-memory store (or ``store``); everything is stopped and joined on exit. :func:`call` runs
a coroutine of the server (e.g. ``server.drain(1.0)``) on its loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

_LOOPS: dict[int, asyncio.AbstractEventLoop] = {}


def call(server: Any, coro: Callable[[], Coroutine[Any, Any, Any]], timeout: float = 60.0) -> Any:
    """Run ``coro()`` on the loop of a server from :func:`running_server`; its result."""
    return asyncio.run_coroutine_threadsafe(coro(), _LOOPS[id(server)]).result(timeout)


@contextmanager
def running_server(
    config: Any = None, timeout: float = 60.0, port: int = 0, **options: Any
) -> Iterator[Any]:
    """Yield a started EdgeServer (``.port`` is bound on 127.0.0.1; ``port`` 0: any free
    one); ``options`` go to its constructor (e.g. ``store``, ``catalog``).

    The first start in a process imports TensorFlow: on a loaded 2-core machine that took
    more than the former 20 s budget when a conformance test was the first to start one."""
    from ionn_net.planner.costmodel import ServerCostModel
    from ionn_net.server import EdgeServer

    loop = asyncio.new_event_loop()
    server = EdgeServer("127.0.0.1", port, config=config, cost_model=ServerCostModel(), **options)
    _LOOPS[id(server)] = loop
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as exc:  # reported to the test thread
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="edge-server", daemon=True)
    thread.start()
    try:
        if not ready.wait(timeout):
            raise TimeoutError("the edge server did not start")
        if failure:
            raise failure[0]
        yield server
    finally:
        if not failure and loop.is_running():
            asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not loop.is_running():
            loop.close()
        _LOOPS.pop(id(server), None)
