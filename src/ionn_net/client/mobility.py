"""The client's side of a handoff between edge servers (protocol.md §15).

Owns :class:`Mobility` and its options (:class:`HandoffOptions`), and :class:`PlanCache` (the
upload plans a session made, reused at a server the client moved to). It keeps:

* a grant from each server the client connected to (§15.2), asked for right after the
  manifest and renewed before it expires, so that the client holds one from the server it
  leaves even when it can no longer reach it;
* which server the client moved from, once it moved (:meth:`Mobility.moved`), and what it
  held there: the upload session asks the new server to fetch all of that first
  (:meth:`Mobility.fetch_held_before`, §15.4) and loads it before planning, and before it
  sends a partition's blobs it asks for them too (:meth:`Mobility.fetch`); what did not
  arrive is uploaded as always;
* the candidate next servers, if the application named any: while the client is on a
  server, :meth:`Mobility.run` asks it to push what it holds to them (§15.5), most useful
  first: in the order the upload planner would send the model to a server that holds
  nothing, which ranks partitions by their benefit per byte.

Everything it learns from a server goes into the :class:`~ionn_net.client.plan_state.PlanState`
through its methods (blobs held, partial offsets): plans at the new server are made from what
that server reports, never from the previous one's state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial

from ionn_net.aio import AioConnection
from ionn_net.client.plan_state import PlanState, with_completion
from ionn_net.client.prepare import PreparedModel
from ionn_net.errors import ConfigError, IonnError
from ionn_net.messages import (
    CONTROL_URGENCY,
    MAX_PREPARE_SETS,
    Fetch,
    FetchOk,
    Grant,
    GrantOk,
    Push,
    PushOk,
    RemoteError,
    parse_reply,
)
from ionn_net.offthread import BackgroundWork
from ionn_net.planner.upload import UploadPlan, get_planner

__all__ = ["HandoffOptions", "Mobility", "PlanCache", "server_name"]

logger = logging.getLogger("ionn_net.client")

#: A grant is renewed once less than this fraction of its life is left.
_RENEW_AT = 0.5
#: Source errors after which the client keeps fetching from the same server (transient).
_TRANSIENT = frozenset({"busy", "deadline_exceeded"})


def server_name(host: str, port: int) -> str:
    """A server as the client names it to other servers: ``"host:port"`` (§15.1)."""
    if type(port) is not int or not 1 <= port <= 65535:
        raise ConfigError(f"port: expected 1..65535, got {port!r}")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class HandoffOptions:
    """What the client does about handoff. ``fetch``: ask a new server to fetch from the
    previous one (needs a grant, so grants are asked for); ``grant_ttl_s``: the life asked
    for (the server may shorten it); ``fetch_timeout_s`` and ``push_timeout_s``: how long
    one fetch or push may take; ``push_every_s``: how often pre-migration looks for newly
    held blobs to push."""

    fetch: bool = True
    grant_ttl_s: int = 600
    fetch_timeout_s: float = 30.0
    push_timeout_s: float = 120.0
    push_every_s: float = 0.25

    def __post_init__(self) -> None:
        if type(self.grant_ttl_s) is not int or not 1 <= self.grant_ttl_s <= 86400:
            raise ConfigError(f"grant_ttl_s: expected 1..86400, got {self.grant_ttl_s!r}")
        for name in ("fetch_timeout_s", "push_timeout_s", "push_every_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value < 1e6:
                raise ConfigError(f"{name}: expected seconds > 0, got {value!r}")


class PlanCache:
    """Upload plans (and their partitions) by what they were planned from: the cost model,
    the layers ready and the layers never sent. At a server the client moved to, the same
    inputs give the same plan, and planning again would delay the first partition by the
    planner's time (seconds for ``ours``)."""

    def __init__(self, kept: int = 4) -> None:
        self._kept = kept
        self._plans: dict[object, tuple[UploadPlan, list[frozenset[str]]]] = {}

    @staticmethod
    def key(cost_model_id: object, ready: frozenset[str], never: frozenset[str]) -> object:
        """What a plan was made from: the server's cost model, the layers ready there and
        the layers never sent."""
        return (cost_model_id, ready, never)

    def get(self, key: object) -> tuple[UploadPlan, list[frozenset[str]]] | None:
        return self._plans.get(key)

    def put(self, key: object, plan: tuple[UploadPlan, list[frozenset[str]]]) -> None:
        if key not in self._plans and len(self._plans) >= self._kept:
            self._plans.pop(next(iter(self._plans)))  # the oldest goes
        self._plans[key] = plan


