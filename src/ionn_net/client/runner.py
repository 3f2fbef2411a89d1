"""The query loop: :class:`QueryRunner` runs each query's segments, locally and on the
server, and guarantees exactly one result (protocol.md §10.7, §10.8).

Each query starts with the plan active at that moment (``PlanState.active``, or for a
query that must be exact ``PlanState.active_exact``, whose server layers are all exact).
Its client segments run as their precompiled chunks; between two chunks it may join a plan
that became active meanwhile (:mod:`ionn_net.planner.midquery`). A server segment that
fails (connection lost, reset, timeout, an ``error``, a malformed result, or an exact
query's result computed on base-stage weights, §10.12.5) is finished locally from the
tensors the query holds, once; a lost connection also drops the plan to local until the
upload session activates one again. A result says which server layers ran on base-stage
weights; the query reports itself approximate then (``InferenceResult.exact``).

It reads the plan state and the upload session's connection, and changes the plan state
only through two of its methods: ``observe_round_trip`` (what each server segment taught)
and ``drop_to_local``. ``stats["fallbacks"]`` is its counter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import numpy as np

from ionn_net.aio import ConnectionClosedError, StreamResetError
from ionn_net.client.plan_state import ActivePlan, PlanState
from ionn_net.client.prepare import PreparedModel
from ionn_net.client.session import UploadSession
from ionn_net.client.staged import PRECISION_LABEL
from ionn_net.client.types import ClientConfig, InferenceResult, SegmentTiming
from ionn_net.errors import OffloadError, TensorError
from ionn_net.messages import (
    QUERY_URGENCY,
    Query,
    RemoteError,
    RequestError,
    Result,
    UnexpectedReply,
    parse_reply,
)
from ionn_net.model.graph import TensorRef
from ionn_net.planner.execution import ExecutionPlan, Segment
from ionn_net.planner.midquery import Continuation, choose_continuation, split_at
from ionn_net.proto import Codec, ErrorCode
from ionn_net.tensors import boundary_signature, decode_tensors, encode_tensors

__all__ = ["ApproximateResultError", "LocalRun", "QueryRunner"]

logger = logging.getLogger("ionn_net.client")

Tensors = dict[TensorRef, np.ndarray]
#: ``(layers, tensors, due) -> (their outputs, when the emulated device finished them)``
LocalRun = Callable[
    [Sequence[str], Mapping[TensorRef, np.ndarray], float | None],
    Awaitable[tuple[Tensors, float]],
]


class ApproximateResultError(OffloadError):
    """A query that must be exact got a result computed on base-stage weights
    (protocol.md §10.12.5): the client does not use it and finishes the segment here."""


#: What a failed server segment raises: the query goes on locally.
_SERVER_FAILURES = (
    ApproximateResultError,
    ConnectionClosedError,
    StreamResetError,
    RemoteError,
    RequestError,
    UnexpectedReply,
    TensorError,
    TimeoutError,
    OSError,
)
#: Failures where the server answered (badly): the plan stays, the connection works.
_ANSWERED = (RemoteError, RequestError, UnexpectedReply, TensorError, ApproximateResultError)


class QueryRunner:
    """Runs queries (see the module docstring).

    ``run_local`` runs a list of layers on this device: :meth:`execute_locally` by
    default. It is looked up for every chunk, so a test may wrap it to act between two
    chunks of a running query.
    """

    def __init__(
        self,
        *,
        prepared: PreparedModel,
        state: PlanState,
        session: UploadSession,
        config: ClientConfig,
        stats: dict[str, int],
    ) -> None:
        self._prepared = prepared
        self._state = state
        self._session = session
        self._config = config
        self._stats = stats
        self._qid = 0
        self.run_local: LocalRun = self.execute_locally

    async def infer(self, x: object, *, exact: bool | None = None) -> InferenceResult:
        """One query (batch 1): its output, segments, timings, prediction and precision.
        ``exact`` (default: unless the upload is precision-first) runs it only on exact
        weights."""
        feeds = self._check_input(x)
        exact = self._config.precision == "exact" if exact is None else bool(exact)
        plan = self._view(exact).plan
        predicted_ms = plan.predicted_s * 1000.0
        started = time.perf_counter()
        deadline = time.monotonic() + self._config.query_timeout_s
        tensors: Tensors = dict(feeds)
        timings: list[SegmentTiming] = []
        approximate: set[str] = set()
        segments, index, replans = plan.segments, 0, 0
        while index < len(segments):
            seg = segments[index]
            index += 1
            if seg.location == "server":
                timings.append(
                    await self._server_segment(seg, tensors, deadline, exact, approximate)
                )
                continue
            plan, join = await self._client_segment(
                seg, plan, segments[index:], tensors, timings, exact=exact
            )
            if join is not None:
                segments, index, replans = join.plan.segments, join.index, replans + 1
        outputs = [tensors[r] for r in self._prepared.graph.outputs]
        label = PRECISION_LABEL.get(self._prepared.precision, "base")
        return InferenceResult(
            output=outputs[0] if len(outputs) == 1 else outputs,
            segments=tuple(timings),
            total_ms=(time.perf_counter() - started) * 1000.0,
            predicted_ms=predicted_ms,
            fallback=any(t.fallback for t in timings),
            replans=replans,
            exact=not approximate,
            precision=label if approximate else "exact",
        )

    def _view(self, exact: bool) -> ActivePlan:
        """The plan a query starts (and may join) with: an exact one for exact queries."""
        return self._state.active_exact if exact else self._state.active

    async def _client_segment(
        self,
        seg: Segment,
        plan: ExecutionPlan,
        after: Sequence[Segment],
        tensors: Tensors,
        timings: list[SegmentTiming],
        *,
        exact: bool,
    ) -> tuple[ExecutionPlan, Continuation | None]:
        """Run ``seg`` chunk by chunk. After each chunk but the last, a plan activated
        meanwhile is considered once, whatever the answer: joining it (the returned
        continuation) leaves the rest of ``seg`` and ``after`` behind."""
        chunks = self._state.chunks_of(seg.layers)
        due: float | None = None
        for i, chunk in enumerate(chunks):
            t0 = time.perf_counter()
            out, due = await self.run_local(chunk, tensors, due)
            tensors.update(out)
            timings.append(SegmentTiming("client", chunk, (time.perf_counter() - t0) * 1e3))
            if i + 1 == len(chunks) or self._view(exact).plan is plan:
                continue
            plan = self._view(exact).plan
            rest = (Segment("client", sum(chunks[i + 1 :], ())), *after)
            join = self._join(plan, rest, tensors)
            if join is not None:
                return plan, join
        return plan, None

    def _join(
        self,
        newer: ExecutionPlan,
        rest: Sequence[Segment],
        tensors: Mapping[TensorRef, np.ndarray],
    ) -> Continuation | None:
        """Where to join ``newer`` from here, if that beats finishing ``rest``
        (the current course): only at segments whose slices are compiled on both sides
        and whose inputs this query holds (planner.midquery)."""
        remaining = {n for s in rest for n in s.layers}
        return choose_continuation(self._state.coster(), rest, newer, tensors.keys(), remaining)

    async def _server_segment(
        self, seg: Segment, tensors: Tensors, deadline: float, exact: bool, approximate: set[str]
    ) -> SegmentTiming:
        """Run ``seg`` on the server, or locally if the server fails; adds its outputs
        to ``tensors`` and the layers that ran on base-stage weights to ``approximate``."""
        t0 = time.perf_counter()
        fallback = False
        server_ms: float | None = None
        try:
            out, server_ms, ran_base = await self._run_remote(seg, tensors, deadline, exact)
            approximate.update(ran_base)
        except _SERVER_FAILURES as exc:
            logger.warning("server segment failed (%s): finishing locally", exc)
            self._stats["fallbacks"] += 1
            fallback = True
            if not isinstance(exc, _ANSWERED):
                self._state.drop_to_local()
            await self._finish_locally(seg.layers, tensors)
        else:
            tensors.update(out)
        ms = (time.perf_counter() - t0) * 1e3
        return SegmentTiming("server", seg.layers, ms, fallback, None if fallback else server_ms)

    def fallback_pieces(self, layers: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
        """The pieces a failed server segment of ``layers`` runs in here: cut on the
        model's chunk grid, whose chunks the local plan compiled, so at most the two end
        pieces compile when it fails. Compiled whole, a long segment cost seconds of
        tracing first (3.4 s for 141 layers of ResNet50, a query in flight at a move)."""
        return split_at(layers, self._prepared.grid_ends)  # no grid: one piece

    async def _finish_locally(self, layers: tuple[str, ...], tensors: Tensors) -> None:
        due: float | None = None
        for piece in self.fallback_pieces(layers):
            out, due = await self.run_local(piece, tensors, due)
            tensors.update(out)

    def _check_input(self, x: object) -> Tensors:
        graph = self._prepared.graph
        names = graph.inputs
        arrays = x if isinstance(x, Mapping) else {names[0]: x}
        if set(arrays) != set(names):
            raise TensorError(f"model inputs: expected {list(names)}, got {sorted(arrays)}")
        feeds = {}
        for name in names:
            arr = np.asarray(arrays[name])
            want = (1, *graph[name].output_shapes[0])
            if arr.shape != want:
                raise TensorError(f"input {name!r}: expected shape {want}, got {arr.shape}")
            if arr.dtype != np.float32:
                if not np.issubdtype(arr.dtype, np.number):
                    raise TensorError(f"input {name!r}: expected float32, got {arr.dtype}")
                arr = arr.astype(np.float32)
            feeds[TensorRef(name, 0)] = arr
        return feeds

    async def execute_locally(
        self,
        layers: Sequence[str],
        tensors: Mapping[TensorRef, np.ndarray],
        due: float | None = None,
    ) -> tuple[Tensors, float]:
        """Run ``layers`` here; returns their outputs and, for an emulated slower device
        (``slowdown`` > 1), when the device would have finished them (perf_counter)."""
        executor = self._prepared.executor
        compiled = executor.cached(layers)
        if compiled is None:
            compiled = await asyncio.to_thread(executor.prepare, layers)
        feeds = {r: tensors[r] for r in compiled.inputs}
        started = time.perf_counter()
        out: Tensors = await asyncio.to_thread(compiled, feeds)
        if self._config.slowdown <= 1:
            return out, time.perf_counter()
        # The emulated device runs at its own, steady speed: the layers last what the
        # (slowed) profile says. ``due`` carries the device's clock from the previous
        # chunk of the same segment, so a host hiccup in one chunk is absorbed by the
        # slack of the others, as it would be in one call; stretching measured times
        # instead would multiply every hiccup of this shared host by the factor.
        client_ms = self._state.client_ms
        due = (started if due is None else due) + sum(client_ms[n] for n in layers) / 1e3
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        return out, due

    async def _run_remote(
        self, seg: Segment, tensors: Mapping[TensorRef, np.ndarray], deadline: float, exact: bool
    ) -> tuple[Tensors, float | None, tuple[str, ...]]:
        """The segment's outputs, the compute time the server reported (§10.7) and the
        layers that ran on base-stage weights (§10.12.5: an exact query refuses them)."""
        conn = self._session.connection
        if conn is None or conn.closed:
            raise ConnectionClosedError(
                "not connected to the edge server", error_code=ErrorCode.NO_ERROR, remote=False
            )
        graph, state = self._prepared.graph, self._state
        ins, outs = graph.boundary(seg.layers)
        descs, parts = encode_tensors({str(r): tensors[r] for r in ins})
        body = b"".join(parts)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("query deadline passed before its server segment")
        self._qid += 1
        query = Query(
            model=self._prepared.model_digest,
            qid=f"q{self._qid}",
            deadline_ms=max(1, int(remaining * 1000)),
            run=tuple(seg.layers),
            tensors=descs,
            body_len=len(body),
            exact=exact and bool(self._prepared.staged),
        )
        codec = Codec.ZSTD if state.slower_than(self._config.compress_below_mbit) else None
        limits = self._config.limits
        sent, base_when_sent = time.monotonic(), state.base
        head, data = await asyncio.wait_for(
            conn.request(
                query.to_head(),
                body,
                limit=limits.max_message_size,
                urgency=QUERY_URGENCY,
                codec=codec,
            ),
            remaining,
        )
        result = parse_reply(head, Result)
        ran_base = result.ran_base or ()
        if ran_base:
            state.observe_base(ran_base, base_when_sent)
            if exact:
                raise ApproximateResultError(f"an exact query ran at base precision: {ran_base}")
        server_ms = state.observe_round_trip(
            time.monotonic() - sent,
            len(body),
            len(data),
            server_ms=result.server_ms,
            ran=result.ran,
        )
        expected = boundary_signature(graph, outs)
        decoded = decode_tensors(result.tensors, data, limits=limits, expected=expected)
        return {TensorRef.parse(k): v for k, v in decoded.items()}, server_ms, ran_base
