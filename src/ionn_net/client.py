"""OffloadClient: collaborative inference while the model uploads (IONN's client).

This module owns the client side of protocol.md §10::

    async with OffloadClient(host, port, model, planner="ours") as client:
        y = await client.infer(x)

On entry the client describes its Keras model (layer graph, safe manifest, weight
blobs), profiles its own per-layer execution times (cached per model and device),
connects, receives the server's cost model and what the server already holds, and
plans the upload with the chosen strategy. A background task then uploads partitions
at low priority (urgency 5, incremental) and asks the server to load each one; every
query (urgency 1) runs with the best execution plan for the layers the server has
*confirmed* ready, and whose compiled slices exist on both sides, so no query pays for
compilation.

Guarantee: :meth:`OffloadClient.infer` returns exactly one result equal to local
execution (within float tolerance) or raises one clear exception. When the server
fails, times out or disconnects during a query, the client finishes the query locally
from the last tensors it has, then reconnects in the background (capped exponential
backoff with jitter) and resumes the upload without re-sending complete layers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ionn_net.aio import AioConnection, ConnectionClosedError, StreamResetError, connect
from ionn_net.client_progress import ProgressFeed, upload_progress
from ionn_net.client_types import (
    ClientConfig,
    InferenceResult,
    SegmentTiming,
    UploadProgress,
    paced_transport,
)
from ionn_net.config import Setting
from ionn_net.errors import ConfigError, IonnError, OffloadError, PlannerError, TensorError
from ionn_net.messages import (
    CONTROL_URGENCY,
    QUERY_URGENCY,
    UPLOAD_URGENCY,
    RemoteError,
    hmac_proof,
)
from ionn_net.model.graph import LayerGraph, TensorRef
from ionn_net.planner.costmodel import ServerCostModel
from ionn_net.planner.execution import ExecutionPlan, LayerTimes, Segment, local_plan
from ionn_net.planner.learned import BandwidthMeter, LearnedCosts
from ionn_net.planner.link import Link
from ionn_net.planner.midquery import (
    Continuation,
    SegmentCoster,
    choose_continuation,
    chunk_segment,
    split_at,
)
from ionn_net.planner.profiles import ClientProfile, ProfileCache
from ionn_net.planner.upload import get_planner
from ionn_net.planner.workload import PlanningContext, QueryPattern, UploadPlan
from ionn_net.proto import Codec, ErrorCode
from ionn_net.tensors import decode_tensors, encode_tensors

__all__ = [
    "ClientConfig",
    "InferenceResult",
    "OffloadClient",
    "SegmentTiming",
    "UploadProgress",
    "paced_transport",
]

logger = logging.getLogger("ionn_net.client")

#: Server time assumed for a layer the server must never run (refused or local-only).
_NEVER_MS = 1e9
#: Largest blob message: bigger blobs go up in pieces at increasing offsets (§10.5).
_BLOB_PIECE = 64 << 20
#: After the upload, how often the client checks whether what it learned has faded.
_REFRESH_S = 1.0


@dataclass(slots=True)
class _Active:
    """The plan queries use now; its slices exist on both sides."""

    plan: ExecutionPlan
    ready: frozenset[str]


class OffloadClient:
    """Offloads a Keras model's inference to an edge server (see module docstring)."""

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
    ) -> None:
        self.host, self.port = host, port
        self.model = model
        self.planner_name = planner
        get_planner(planner)  # validate the name now, with the list of valid ones
        self.config = config or ClientConfig()
        self.pattern = pattern or QueryPattern.back_to_back()
        self._progress = ProgressFeed(on_progress)
        self._ssl = ssl
        self.session_key = self.config.session_key or os.urandom(16).hex()
        self._conn: AioConnection | None = None
        self._connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._qid = 0
        self._learned = LearnedCosts()  # server speed and round trip, learned online
        self._bandwidth = BandwidthMeter()
        self._partitions: list[frozenset[str]] = []  # the upload plan, set when it starts
        self._partial: dict[str, int] = {}  # blob digest -> bytes the server holds
        self._held_blobs: set[str] = set()
        self._planned_bandwidth: float | None = None
        self._planned_at = 0.0
        self._done_parts = self._uploaded_parts = 0
        self._closing = False
        self.link = Link.from_mbit(self.config.assumed_mbit, 1.0)
        self.upload_plan: UploadPlan | None = None
        self.refused: dict[str, str] = {}
        self.local_only: dict[str, str] = {}
        self.stats = {"sent_bytes": 0, "fallbacks": 0, "reconnects": 0}
        #: Digests of the blobs this client sent bytes of (resumed ones included).
        self.uploaded: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> OffloadClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        await asyncio.to_thread(self._prepare_locally)
        self._started = time.monotonic()
        try:
            await self._connect_once()
        except (OSError, IonnError) as exc:
            logger.warning("edge server unavailable (%s): running locally until it answers", exc)
        self._tasks.append(asyncio.create_task(self._run_session(), name="ionn-client-session"))

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.aclose(), 2.0)

    def _prepare_locally(self) -> None:
        """Graph, manifest, blobs, profile and the whole-model slice (worker thread)."""
        from ionn_net.executor import Executor
        from ionn_net.model.layers import extract_manifest

        self.executor = Executor.from_model(self.model)
        self.graph: LayerGraph = self.executor.graph
        manifest, self.blobs, self.local_only = extract_manifest(self.model)
        self.manifest_body = manifest.to_json_bytes()
        self.model_digest = manifest.manifest_digest()
        self.layer_blob = {s.name: (s.blob_sha256, s.blob_size) for s in manifest.layers}
        whole = self.executor.prepare(self.graph.order)
        fixed = self.config.device_ms
        if fixed is not None:
            if set(fixed) != set(self.graph.order):
                raise ConfigError("device_ms: expected one entry per layer of this model")
            self.client_ms = dict(fixed)
        else:
            self.client_ms = self._profile(whole)
        self._coster = SegmentCoster(self.graph, self.client_ms, {}, self.link)
        self._chunks: dict[tuple[str, ...], tuple[tuple[str, ...], ...]] = {}
        self._grid_ends: frozenset[str] = frozenset()
        self._active = _Active(self._local_plan(), frozenset())
        if self.planner_name != "local" and self.config.upload:
            # The chunk grid of the whole model: client segments are cut on it, so that
            # the plans activated during the upload reuse the chunks compiled here.
            grid = chunk_segment(
                self.graph, self.graph.order, self.client_ms, cut_points=self.graph.cut_points()
            )
            self._grid_ends = frozenset(chunk[-1] for chunk in grid)
            self._compile_client_side(self._active.plan, chunked=True)

    def _compile_client_side(self, plan: ExecutionPlan, *, chunked: bool) -> None:
        """Compile the client segments of ``plan`` (worker thread). While layers are
        still to come, segments are compiled as chunks of the model's chunk grid, so that
        a running query can change course between them (planner.midquery) and a new
        plan mostly reuses chunks compiled for earlier ones."""
        for seg in plan.segments:
            if seg.location != "client":
                continue
            chunks: tuple[tuple[str, ...], ...] = (seg.layers,)
            if chunked:
                chunks = split_at(seg.layers, self._grid_ends)
                self._chunks[seg.layers] = chunks
            for chunk in chunks:
                self.executor.prepare(chunk)

    def _profile(self, whole: Any) -> dict[str, float]:
        """Per-layer client milliseconds: the cached (or freshly measured) profile,
        rescaled so that it sums to the whole model's latency measured now: a profile
        taken while the device was busy must not make offloading look better than it is."""
        from ionn_net.executor import profile_layers, time_slice

        cache = ProfileCache(self.config.profile_cache) if self.config.profile_cache else None
        device = self.config.device_id
        profile = cache.load(self.model_digest, device) if cache else None
        if profile is None:
            ms = profile_layers(self.executor, runs=5)
            profile = ClientProfile(model_digest=self.model_digest, device_id=device, layer_ms=ms)
            if cache:
                cache.store(profile)
        now_ms = time_slice(whole, whole.zero_feeds(), runs=5)
        scale = now_ms / max(profile.total_ms, 1e-6)
        return {n: v * scale * self.config.slowdown for n, v in profile.layer_ms.items()}

    # -- connection and handshake --------------------------------------------------------

    async def _connect_once(self) -> None:
        conn = await connect(
            self.host,
            self.port,
            limits=self.config.limits,
            options=self.config.transport,
            ssl=self._ssl,
        )
        try:
            welcome = await self._handshake(conn)
            self._adopt_cost_model(welcome.get("cost_model"))
            self._learned.set_ping(await conn.ping())
            self._take_learned_rtt()
            held = await self._request(conn, self._manifest_head(), self.manifest_body)
        except BaseException:
            conn.abort()
            raise
        self._conn = conn
        self._held_blobs = set(held.get("blobs_held", []))
        self._partial = dict(held.get("partial", {}))
        self._server_ready = frozenset(held.get("layers_ready", []))
        self.refused = dict(held.get("refused", {}))
        self._connected.set()

    async def _handshake(self, conn: AioConnection) -> Mapping[str, Any]:
        nonce = os.urandom(16)
        hello = {"m": "hello", "client": "ionn_net", "session": self.session_key}
        head = await self._request(conn, {**hello, "nonce": nonce.hex()}, b"", expect=None)
        if head.get("m") == "challenge":
            secret = self.config.secret
            server_nonce = bytes.fromhex(str(head.get("nonce", "")))
            if secret is None:
                conn.abort(ErrorCode.AUTH_FAILED, "no shared secret configured")
                raise OffloadError("the server requires a shared secret; none is configured")
            if head.get("proof") != hmac_proof(secret, "server", nonce, server_nonce):
                conn.abort(ErrorCode.AUTH_FAILED, "the server's proof is wrong")
                raise OffloadError("the server failed to prove it knows the shared secret")
            proof = hmac_proof(secret, "client", nonce, server_nonce)
            head = await self._request(conn, {"m": "auth", "proof": proof}, b"", expect=None)
        if head.get("m") != "welcome":
            raise OffloadError(f"handshake: expected welcome, got {head.get('m')!r}")
        return head

    def _adopt_cost_model(self, doc: object) -> None:
        try:
            cost = ServerCostModel.from_doc(doc)
            self.server_ms = cost.exec_profile(self.graph)
            self.load_ms = cost.load_profile(self.graph)
            self.partition_overhead_ms = cost.partition_overhead_ms
        except PlannerError as exc:
            logger.warning("invalid server cost model (%s): assuming a 10x faster server", exc)
            self.server_ms = {n: v / self.config.slowdown / 10 for n, v in self.client_ms.items()}
            self.load_ms = {}
            self.partition_overhead_ms = 0.0

    def _manifest_head(self) -> dict[str, object]:
        return {"m": "manifest", "model": self.model_digest, "body_len": len(self.manifest_body)}

    async def _request(
        self,
        conn: AioConnection,
        head: Mapping[str, object],
        body: bytes | memoryview,
        *,
        urgency: int = CONTROL_URGENCY,
        incremental: bool = False,
        codec: Codec | None = None,
        element_width: int = 1,
        expect: str | None = "ok",
    ) -> Mapping[str, Any]:
        reply, _ = await self._request_with_body(
            conn,
            head,
            body,
            urgency=urgency,
            incremental=incremental,
            codec=codec,
            element_width=element_width,
        )
        if expect is not None and reply.get("m") == "error":
            raise RemoteError(str(reply.get("code")), str(reply.get("message")), reply)
        return reply

    async def _request_with_body(
        self,
        conn: AioConnection,
        head: Mapping[str, object],
        body: bytes | memoryview,
        **kwargs: Any,
    ) -> tuple[Mapping[str, Any], bytes]:
        return await conn.request(
            dict(head), body, limit=self.config.limits.max_message_size, **kwargs
        )

    # -- planning ------------------------------------------------------------------------

    def _server_times(self) -> dict[str, float]:
        never = set(self.refused) | set(self.local_only)
        k = self._learned.server_scale
        return {n: (_NEVER_MS if n in never else v * k) for n, v in self.server_ms.items()}

    def _context(self, held: frozenset[str]) -> PlanningContext:
        return PlanningContext(
            graph=self.graph,
            client_ms=self.client_ms,
            server_ms=self._server_times(),
            link=self.link,
            load_ms=self.load_ms,
            held=held,
            pattern=self.pattern,
            partition_overhead_ms=self.partition_overhead_ms,
        )

    def _local_plan(self) -> ExecutionPlan:
        times = LayerTimes.from_ms(self.graph, self.client_ms, self.client_ms)
        return local_plan(self.graph, times, self.link)

    def _plan_upload(self) -> UploadPlan:
        planner = get_planner(self.planner_name)
        plan = planner.plan(self._context(self._server_ready))
        self._done_parts = self._uploaded_parts = 0
        self._partitions = self._with_completion(plan.partitions, self._server_ready)
        return plan

    def _with_completion(
        self, partitions: Sequence[frozenset[str]], sent: frozenset[str]
    ) -> list[frozenset[str]]:
        """The strategy's partitions minus what cannot or need not go, plus a last one:
        whatever the strategy's horizon, the session may outlast it, so the layers that
        the best plan with everything uploaded runs on the server follow at the end (a
        no-op for ionn and all_at_once, which include them)."""
        never = set(self.refused) | set(self.local_only) | set(self.graph.inputs)
        parts = [p - never - sent for p in partitions]
        ctx = self._context(self._server_ready)
        best = ctx.best_plan(frozenset(self.graph.order) - never, link=self.link)
        rest = best.server_layers - never - sent - frozenset().union(*parts)
        return [p for p in (*parts, rest) if p]

    # -- background session: connect, upload, load ---------------------------------------

    async def _run_session(self) -> None:
        delay = self.config.backoff_initial_s
        while not self._closing:
            progress = (self.stats["sent_bytes"], self._done_parts)
            try:
                if self._conn is None or self._conn.closed:
                    self._connected.clear()
                    await self._connect_once()
                    self.stats["reconnects"] += 1
                await self._upload_all()
                await self._conn_closed()
            except asyncio.CancelledError:
                raise
            except (OSError, IonnError) as exc:
                if not self.config.reconnect:
                    logger.warning("edge session ended: %s", exc)
                    return
                logger.info("edge session interrupted (%s)", exc)
            if (self.stats["sent_bytes"], self._done_parts) != progress:
                # The attempt made progress: retry soon. One that failed without any
                # (e.g. a limit it keeps hitting) backs off up to backoff_max_s.
                delay = self.config.backoff_initial_s
            self._active = (
                _Active(self._local_plan(), frozenset()) if self._conn_down() else (self._active)
            )
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.config.backoff_max_s)

    def _conn_down(self) -> bool:
        return self._conn is None or self._conn.closed

    async def _conn_closed(self) -> None:
        """Wait for the connection to close; meanwhile (the upload is over) re-plan once
        a second as what was learned from queries fades (:mod:`.planner.learned`)."""
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
        if not self._fade_learned():
            return
        ready = self._server_ready
        plan = self._context(ready).best_plan(ready, link=self.link)
        if plan.server_layers != self._active.plan.server_layers:
            logger.info("learned costs faded: re-planning")
            await self._activate(ready, plan)

    async def _upload_all(self) -> None:
        conn = self._conn
        assert conn is not None
        if not self.config.upload or self.planner_name == "local":
            self._emit_progress(done=True)
            return
        self.upload_plan = await asyncio.to_thread(self._plan_upload)
        if self._server_ready:
            await self._activate(self._server_ready)
        # Pipeline: the next partition's blobs go up while the server loads (and both
        # sides compile for) the previous one; loads run one at a time, in plan order.
        loads: asyncio.Queue[frozenset[str] | None] = asyncio.Queue()
        loader = asyncio.create_task(self._load_in_order(conn, loads))
        try:
            index = 0
            while index < len(self._partitions):
                part = self._partitions[index]
                for name in sorted(part, key=self.graph.position):
                    await self._upload_layer(conn, name)
                    if loader.done():
                        loader.result()  # a failed load ends the session attempt
                loads.put_nowait(part)
                index += 1
                self._uploaded_parts = index
                await self._maybe_replan()
            loads.put_nowait(None)
            await loader
        finally:
            loader.cancel()
        self._emit_progress(done=True)

    async def _load_in_order(
        self, conn: AioConnection, loads: asyncio.Queue[frozenset[str] | None]
    ) -> None:
        finished = False
        while not finished:
            batch = [await loads.get()]
            while not loads.empty():  # the loader fell behind: load what is waiting at once
                batch.append(loads.get_nowait())
            finished = batch[-1] is None
            parts = [p for p in batch if p is not None]
            if parts:
                await self._load(conn, frozenset().union(*parts))
                self._done_parts += len(parts)
                self._emit_progress()

    async def _upload_layer(self, conn: AioConnection, name: str) -> None:
        """Send one layer's blob from the server's offset, in messages of at most
        ``_BLOB_PIECE`` bytes (and the peer's MAX_MESSAGE_SIZE): VGG16's first dense
        layer alone is 411 MB, above the 256 MiB default (protocol.md §10.5.1)."""
        digest, size = self.layer_blob[name]
        if digest is None or digest in self._held_blobs:
            return
        blob = memoryview(self.blobs[digest])
        offset = int(self._partial.get(digest, 0))
        piece = min(_BLOB_PIECE, conn.peer_settings[Setting.MAX_MESSAGE_SIZE])
        while True:
            n = min(piece, size - offset)
            started, written = time.monotonic(), conn.bytes_sent
            reply = await self._send_blob_piece(
                conn, digest, size, offset, blob[offset : offset + n]
            )
            if reply.get("m") == "error" and reply.get("code") == "offset_conflict":
                offset = int(reply.get("offset", 0))  # the server's offset is authoritative
                continue
            if reply.get("m") == "error":
                raise RemoteError(str(reply.get("code")), str(reply.get("message")), reply)
            # What the link carried meanwhile, queries included: they overtake the blob
            # and slow it, but the link is no slower for them (planned transfers use it).
            rate = self._bandwidth.add(conn.bytes_sent - written, time.monotonic() - started)
            if rate is not None:
                self.link = self.link.with_bandwidth(rate)
            self.stats["sent_bytes"] += n
            self.uploaded.add(digest)
            offset += n
            self._partial[digest] = offset
            if reply.get("complete") or offset >= size:
                break
            self._emit_progress()
        self._held_blobs.add(digest)
        self._emit_progress()

    async def _send_blob_piece(
        self, conn: AioConnection, digest: str, size: int, offset: int, body: memoryview
    ) -> Mapping[str, Any]:
        head = {
            "m": "blob",
            "model": self.model_digest,
            "sha256": digest,
            "size": size,
            "offset": offset,
            "body_len": len(body),
        }
        reply, _ = await self._request_with_body(
            conn,
            head,
            body,
            urgency=UPLOAD_URGENCY,
            incremental=True,
            codec=Codec.ZSTD_SHUFFLE4 if self._compress() else None,
            element_width=4,
        )
        return reply

    def _compress(self) -> bool:
        return self.link.bandwidth * 8 / 1e6 < self.config.compress_below_mbit

    async def _load(self, conn: AioConnection, part: frozenset[str]) -> None:
        self._fade_learned()
        target = self._server_ready | part
        plan = self._context(self._server_ready).best_plan(target, link=self.link)
        runs = [list(s.layers) for s in plan.segments if s.location == "server"]
        head = {
            "m": "load",
            "model": self.model_digest,
            "layers": sorted(part, key=self.graph.position),
            "prepare": runs[:16],
        }
        started = time.monotonic()
        reply = await self._request(conn, head, b"")
        loaded = time.monotonic()
        self._server_ready = frozenset(reply.get("layers_ready", [])) & frozenset(self.graph.order)
        await self._activate(self._server_ready, plan)
        logger.info(
            "partition of %d layers: server load %.2f s (it says %.0f ms), client compile %.2f s",
            len(part),
            loaded - started,
            float(reply.get("load_ms", 0.0)),
            time.monotonic() - loaded,
        )

    async def _activate(self, ready: frozenset[str], plan: ExecutionPlan | None = None) -> None:
        """Compile the client side of the best plan for ``ready``, then switch to it."""
        if plan is None or not plan.server_layers <= ready:
            plan = self._context(ready).best_plan(ready, link=self.link)
        pending = frozenset().union(*self._partitions) - ready
        await asyncio.to_thread(self._compile_client_side, plan, chunked=bool(pending))
        self._active = _Active(plan, ready)
        logger.info(
            "plan: %d server layers, predicted %.1f ms",
            len(plan.server_layers),
            plan.predicted_s * 1000,
        )
        # Fallback slices for the server segments are not compiled ahead: a failure is
        # rare, and compiling every plan's fallback would double the client's compile
        # work during the upload. A failed segment compiles its slice on demand.

    async def _maybe_replan(self) -> None:
        """Re-plan the rest of the upload when the measured bandwidth has moved by more
        than 30% from the one the plan assumed (at most every 5 s: planning costs CPU)."""
        now = time.monotonic()
        if self._planned_bandwidth is None:
            self._planned_bandwidth, self._planned_at = self.link.bandwidth, now
            return
        moved = abs(self.link.bandwidth / self._planned_bandwidth - 1) > 0.3
        done = self._uploaded_parts
        if not moved or now - self._planned_at < 5.0 or done >= len(self._partitions):
            return
        logger.info("bandwidth now %.1f Mbit/s: re-planning", self.link.bandwidth * 8e-6)
        self._planned_bandwidth, self._planned_at = self.link.bandwidth, now
        sent = self._server_ready.union(*self._partitions[:done])  # uploaded, maybe not loaded
        plan = await asyncio.to_thread(
            get_planner(self.planner_name).replan,
            self._context(self._server_ready),
            sent - self._server_ready,
            self.link,
            now - self._started,
        )
        self._partitions[done:] = self._with_completion(plan.partitions, sent)

    # -- progress ------------------------------------------------------------------------

    def _emit_progress(self, *, done: bool = False) -> None:
        self._progress.publish(
            upload_progress(
                self._partitions,
                self.layer_blob,
                self._held_blobs,
                self._partial,
                partitions_done=self._done_parts,
                layers_ready=len(self._server_ready),
                elapsed_s=time.monotonic() - self._started,
                bandwidth_mbit=self.link.bandwidth * 8e-6,
                pacing_mbit=self._pacing_mbit(),
                done=done,
            )
        )

    @property
    def last_progress(self) -> UploadProgress | None:
        """The latest upload progress event (None before the first)."""
        return self._progress.last

    def _pacing_mbit(self) -> float | None:
        pacer = None if self._conn is None else self._conn.pacer
        rate = None if pacer is None else pacer.pacing_rate
        return None if rate is None else rate * 8e-6

    def progress(self) -> AsyncIterator[UploadProgress]:
        """Upload progress events until the upload is done (or the client closes)."""
        return self._progress.events()

    async def wait_uploaded(self, timeout: float | None = None) -> None:
        """Wait until every planned partition is loaded on the server."""
        await self._progress.wait_done(timeout)

    # -- queries -------------------------------------------------------------------------

    async def infer(self, x: np.ndarray) -> np.ndarray | list[np.ndarray]:
        """The model's output for ``x`` (batch 1), computed collaboratively."""
        return (await self.infer_detailed(x)).output

    async def infer_detailed(self, x: np.ndarray) -> InferenceResult:
        """:meth:`infer` with the query's segments, timings and prediction. A query
        running a long local segment may switch, between two of its precompiled chunks,
        to a plan that layers landing meanwhile made faster (:meth:`_join`)."""
        feeds = self._check_input(x)
        plan = self._active.plan
        predicted_ms = plan.predicted_s * 1000.0
        started = time.perf_counter()
        deadline = time.monotonic() + self.config.query_timeout_s
        tensors: dict[TensorRef, np.ndarray] = dict(feeds)
        timings: list[SegmentTiming] = []
        segments, index, replans = plan.segments, 0, 0
        while index < len(segments):
            seg = segments[index]
            index += 1
            if seg.location == "server":
                timings.append(await self._server_segment(seg, tensors, deadline))
                continue
            chunks = self._chunks.get(seg.layers, (seg.layers,))
            due: float | None = None
            for i, chunk in enumerate(chunks):
                t0 = time.perf_counter()
                out, due = await self._run_local(chunk, tensors, due)
                tensors.update(out)
                timings.append(SegmentTiming("client", chunk, (time.perf_counter() - t0) * 1e3))
                if i + 1 == len(chunks) or self._active.plan is plan:
                    continue
                plan = self._active.plan  # considered once, whatever the answer
                rest = (Segment("client", sum(chunks[i + 1 :], ())), *segments[index:])
                join = self._join(plan, rest, tensors)
                if join is not None:
                    segments, index, replans = join.plan.segments, join.index, replans + 1
                    break
        outputs = [tensors[r] for r in self.graph.outputs]
        return InferenceResult(
            output=outputs[0] if len(outputs) == 1 else outputs,
            segments=tuple(timings),
            total_ms=(time.perf_counter() - started) * 1000.0,
            predicted_ms=predicted_ms,
            fallback=any(t.fallback for t in timings),
            replans=replans,
        )

    def _join(
        self,
        newer: ExecutionPlan,
        rest: Sequence[Segment],
        tensors: Mapping[TensorRef, np.ndarray],
    ) -> Continuation | None:
        """Where to join ``newer`` from here, if that beats finishing ``rest``
        (the current course): only at segments whose slices are compiled on both sides
        and whose inputs this query holds (planner.midquery)."""
        coster = self._coster.priced(self.client_ms, self._server_times(), self.link)
        remaining = {n for s in rest for n in s.layers}
        return choose_continuation(coster, rest, newer, tensors.keys(), remaining)

    async def _server_segment(
        self, seg: Segment, tensors: dict[TensorRef, np.ndarray], deadline: float
    ) -> SegmentTiming:
        """Run ``seg`` on the server, or locally if the server fails; adds its outputs
        to ``tensors``."""
        t0 = time.perf_counter()
        fallback = False
        server_ms: float | None = None
        try:
            out, server_ms = await self._run_remote(seg, tensors, deadline)
        except (
            ConnectionClosedError,
            StreamResetError,
            RemoteError,
            TensorError,
            TimeoutError,
            OSError,
        ) as exc:
            logger.warning("server segment failed (%s): finishing locally", exc)
            self.stats["fallbacks"] += 1
            fallback = True
            if not isinstance(exc, RemoteError | TensorError):
                self._active = _Active(self._local_plan(), frozenset())
            out, _ = await self._run_local(seg.layers, tensors)
        tensors.update(out)
        ms = (time.perf_counter() - t0) * 1e3
        return SegmentTiming("server", seg.layers, ms, fallback, None if fallback else server_ms)

    def _observe_round_trip(
        self, seconds: float, up_bytes: int, down_bytes: int, reply: Mapping[str, Any]
    ) -> float | None:
        """Learn the *effective* round-trip cost of a server segment: what a query pays
        beyond the server's compute and the raw transfer time (queueing behind the upload
        at the bottleneck, framing, scheduling). Plans charge it per round trip, so a
        loaded link leads to plans with fewer client/server transitions."""
        server_ms = reply.get("server_ms")
        if not isinstance(server_ms, int | float) or not 0 <= server_ms < 1e7:
            return None
        transfer = up_bytes / self.link.bandwidth + down_bytes / self.link.down
        # The server's cost model may have been calibrated on a busier (or idler) machine:
        # scale its predictions by what the server really takes for these layers.
        ran = reply.get("ran")
        ratio = None
        if isinstance(ran, list) and ran:
            predicted = sum(self.server_ms.get(str(n), 0.0) for n in ran)
            if predicted > 0.05 and server_ms > 0:
                ratio = server_ms / predicted
        self._learned.observe(
            overhead_s=seconds - server_ms / 1000.0 - transfer,
            scale_ratio=ratio,
            now=time.monotonic(),
        )
        self._take_learned_rtt()
        return float(server_ms)

    def _take_learned_rtt(self) -> None:
        """Plans charge the learned effective round trip (planner.learned)."""
        self.link = replace(self.link, rtt_s=self._learned.rtt_s)

    def _fade_learned(self) -> bool:
        """Let what queries taught fade toward the priors; True if it moved enough that
        the best plan may have changed."""
        if not self._learned.fade(time.monotonic()):
            return False
        self._take_learned_rtt()
        return True

    def _check_input(self, x: object) -> dict[TensorRef, np.ndarray]:
        names = self.graph.inputs
        arrays = x if isinstance(x, Mapping) else {names[0]: x}
        if set(arrays) != set(names):
            raise TensorError(f"model inputs: expected {list(names)}, got {sorted(arrays)}")
        feeds = {}
        for name in names:
            arr = np.asarray(arrays[name])
            want = (1, *self.graph[name].output_shapes[0])
            if arr.shape != want:
                raise TensorError(f"input {name!r}: expected shape {want}, got {arr.shape}")
            if arr.dtype != np.float32:
                if not np.issubdtype(arr.dtype, np.number):
                    raise TensorError(f"input {name!r}: expected float32, got {arr.dtype}")
                arr = arr.astype(np.float32)
            feeds[TensorRef(name, 0)] = arr
        return feeds

    async def _run_local(
        self,
        layers: Sequence[str],
        tensors: Mapping[TensorRef, np.ndarray],
        due: float | None = None,
    ) -> tuple[dict[TensorRef, np.ndarray], float]:
        """Run ``layers`` here; returns their outputs and, for an emulated slower device
        (``slowdown`` > 1), when the device would have finished them (perf_counter)."""
        compiled = self.executor.cached(layers)
        if compiled is None:
            compiled = await asyncio.to_thread(self.executor.prepare, layers)
        feeds = {r: tensors[r] for r in compiled.inputs}
        started = time.perf_counter()
        out: dict[TensorRef, np.ndarray] = await asyncio.to_thread(compiled, feeds)
        if self.config.slowdown <= 1:
            return out, time.perf_counter()
        # The emulated device runs at its own, steady speed: the layers last what the
        # (slowed) profile says. ``due`` carries the device's clock from the previous
        # chunk of the same segment, so a host hiccup in one chunk is absorbed by the
        # slack of the others, as it would be in one call; stretching measured times
        # instead would multiply every hiccup of this shared host by the factor.
        due = (started if due is None else due) + sum(self.client_ms[n] for n in layers) / 1e3
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        return out, due

    async def _run_remote(
        self, seg: Segment, tensors: Mapping[TensorRef, np.ndarray], deadline: float
    ) -> tuple[dict[TensorRef, np.ndarray], float | None]:
        """The segment's outputs and the compute time the server reported."""
        conn = self._conn
        if conn is None or conn.closed:
            raise ConnectionClosedError(
                "not connected to the edge server", error_code=ErrorCode.NO_ERROR, remote=False
            )
        ins, outs = self.graph.boundary(seg.layers)
        descs, parts = encode_tensors({str(r): tensors[r] for r in ins})
        body = b"".join(parts)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("query deadline passed before its server segment")
        self._qid += 1
        head = {
            "m": "query",
            "model": self.model_digest,
            "qid": f"q{self._qid}",
            "deadline_ms": max(1, int(remaining * 1000)),
            "run": list(seg.layers),
            "tensors": descs,
            "body_len": len(body),
        }
        codec = Codec.ZSTD if self._compress() else None
        sent = time.monotonic()
        reply, data = await asyncio.wait_for(
            self._request_with_body(conn, head, body, urgency=QUERY_URGENCY, codec=codec),
            remaining,
        )
        if reply.get("m") == "error":
            raise RemoteError(str(reply.get("code")), str(reply.get("message")), reply)
        server_ms = self._observe_round_trip(time.monotonic() - sent, len(body), len(data), reply)
        expected = {str(r): (1, *self.graph[r.layer].output_shapes[r.index]) for r in outs}
        decoded = decode_tensors(
            reply.get("tensors"), data, limits=self.config.limits, expected=expected
        )
        return {TensorRef.parse(k): v for k, v in decoded.items()}, server_ms
