"""The one place the client's planning state lives and changes: :class:`PlanState`.

It holds what both of the client's loops plan with, and nothing else does:

* the link estimate and what queries taught (the learned server speed and round trip),
* the server's costs (its cost model, §10.10),
* the server's readiness: layers ready (and which of them at base precision, §10.12.4),
  blobs held, partial offsets, layers it refused and layers this client keeps local,
* the upload: the strategy's plan and its partitions, how many went up and were loaded,
* the active plan (the one queries start with) with its ready set, the plan exact queries
  start with (``active_exact``: the last active plan whose server layers were all exact;
  the same plan when the upload is exact), and the table of compiled chunks of client
  segments.

A result that says layers ran at base (§10.12.5) is believed over a ``load_ok`` that said
they were exact before its query went out: exact queries then start with no plan that runs
them on the server. Not over a newer ``load_ok``: a query runs on the weights it started
with (§10.12.4), so a query sent while a layer was at base may report it at base after the
``load_ok`` that made it exact, and that says nothing about the layer now.

Every field is set in ``__init__``; outside code reads them through read-only
properties and changes them only through the methods here, always on the event loop.
Work done in worker threads (planning, compiling) returns values that the loop then
stores through these methods. The upload session (:mod:`.session`) adopts what the
server says, plans and activates; the query runner (:mod:`.runner`) learns from each
server segment and drops to the local plan when the server fails.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

from ionn_net.client.prepare import ChunkTable, PreparedModel
from ionn_net.client.server_times import ServerTimes
from ionn_net.errors import PlannerError
from ionn_net.messages import Holdings
from ionn_net.model.graph import LayerGraph
from ionn_net.planner.costmodel import ServerCostModel
from ionn_net.planner.execution import ExecutionPlan, LayerTimes, local_plan
from ionn_net.planner.learned import BandwidthMeter, LearnedCosts
from ionn_net.planner.link import Link
from ionn_net.planner.midquery import SegmentCoster
from ionn_net.planner.workload import PlanningContext, QueryPattern, UploadPlan

__all__ = ["ActivePlan", "PlanState", "with_completion"]

logger = logging.getLogger("ionn_net.client")

#: Server time assumed for a layer the server must never run (refused or local-only).
NEVER_MS = 1e9
#: Re-plan the upload when the link moved by more than this fraction ...
_REPLAN_MOVE = 0.3
#: ... at most this often (planning costs CPU).
_REPLAN_EVERY_S = 5.0


@dataclass(frozen=True, slots=True)
class ActivePlan:
    """The plan queries start with now, and the server layers it was chosen for; its
    slices exist on both sides."""

    plan: ExecutionPlan
    ready: frozenset[str]


def with_completion(
    ctx: PlanningContext,
    partitions: Sequence[frozenset[str]],
    sent: frozenset[str],
    never: Collection[str],
) -> list[frozenset[str]]:
    """A strategy's partitions minus what cannot or need not go, plus a last one:
    whatever the strategy's horizon, the session may outlast it, so the layers that the
    best plan with everything uploaded runs on the server follow at the end (a no-op for
    ionn and all_at_once, which include them). Pure: runs in a worker thread."""
    parts = [p - set(never) - sent for p in partitions]
    best = ctx.best_plan(frozenset(ctx.graph.order) - set(never), link=ctx.link)
    rest = best.server_layers - set(never) - sent - frozenset().union(*parts)
    return [p for p in (*parts, rest) if p]


class PlanState:
    """What the client plans with (module docstring); changed only by its methods, on the loop."""

    def __init__(
        self,
        prepared: PreparedModel,
        *,
        pattern: QueryPattern,
        assumed_mbit: float,
        slowdown: float,
    ) -> None:
        self._graph = prepared.graph
        self._stage_costs = prepared.stage_costs
        self._client_ms: Mapping[str, float] = MappingProxyType(dict(prepared.client_ms))
        self._pattern = pattern
        self._slowdown = slowdown
        # the link and what queries taught
        self._link = Link.from_mbit(assumed_mbit, 1.0)
        self._learned = LearnedCosts()
        self._bandwidth = BandwidthMeter()
        # the server's times per layer and their sources (§10.10, §10.11)
        self._times = ServerTimes(self._assumed_server_ms())
        self._server_ms = self._times.ms  # the same dict, updated in place
        self._load_ms: dict[str, float] = {}
        self._partition_overhead_ms = 0.0
        self._cost_model_id = ""
        # the server's readiness
        self._ready = self._base = frozenset[str]()  # and which of them at base (§10.12.4)
        self._held_blobs: set[str] = set()
        self._public_blobs: frozenset[str] = frozenset()
        self._partial: dict[str, int] = {}
        self._refused: dict[str, str] = {}
        self._local_only: dict[str, str] = dict(prepared.local_only)
        # the upload
        self._upload_plan: UploadPlan | None = None
        self._partitions: list[frozenset[str]] = []
        self._uploaded_parts = self._loaded_parts = 0
        self._planned_bandwidth: float | None = None
        self._planned_at = 0.0
        self._loads_in_flight = 0
        # the active plan and the compiled chunks of client segments
        self._chunks: dict[tuple[str, ...], tuple[tuple[str, ...], ...]] = {}
        self._coster = SegmentCoster(self._graph, self._client_ms, {}, self._link)
        self._active = ActivePlan(self.local_plan(), frozenset())
        self._active_exact = self._active

    # -- reading ---------------------------------------------------------------------

    @property
    def graph(self) -> LayerGraph:
        return self._graph

    @property
    def client_ms(self) -> Mapping[str, float]:
        """Per-layer milliseconds of this (emulated) device."""
        return self._client_ms

    @property
    def link(self) -> Link:
        """The link estimate: measured bandwidth, learned effective round trip."""
        return self._link

    @property
    def learned(self) -> LearnedCosts:
        """Server speed and round trip learned from queries (tests may set half_life_s)."""
        return self._learned

    @property
    def server_ms(self) -> Mapping[str, float]:
        """Per-layer server milliseconds of the server's cost model (§10.10)."""
        return MappingProxyType(self._server_ms)

    @property
    def load_ms(self) -> Mapping[str, float]:
        return MappingProxyType(self._load_ms)

    @property
    def timings(self) -> ServerTimes:
        """The server's times of this model's layers and their sources (§10.11)."""
        return self._times

    @property
    def partition_overhead_ms(self) -> float:
        return self._partition_overhead_ms

    @property
    def cost_model_id(self) -> str:
        """Names the cost model adopted last (equal for equal documents; "" before one)."""
        return self._cost_model_id

    @property
    def ready(self) -> frozenset[str]:
        """Layers the server confirmed ready (§10.6)."""
        return self._ready

    @property
    def base(self) -> frozenset[str]:
        """Ready layers the server runs on base-stage weights (§10.12.4)."""
        return self._base

    @property
    def usable(self) -> frozenset[str]:
        """Ready layers plans may run on the server: exact ones unless precision-first."""
        return self._ready if self._stage_costs is not None else self._ready - self._base

    @property
    def held_blobs(self) -> frozenset[str]:
        return frozenset(self._held_blobs)

    @property
    def public_blobs(self) -> frozenset[str]:
        """Blobs the server holds publicly (§10.3.3): never uploaded, loadable at once."""
        return self._public_blobs

    def needs_upload(self, digest: str | None) -> bool:
        """The server holds none of blob ``digest``'s bytes for this session or publicly."""
        return digest is not None and not (
            digest in self._held_blobs or digest in self._public_blobs
        )

    def loadable_now(
        self, layer_blob: Mapping[str, tuple[str | None, int]], never: Collection[str]
    ) -> frozenset[str]:
        """Layers not ready that the server can load without any upload: those whose blob
        it holds (publicly or for this session), and the weightless layers fed only by
        them, by ready layers or by model inputs (topological order)."""
        return _loadable(self._graph, self._ready, frozenset(never), layer_blob, self.needs_upload)

    @property
    def partial(self) -> Mapping[str, int]:
        """Blob digest -> bytes of it the server holds."""
        return MappingProxyType(self._partial)

    @property
    def refused(self) -> Mapping[str, str]:
        """Layers the server will not run, and why (§10.3.3)."""
        return MappingProxyType(self._refused)

    @property
    def local_only(self) -> Mapping[str, str]:
        """Layers no server may run (outside the allowlist), and why."""
        return MappingProxyType(self._local_only)

    @property
    def upload_plan(self) -> UploadPlan | None:
        """The strategy's upload plan (None until the upload is planned)."""
        return self._upload_plan

    @property
    def partitions(self) -> tuple[frozenset[str], ...]:
        """The partitions to upload, in order (re-planning may change those not sent)."""
        return tuple(self._partitions)

    @property
    def uploaded_parts(self) -> int:
        """Partitions whose blobs have gone up."""
        return self._uploaded_parts

    @property
    def loaded_parts(self) -> int:
        """Partitions the server has loaded."""
        return self._loaded_parts

    @property
    def active(self) -> ActivePlan:
        return self._active

    @property
    def active_exact(self) -> ActivePlan:
        """The plan an exact query starts with: no server layer of it is at base."""
        return self._active_exact

    def chunks_of(self, layers: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
        """The compiled chunks of the client segment ``layers`` (itself if unchunked)."""
        return self._chunks.get(layers, (layers,))

    def never(self) -> frozenset[str]:
        """Layers the server must never run: refused or local-only."""
        return frozenset(self._refused) | frozenset(self._local_only)

    def server_times(self) -> dict[str, float]:
        """Per-layer server milliseconds planned with: the cost model scaled by what
        queries taught, prohibitive for layers the server must never run."""
        never = self.never()
        k = self._learned.server_scale
        return {n: (NEVER_MS if n in never else v * k) for n, v in self._server_ms.items()}

    def context(self, held: frozenset[str] | None = None) -> PlanningContext:
        """A snapshot to plan with (``held``: layers on the server; default: ready)."""
        return PlanningContext(
            graph=self._graph,
            client_ms=self._client_ms,
            server_ms=self.server_times(),
            link=self._link,
            load_ms=dict(self._load_ms),
            held=self._ready if held is None else held,
            pattern=self._pattern,
            partition_overhead_ms=self._partition_overhead_ms,
            stages=self._stage_costs,
        )

    def best_plan(
        self, usable: frozenset[str], *, held: frozenset[str] | None = None
    ) -> ExecutionPlan:
        """The best execution plan once ``usable`` layers are on the server."""
        return self.context(held).best_plan(usable, link=self._link)

    def local_plan(self) -> ExecutionPlan:
        times = LayerTimes.from_ms(self._graph, self._client_ms, self._client_ms)
        return local_plan(self._graph, times, self._link)

    def coster(self) -> SegmentCoster:
        """Prices segments with the current times and link (planner.midquery)."""
        return self._coster.priced(self._client_ms, self.server_times(), self._link)

    def pending(self, ready: frozenset[str]) -> frozenset[str]:
        """Planned layers not in ``ready``: while any remain, plans are chunked."""
        return frozenset().union(*self._partitions) - ready

    def sent(self) -> frozenset[str]:
        """Layers ready or uploaded (maybe not loaded yet)."""
        return self._ready.union(*self._partitions[: self._uploaded_parts])

    def slower_than(self, mbit: float) -> bool:
        """The link estimate is below ``mbit`` Mbit/s."""
        return self._link.bandwidth * 8 / 1e6 < mbit

    # -- what the server said ----------------------------------------------------------

    def adopt_cost_model(self, doc: object) -> None:
        """§10.10: the server's cost model, or (invalid) a 10x faster server."""
        self._cost_model_id = hashlib.sha256(repr(doc).encode()).hexdigest()
        try:
            cost = ServerCostModel.from_doc(doc)
            self._times.adopt_model(cost.exec_profile(self._graph), "cost_model")
            self._load_ms = cost.load_profile(self._graph)
            self._partition_overhead_ms = cost.partition_overhead_ms
        except PlannerError as exc:
            logger.warning("invalid server cost model (%s): assuming a 10x faster server", exc)
            self._times.adopt_model(self._assumed_server_ms(), "assumed")
            self._load_ms = {}
            self._partition_overhead_ms = 0.0

    def _assumed_server_ms(self) -> dict[str, float]:
        return {n: v / self._slowdown / 10 for n, v in self._client_ms.items()}

    def adopt_holdings(self, holdings: Holdings) -> None:
        """What the server holds for this session (§10.3.3), after a (re)connect."""
        self._held_blobs = set(holdings.blobs_held)
        self._public_blobs = frozenset(holdings.blobs_public)
        self._partial = dict(holdings.partial)
        self._ready = frozenset(holdings.layers_ready) & frozenset(self._graph.order)
        self._base = frozenset(holdings.layers_base or ()) & self._ready
        self._refused = dict(holdings.refused)

    def adopt_ready(
        self, layers_ready: Collection[str], layers_base: Collection[str] | None = None
    ) -> None:
        """The layers ready after a load (§10.6), and which of them at base (§10.12.4)."""
        self._ready = frozenset(layers_ready) & frozenset(self._graph.order)
        self._base = frozenset(layers_base or ()) & self._ready
        self._take_exact(self._active)

    def observe_base(self, layers: Collection[str], base_when_sent: Collection[str]) -> None:
        """A result says ``layers`` ran at base (§10.12.5); ``base_when_sent``: :attr:`base`
        when its query went out. Believed for the layers exact then (module docstring)."""
        found = (frozenset(layers) - frozenset(base_when_sent)) & self._ready
        self._base |= found
        if self._active_exact.plan.server_layers & found:
            self._active_exact = ActivePlan(self.local_plan(), frozenset())

    # -- the upload ------------------------------------------------------------------

    def start_upload(self, plan: UploadPlan, partitions: Sequence[frozenset[str]]) -> None:
        """A new upload: the strategy's plan and the partitions to send."""
        self._upload_plan = plan
        self._partitions = list(partitions)
        self._uploaded_parts = self._loaded_parts = 0
        self._times.changed = False  # planned with the times known now

    def replan_due(self, now: float) -> bool:
        """True (once) when the rest of the upload should be re-planned: partitions left, and
        the bandwidth moved over 30% from the plan's (every 5 s at most) or the times changed."""
        bandwidth = self._link.bandwidth
        left = self._uploaded_parts < len(self._partitions)
        due = _replan_due(bandwidth, self._planned_bandwidth, now - self._planned_at, left)
        if self._planned_bandwidth is not None and left and self._times.take_change():
            due = True  # the server's measured times changed (§10.11): re-plan once
        if due or self._planned_bandwidth is None:
            self._planned_bandwidth, self._planned_at = bandwidth, now
        return due

    def replace_rest(self, rest: Sequence[frozenset[str]], plan: UploadPlan | None = None) -> None:
        """Re-planned partitions for what has not gone up (``plan``: the strategy's)."""
        self._partitions[self._uploaded_parts :] = rest
        self._upload_plan = plan or self._upload_plan

    def mark_uploaded(self, count: int) -> None:
        """The first ``count`` partitions have gone up."""
        self._uploaded_parts = count

    def load_started(self) -> None:
        """A load request is on its way (§10.6): the server builds and compiles on the
        CPU its queries use, until :meth:`load_finished`."""
        self._loads_in_flight += 1

    def load_finished(self) -> None:
        self._loads_in_flight = max(0, self._loads_in_flight - 1)

    def mark_loaded(self, count: int) -> None:
        """``count`` more partitions are loaded on the server."""
        self._loaded_parts += count

    def record_piece(self, digest: str, offset: int) -> None:
        """The server holds ``offset`` bytes of blob ``digest`` (§10.5)."""
        self._partial[digest] = offset

    def record_held(self, digest: str) -> None:
        """The server holds all of blob ``digest``."""
        self._held_blobs.add(digest)

    # -- learning ------------------------------------------------------------------------

    def set_ping(self, rtt_s: float) -> None:
        """A new prior round trip, after a (re)connect."""
        self._learned.set_ping(rtt_s)
        self._take_learned_rtt()

    def observe_transfer(self, nbytes: int, seconds: float) -> None:
        """What the connection carried while a blob piece went up, queries included: they
        slow the blob, not the link (planned transfers use all of it)."""
        rate = self._bandwidth.add(nbytes, seconds)
        if rate is not None:
            self._link = self._link.with_bandwidth(rate)

    def observe_round_trip(
        self,
        seconds: float,
        up_bytes: int,
        down_bytes: int,
        *,
        server_ms: float,
        ran: Sequence[str],
    ) -> float | None:
        """Learn the *effective* round-trip cost of a server segment, which plans charge per
        round trip: what a query pays beyond the server's compute and the raw transfer
        (queueing behind the upload, framing, scheduling). Returns the server's compute ms
        (None when implausible: not learned from). Nothing is learned while a load is in
        flight: the loader then shares the server's CPU with the query, and a speed learned
        from that outlived the load, keeping ready layers on the client for seconds after."""
        if not 0 <= server_ms < 1e7:
            return None
        if self._loads_in_flight:
            return float(server_ms)
        transfer = up_bytes / self._link.bandwidth + down_bytes / self._link.down
        overhead_s = seconds - server_ms / 1000.0 - transfer
        # the server's cost model may have been calibrated on a busier (or idler) machine
        ratio = self._times.observe(ran, server_ms) if ran else None
        self._learned.observe(overhead_s=overhead_s, scale_ratio=ratio, now=time.monotonic())
        self._take_learned_rtt()
        return float(server_ms)

    def fade(self, now: float) -> bool:
        """Let what queries taught fade toward the priors; True if the best plan may change."""
        if not self._learned.fade(now):
            return False
        self._take_learned_rtt()
        return True

    def _take_learned_rtt(self) -> None:  # plans charge the learned round trip
        self._link = replace(self._link, rtt_s=self._learned.rtt_s)

    # -- the active plan -----------------------------------------------------------------

    def switch(self, plan: ExecutionPlan, ready: frozenset[str], chunks: ChunkTable) -> None:
        """Queries use ``plan`` from now on; its client side is compiled (``chunks``: the
        chunk table of its client segments, kept for every later plan that shares them)."""
        self._chunks.update(chunks)
        self._active = ActivePlan(plan, ready)
        self._take_exact(self._active)

    def _take_exact(self, active: ActivePlan) -> None:
        """Exact queries start with ``active`` once none of its server layers is at base."""
        if not active.plan.server_layers & self._base:
            self._active_exact = active

    def new_server(self) -> None:
        """The client moved to another server (§15): nothing the previous one held, timed
        or taught counts there; queries run locally until a plan is activated again."""
        self._ready, self._base, self._held_blobs = frozenset(), frozenset(), set()
        self._partial, self._refused = {}, {}
        self._times.forget(self._assumed_server_ms())
        self._learned = LearnedCosts(half_life_s=self._learned.half_life_s)
        self._take_learned_rtt()
        self.drop_to_local()

    def drop_to_local(self) -> None:
        """The server is gone: queries run locally until a plan is activated again."""
        self._active = ActivePlan(self.local_plan(), frozenset())
        self._active_exact = self._active


def _loadable(
    graph: LayerGraph,
    ready: frozenset[str],
    never: frozenset[str],
    layer_blob: Mapping[str, tuple[str | None, int]],
    needs_upload: Callable[[str | None], bool],
) -> frozenset[str]:
    """:meth:`PlanState.loadable_now` of a server with ``ready`` layers."""
    inputs = set(graph.inputs)
    usable: set[str] = set()
    for name in graph.order:
        if name in never or name in ready:
            continue
        digest = layer_blob[name][0]
        if digest is not None:
            if not needs_upload(digest):
                usable.add(name)
        elif all(
            r.layer in usable or r.layer in ready or r.layer in inputs for r in graph[name].inbound
        ):
            usable.add(name)
    return frozenset(usable)


def _replan_due(
    bandwidth: float, planned: float | None, since_s: float, partitions_left: bool
) -> bool:
    """:meth:`PlanState.replan_due` for a plan made at ``planned`` bandwidth (None: no
    plan yet) ``since_s`` ago."""
    if planned is None or not partitions_left or since_s < _REPLAN_EVERY_S:
        return False
    return abs(bandwidth / planned - 1) > _REPLAN_MOVE
