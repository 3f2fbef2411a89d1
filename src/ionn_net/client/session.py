"""The upload loop: :class:`UploadSession` connects, authenticates, uploads, loads,
re-plans and reconnects with backoff (protocol.md §10.2-§10.6).

One task runs :meth:`UploadSession.run` for the client's lifetime. It owns the connection
(``connection``: the query runner borrows it for its server segments) and the set of blobs
this client sent bytes of. Everything it learns goes into the
:class:`~ionn_net.client.plan_state.PlanState` through its methods: the server's cost
model and holdings, the upload's partitions and progress, the link's bandwidth, and each
newly activated plan (compiled in a worker thread first, then switched to on the loop).

Pipeline: the next partition's blobs go up (urgency 5, incremental, §8.1) while the server
loads (and both sides compile for) the previous one; loads run one at a time, in plan
order. A precision-first upload (§10.12) sends each layer's base stage in the partitions
and loads them at base precision, then the refinements (:func:`.staged.refinement_units`:
the plan's order, then whatever else is still at base after a re-plan or a reconnect),
each unit loaded again to swap its exact weights in. After the upload, the session
re-plans once a second as what queries taught fades.

No idle link while the client plans: planning an upload can take seconds of CPU (``ours``
simulates many candidate orders), so the strategy plans in a worker thread while the
session already sends the *head start*: the model's first layers in topological order,
each blob small enough to go up in a fraction of a second, until the plan is known. Every
strategy that offloads a prefix of the network sends them first anyway, and every plan
completes with the layers the best plan runs on the server (:func:`with_completion`),
which include them when offloading pays at all; their blobs are then simply held when
their partition comes (§10.5). Past ``ClientConfig.plan_wait_s`` the upload starts on a
quick plan (``efficiency``'s, a tenth of a second of planning), so that the server loads
partitions and queries offload while the strategy still plans; the strategy's plan, once
known, replaces the partitions not sent yet. The session records when it became ready,
when the first upload byte left, when its partitions were known and when the strategy's
own plan was (:class:`~ionn_net.client.types.UploadTimeline`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import random
import time
from dataclasses import replace
from functools import partial
from typing import Any

from ionn_net.aio import AioConnection, connect
from ionn_net.client.background import (
    Activations,
    head_start_layers,
    held_first,
    load_in_order,
)
from ionn_net.client.explain import log_why_local
from ionn_net.client.mobility import Mobility, PlanCache
from ionn_net.client.plan_state import PlanState, with_completion
from ionn_net.client.planning import StrategyPlan, plan_upload
from ionn_net.client.prepare import PreparedModel, compile_client_side
from ionn_net.client.progress import ProgressFeed, upload_progress
from ionn_net.client.staged import refinement_units, stage_codec
from ionn_net.client.timings import TimingsFollower
from ionn_net.client.types import ClientConfig, UploadTimeline
from ionn_net.config import Setting
from ionn_net.errors import IonnError, OffloadError
from ionn_net.messages import (
    CONTROL_URGENCY,
    UPLOAD_URGENCY,
    Auth,
    Blob,
    BlobOk,
    Challenge,
    Hello,
    Load,
    LoadOk,
    Manifest,
    ManifestOk,
    RemoteError,
    Welcome,
    hmac_proof,
    parse_reply,
)
from ionn_net.offthread import BackgroundWork
from ionn_net.planner.execution import ExecutionPlan
from ionn_net.planner.upload import get_planner
from ionn_net.planner.workload import PlanningContext
from ionn_net.proto import Codec, ErrorCode

__all__ = ["UploadSession", "handshake"]

logger = logging.getLogger("ionn_net.client")

#: Largest blob message: bigger blobs go up in pieces at increasing offsets (§10.5).
_BLOB_PIECE = 64 << 20
#: After the upload, how often the session checks whether what was learned has faded.
_REFRESH_S = 1.0
#: At most this many run sets are named in a load's ``prepare`` (§10.6).
_MAX_PREPARE = 16
#: Times a stage refused with ``digest_mismatch`` is sent again on one connection (§10.12.3).
_STAGE_ATTEMPTS = 3
#: A head-start blob must go up in at most this many seconds at the estimated bandwidth:
#: the plan, once known, waits for the blob in flight.
_HEAD_BLOB_S = 0.25


async def handshake(
    conn: AioConnection, session_key: str, secret: bytes | None, limit: int
) -> Welcome:
    """§10.2: ``hello``, and with a shared secret ``challenge``/``auth``; the welcome.
    A server that cannot prove the secret is left with GOAWAY AUTH_FAILED (§10.2.3)."""
    nonce = os.urandom(16)
    hello = Hello(client="ionn_net", session=session_key, nonce=nonce.hex())
    head, _ = await conn.request(hello.to_head(), b"", limit=limit, urgency=CONTROL_URGENCY)
    reply = parse_reply(head, Challenge, Welcome)
    if isinstance(reply, Welcome):
        return reply
    server_nonce = bytes.fromhex(reply.nonce)
    if secret is None:
        conn.abort(ErrorCode.AUTH_FAILED, "no shared secret configured")
        raise OffloadError("the server requires a shared secret; none is configured")
    expected = hmac_proof(secret, "server", nonce, server_nonce)
    if reply.proof is None or not hmac.compare_digest(reply.proof, expected):
        conn.abort(ErrorCode.AUTH_FAILED, "the server's proof is wrong")
        raise OffloadError("the server failed to prove it knows the shared secret")
    auth = Auth(proof=hmac_proof(secret, "client", nonce, server_nonce))
    head, _ = await conn.request(auth.to_head(), b"", limit=limit, urgency=CONTROL_URGENCY)
    return parse_reply(head, Welcome)


class UploadSession:
    """The upload loop (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        prepared: PreparedModel,
        state: PlanState,
        config: ClientConfig,
        planner: str,
        session_key: str,
        ssl: Any,
        progress: ProgressFeed,
        stats: dict[str, int],
        started: float,
        background: BackgroundWork,
        mobility: Mobility | None = None,
    ) -> None:
        self._host, self._port = host, port
        self._mobility = mobility
        self._prepared = prepared
        self._state = state
        self._config = config
        self._planner = planner
        self._session_key = session_key
        self._ssl = ssl
        self._progress = progress
        self._stats = stats
        self._started = started
        self._background = background  # planning's threads (the client closes them)
        self._conn: AioConnection | None = None
        self._closing = False
        self._uploaded: set[str] = set()
        self._timings = TimingsFollower(state, prepared.model_digest, config, self.activate)
        self._timeline = UploadTimeline()
        # the re-planning of the rest of the upload in a worker thread, while it goes on
        self._replanning: asyncio.Future[list[frozenset[str]]] | None = None
        # the strategy's plan, when the upload began on a quick one
        self._strategy_plan = StrategyPlan()
        # plans activated after loads, compiled in the background
        self._activations = Activations(self.activate)
        self._plans = mobility.plans if mobility is not None else PlanCache()

    @property
    def connection(self) -> AioConnection | None:
        """The connection to the server (None before the first; maybe closed)."""
        return self._conn

    @property
    def uploaded(self) -> frozenset[str]:
        """Digests of the blobs this client sent bytes of (resumed ones included)."""
        return frozenset(self._uploaded)

    @property
    def timeline(self) -> UploadTimeline:
        """Milestones of the latest session's upload (see :class:`UploadTimeline`)."""
        return replace(self._timeline, activations=tuple(self._activations.records))

    def stop(self) -> None:
        """End the loop at its next turn (the caller cancels the task)."""
        self._closing = True

    def set_server(self, host: str, port: int) -> None:
        """Connect here from now on (§15: the client moved; the caller restarts the loop)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort(ErrorCode.CANCEL, "the client moved to another server")
        self._host, self._port = host, port

    # -- connection ----------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, handshake, adopt the cost model, measure the round trip and send the
        manifest; adopt what the server holds (§10.2, §10.3)."""
        config, prepared = self._config, self._prepared
        conn = await connect(
            self._host, self._port, limits=config.limits, options=config.transport, ssl=self._ssl
        )
        try:
            limit = config.limits.max_message_size
            welcome = await handshake(conn, self._session_key, config.secret, limit)
            self._state.adopt_cost_model(welcome.cost_model)
            self._state.set_ping(await conn.ping())
            manifest = Manifest(
                model=prepared.model_digest,
                body_len=len(prepared.manifest_body),
                public=config.public,
            )
            head, _ = await conn.request(
                manifest.to_head(), prepared.manifest_body, limit=limit, urgency=CONTROL_URGENCY
            )
            holdings = parse_reply(head, ManifestOk).holdings
            await self._timings.fetch(conn)  # the server's times, before planning (§10.11)
        except BaseException:
            conn.abort()
            raise
        self._conn = conn
        self._timeline = UploadTimeline(ready_at=time.monotonic())
        self._state.adopt_holdings(holdings)

    async def run(self) -> None:
        """Until stopped: (re)connect, upload what is missing, then keep the plan fresh
        until the connection closes; retry with capped exponential backoff and jitter."""
        config, stats = self._config, self._stats
        delay = config.backoff_initial_s
        while not self._closing:
            progress = (stats["sent_bytes"], self._state.loaded_parts)
            try:
                if self._conn is None or self._conn.closed:
                    await self.connect()
                    stats["reconnects"] += 1
                async with self._timings.following(self._conn):
                    await self._upload_all()
                    await self._until_closed()
            except asyncio.CancelledError:
                raise
            except (OSError, IonnError) as exc:
                if not config.reconnect:
                    logger.warning("edge session ended: %s", exc)
                    return
                logger.info("edge session interrupted (%s)", exc)
            if (stats["sent_bytes"], self._state.loaded_parts) != progress:
                # The attempt made progress: retry soon. One that failed without any
                # (e.g. a limit it keeps hitting) backs off up to backoff_max_s.
                delay = config.backoff_initial_s
            if self._conn is None or self._conn.closed:
                self._state.drop_to_local()
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, config.backoff_max_s)

    async def _until_closed(self) -> None:
        """Wait for the connection to close; meanwhile (the upload is over) re-plan once
        a second as what was learned from queries fades (:mod:`ionn_net.planner.learned`)."""
        conn = self._conn
        if conn is None:
            return
        closed = asyncio.ensure_future(conn.wait_closed())
        try:
            while not (await asyncio.wait({closed}, timeout=_REFRESH_S))[0]:
                await self._refresh_plan()
        finally:
            closed.cancel()

    async def _refresh_plan(self) -> None:
        """Let the learned server speed and round trip fade toward their priors and
        switch to the best plan for the layers the server holds if that changed it: a
        plan that stopped offloading would otherwise never measure the server again."""
        state = self._state
        if not state.fade(time.monotonic()):
            return
        ready = state.usable
        plan = state.best_plan(ready, held=ready)
        if plan.server_layers != state.active.plan.server_layers:
            logger.info("learned costs faded: re-planning")
            await self.activate(ready, plan)

    # -- planning ------------------------------------------------------------------------

    async def activate(self, ready: frozenset[str], plan: ExecutionPlan | None = None) -> None:
        """Compile the client side of ``plan`` (default: the best plan for ``ready``)
        in a worker thread, then switch queries to it."""
        state = self._state
        if plan is None or not plan.server_layers <= ready:
            plan = state.best_plan(ready, held=ready)
        grid = self._prepared.grid_ends if state.pending(ready) else None
        chunks = await asyncio.to_thread(compile_client_side, self._prepared.executor, plan, grid)
        state.switch(plan, ready, chunks)
        logger.info(
            "plan: %d server layers, predicted %.1f ms",
            len(plan.server_layers),
            plan.predicted_s * 1000,
        )
        # Fallback slices for the server segments are not compiled ahead: a failure is
        # rare, and compiling every plan's fallback would double the client's compile
        # work during the upload. A failed segment runs on the chunks the local plan
        # compiled (QueryRunner.fallback_pieces), compiling at most its two end pieces.

    async def _plan_upload(self, conn: AioConnection) -> None:
        """Plan the upload from what the server holds, sending the head start meanwhile
        (:func:`.planning.plan_upload`). A plan made earlier from the same cost model,
        layers ready and layers never sent is used again: at a server the client moved
        to, planning would delay the first partition (§15)."""
        state, prepared = self._state, self._prepared
        self._strategy_plan.drop()  # (one a failed attempt left)
        key = PlanCache.key(state.cost_model_id, state.ready, self._never_sent())
        if (cached := self._plans.get(key)) is not None:
            state.start_upload(*cached)
            return
        head = head_start_layers(  # blobs that go up in _HEAD_BLOB_S at most
            prepared.graph,
            prepared.layer_blob,
            held_blobs=state.held_blobs,
            never=self._never_sent(),
            max_bytes=state.link.bandwidth * _HEAD_BLOB_S,
        )
        if self._mobility is not None:  # from the previous server first (§15.4)
            await self._mobility.fetch_layers(conn, head)
        made = await plan_upload(
            state,
            self._never_sent(),
            self._planner,
            background=self._background,
            upload=partial(_upload_layer, self, conn),
            head=head,
            wait_s=self._config.plan_wait_s,
            pending=self._strategy_plan,
            key=key,
            on_planned=self._strategy_planned,
        )
        known = replace(self._timeline, head_start=made.head_start, quick_plan=made.quick)
        self._timeline = replace(known, planned_at=time.monotonic())
        if made.quick is None:
            self._plans.put(key, (made.plan, made.partitions))
        state.start_upload(made.plan, made.partitions)
        log_why_local(state)  # once, with the numbers, at INFO

    def _strategy_planned(self, planning: asyncio.Future[Any]) -> None:
        if not planning.cancelled():  # (a plan the upload outlived is not on record)
            self._timeline = replace(self._timeline, strategy_planned_at=time.monotonic())

    async def _maybe_replan(self) -> None:
        """Re-plan the rest of the upload when the bandwidth moved by 30% from the plan's (at
        most every 5 s) or the server's times changed (§10.11), in a worker thread; the result,
        minus what went up meanwhile, replaces the rest at the next partition boundary."""
        state = self._state
        if self._strategy_plan.pending:  # the strategy's plan replaces the quick one's rest
            if (taken := self._strategy_plan.take(self._planner)) is not None:
                (found, partitions), key = taken
                self._plans.put(key, (found, partitions))
                sent = state.sent()
                state.replace_rest([p - sent for p in partitions if p - sent], plan=found)
            return
        task = self._replanning
        if task is not None:
            if task.done():
                self._replanning = None
                sent = state.sent()
                state.replace_rest([p - sent for p in task.result() if p - sent])
            return
        now = time.monotonic()
        if not state.replan_due(now):
            return
        logger.info("re-planning the upload (%.1f Mbit/s)", state.link.bandwidth * 8e-6)
        sent, ctx, never = state.sent(), state.context(), self._never_sent()
        strategy = get_planner(self._planner)

        def replan(ctx: PlanningContext) -> list[frozenset[str]]:
            found = strategy.replan(ctx, sent - ctx.held, ctx.link, now - self._started)
            return with_completion(ctx, found.partitions, sent, never)

        self._replanning = asyncio.ensure_future(self._background.run(replan, ctx))

    def _never_sent(self) -> frozenset[str]:
        return self._state.never() | frozenset(self._prepared.graph.inputs)

    # -- upload --------------------------------------------------------------------------

    async def _upload_all(self) -> None:
        conn, state = self._conn, self._state
        assert conn is not None
        if not self._config.upload or self._planner == "local":
            self._emit_progress(done=True)
            return
        layer_blob, never = self._prepared.layer_blob, self._never_sent()
        for piece in await held_first(conn, state, layer_blob, never, self._mobility):
            await self._load(conn, piece)  # the upload then plans only the rest
        if ready := state.usable if state.ready else None:  # serve now, not after planning
            self._activations.submit(ready, state.best_plan(ready, held=ready))  # (§15.5.5)
        await self._plan_upload(conn)
        if state.ready:
            await self.activate(state.usable)
        loads: asyncio.Queue[frozenset[str] | None] = asyncio.Queue()
        loader = asyncio.create_task(load_in_order(loads, partial(self._load_parts, conn)))
        try:
            index = 0
            while index < len(state.partitions):
                part = state.partitions[index]
                if self._mobility is not None:  # from the previous server first (§15.4)
                    await self._mobility.fetch_layers(conn, part)
                for name in sorted(part, key=self._prepared.graph.position):
                    await _upload_layer(self, conn, name)
                    if loader.done():
                        loader.result()  # a failed load ends the session attempt
                loads.put_nowait(part)
                index += 1
                state.mark_uploaded(index)
                await self._maybe_replan()
            loads.put_nowait(None)
            await loader
            await self._activations.wait()
        finally:
            loader.cancel()
            self._activations.cancel()
            if self._replanning is not None:  # the plan it would change is all sent
                self._replanning.cancel()
                self._replanning = None
            self._strategy_plan.drop()  # likewise
        await self._refine_all(conn)
        self._emit_progress(done=True)

    async def _refine_all(self, conn: AioConnection) -> None:
        """§10.12: the refinements of every layer still at base precision, unit by unit,
        each loaded again (the server swaps the exact weights in)."""
        state, graph = self._state, self._prepared.graph
        units = refinement_units(
            state.upload_plan.refinements if state.upload_plan else (),
            state.base & frozenset(self._prepared.staged),
            first=state.active.plan.server_layers,
            order=graph.order,
        )
        for unit in units:
            for name in sorted(unit, key=graph.position):
                await _upload_layer(self, conn, name, stage=1)
            load = Load(model=self._prepared.model_digest, layers=tuple(sorted(unit)))
            limit = self._config.limits.max_message_size
            head, _ = await conn.request(load.to_head(), b"", limit=limit, urgency=CONTROL_URGENCY)
            done = parse_reply(head, LoadOk)
            state.adopt_ready(done.layers_ready, done.layers_base)
            self._emit_progress()

    async def _load_parts(self, conn: AioConnection, layers: frozenset[str], parts: int) -> None:
        await self._load(conn, layers)
        self._state.mark_loaded(parts)
        self._emit_progress()

    async def _send_blob_piece(
        self,
        conn: AioConnection,
        digest: str,
        size: int,
        offset: int,
        body: memoryview,
        *,
        codec: Codec,
        width: int,
    ) -> BlobOk:
        if self._timeline.first_byte_at is None:
            self._timeline = replace(self._timeline, first_byte_at=time.monotonic())
        model = self._prepared.model_digest
        blob = Blob(model=model, sha256=digest, size=size, offset=offset, body_len=len(body))
        compress = self._state.slower_than(self._config.compress_below_mbit)
        limit = self._config.limits.max_message_size
        return await send_blob(conn, blob, body, limit, compress, codec=codec, width=width)

    async def _load(self, conn: AioConnection, part: frozenset[str]) -> None:
        """§10.6: load ``part``, preparing the run sets of the best plan with it; then
        activate that plan."""
        state, graph = self._state, self._prepared.graph
        state.fade(time.monotonic())
        plan = state.best_plan(state.usable | part)
        runs = [s.layers for s in plan.segments if s.location == "server"]
        load = Load(
            model=self._prepared.model_digest,
            layers=tuple(sorted(part, key=graph.position)),
            prepare=tuple(runs[:_MAX_PREPARE]),
            precision="base" if self._prepared.staged else "exact",
        )
        started = time.monotonic()
        limit = self._config.limits.max_message_size
        state.load_started()
        try:
            head, _ = await conn.request(load.to_head(), b"", limit=limit, urgency=CONTROL_URGENCY)
        finally:
            state.load_finished()
        done = parse_reply(head, LoadOk)
        state.adopt_ready(done.layers_ready, done.layers_base)
        record = (started, time.monotonic(), len(part), float(done.load_ms))
        self._timeline = replace(self._timeline, loads=(*self._timeline.loads, record))
        logger.info(
            "partition of %d layers: server load %.2f s (it says %.0f ms)",
            len(part),
            time.monotonic() - started,
            done.load_ms,
        )
        self._activations.submit(state.usable, plan)

    # -- progress ------------------------------------------------------------------------

    def _emit_progress(self, *, done: bool = False) -> None:
        state = self._state
        if state.upload_plan is None and not done:
            return  # the head start, before any plan: no partitions to report on yet
        self._progress.publish(
            upload_progress(
                state.partitions,
                self._prepared.layer_blob,
                state.held_blobs,
                state.partial,
                staged=self._prepared.staged,
                layers_base=state.base,
                partitions_done=state.loaded_parts,
                layers_ready=len(state.ready),
                elapsed_s=time.monotonic() - self._started,
                bandwidth_mbit=state.link.bandwidth * 8e-6,
                pacing_mbit=pacing_mbit(self._conn),
                done=done,
            )
        )


