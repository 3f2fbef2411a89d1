"""Per-query execution planning: which layers of one query run on the server.

This module owns the execution plan of a single query, given the layer graph, the
client's and the server's per-layer times, the set of layers the server holds and a
:class:`~ionn_net.planner.link.Link`.

Cost model (shared with the simulator). A plan is an ordered list of segments
alternating between client and server, executed one after the other. A client
segment costs the sum of its client times. A server segment costs one RTT, the upload
of its input boundary tensors (produced outside it, read inside), the sum of its
server times and the download of its output boundary tensors (produced inside, read
outside or model outputs), exactly :meth:`LayerGraph.boundary`. The server keeps no
tensor between segments, so a tensor needed by two server segments crosses the link
for each. Input layers and layers the server does not hold run on the client. The
objective is latency (seconds) or client energy (joules, :mod:`.energy`).

Method ``"fine"`` (default): dynamic programming over the graph's topological order
where every segment is a *contiguous range* of that order. Because a client segment
has no transfer cost and two adjacent server ranges always cost at least as much as
their union (one more RTT, a superset of transfers), the optimum over all ways of
cutting the order into ranges is found by ``F_C[j] = min(F_C[j-1], F_S[j-1]) + c_j``
and ``F_S[j] = min_i F_C[i-1] + RTT + S(i..j) + up(IN(i, j)) + down(OUT(i, j))`` over
the ranges ``[i..j]`` of servable layers. ``IN`` and ``OUT`` (boundary bytes of every
range) depend only on the graph and are tabulated once per graph, so a plan costs
O(n^2) vectorised work. On a chain this is exact (every placement is a set of
ranges). On a DAG it may cut *inside* branches: a branch of an Inception module or
of a residual block can run on the server while its siblings run locally, with
several tensors crossing the boundary when that pays. Every range of a topological
order is executable (its inputs are produced earlier), so the predicted cost is the
cost of running the plan. It is optimal among plans whose segments are ranges of the
graph's order; plans that need another interleaving of independent branches (two
non-adjacent branches of one module on the server in one request) are not searched.

Method ``"ionn"`` (IONN's faithful baseline): the layers between consecutive cut
points (:meth:`LayerGraph.cut_points`, the dominators of the output) are collapsed
into one super-layer and segments may only start and end at super-layer boundaries;
the same recurrence then runs over super-layers. Its plans are a subset of the fine
method's, with the same costs, so ``fine`` is never worse than ``ionn``.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import numpy as np
import numpy.typing as npt

from ionn_net.errors import PlannerError
from ionn_net.model.graph import LayerGraph
from ionn_net.planner.energy import PowerModel, objective_weights
from ionn_net.planner.link import Link

__all__ = [
    "METHODS",
    "ExecutionPlan",
    "ExecutionPlanner",
    "LayerTimes",
    "Location",
    "Segment",
    "local_plan",
    "plan_execution",
    "planner_for",
    "segments_from_sets",
]

Location = Literal["client", "server"]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

#: Execution-planning methods.
METHODS: tuple[str, ...] = ("fine", "ionn")


@dataclass(frozen=True, slots=True)
class Segment:
    """Layers run in one go on one side, in topological order."""

    location: Location
    layers: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionPlan:
    """The plan of one query and its predicted cost.

    ``predicted_s`` is the latency; ``breakdown`` holds ``client_s``, ``server_s``,
    ``up_s``, ``down_s``, ``rtt_s``, ``up_bytes``, ``down_bytes`` (wire bytes),
    ``round_trips`` and ``energy_j``.
    """

    segments: tuple[Segment, ...]
    predicted_s: float
    breakdown: Mapping[str, float] = field(compare=False)
    method: str = "fine"
    objective: str = "latency"

    @property
    def server_layers(self) -> frozenset[str]:
        return frozenset(n for s in self.segments if s.location == "server" for n in s.layers)

    @property
    def offloads(self) -> bool:
        return any(s.location == "server" for s in self.segments)

    @property
    def transfer_s(self) -> float:
        return self.breakdown["up_s"] + self.breakdown["down_s"]

    def placement(self) -> dict[str, Location]:
        return {n: s.location for s in self.segments for n in s.layers}


@dataclass(frozen=True, slots=True)
class LayerTimes:
    """Client and server seconds per layer, indexed by topological position."""

    client_s: FloatArray
    server_s: FloatArray

    @classmethod
    def from_ms(
        cls, graph: LayerGraph, client_ms: Mapping[str, float], server_ms: Mapping[str, float]
    ) -> LayerTimes:
        """Validate per-layer millisecond mappings (every layer, finite, >= 0)."""
        return cls(_ms_array(graph, client_ms, "client"), _ms_array(graph, server_ms, "server"))

    def scaled(self, client: float = 1.0, server: float = 1.0) -> LayerTimes:
        return LayerTimes(self.client_s * client, self.server_s * server)


def _ms_array(graph: LayerGraph, ms: Mapping[str, float], side: str) -> FloatArray:
    if not isinstance(ms, Mapping):
        raise PlannerError(f"{side} times: expected a mapping layer -> ms, got {type(ms).__name__}")
    out = np.empty(len(graph), dtype=np.float64)
    for pos, name in enumerate(graph.order):
        value = ms.get(name)
        if value is None:
            raise PlannerError(f"{side} times: no time for layer {name!r}")
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise PlannerError(
                f"{side} times[{name!r}]: expected a finite number of ms >= 0, got {value!r}"
            )
        out[pos] = float(value) / 1000.0
    return out


# -- boundary byte tables ------------------------------------------------------------


def _byte_tables(graph: LayerGraph, link: Link) -> tuple[FloatArray, FloatArray]:
    """``IN[j, i]`` / ``OUT[j, i]``: wire bytes flowing into / out of the range ``[i..j]``
    of the topological order (entries with ``i > j`` are meaningless)."""
    n = len(graph)
    in_d = np.zeros((n, n), dtype=np.float64)
    out_e = np.zeros((n, n), dtype=np.float64)
    model_outputs = set(graph.outputs)
    for node in graph:
        p = graph.position(node.name)
        for ref in node.outputs:
            cons = sorted({graph.position(c) for c in graph.consumers(ref)})
            is_out = ref in model_outputs
            if not cons and not is_out:
                continue
            wire = node.tensor_bytes(ref.index) / link.ratio_of(ref)
            if cons:
                # a range starting at i (p < i) reads the tensor iff it reaches the
                # first consumer at or after i
                starts = np.arange(p + 1, cons[-1] + 1)
                nxt = np.asarray(cons)[np.searchsorted(cons, starts)]
                np.add.at(in_d, (nxt, starts), wire)
            # a range ending at j (>= p) must return it while a later reader or the
            # model output still needs it
            last = n if is_out else cons[-1]
            out_e[p:last, p] += wire
    in_t = np.cumsum(in_d, axis=0)
    out_t = np.cumsum(out_e[:, ::-1], axis=1)[:, ::-1]
    return np.ascontiguousarray(in_t), np.ascontiguousarray(out_t)


_TABLES: weakref.WeakKeyDictionary[LayerGraph, dict[object, tuple[FloatArray, FloatArray]]] = (
    weakref.WeakKeyDictionary()
)
_PLANNERS: weakref.WeakKeyDictionary[LayerGraph, dict[str, ExecutionPlanner]] = (
    weakref.WeakKeyDictionary()
)


def _tables_for(graph: LayerGraph, link: Link) -> tuple[FloatArray, FloatArray]:
    per_graph = _TABLES.setdefault(graph, {})
    key = link.ratio_key()
    if key not in per_graph:
        if len(per_graph) >= 8:  # bound the cache: ratios rarely vary within a run
            per_graph.clear()
        per_graph[key] = _byte_tables(graph, link)
    return per_graph[key]


def planner_for(graph: LayerGraph, method: str = "fine") -> ExecutionPlanner:
    """A cached :class:`ExecutionPlanner` for ``graph`` (one per method)."""
    per_graph = _PLANNERS.setdefault(graph, {})
    if method not in per_graph:
        per_graph[method] = ExecutionPlanner(graph, method)
    return per_graph[method]


# -- the planner -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Costs:
    """Per-unit costs in objective units and the link coefficients of one solve."""

    client: FloatArray
    server_cum: FloatArray  # prefix sums, length m + 1
    ok: BoolArray
    a_up: float
    a_down: float
    rtt: float


class ExecutionPlanner:
    """Plans queries on one graph with one method; reuse it across calls.

    ``units`` are the groups of consecutive positions segments are made of: single
    layers for ``"fine"``, super-layers between cut points for ``"ionn"``.
    """

    def __init__(self, graph: LayerGraph, method: str = "fine") -> None:
        if method not in METHODS:
            raise PlannerError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
        self.graph = graph
        self.method = method
        n = len(graph)
        if method == "fine":
            ends = list(range(n))
        else:
            ends = [graph.position(name) for name in graph.cut_points()]
        starts = [0, *(e + 1 for e in ends[:-1])]
        self.unit_start: IntArray = np.asarray(starts, dtype=np.int64)
        self.unit_end: IntArray = np.asarray(ends, dtype=np.int64)
        self.unit_of: IntArray = np.repeat(
            np.arange(len(ends), dtype=np.int64), self.unit_end - self.unit_start + 1
        )
        is_input = np.zeros(n, dtype=np.bool_)
        for name in graph.inputs:
            is_input[graph.position(name)] = True
        self._is_input = is_input
        self._unit_tables: dict[object, tuple[FloatArray, FloatArray]] = {}
        self._combined: dict[object, FloatArray] = {}

    @property
    def units(self) -> int:
        return len(self.unit_end)

    def servable(self, held: Collection[str]) -> BoolArray:
        """Positions the server may run: held layers other than input layers."""
        mask = np.zeros(len(self.graph), dtype=np.bool_)
        for name in held:
            if name in self.graph:
                mask[self.graph.position(name)] = True
        return mask & ~self._is_input

    def unit_tables(self, link: Link) -> tuple[FloatArray, FloatArray]:
        """Wire bytes into / out of every unit range: ``IN[b, a]`` for units a..b."""
        key = link.ratio_key()
        if key not in self._unit_tables:
            in_t, out_t = _tables_for(self.graph, link)
            if self.method != "fine":
                grid = np.ix_(self.unit_end, self.unit_start)
                in_t, out_t = np.ascontiguousarray(in_t[grid]), np.ascontiguousarray(out_t[grid])
            if len(self._unit_tables) >= 8:
                self._unit_tables.clear()
            self._unit_tables[key] = (in_t, out_t)
        return self._unit_tables[key]

    def unit_sum(self, per_position: FloatArray) -> FloatArray:
        """Per-unit sums of a per-position array."""
        return np.add.reduceat(per_position, self.unit_start) if len(per_position) else per_position

    def solve(
        self,
        times: LayerTimes,
        servable: BoolArray,
        link: Link,
        *,
        objective: str = "latency",
        power: PowerModel | None = None,
        penalty: FloatArray | None = None,
        start: int = 0,
    ) -> ExecutionPlan:
        """The cheapest plan for the layers from topological position ``start`` on
        (earlier layers done, their live outputs on the client).

        ``penalty`` adds per-position cost (objective units) to server execution; it
        steers the choice (upload planners use it) but is excluded from the reported
        costs.
        """
        n = len(self.graph)
        if len(times.client_s) != n or len(times.server_s) != n or len(servable) != n:
            raise PlannerError(f"execution planning: expected per-layer arrays of length {n}")
        if not 0 <= start <= n or (start < n and self.unit_start[self.unit_of[start]] != start):
            raise PlannerError(f"execution planning: start {start} is not a unit boundary")
        w = objective_weights(objective, power)
        server = times.server_s * w.wait
        if penalty is not None:
            server = server + penalty
        costs = _Costs(
            client=self.unit_sum(times.client_s * w.compute),
            server_cum=np.concatenate(([0.0], np.cumsum(self.unit_sum(server)))),
            ok=np.minimum.reduceat(servable, self.unit_start) if n else servable,
            a_up=w.transfer / link.bandwidth,
            a_down=w.transfer / link.down,
            rtt=w.wait * link.rtt_s,
        )
        k0 = int(self.unit_of[start]) if start < n else self.units
        transfer = self.transfer_table(link, costs.a_up, costs.a_down)
        units = self._dp(costs, transfer, k0)
        return self._plan_from_units(units, times, link, objective, power)

    def transfer_table(self, link: Link, a_up: float, a_down: float) -> FloatArray:
        """``a_up * IN + a_down * OUT`` for every unit range, cached per link and weights."""
        key = (link.ratio_key(), a_up, a_down)
        table = self._combined.get(key)
        if table is None:
            in_t, out_t = self.unit_tables(link)
            table = a_up * in_t + a_down * out_t
            if len(self._combined) >= 8:
                self._combined.clear()
            self._combined[key] = table
        return table

    def _dp(self, c: _Costs, transfer: FloatArray, k0: int) -> list[tuple[Location, int, int]]:
        """Run the recurrence from unit ``k0``; return segments as unit ranges."""
        m = self.units
        inf = math.inf
        client = c.client.tolist()
        server_cum = c.server_cum.tolist()
        ok = c.ok.tolist()
        f_c = [inf] * m
        f_s = [inf] * m
        came_from_s = [False] * m
        seg_start = [-1] * m
        g = np.full(m, inf)  # g[k] = F_C[k-1] - server_cum[k]: a server range may start at k
        buf = np.empty(m)
        prev_c, prev_s = 0.0, inf
        lo = k0
        for k in range(k0, m):
            g[k] = prev_c - server_cum[k]
            if not ok[k]:
                lo = k + 1
            elif lo <= k:
                vals = np.add(g[lo : k + 1], transfer[k, lo : k + 1], out=buf[: k + 1 - lo])
                best = int(vals.argmin())
                f_s[k] = float(vals[best]) + c.rtt + server_cum[k + 1]
                seg_start[k] = lo + best
            came_from_s[k] = prev_s < prev_c
            f_c[k] = min(prev_c, prev_s) + client[k]
            prev_c, prev_s = f_c[k], f_s[k]
        segs: list[tuple[Location, int, int]] = []
        k = m - 1
        on_server = m > k0 and f_s[k] < f_c[k]
        while k >= k0:
            if on_server:
                s = int(seg_start[k])
                segs.append(("server", s, k))
                k, on_server = s - 1, False
            else:
                segs.append(("client", k, k))
                k, on_server = k - 1, bool(came_from_s[k])
        segs.reverse()
        return segs

    def _plan_from_units(
        self,
        units: list[tuple[Location, int, int]],
        times: LayerTimes,
        link: Link,
        objective: str,
        power: PowerModel | None,
    ) -> ExecutionPlan:
        order = self.graph.order
        in_pos, out_pos = _tables_for(self.graph, link)
        merged: list[tuple[Location, int, int]] = []
        for loc, a, b in units:
            pa, pb = int(self.unit_start[a]), int(self.unit_end[b])
            if merged and merged[-1][0] == loc == "client":
                merged[-1] = ("client", merged[-1][1], pb)
            else:
                merged.append((loc, pa, pb))
        client = server = up_b = down_b = 0.0
        trips = 0
        segments = []
        for loc, pa, pb in merged:
            segments.append(Segment(loc, order[pa : pb + 1]))
            if loc == "client":
                client += float(times.client_s[pa : pb + 1].sum())
            else:
                trips += 1
                server += float(times.server_s[pa : pb + 1].sum())
                up_b += float(in_pos[pb, pa])
                down_b += float(out_pos[pb, pa])
        return _make_plan(
            tuple(segments),
            client_s=client,
            server_s=server,
            up_bytes=up_b,
            down_bytes=down_b,
            round_trips=trips,
            link=link,
            method=self.method,
            objective=objective,
            power=power,
        )


def _make_plan(
    segments: tuple[Segment, ...],
    *,
    client_s: float,
    server_s: float,
    up_bytes: float,
    down_bytes: float,
    round_trips: int,
    link: Link,
    method: str,
    objective: str,
    power: PowerModel | None,
) -> ExecutionPlan:
    up_s = up_bytes / link.bandwidth
    down_s = down_bytes / link.down
    rtt_s = round_trips * link.rtt_s
    energy = (power or PowerModel()).energy_j(
        compute_s=client_s, transfer_s=up_s + down_s, wait_s=server_s + rtt_s
    )
    breakdown = {
        "client_s": client_s,
        "server_s": server_s,
        "up_s": up_s,
        "down_s": down_s,
        "rtt_s": rtt_s,
        "up_bytes": up_bytes,
        "down_bytes": down_bytes,
        "round_trips": float(round_trips),
        "energy_j": energy,
    }
    return ExecutionPlan(
        segments=segments,
        predicted_s=client_s + server_s + up_s + down_s + rtt_s,
        breakdown=MappingProxyType(breakdown),
        method=method,
        objective=objective,
    )


def plan_execution(
    graph: LayerGraph,
    client_ms: Mapping[str, float],
    server_ms: Mapping[str, float],
    held: Collection[str],
    link: Link,
    *,
    method: str = "fine",
    objective: str = "latency",
    power: PowerModel | None = None,
) -> ExecutionPlan:
    """The fastest (or least client energy) plan for one query.

    ``client_ms`` / ``server_ms`` give every layer's time in milliseconds; ``held`` is
    the set of layers the server can run now.
    """
    if not isinstance(link, Link):
        raise PlannerError(f"link: expected a Link, got {type(link).__name__}")
    times = LayerTimes.from_ms(graph, client_ms, server_ms)
    planner = planner_for(graph, method)
    return planner.solve(times, planner.servable(held), link, objective=objective, power=power)


def local_plan(graph: LayerGraph, times: LayerTimes, link: Link) -> ExecutionPlan:
    """Everything on the client."""
    return _make_plan(
        (Segment("client", graph.order),),
        client_s=float(times.client_s.sum()),
        server_s=0.0,
        up_bytes=0.0,
        down_bytes=0.0,
        round_trips=0,
        link=link,
        method="fine",
        objective="latency",
        power=None,
    )


def segments_from_sets(graph: LayerGraph, server: Collection[str]) -> tuple[Segment, ...]:
    """Maximal runs of ``graph.order`` on the same side when ``server`` runs remotely."""
    runs: list[tuple[Location, list[str]]] = []
    for name in graph.order:
        loc: Location = "server" if name in server else "client"
        if runs and runs[-1][0] == loc:
            runs[-1][1].append(name)
        else:
            runs.append((loc, [name]))
    return tuple(Segment(loc, tuple(names)) for loc, names in runs)
