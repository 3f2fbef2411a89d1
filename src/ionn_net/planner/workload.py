"""Values shared by the upload planners and the simulator.

This module owns the description of a planning problem (:class:`PlanningContext`:
graph, client and server per-layer times, server load times, link, layers already on
the server, expected query pattern, objective), of the queries
(:class:`QueryPattern`), of how a client executes queries (:class:`ExecutionPolicy`)
and of an upload plan (:class:`UploadPlan`: ordered partitions plus the execution plan
each one enables).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal

import numpy as np

from ionn_net.errors import PlannerError
from ionn_net.model.graph import LayerGraph
from ionn_net.planner.energy import OBJECTIVES, PowerModel
from ionn_net.planner.execution import (
    METHODS,
    ExecutionPlan,
    FloatArray,
    LayerTimes,
    planner_for,
)
from ionn_net.planner.link import Link

__all__ = [
    "ExecutionPolicy",
    "PlanningContext",
    "QueryPattern",
    "Refinement",
    "StageCosts",
    "UploadPlan",
]

_MAX_QUERIES = 10_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryPattern:
    """How queries arrive: back-to-back (the next starts when the previous ends) or at
    a fixed rate, for ``count`` queries and/or ``duration_s`` seconds (either may be
    ``None``: unknown; the planner then plans for the whole upload)."""

    kind: Literal["back_to_back", "rate"] = "back_to_back"
    rate_qps: float | None = None
    count: int | None = None
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("back_to_back", "rate"):
            raise PlannerError(
                f"query pattern: expected 'back_to_back' or 'rate', got {self.kind!r}"
            )
        if self.kind == "rate":
            r = self.rate_qps
            if not (isinstance(r, int | float) and math.isfinite(r) and r > 0):
                raise PlannerError(f"query pattern rate_qps: expected a rate > 0, got {r!r}")
        elif self.rate_qps is not None:
            raise PlannerError("query pattern: rate_qps only applies to kind='rate'")
        c = self.count
        if c is not None and not (isinstance(c, int) and 1 <= c <= _MAX_QUERIES):
            raise PlannerError(f"query pattern count: expected 1..{_MAX_QUERIES}, got {c!r}")
        d = self.duration_s
        if d is not None and not (isinstance(d, int | float) and math.isfinite(d) and d > 0):
            raise PlannerError(f"query pattern duration_s: expected a finite > 0, got {d!r}")

    @classmethod
    def back_to_back(
        cls, count: int | None = None, duration_s: float | None = None
    ) -> QueryPattern:
        return cls(kind="back_to_back", count=count, duration_s=duration_s)

    @classmethod
    def rate(
        cls, rate_qps: float, count: int | None = None, duration_s: float | None = None
    ) -> QueryPattern:
        return cls(kind="rate", rate_qps=rate_qps, count=count, duration_s=duration_s)


@dataclass(frozen=True, slots=True)
class ExecutionPolicy:
    """How the client runs each query.

    ``method`` is the execution-planning method; with ``adaptive`` the client re-plans
    the rest of a running query at each layer boundary it reaches on its own side
    when layers became usable on the server since the query's plan was made, and
    takes the new plan only if it is predicted at most ``switch_margin`` times the
    rest of the current one (the client's own rule, :func:`.midquery.choose_continuation`:
    a switch pauses the upload, so a marginal gain is not worth it).
    """

    method: str = "fine"
    adaptive: bool = False
    objective: str = "latency"
    switch_margin: float = 0.9

    def __post_init__(self) -> None:
        if not (isinstance(self.switch_margin, int | float) and 0 < self.switch_margin <= 1):
            raise PlannerError(
                f"switch_margin: expected 0 < margin <= 1, got {self.switch_margin!r}"
            )
        if self.method not in METHODS:
            raise PlannerError(f"policy method: expected one of {METHODS}, got {self.method!r}")
        if self.objective not in OBJECTIVES:
            raise PlannerError(
                f"policy objective: expected one of {OBJECTIVES}, got {self.objective!r}"
            )


def _finite_ms(what: str, value: object) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise PlannerError(f"{what}: expected a finite number >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class StageCosts:
    """What a precision-first upload costs (:mod:`ionn_net.model.stages`), per raw byte
    of a layer's float32 blob: for each stage (the base first) its bytes on the wire
    (compression included) and the server's time to check and decode it; for each
    refinement also the swap of the new weights into the built layer (assigning its
    variables: per MB and per layer). One set of numbers per model (its layers' sums)."""

    precision: str
    wire_fraction: tuple[float, ...]
    decode_ms_per_mb: tuple[float, ...]
    swap_ms_per_mb: float = 0.0
    swap_ms_per_layer: float = 0.0

    def __post_init__(self) -> None:
        if self.precision not in ("16bit-first", "8bit-first"):
            raise PlannerError(
                f"stage costs precision: expected '16bit-first' or '8bit-first', "
                f"got {self.precision!r}"
            )
        wire = tuple(_finite_ms("stage wire fraction", f) for f in self.wire_fraction)
        decode = tuple(_finite_ms("stage decode ms per MB", d) for d in self.decode_ms_per_mb)
        if len(wire) < 2 or len(decode) != len(wire) or not 1e-3 <= wire[0] <= 100:
            raise PlannerError(
                "stage costs: expected a base and refinements, a decode time per stage and "
                f"a base wire fraction in [0.001, 100]; got {wire!r} and {decode!r}"
            )
        object.__setattr__(self, "wire_fraction", wire)
        object.__setattr__(self, "decode_ms_per_mb", decode)
        _finite_ms("swap_ms_per_mb", self.swap_ms_per_mb)
        _finite_ms("swap_ms_per_layer", self.swap_ms_per_layer)

    @property
    def stages(self) -> int:
        return len(self.wire_fraction)

    def wire_bytes(self, raw_bytes: float, stage: int) -> float:
        """Wire bytes of ``stage`` of blobs totalling ``raw_bytes``."""
        return raw_bytes * self.wire_fraction[stage]

    def decode_s(self, raw_bytes: float, stage: int) -> float:
        return raw_bytes * self.decode_ms_per_mb[stage] / 1e9

    def refine_s(self, raw_bytes: float, layers: int, stage: int) -> float:
        """Server seconds to check, decode and swap in refinement ``stage`` of ``layers``
        layers whose blobs total ``raw_bytes``."""
        swap = raw_bytes * self.swap_ms_per_mb / 1e9 + layers * self.swap_ms_per_layer / 1e3
        return self.decode_s(raw_bytes, stage) + swap


@dataclass(frozen=True, slots=True)
class Refinement:
    """A refinement stage of some layers in an upload: sent after ``after`` partitions
    (their base stages) of the plan, ``None`` after all of them."""

    layers: frozenset[str]
    stage: int = 1
    after: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadPlan:
    """Ordered partitions to upload and the execution plans they enable.

    ``exec_plans[k]`` is the plan once ``partitions[: k + 1]`` are usable (plus the
    layers held before the upload); ``initial_plan`` applies before any of them. In a
    precision-first upload (``precision`` other than ``"exact"``) each partition sends its
    layers' base stages, which make them usable at a lower precision, and
    ``refinements`` the later stages that make them exact.
    """

    strategy: str
    partitions: tuple[frozenset[str], ...]
    exec_plans: tuple[ExecutionPlan, ...]
    initial_plan: ExecutionPlan
    policy: ExecutionPolicy = field(default_factory=ExecutionPolicy)
    notes: Mapping[str, object] = field(default_factory=dict, compare=False)
    precision: str = "exact"
    refinements: tuple[Refinement, ...] = ()

    def __post_init__(self) -> None:
        if len(self.exec_plans) != len(self.partitions):
            raise PlannerError(
                f"upload plan: expected one execution plan per partition "
                f"({len(self.partitions)}), got {len(self.exec_plans)}"
            )
        seen: set[str] = set()
        for i, part in enumerate(self.partitions):
            if not part:
                raise PlannerError(f"upload plan: partition {i} is empty")
            if seen & part:
                raise PlannerError(f"upload plan: partition {i} repeats {sorted(seen & part)[:3]}")
            seen |= part
        self._check_refinements()
        object.__setattr__(self, "notes", MappingProxyType(dict(self.notes)))

    def _check_refinements(self) -> None:
        if self.precision not in ("exact", "16bit-first", "8bit-first"):
            raise PlannerError(f"upload plan precision: got {self.precision!r}")
        if self.refinements and self.precision == "exact":
            raise PlannerError("upload plan: refinements in an exact upload")
        n = len(self.partitions)
        for i, ref in enumerate(self.refinements):
            after = n if ref.after is None else ref.after
            ok = isinstance(ref, Refinement) and ref.layers and ref.stage >= 1
            sent = frozenset().union(*self.partitions[:after]) if 0 <= after <= n else None
            if not ok or sent is None or not ref.layers <= sent:
                raise PlannerError(
                    f"upload plan: refinement {i} must refine layers whose base was sent "
                    f"before it (stage >= 1, after 0..{n})"
                )

    @property
    def layers(self) -> frozenset[str]:
        return frozenset().union(*self.partitions)

    def upload_bytes(self, graph: LayerGraph) -> int:
        """Raw weight bytes of all partitions."""
        return sum(graph[n].weight_bytes for n in self.layers)


def _per_layer(
    graph: LayerGraph, values: Mapping[str, float], what: str, *, default: float | None
) -> FloatArray:
    if not isinstance(values, Mapping):
        raise PlannerError(f"{what}: expected a mapping layer -> ms, got {type(values).__name__}")
    out = np.empty(len(graph), dtype=np.float64)
    for pos, name in enumerate(graph.order):
        v = values.get(name, default)
        if v is None:
            raise PlannerError(f"{what}: no value for layer {name!r}")
        if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
            raise PlannerError(f"{what}[{name!r}]: expected a finite ms >= 0, got {v!r}")
        out[pos] = float(v) / 1000.0
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanningContext:
    """Everything an upload planner (and the simulator) needs, validated once.

    Times are per-layer milliseconds; ``load_ms`` defaults to 0 for missing layers;
    ``held`` are layers already usable on the server (uploaded earlier, by another
    client or in an earlier visit) and are never uploaded again.

    Loading a partition costs its layers' ``load_ms``, plus ``partition_overhead_ms``,
    plus ``compile_ms_per_layer`` for every layer the server compiles for it: the
    server segments of the best plan once the partition is usable (the client asks
    the server to prepare them, protocol.md §10.6), of which the server compiles only
    the pieces it has not compiled before (each piece holds the layers of one
    partition, :meth:`LayerGraph.pieces`). Leave it 0 when ``load_ms`` already
    includes each layer's share of compilation. A server segment made of several
    pieces costs ``piece_call_ms`` per extra piece on every query until the upload is
    complete and the server has compiled the segment as one slice.

    ``stages`` (precision-first upload) says what each stage of a layer costs; the
    simulator then sends every partition as base stages and charges the refinements.
    """

    graph: LayerGraph
    client_ms: Mapping[str, float] = field(compare=False)
    server_ms: Mapping[str, float] = field(compare=False)
    link: Link
    load_ms: Mapping[str, float] = field(default_factory=dict, compare=False)
    held: frozenset[str] = frozenset()
    partition_overhead_ms: float = 0.0
    compile_ms_per_layer: float = 0.0
    piece_call_ms: float = 0.0
    pattern: QueryPattern = field(default_factory=QueryPattern)
    objective: str = "latency"
    power: PowerModel = field(default_factory=PowerModel)
    stages: StageCosts | None = None
    times: LayerTimes = field(init=False, repr=False, compare=False)
    load_s: FloatArray = field(init=False, repr=False, compare=False)
    weight_bytes: FloatArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.graph, LayerGraph):
            raise PlannerError(f"graph: expected a LayerGraph, got {type(self.graph).__name__}")
        if not isinstance(self.link, Link):
            raise PlannerError(f"link: expected a Link, got {type(self.link).__name__}")
        if self.objective not in OBJECTIVES:
            raise PlannerError(f"objective: expected one of {OBJECTIVES}, got {self.objective!r}")
        for name in ("partition_overhead_ms", "compile_ms_per_layer", "piece_call_ms"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise PlannerError(f"{name}: expected a finite ms >= 0, got {v!r}")
        if self.stages is not None and not isinstance(self.stages, StageCosts):
            raise PlannerError(f"stages: expected StageCosts, got {type(self.stages).__name__}")
        unknown = [n for n in self.held if n not in self.graph]
        if unknown:
            raise PlannerError(f"held: unknown layers {sorted(unknown)[:5]}")
        object.__setattr__(self, "held", frozenset(self.held))
        g = self.graph
        times = LayerTimes(
            _per_layer(g, self.client_ms, "client_ms", default=None),
            _per_layer(g, self.server_ms, "server_ms", default=None),
        )
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "load_s", _per_layer(g, self.load_ms, "load_ms", default=0.0))
        wb = np.asarray([g[n].weight_bytes for n in g.order], dtype=np.float64)
        object.__setattr__(self, "weight_bytes", wb)

    @property
    def overhead_s(self) -> float:
        return self.partition_overhead_ms / 1000.0

    def partition_load_s(self, layer_load_s: float, run_set_layers: int) -> float:
        """Seconds to make a partition usable: its layers' load time (summed by the
        caller), the overhead, and compiling ``run_set_layers`` layers of run sets."""
        return layer_load_s + self.overhead_s + self.compile_ms_per_layer / 1000.0 * run_set_layers

    def with_(self, **changes: object) -> PlanningContext:
        """A copy with some fields replaced (re-validated)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def local_s(self) -> float:
        """Latency of a query run entirely on the client."""
        return float(self.times.client_s.sum())

    def best_plan(
        self, usable: frozenset[str], *, method: str = "fine", link: Link | None = None
    ) -> ExecutionPlan:
        """The best execution plan when ``usable`` layers are on the server."""
        planner = planner_for(self.graph, method)
        return planner.solve(
            self.times,
            planner.servable(usable),
            link or self.link,
            objective=self.objective,
            power=self.power,
        )
