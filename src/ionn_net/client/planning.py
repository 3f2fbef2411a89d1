"""Planning the upload while it already runs (see :mod:`ionn_net.client.session`).

Owns :func:`plan_upload`: the strategy plans in a low-priority thread while the *head
start* goes up (the model's first layers in order); past ``ClientConfig.plan_wait_s`` the
upload starts on a *quick plan* (``efficiency``'s, a tenth of a second of planning), so
that the server loads partitions and queries offload while the strategy still plans.
:class:`StrategyPlan` holds the strategy's plan until it is known; the session then lets
it replace the partitions not sent yet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ionn_net.client.plan_state import PlanState, with_completion
from ionn_net.offthread import BackgroundWork
from ionn_net.planner.upload import get_planner
from ionn_net.planner.workload import PlanningContext, UploadPlan

__all__ = ["QUICK_PLANNER", "MadePlan", "StrategyPlan", "plan_upload", "quick_plan"]

logger = logging.getLogger("ionn_net.client")

#: The strategy of the quick plan (see ClientConfig.plan_wait_s): of the published ones,
#: the one with the earliest first offload in ionn-bench (ResNet50 over Wi-Fi: 2.5-3.4 s).
QUICK_PLANNER = "efficiency"

Partitions = list[frozenset[str]]
Planned = tuple[UploadPlan, Partitions]


@dataclass(frozen=True, slots=True)
class MadePlan:
    """What :func:`plan_upload` started the upload on: ``plan`` and its ``partitions`` (the
    strategy's, or the quick plan's when ``quick`` names its strategy), and the layers
    whose blobs went up as the head start meanwhile."""

    plan: UploadPlan
    partitions: Partitions
    head_start: tuple[str, ...]
    quick: str | None


class StrategyPlan:
    """The strategy's plan while the upload runs on a quick one, and the plan cache's key
    it was made for. Nothing pending once taken or dropped."""

    def __init__(self) -> None:
        self._pending: tuple[asyncio.Future[Planned], object] | None = None

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def hand_over(self, planning: asyncio.Future[Planned], key: object) -> None:
        self.drop()
        self._pending = (planning, key)

    def drop(self) -> None:
        """Forget the plan (the upload it would change is over, or a new one starts)."""
        if self._pending is not None:
            self._pending[0].cancel()
            self._pending = None

    def take(self, planner: str) -> tuple[Planned, object] | None:
        """The plan and its key once known (None: not pending, not known yet, or it
        failed: then it is logged and forgotten, and the quick plan stays, a whole plan)."""
        if self._pending is None or not self._pending[0].done():
            return None
        planning, key = self._pending
        self._pending = None
        try:
            return planning.result(), key
        except Exception as exc:
            logger.warning("the %s plan failed (%s): keeping the quick plan", planner, exc)
            return None


def quick_plan(ctx: PlanningContext, never: frozenset[str]) -> Planned:
    """The quick plan the upload starts on while the strategy still plans."""
    found = get_planner(QUICK_PLANNER).plan(ctx)
    return found, with_completion(ctx, found.partitions, ctx.held, never)


async def plan_upload(
    state: PlanState,
    never: frozenset[str],
    planner: str,
    *,
    background: BackgroundWork,
    upload: Callable[[str], Awaitable[None]],
    head: Sequence[str],
    wait_s: float | None,
    pending: StrategyPlan,
    key: object,
    on_planned: Callable[[asyncio.Future[Planned]], None],
) -> MadePlan:
    """Plan with ``planner`` in ``background`` while ``upload`` sends ``head``; past
    ``wait_s`` seconds (None: never) start on the quick plan instead and hand the
    strategy's over to ``pending`` (exact uploads only: a precision-first plan orders
    stages as well). ``on_planned`` is called when the strategy's plan is known."""
    # the first blob's frames are written before the planner's thread takes the CPU
    first = asyncio.ensure_future(upload(head[0])) if head else None
    await asyncio.sleep(0)
    ctx = state.context()
    strategy = get_planner(planner)

    def plan() -> Planned:
        found = strategy.plan(ctx)
        return found, with_completion(ctx, found.partitions, ctx.held, never)

    planning = asyncio.ensure_future(background.run(plan))
    planning.add_done_callback(on_planned)
    if ctx.stages is not None:
        wait_s = None
    deadline = None if wait_s is None else time.monotonic() + wait_s
    sent: list[str] = []
    handed_over = False
    try:
        await _send_head_start(upload, head, first, planning, deadline=deadline, sent=sent)
        if planning.done() or deadline is None:
            found, partitions = await planning
            return MadePlan(found, partitions, tuple(sent), None)
        found, partitions = await asyncio.to_thread(quick_plan, ctx, never)
        pending.hand_over(planning, key)
        handed_over = True
        return MadePlan(found, partitions, tuple(sent), found.strategy)
    finally:
        if first is not None:
            first.cancel()  # only if the head start failed
        if not handed_over:
            planning.cancel()  # likewise (the thread runs to its end)


async def _send_head_start(
    upload: Callable[[str], Awaitable[None]],
    head: Sequence[str],
    first: asyncio.Future[None] | None,
    planning: asyncio.Future[Planned],
    *,
    deadline: float | None,
    sent: list[str],
) -> None:
    """Send ``head`` (its first layer ``first`` already going up) until the strategy's
    plan is known or ``deadline`` passed, then wait for the plan until ``deadline``;
    ``sent`` gets the layers whose blobs went up."""
    if first is not None:
        await first
        sent.append(head[0])
    end = float("inf") if deadline is None else deadline
    for name in head[1:]:
        if planning.done() or time.monotonic() >= end:
            return
        await upload(name)
        sent.append(name)
    if deadline is not None:
        await asyncio.wait({planning}, timeout=max(0.0, deadline - time.monotonic()))