@dataclass(frozen=True, slots=True)
class _HeldGrant:
    token: str
    renew_at: float
    expires: float


class Mobility:
    """Grants, fetches and pre-migration of one client (see the module docstring).
    ``stats`` gains ``fetched_blobs``, ``pushed_blobs`` and ``moves``."""

    def __init__(
        self,
        *,
        prepared: PreparedModel,
        state: PlanState,
        options: HandoffOptions,
        planner: str,
        current: str,
        candidates: Sequence[str],
        stats: dict[str, int],
        background: BackgroundWork,
    ) -> None:
        self._prepared = prepared
        self._background = background  # planning's threads (the client closes them)
        self._state = state
        self._options = options
        self._planner = planner
        self._current = current
        self._candidates = list(dict.fromkeys(candidates))
        self._stats = stats
        self._grants: dict[str, _HeldGrant] = {}
        self._previous: str | None = None
        self._source_failed = False
        self._pushed: dict[str, set[str]] = {}
        self._push_failed_at: dict[str, float] = {}
        self._order: tuple[str, ...] | None = None
        #: the upload plans of this client's sessions, shared with them (see push_order)
        self.plans = PlanCache()
        self._no_grant: set[str] = set()
        #: blobs the previous server does not hold (it said so): not asked for again
        self._not_at_source: set[str] = set()
        #: blobs the server the client left held for it, until the new one is asked for them,
        #: and the partitions of the upload plan made there (see load_pieces)
        self._held_at_previous: frozenset[str] = frozenset()
        self._previous_partitions: tuple[frozenset[str], ...] = ()
        for key in ("fetched_blobs", "pushed_blobs", "moves"):
            stats.setdefault(key, 0)

    @property
    def current(self) -> str:
        """The server the client uses now (``"host:port"``)."""
        return self._current

    @property
    def previous(self) -> str | None:
        """The server the client moved from, while it may still fetch from it."""
        return self._previous

    @property
    def candidates(self) -> tuple[str, ...]:
        return tuple(self._candidates)

    def set_candidates(self, candidates: Sequence[str]) -> None:
        """The servers the client may move to next (pre-migration targets, §15.5)."""
        self._candidates = list(dict.fromkeys(candidates))

    def holds_grant(self, server: str) -> bool:
        """A grant from ``server`` is held and has not expired (§15.2)."""
        held = self._grants.get(server)
        return held is not None and time.monotonic() < held.expires

    def pushed_to(self, target: str) -> frozenset[str]:
        """Blobs the current server has pushed to ``target`` for this client."""
        return frozenset(self._pushed.get(target, ()))

    def moved(self, new: str) -> None:
        """The client leaves its current server for ``new``: fetches come from the one it
        leaves, if it holds a grant from it."""
        if new == self._current:
            return
        self._previous = self._current if self._current in self._grants else None
        self._held_at_previous = self._state.held_blobs if self._previous else frozenset()
        self._previous_partitions = self._state.partitions
        self._current = new
        self._source_failed = False
        self._not_at_source.clear()
        self._pushed.clear()
        self._stats["moves"] += 1

    # -- §15.2 grants --------------------------------------------------------------------

    async def ensure_grant(self, conn: AioConnection) -> None:
        """Hold a grant from the current server: ask for one when there is none or more
        than half of its life has passed. A server that does not know ``grant`` answers
        ``unknown_message``; the client then does without (and asks again later)."""
        held = self._grants.get(self._current)
        due = held is None or time.monotonic() >= held.renew_at
        if self._options.fetch and due and self._current not in self._no_grant:
            await self._ask_grant(conn)

    async def _ask_grant(self, conn: AioConnection) -> None:
        grant = Grant(model=self._prepared.model_digest, ttl_s=self._options.grant_ttl_s)
        try:
            head, _ = await asyncio.wait_for(
                conn.request(grant.to_head(), urgency=CONTROL_URGENCY), 10.0
            )
            ok = parse_reply(head, GrantOk)
        except RemoteError as exc:
            logger.info("%s gives no grant (%s): no fetch from it after a move", self._current, exc)
            self._no_grant.add(self._current)
            return
        now = time.monotonic()
        self._grants[self._current] = _HeldGrant(
            ok.grant, now + ok.ttl_s * _RENEW_AT, now + ok.ttl_s
        )

    # -- §15.4 fetch ---------------------------------------------------------------------

    def _source(self) -> tuple[str, _HeldGrant] | None:
        previous = self._previous
        if previous is None or self._source_failed or not self._options.fetch:
            return None
        held = self._grants.get(previous)
        if held is None or time.monotonic() >= held.expires:
            return None
        return previous, held

    async def fetch_held_before(self, conn: AioConnection) -> bool:
        """Right after a move, before anything is planned there: ask the new server to
        fetch every blob the previous one held for this client, in layer order (once per
        move). The backhaul brings them in a fraction of the time the client's link would,
        and the session loads them before it plans the rest, so the first offload waits
        neither for the planner nor for the layers the plan's first partition still lacked
        (§15.4.4: what arrived is what the new server reports). Whether any arrived."""
        wanted, self._held_at_previous = self._held_at_previous, frozenset()
        if not wanted:
            return False
        before = len(self._state.held_blobs)
        order = self._blob_order([frozenset(self._prepared.graph.order)])
        await self.fetch(conn, [d for d in order if d in wanted])
        return len(self._state.held_blobs) > before

    def load_pieces(self, layers: frozenset[str]) -> list[frozenset[str]]:
        """``layers`` (loadable at the new server after :meth:`fetch_held_before`) in the
        loads that serve soonest: first the fewest partitions of the plan made at the
        previous server, in its order (most useful first), with which offloading pays,
        as one load; then its other partitions one by one, then whatever no partition
        held. Loaded whole, a model's worth of layers kept every query local until all
        were built (2.2-2.5 s for MobileNetV2's 149 at the new server of the handoff
        bench); loaded partition by partition, each load compiled plans that did not yet
        offload (five loads before ResNet50's first offloading plan there)."""
        pieces, left = [], set(layers)
        for part in self._previous_partitions:
            if piece := frozenset(part & left):
                pieces.append(piece)
                left -= piece
        if left:
            pieces.append(frozenset(left))
        ready, first = self._state.usable, frozenset[str]()
        for count, piece in enumerate(pieces, 1):
            first |= piece
            if self._state.best_plan(ready | first, held=ready | first).offloads:
                return [first, *pieces[count:]]
        return [first] if first else []

    async def fetch_layers(self, conn: AioConnection, layers: Collection[str]) -> None:
        """:meth:`fetch` the blobs of ``layers``, in layer order."""
        prepared = self._prepared
        names = sorted(layers, key=prepared.graph.position)
        digests = (prepared.layer_blob[n][0] for n in names)
        await self.fetch(conn, list(dict.fromkeys(d for d in digests if d is not None)))

    async def fetch(self, conn: AioConnection, digests: Sequence[str]) -> None:
        """Ask the current server to fetch ``digests`` from the previous one (in this
        order); what it then holds is recorded in the plan state. Nothing happens without
        a previous server and a live grant from it."""
        source = self._source()
        state = self._state  # blobs the server holds publicly need no fetch either
        wanted = [d for d in digests if state.needs_upload(d) and d not in self._not_at_source]
        if source is None or not wanted:
            return
        name, held = source
        timeout = self._options.fetch_timeout_s
        fetch = Fetch(
            model=self._prepared.model_digest,
            source=name,
            grant=held.token,
            blobs=tuple(wanted),
            deadline_ms=int(timeout * 1000),
        )
        try:
            head, _ = await asyncio.wait_for(
                conn.request(fetch.to_head(), urgency=CONTROL_URGENCY), timeout + 5.0
            )
            ok = parse_reply(head, FetchOk)
        except RemoteError as exc:  # e.g. unknown_peer: this server cannot fetch from there
            logger.info("fetch from %s refused (%s): uploading instead", name, exc)
            self._source_failed = True
            return
        self._adopt(ok)
        if ok.source_error is not None and ok.source_error not in _TRANSIENT:
            logger.info("fetch from %s failed (%s): uploading instead", name, ok.source_error)
            self._source_failed = True

    def _adopt(self, ok: FetchOk) -> None:
        state = self._state
        held = set(ok.holdings.blobs_held)
        for digest in ok.fetched:
            if digest in held and digest not in state.held_blobs:
                state.record_held(digest)
                self._stats["fetched_blobs"] += 1
        for digest, offset in ok.holdings.partial.items():
            if digest not in held:
                state.record_piece(digest, offset)
        for digest, code in ok.failed.items():
            if code in ("unknown_blob", "out_of_scope"):  # not there: upload it
                self._not_at_source.add(digest)

    # -- §15.5 pre-migration -------------------------------------------------------------

    async def run(self, connection: Callable[[], AioConnection | None]) -> None:
        """Until cancelled: hold a grant from the current server (asked for a moment after
        connecting, renewed at half its life) and push newly held blobs to each candidate,
        one push at a time. ``connection`` returns the upload session's
        connection (None or closed while it has none)."""
        every = self._options.push_every_s
        task = asyncio.current_task()
        while True:
            await asyncio.sleep(every)
            if task is not None and task.cancelling():
                # A cancel that asyncio.wait_for swallowed (CPython 3.11: the request it
                # waited on ended at the same moment): the loop went on and close() hung.
                raise asyncio.CancelledError
            conn = connection()
            if conn is None or conn.closed:
                continue
            try:
                await self.ensure_grant(conn)
                for target in [c for c in self._candidates if c != self._current]:
                    await self._push_to(conn, target)
            except (OSError, TimeoutError, IonnError) as exc:  # the session loop reconnects
                logger.debug("pre-migration paused: %s", exc)

    async def _push_to(self, conn: AioConnection, target: str) -> None:
        failed_at = self._push_failed_at.get(target)
        if failed_at is not None and time.monotonic() - failed_at < 10.0:
            return
        held = self._state.held_blobs
        done = self._pushed.setdefault(target, set())
        todo = [d for d in await self.push_order() if d in held and d not in done]
        if not todo:
            return
        timeout = self._options.push_timeout_s
        push = Push(
            model=self._prepared.model_digest,
            target=target,
            blobs=tuple(todo),
            deadline_ms=int(timeout * 1000),
            prepare=await self._runs_with(done | set(todo)),
        )
        try:
            head, _ = await asyncio.wait_for(
                conn.request(push.to_head(), urgency=CONTROL_URGENCY), timeout + 5.0
            )
            ok = parse_reply(head, PushOk)
        except RemoteError as exc:
            logger.info("push to %s refused: %s", target, exc)
            self._push_failed_at[target] = time.monotonic()
            return
        done.update(ok.pushed)
        self._stats["pushed_blobs"] += len(ok.pushed)
        if ok.target_error is not None:
            logger.info("push to %s stopped: %s", target, ok.target_error)
            self._push_failed_at[target] = time.monotonic()

    async def _runs_with(self, blobs: set[str]) -> tuple[tuple[str, ...], ...]:
        """The server run sets of the best plan once every layer whose blob is in ``blobs``
        is ready: what the target may build ahead for this client (§15.5.5)."""
        graph, layer_blob = self._prepared.graph, self._prepared.layer_blob
        never = self._state.never() | frozenset(graph.inputs)
        usable = frozenset(
            n
            for n in graph.order
            if n not in never and (layer_blob[n][0] is None or layer_blob[n][0] in blobs)
        )
        ctx, link = self._state.context(held=usable), self._state.link  # a snapshot, here
        plan = await self._background.run(partial(ctx.best_plan, usable, link=link))
        runs = tuple(s.layers for s in plan.segments if s.location == "server")
        return runs[:MAX_PREPARE_SETS]

    async def push_order(self) -> tuple[str, ...]:
        """Blob digests in the order the upload planner would send the model to a server
        holding nothing (benefit at the next server per byte), computed once; empty until
        the upload session has planned. A session that began at a server holding nothing
        planned exactly that: its plan is taken as it is. Planning it again took the
        client's CPU for seconds (``ours`` on ResNet50) and held every push back until it
        ended, past a move that came early in the upload."""
        if self._order is None:
            state, prepared = self._state, self._prepared
            never = state.never() | frozenset(prepared.graph.inputs)
            if state.upload_plan is None:
                return ()
            cached = self.plans.get(PlanCache.key(state.cost_model_id, frozenset(), never))
            if cached is not None:
                self._order = self._blob_order(cached[1])
                return self._order
            ctx = state.context(held=frozenset())
            strategy = get_planner(self._planner)

            def plan() -> tuple[str, ...]:
                found = strategy.plan(ctx)
                return self._blob_order(with_completion(ctx, found.partitions, frozenset(), never))

            self._order = await self._background.run(plan)
        return self._order

    def _blob_order(self, partitions: Sequence[frozenset[str]]) -> tuple[str, ...]:
        """The blobs of ``partitions``' layers, in partition order, each once."""
        graph, layer_blob = self._prepared.graph, self._prepared.layer_blob
        order = [n for p in partitions for n in sorted(p, key=graph.position)]
        digests = (layer_blob[n][0] for n in order)
        return tuple(dict.fromkeys(d for d in digests if d is not None))
