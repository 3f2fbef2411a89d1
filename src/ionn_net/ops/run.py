"""One ``ionn-server`` process: start, serve, and drain on SIGTERM.

:func:`serve_process` is the whole life of a single-process server:

1. the metrics and health port opens first (when asked for), so that an orchestrator sees
   the process live, and not ready, while TensorFlow warms up;
2. the :class:`~ionn_net.server.EdgeServer` starts (cost model, warm-up, store opened),
   then listens; readiness turns 200;
3. on SIGTERM or SIGINT the server drains (:meth:`EdgeServer.drain`, protocol.md §13.3):
   readiness turns 503 at once, the listener closes, every connection gets GOAWAY,
   queries and blob pieces already accepted finish until ``--drain-timeout``, what is
   left is aborted; then the process exits with status 0.

The stdout lines ``ionn-server metrics on HOST:PORT`` (first, when there is a metrics
port) and ``ionn-server listening on HOST:PORT`` are the interface of scripts that start
it with port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from ionn_net.ops.hooks import ServerHooks

if TYPE_CHECKING:
    from ionn_net.server import EdgeServer

__all__ = ["OpsOptions", "serve_process", "start_or_stop", "stop_event"]


@dataclass(frozen=True, slots=True)
class OpsOptions:
    """The operator's flags of ``ionn-server``."""

    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    drain_timeout_s: float = 20.0


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (the handlers are installed on this loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def start_or_stop(server: EdgeServer, stop: asyncio.Event) -> bool:
    """Start ``server`` unless ``stop`` comes first (then close it); True if started."""
    starting = asyncio.ensure_future(server.start())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if starting.done():
        starting.result()  # a failed start raises here
        return True
    starting.cancel()  # the warm-up thread finishes on its own; nothing was accepted
    with contextlib.suppress(BaseException):
        await starting
    await server.close()
    return False


async def serve_process(
    make: Callable[[ServerHooks], EdgeServer], ops: OpsOptions, out: TextIO
) -> int:
    """Run one server process until SIGTERM/SIGINT, then drain; the exit status."""
    stop = stop_event()
    metrics = None
    if ops.metrics_port is not None:
        from prometheus_client import disable_created_metrics

        from ionn_net.ops.metrics import ServerMetrics

        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
        metrics = ServerMetrics()
    hooks = ServerHooks(metrics)
    server = make(hooks)
    started = False

    def ready() -> tuple[bool, str]:
        if server.draining:
            return False, "draining"
        return (True, "") if started else (False, "starting")

    endpoint = None
    if metrics is not None and ops.metrics_port is not None:
        from ionn_net.ops.http import OpsEndpoint

        endpoint = OpsEndpoint(
            metrics.registry, ready, refresh=lambda: hooks.sample(server.gauges())
        )
        await endpoint.start(ops.metrics_host, ops.metrics_port)
        _say(out, f"ionn-server metrics on {ops.metrics_host}:{endpoint.port}")
    try:
        if not await start_or_stop(server, stop):
            return 0
        started = True
        _say(out, f"ionn-server listening on {server.host}:{server.port}")
        await stop.wait()
        await server.drain(ops.drain_timeout_s)
    finally:
        if endpoint is not None:
            await endpoint.close()
    return 0


def _say(out: TextIO, line: str) -> None:
    out.write(line + "\n")
    out.flush()
