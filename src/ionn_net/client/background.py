"""What the upload session does beside sending bytes, so that the link never waits.

Owns :class:`Activations` (compile and switch to the plan of each load in the background,
newest first), :func:`held_first` (what the server can load before anything is planned),
:func:`head_start_layers` (what goes up while the client still plans) and
:func:`load_in_order` (loads that never hold the upload back).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping

from ionn_net.aio import AioConnection
from ionn_net.client.mobility import Mobility
from ionn_net.client.plan_state import PlanState
from ionn_net.model.graph import LayerGraph
from ionn_net.planner.execution import ExecutionPlan

__all__ = ["Activations", "head_start_layers", "held_first", "load_in_order"]

logger = logging.getLogger("ionn_net.client")

#: Loads the union of some partitions on the server; the int is how many partitions.
LoadParts = Callable[[frozenset[str], int], Awaitable[None]]

#: Compiles the client side of a plan for the ready layers, then switches queries to it.
Activate = Callable[[frozenset[str], ExecutionPlan], Awaitable[None]]


class Activations:
    """Plans activated after loads, compiled in the background: the next load goes to the
    server meanwhile (the server loads while the client compiles, as the planner's
    simulator assumes); if several loads finish during one compile, only the newest plan
    is compiled next. ``records`` holds (compile started, plan switched) per activation."""

    def __init__(self, activate: Activate) -> None:
        self._activate = activate
        self._newest: tuple[frozenset[str], ExecutionPlan] | None = None
        self._task: asyncio.Task[None] | None = None
        self.records: list[tuple[float, float]] = []

    def submit(self, ready: frozenset[str], plan: ExecutionPlan) -> None:
        self._newest = (ready, plan)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._newest is not None:
            (ready, plan), self._newest = self._newest, None
            started = time.monotonic()
            await self._activate(ready, plan)
            self.records.append((started, time.monotonic()))
            logger.info("client compile %.2f s", self.records[-1][1] - started)

    async def wait(self) -> None:
        """Until every submitted plan is active (an activation's error is raised here)."""
        if self._task is not None:
            await self._task

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


async def held_first(
    conn: AioConnection,
    state: PlanState,
    layer_blob: Mapping[str, tuple[str | None, int]],
    never: Collection[str],
    mobility: Mobility | None,
) -> list[frozenset[str]]:
    """What a session loads before it plans, in this order: the layers whose blobs the
    server holds publicly (§10.3.3: a head on a catalog backbone) or, right after a move,
    fetched from the previous server (§15.4, :meth:`Mobility.fetch_held_before`), cut
    into the pieces of the plan made there (:meth:`Mobility.load_pieces`)."""
    moved = mobility is not None and await mobility.fetch_held_before(conn)
    if not (state.public_blobs or moved):
        return []
    held = state.loadable_now(layer_blob, never)
    if not held:
        return []
    logger.info("the server holds %d layers' blobs: loading them first", len(held))
    return mobility.load_pieces(held) if mobility is not None and moved else [held]


def head_start_layers(
    graph: LayerGraph,
    layer_blob: Mapping[str, tuple[str | None, int]],
    *,
    held_blobs: Collection[str],
    never: Collection[str],
    max_bytes: float,
) -> list[str]:
    """The layers sent while the client plans: the model's first layers in topological
    order (those without weights skipped: nothing to send), up to the first whose blob is
    over ``max_bytes`` or that the server must never run (``never``, inputs aside)."""
    out: list[str] = []
    for name in graph.order:
        if name in never:
            if name in graph.inputs:
                continue
            break
        digest, size = layer_blob[name]
        if digest is None or digest in held_blobs:
            continue
        if size > max_bytes:
            break
        out.append(name)
    return out


async def load_in_order(loads: asyncio.Queue[frozenset[str] | None], load: LoadParts) -> None:
    """Load the partitions queued by the upload, in order, until ``None``: when the loader
    fell behind (a slow load), every partition waiting is loaded at once, as one load."""
    finished = False
    while not finished:
        batch = [await loads.get()]
        while not loads.empty():
            batch.append(loads.get_nowait())
        finished = batch[-1] is None
        parts = [p for p in batch if p is not None]
        if parts:
            await load(frozenset().union(*parts), len(parts))
