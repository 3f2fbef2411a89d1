"""The server's timings of the client's model (protocol.md §10.11), fetched for the
upload session: :func:`fetch_timings` asks once, :func:`follow_timings` long-polls until
the server is done, adopting each answer into the
:class:`~ionn_net.client.plan_state.PlanState` (which re-plans the rest of the upload and
the active plan when the times changed).

Everything the server says is untrusted (§10.11.2): the body keeps only entries naming
this model's layers with a finite time in [0, 1e5] ms (the rest fall back to the cost
model), a malformed answer is ignored, and a server without ``timings``
(``unknown_message``) leaves the client planning with the cost model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from ionn_net.aio import AioConnection
from ionn_net.client.plan_state import PlanState
from ionn_net.client.types import ClientConfig
from ionn_net.errors import IonnError
from ionn_net.messages import (
    CONTROL_URGENCY,
    MemberError,
    RemoteError,
    Timings,
    TimingsOk,
    TimingTable,
    UnexpectedReply,
    parse_reply,
)
from ionn_net.planner.execution import ExecutionPlan

__all__ = ["TimingsFollower", "fetch_timings", "follow_timings"]

#: How the session switches queries to a plan: ``activate(ready, plan)``.
Activate = Callable[[frozenset[str], ExecutionPlan], Awaitable[None]]

logger = logging.getLogger("ionn_net.client")

#: How long one long poll asks the server to wait (§10.11 ``wait_ms``) ...
WAIT_MS = 20_000
#: ... and how many polls at most before giving up on a server that never finishes.
MAX_POLLS = 60


async def fetch_timings(
    conn: AioConnection, state: PlanState, model: str, *, wait_ms: int, limit: int
) -> tuple[bool, int] | None:
    """Ask for the server's timings of ``model`` once and adopt the valid ones. Returns
    whether the server is done and how many layers changed their time, or None when it
    does not implement ``timings`` or answered something malformed (the client then
    keeps the cost model)."""
    ask = Timings(model=model, wait_ms=wait_ms)
    head, body = await conn.request(ask.to_head(), b"", limit=limit, urgency=CONTROL_URGENCY)
    try:
        reply = parse_reply(head, TimingsOk)
        if reply.model != model:
            raise MemberError("model", model, reply.model)
        graph = state.graph
        table = TimingTable.decode(body, [n for n in graph.order if graph[n].inbound])
    except RemoteError as exc:
        if exc.code != "unknown_message":
            logger.info("the server refused timings (%s): keeping the cost model", exc)
        return None
    except (MemberError, UnexpectedReply) as exc:
        logger.warning("ignoring malformed timings from the server (%s)", exc)
        return None
    if table.rejected:
        logger.warning(
            "ignored %d invalid timing entries from the server (§10.11.2)", table.rejected
        )
    # every other layer keeps its time from the cost model (§10.11.2)
    changed = state.timings.adopt_timings(table, done=reply.done)
    if changed:  # what queries taught about the server's speed was learned against the old
        state.learned.reset_scale()
    logger.info(
        "server timings: %d layers measured, %d predicted, %d changed%s",
        len(table.measured),
        len(table.predicted),
        changed,
        " (done)" if reply.done else "",
    )
    return reply.done, changed


async def follow_timings(
    conn: AioConnection,
    state: PlanState,
    model: str,
    *,
    limit: int,
    on_change: Callable[[], Awaitable[None]],
) -> None:
    """Long-poll until the server is done timing ``model`` (at most :data:`MAX_POLLS`
    times); after each answer that changed a layer's time, ``on_change`` (re-plan)."""
    for _ in range(MAX_POLLS):
        if state.timings.done or conn.closed:
            return
        found = await fetch_timings(conn, state, model, wait_ms=WAIT_MS, limit=limit)
        if found is None:
            return
        if found[1]:
            await on_change()


class TimingsFollower:
    """The session's side of §10.11 for one model: :meth:`fetch` once per connection
    before planning, then :meth:`following` while the server measures; when the times
    changed, the best plan for what the server holds may have too: ``activate`` switches
    to it (the rest of the upload is re-planned at the next partition, ``replan_due``).
    A server without ``timings`` is not asked again."""

    def __init__(
        self, state: PlanState, model: str, config: ClientConfig, activate: Activate
    ) -> None:
        self._state = state
        self._model = model
        self._limit = config.limits.max_message_size
        self._activate = activate
        #: the server answers ``timings`` (unknown until the first connect)
        self.supported = True

    async def fetch(self, conn: AioConnection) -> None:
        if self.supported:
            found = await fetch_timings(
                conn, self._state, self._model, wait_ms=0, limit=self._limit
            )
            self.supported = found is not None

    @contextlib.asynccontextmanager
    async def following(self, conn: AioConnection | None) -> AsyncIterator[None]:
        """Long-poll the server's timings on ``conn`` in a task for the body's duration."""
        task = None
        if conn is not None and self.supported and not self._state.timings.done:
            task = asyncio.create_task(self._follow(conn), name="ionn-client-timings")
        try:
            yield
        finally:
            if task is not None:
                task.cancel()

    async def _follow(self, conn: AioConnection) -> None:
        try:
            await follow_timings(
                conn, self._state, self._model, limit=self._limit, on_change=self._changed
            )
        except (OSError, IonnError) as exc:  # the session's loop sees the connection go
            logger.debug("following the server's timings stopped: %s", exc)

    async def _changed(self) -> None:
        state = self._state
        if state.ready:
            plan = state.best_plan(state.ready, held=state.ready)
            if plan.server_layers != state.active.plan.server_layers:
                logger.info("server timings changed the plan: re-planning")
                await self._activate(state.ready, plan)