async def send_blob(
    conn: AioConnection,
    blob: Blob,
    body: memoryview,
    limit: int,
    compress: bool,
    *,
    codec: Codec = Codec.ZSTD_SHUFFLE4,
    width: int = 4,
) -> BlobOk:
    """§10.5: one piece of a blob, at the upload's urgency, compressed with ``codec``
    (shuffled by ``width``: a weight stage's own, §10.12.3) when ``compress``."""
    head, _ = await conn.request(
        blob.to_head(),
        body,
        limit=limit,
        urgency=UPLOAD_URGENCY,
        incremental=True,
        codec=codec if compress else None,
        element_width=width,
    )
    return parse_reply(head, BlobOk)


def pacing_mbit(conn: AioConnection | None) -> float | None:
    """The rate ``conn``'s pacer sends at (Mbit/s), if it paces."""
    pacer = None if conn is None else conn.pacer
    rate = None if pacer is None else pacer.pacing_rate
    return None if rate is None else rate * 8e-6


async def _upload_layer(
    session: UploadSession, conn: AioConnection, name: str, stage: int = 0
) -> None:
    """``session`` sends one layer's blob (or stage ``stage`` of it, §10.12.3) from the
    server's offset, in messages of at most ``_BLOB_PIECE`` bytes (and the peer's
    MAX_MESSAGE_SIZE): VGG16's first dense layer alone is 411 MB, above the 256 MiB
    default (protocol.md §10.5.1). A stage refused with ``digest_mismatch`` goes again
    from its start (the server dropped it), a few times. A function of the session's
    module, not a method, so that the session class stays small."""
    state = session._state
    unit = session._prepared.upload_unit(name, stage)
    blob_digest = session._prepared.layer_blob[name][0]
    if unit is None or not state.needs_upload(unit[0]) or not state.needs_upload(blob_digest):
        return
    digest, data, encoding = unit
    size, blob = len(data), memoryview(data)
    codec, width = stage_codec(encoding) if encoding else (Codec.ZSTD_SHUFFLE4, 4)
    offset = int(state.partial.get(digest, 0))
    piece = min(_BLOB_PIECE, conn.peer_settings[Setting.MAX_MESSAGE_SIZE])
    attempts = 0
    while True:
        n = min(piece, size - offset)
        started, written = time.monotonic(), conn.bytes_sent
        try:
            ok = await session._send_blob_piece(
                conn, digest, size, offset, blob[offset : offset + n], codec=codec, width=width
            )
        except RemoteError as exc:
            attempts += exc.code == "digest_mismatch"
            if exc.code == "digest_mismatch" and encoding and attempts < _STAGE_ATTEMPTS:
                logger.warning("stage %s of %s refused (%s): sending it again", stage, name, exc)
                offset = 0
                state.record_piece(digest, 0)
                continue
            if exc.code != "offset_conflict":
                raise
            offset = exc.error.offset or 0  # the server's offset is authoritative
            continue
        state.observe_transfer(conn.bytes_sent - written, time.monotonic() - started)
        session._stats["sent_bytes"] += n
        session._uploaded.add(digest)
        offset += n
        state.record_piece(digest, offset)
        if ok.complete or offset >= size:
            break
        session._emit_progress()
    # a refinement is never held itself: the server rebuilt the exact blob from it
    state.record_held(blob_digest if stage and blob_digest else digest)
    session._emit_progress()
