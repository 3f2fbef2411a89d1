"""The front door: :class:`OffloadClient` (lifecycle, local preparation, progress, queries).

It owns the client's lifecycle and the application-facing API. :meth:`OffloadClient.start`
prepares the model in a worker thread (:mod:`.prepare`), creates the one
:class:`~ionn_net.client.plan_state.PlanState`, the upload session (:mod:`.session`, its
own task: the upload loop) and the query runner (:mod:`.runner`, run by the application's
calls to :meth:`~OffloadClient.infer`: the query loop). Everything else it exposes is a
read-only view of those parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ionn_net.aio import AioConnection
from ionn_net.client.explain import PlanExplanation, explain
from ionn_net.client.mobility import HandoffOptions, Mobility, server_name
from ionn_net.client.plan_state import PlanState
from ionn_net.client.prepare import PreparedModel, compile_client_side, prepare_model
from ionn_net.client.progress import ProgressFeed
from ionn_net.client.runner import QueryRunner
from ionn_net.client.session import UploadSession
from ionn_net.client.types import ClientConfig, InferenceResult, UploadProgress, UploadTimeline
from ionn_net.errors import IonnError, OffloadError
from ionn_net.model.graph import LayerGraph
from ionn_net.offthread import BackgroundWork
from ionn_net.planner.link import Link
from ionn_net.planner.upload import get_planner
from ionn_net.planner.workload import QueryPattern, StageCosts, UploadPlan

__all__ = ["OffloadClient"]

logger = logging.getLogger("ionn_net.client")


@dataclass(frozen=True, slots=True)
class _Parts:
    """What :meth:`OffloadClient.start` creates, together (none exists without the
    others)."""

    prepared: PreparedModel
    state: PlanState
    session: UploadSession
    runner: QueryRunner
    mobility: Mobility


class OffloadClient:
    """Offloads a Keras model's inference to an edge server (see :mod:`ionn_net.client`).

    Before :meth:`start` only the constructor's arguments, ``stats`` and the progress
    API are available; the views of the model and of the plan raise
    :class:`~ionn_net.errors.OffloadError`.

    Mobility (protocol.md §15): ``candidates`` are servers the client may move to next
    (``"host:port"`` or ``(host, port)``); while on a server it asks that server to push
    what it holds to them (pre-migration). :meth:`move_to` moves the session to another
    server when the application decides (say, on a Wi-Fi roam): the new server fetches
    from the previous one what it can, and the client uploads the rest. ``handoff`` tunes
    this (:class:`~ionn_net.client.mobility.HandoffOptions`).
    """

    def __init__(
        self,
        host: str,
        port: int,
        model: Any,
        *,
        planner: str = "ours",
        config: ClientConfig | None = None,
        pattern: QueryPattern | None = None,
        on_progress: Callable[[UploadProgress], None] | None = None,
        ssl: Any = None,
        candidates: Sequence[str | tuple[str, int]] = (),
        handoff: HandoffOptions | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.model = model
        self.planner_name = planner
        get_planner(planner)  # validate the name now, with the list of valid ones
        self.config = config or ClientConfig()
        self.pattern = pattern or QueryPattern.back_to_back()
        self.session_key = self.config.session_key or os.urandom(16).hex()
        #: Counters: ``sent_bytes`` and ``reconnects`` (the upload session),
        #: ``fallbacks`` (the query runner).
        self.stats = {"sent_bytes": 0, "fallbacks": 0, "reconnects": 0}
        self._progress = ProgressFeed(on_progress)
        self._ssl = ssl
        self._parts: _Parts | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._session_task: asyncio.Task[None] | None = None
        self._background = BackgroundWork()  # planning, niced (closed by close())
        self.handoff = handoff or HandoffOptions()
        self._candidates = [c if isinstance(c, str) else server_name(*c) for c in candidates]

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> OffloadClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Prepare the model here (graph, manifest, blobs, profile, compiled slices),
        connect and start the upload; a server that does not answer leaves the client
        running locally while the session keeps trying."""
        uploads = self.planner_name != "local" and self.config.upload
        prepared = await asyncio.to_thread(prepare_model, self.model, self.config, chunked=uploads)
        state = PlanState(
            prepared,
            pattern=self.pattern,
            assumed_mbit=self.config.assumed_mbit,
            slowdown=self.config.slowdown,
        )
        if uploads:  # the local plan's chunks, cut on the grid the upload's plans share
            local = state.active.plan
            chunks = await asyncio.to_thread(
                compile_client_side, prepared.executor, local, prepared.grid_ends
            )
            state.switch(local, frozenset(), chunks)
        mobility = Mobility(
            prepared=prepared,
            state=state,
            options=self.handoff,
            planner=self.planner_name,
            current=server_name(self.host, self.port),
            candidates=self._candidates,
            stats=self.stats,
            background=self._background,
        )
        session = UploadSession(
            self.host,
            self.port,
            prepared=prepared,
            state=state,
            config=self.config,
            planner=self.planner_name,
            session_key=self.session_key,
            ssl=self._ssl,
            progress=self._progress,
            stats=self.stats,
            started=time.monotonic(),
            background=self._background,
            mobility=mobility if uploads else None,
        )
        runner = QueryRunner(
            prepared=prepared, state=state, session=session, config=self.config, stats=self.stats
        )
        self._parts = _Parts(prepared, state, session, runner, mobility)
        try:
            await session.connect()
        except (OSError, IonnError) as exc:
            logger.warning("edge server unavailable (%s): running locally until it answers", exc)
        self._session_task = asyncio.create_task(session.run(), name="ionn-client-session")
        if uploads:
            run = mobility.run(lambda: session.connection)
            self._tasks.append(asyncio.create_task(run, name="ionn-client-mobility"))

    async def close(self) -> None:
        """Stop the upload and close the connection (queries in flight may fail)."""
        parts = self._parts
        if parts is not None:
            parts.session.stop()
        tasks = [*self._tasks, *([self._session_task] if self._session_task else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        conn = None if parts is None else parts.session.connection
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.aclose(), 2.0)
        await self._background.aclose()  # a plan in progress runs to its end (a thread)

    def _started(self) -> _Parts:
        if self._parts is None:
            raise OffloadError("the client is not started: call start() or use 'async with'")
        return self._parts

    # -- mobility (§15) -----------------------------------------------------------------

    async def move_to(self, host: str, port: int) -> None:
        """Move the session to the server at ``host:port``, now. Queries keep being
        answered (locally until the new server has layers ready); the connection to the
        current server is dropped; the new one fetches from it what it can (with the grant
        the client holds), and the client uploads the rest. Returns once the move has
        started, not when the new server is ready."""
        parts = self._started()
        name = server_name(host, port)
        if name == parts.mobility.current:
            return
        task, self._session_task = self._session_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        parts.mobility.moved(name)
        self.host, self.port = host, port
        parts.state.new_server()  # plans follow what the new server reports (§15.4)
        parts.session.set_server(host, port)
        self._session_task = asyncio.create_task(parts.session.run(), name="ionn-client-session")

    def set_candidates(self, candidates: Sequence[str | tuple[str, int]]) -> None:
        """The servers this client may move to next (pre-migration targets, §15.5)."""
        names = [c if isinstance(c, str) else server_name(*c) for c in candidates]
        self._candidates = names
        if self._parts is not None:
            self._parts.mobility.set_candidates(names)

    @property
    def mobility(self) -> Mobility:
        """Grants held, the previous server, what was pushed where (read-only use)."""
        return self._started().mobility

    # -- queries -------------------------------------------------------------------------

    async def infer(
        self, x: np.ndarray, *, exact: bool | None = None
    ) -> np.ndarray | list[np.ndarray]:
        """The model's output for ``x`` (batch 1), computed collaboratively. ``exact``:
        run only on exact weights (default: unless the upload is precision-first,
        ``ClientConfig.precision``); layers the server holds at base precision then run
        here (protocol.md §10.12.5)."""
        return (await self.infer_detailed(x, exact=exact)).output

    async def infer_detailed(self, x: np.ndarray, *, exact: bool | None = None) -> InferenceResult:
        """:meth:`infer` with the query's segments, timings, prediction and precision. A
        query running a long local segment may switch, between two of its precompiled
        chunks, to a plan that layers landing meanwhile made faster (planner.midquery)."""
        return await self._started().runner.infer(x, exact=exact)

    async def replan(self) -> None:
        """Re-plan now for the layers the server holds, with what queries taught so far,
        and switch to that plan once its client side is compiled."""
        parts = self._started()
        await parts.session.activate(parts.state.usable)

    # -- progress ------------------------------------------------------------------------

    @property
    def last_progress(self) -> UploadProgress | None:
        """The latest upload progress event (None before the first)."""
        return self._progress.last

    def progress(self) -> AsyncIterator[UploadProgress]:
        """Upload progress events until the upload is done (or the client closes)."""
        return self._progress.events()

    async def wait_uploaded(self, timeout: float | None = None) -> None:
        """Wait until every planned partition is loaded on the server."""
        await self._progress.wait_done(timeout)

    # -- read-only views -----------------------------------------------------------------

    def explain(self) -> PlanExplanation:
        """What the client decided and why: per segment of the active plan its predicted
        local, server and transfer time, what the upload will bring, where the server's
        times came from and how far they were from what it then took
        (:mod:`ionn_net.client.explain`; ``.line()`` prints it on one line)."""
        return explain(self._started().state)

    @property
    def plan_state(self) -> PlanState:
        """The link estimate, learned costs, the server's readiness, the upload's
        partitions and the active plan (read it; it changes through its methods)."""
        return self._started().state

    @property
    def runner(self) -> QueryRunner:
        """The query runner (its ``run_local`` is the documented hook for tests)."""
        return self._started().runner

    @property
    def connection(self) -> AioConnection | None:
        """The connection to the server (None before the first; maybe closed)."""
        return None if self._parts is None else self._parts.session.connection

    @property
    def uploaded(self) -> frozenset[str]:
        """Digests of the blobs this client sent bytes of (resumed ones included)."""
        return frozenset() if self._parts is None else self._parts.session.uploaded

    @property
    def upload_timeline(self) -> UploadTimeline:
        """When the latest session became ready, sent its first upload byte and knew its
        upload plan (empty before the first connection)."""
        return UploadTimeline() if self._parts is None else self._parts.session.timeline

    @property
    def executor(self) -> Any:
        return self._started().prepared.executor

    @property
    def graph(self) -> LayerGraph:
        return self._started().prepared.graph

    @property
    def blobs(self) -> Mapping[str, bytes]:
        """Weight blobs by SHA-256 digest (§10.3.1)."""
        return self._started().prepared.blobs

    @property
    def manifest_body(self) -> bytes:
        return self._started().prepared.manifest_body

    @property
    def model_digest(self) -> str:
        return self._started().prepared.model_digest

    @property
    def layer_blob(self) -> Mapping[str, tuple[str | None, int]]:
        return self._started().prepared.layer_blob

    @property
    def client_ms(self) -> Mapping[str, float]:
        """Per-layer milliseconds of this (emulated) device."""
        return self._started().state.client_ms

    @property
    def server_ms(self) -> Mapping[str, float]:
        return self._started().state.server_ms

    @property
    def load_ms(self) -> Mapping[str, float]:
        return self._started().state.load_ms

    @property
    def partition_overhead_ms(self) -> float:
        return self._started().state.partition_overhead_ms

    @property
    def link(self) -> Link:
        return self._started().state.link

    @property
    def refused(self) -> Mapping[str, str]:
        return self._started().state.refused

    @property
    def local_only(self) -> Mapping[str, str]:
        return self._started().state.local_only

    @property
    def upload_plan(self) -> UploadPlan | None:
        return self._started().state.upload_plan

    @property
    def stage_costs(self) -> StageCosts | None:
        """What the planner charges for a precision-first upload's stages (None: exact)."""
        return self._started().prepared.stage_costs
