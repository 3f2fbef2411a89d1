"""Re-planning a query while it runs, using only slices compiled in advance.

A query issued during the upload starts with the plan active at that moment. If a
partition lands while the query runs a long local segment, finishing locally wastes
the layers the server now holds. The simulator (:mod:`.simulate`) models re-planning at
any layer boundary; a real client cannot afford that, because a new slice costs a
TensorFlow trace (hundreds of milliseconds on the host, more on a device), which eats
the gain. This module owns the part that can be done for free:

* :func:`chunk_segment` splits a long client segment into a few chunks (compiled ahead,
  when the plan is activated), cut where a single tensor is live when possible, so
  that the query reaches a decision point every ``1/max_chunks`` of its local time;
  :func:`split_at` cuts any segment on the chunk grid of the whole model, so that the
  segments of successive plans share their compiled chunks;
* :func:`choose_continuation` decides at such a point whether to leave the current
  course for the plan that became active meanwhile: it may join that plan at any of
  its segments whose inputs the client already holds, recomputing the layers that
  segment repeats (the server is fast, and its run sets were prepared when the
  partition was loaded, the client's segments when the plan was activated), so no new
  slice is ever compiled mid-query.

Pure: no TensorFlow, no clock. Costs use the same terms as the execution planner
(client and server milliseconds, compressed boundary bytes at the link's rates, one
RTT per server segment).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from ionn_net.errors import PlannerError
from ionn_net.model.graph import LayerGraph, TensorRef
from ionn_net.planner.execution import ExecutionPlan, Segment
from ionn_net.planner.link import Link

__all__ = ["Continuation", "SegmentCoster", "choose_continuation", "chunk_segment", "split_at"]


def chunk_segment(
    graph: LayerGraph,
    layers: Sequence[str],
    client_ms: Mapping[str, float],
    *,
    cut_points: Collection[str] = (),
    max_chunks: int = 8,
    min_chunk_ms: float = 20.0,
) -> tuple[tuple[str, ...], ...]:
    """``layers`` (a client segment, in topological order) as consecutive chunks of
    roughly equal client time: at most ``max_chunks``, none planned shorter than
    ``min_chunk_ms``. Each cut goes to the layer nearest its equal-time target,
    preferring ``cut_points`` (one live tensor: the smallest feed) within a tolerance
    of half a chunk."""
    if max_chunks < 1 or not min_chunk_ms > 0:
        raise PlannerError(
            f"chunking: expected max_chunks >= 1 and min_chunk_ms > 0, "
            f"got {max_chunks!r} and {min_chunk_ms!r}"
        )
    names = tuple(layers)
    for name in names:
        if name not in graph:
            raise PlannerError(f"chunking: unknown layer {name!r}")
    times = [max(float(client_ms.get(n, 0.0)), 0.0) for n in names]
    total = sum(times)
    count = min(max_chunks, int(total // min_chunk_ms), len(names))
    if count <= 1:
        return (names,) if names else ()
    cumulative = []
    acc = 0.0
    for t in times:
        acc += t
        cumulative.append(acc)
    preferred = set(cut_points)
    cuts: list[int] = []  # chunk ends (inclusive indices into names)
    for k in range(1, count):
        target = total * k / count
        lo = cuts[-1] + 1 if cuts else 0
        candidates = range(lo, len(names) - 1)
        if not candidates:
            break
        nearest = min(candidates, key=lambda i: abs(cumulative[i] - target))
        slack = total / count / 2
        good = [i for i in candidates if names[i] in preferred]
        near_cut = min(good, key=lambda i: abs(cumulative[i] - target), default=None)
        if near_cut is not None and abs(cumulative[near_cut] - target) <= slack:
            nearest = near_cut
        cuts.append(nearest)
    bounds = [0, *(c + 1 for c in cuts), len(names)]
    return tuple(names[a:b] for a, b in itertools.pairwise(bounds) if b > a)


def split_at(layers: Sequence[str], ends: Collection[str]) -> tuple[tuple[str, ...], ...]:
    """``layers`` cut after every layer in ``ends``: with ``ends`` the chunk ends of the
    whole model (:func:`chunk_segment` over every layer, once), the chunks of any segment
    are the model's own chunks except at its two ends, so a plan activated during the
    upload finds most of its client slices compiled already."""
    chunks: list[tuple[str, ...]] = []
    start = 0
    for i, name in enumerate(layers):
        if name in ends and i + 1 < len(layers):
            chunks.append(tuple(layers[start : i + 1]))
            start = i + 1
    if start < len(layers):
        chunks.append(tuple(layers[start:]))
    return tuple(chunks)


@dataclass(frozen=True, slots=True)
class Continuation:
    """Join ``plan`` at segment ``index``; predicted seconds to the end: ``cost_s``
    (against ``current_s`` for staying on course)."""

    plan: ExecutionPlan
    index: int
    cost_s: float
    current_s: float


class SegmentCoster:
    """Predicted seconds of segments for one set of times and one link; segment
    boundaries are cached and shared by :meth:`priced` copies."""

    def __init__(
        self,
        graph: LayerGraph,
        client_ms: Mapping[str, float],
        server_ms: Mapping[str, float],
        link: Link,
        *,
        boundaries: dict[tuple[str, ...], tuple[tuple[TensorRef, ...], ...]] | None = None,
    ) -> None:
        self.graph = graph
        self.client_ms = client_ms
        self.server_ms = server_ms
        self.link = link
        self._boundaries = {} if boundaries is None else boundaries

    def priced(
        self, client_ms: Mapping[str, float], server_ms: Mapping[str, float], link: Link
    ) -> SegmentCoster:
        """The same graph (and boundary cache) with other times or another link."""
        return SegmentCoster(self.graph, client_ms, server_ms, link, boundaries=self._boundaries)

    def boundary(self, layers: tuple[str, ...]) -> tuple[tuple[TensorRef, ...], ...]:
        found = self._boundaries.get(layers)
        if found is None:
            if len(self._boundaries) > 4096:
                self._boundaries.clear()
            found = self._boundaries[layers] = self.graph.boundary(layers)
        return found

    def cost_s(self, seg: Segment) -> float:
        if seg.location == "client":
            return sum(self.client_ms.get(n, 0.0) for n in seg.layers) / 1000.0
        ins, outs = self.boundary(seg.layers)
        link, g = self.link, self.graph
        up = sum(link.activation_s(r, g.tensor_bytes(r)) for r in ins)
        down = sum(link.activation_s(r, g.tensor_bytes(r), up=False) for r in outs)
        server = sum(self.server_ms.get(n, 0.0) for n in seg.layers) / 1000.0
        return up + link.rtt_s + server + down

    def total_s(self, segments: Sequence[Segment]) -> float:
        return sum(self.cost_s(s) for s in segments)

    def joinable(
        self, segments: Sequence[Segment], have: Collection[TensorRef], remaining: Collection[str]
    ) -> bool:
        """True when ``segments`` cover every layer in ``remaining`` and each one's
        inputs are held now or produced by an earlier one of them."""
        covered = {n for s in segments for n in s.layers}
        if not set(remaining) <= covered:
            return False
        avail = set(have)
        for seg in segments:
            ins, outs = self.boundary(seg.layers)
            if not all(r in avail for r in ins):
                return False
            avail.update(outs)
        return True


def choose_continuation(
    coster: SegmentCoster,
    current_rest: Sequence[Segment],
    candidate: ExecutionPlan,
    have: Collection[TensorRef],
    remaining: Collection[str],
    *,
    margin: float = 0.9,
) -> Continuation | None:
    """The best way to join ``candidate`` from here, if it beats finishing the current
    course (``current_rest``: what is left of it, as segments) by the ``margin`` factor
    (hysteresis: predictions are estimates and switching is not free); else None.

    ``have``: tensors the client holds; ``remaining``: layers not computed yet.
    """
    if not 0 < margin <= 1:
        raise PlannerError(f"margin: expected 0 < margin <= 1, got {margin!r}")
    current = coster.total_s(current_rest)
    segments = candidate.segments
    best: Continuation | None = None
    suffix = 0.0
    for index in range(len(segments) - 1, -1, -1):
        suffix += coster.cost_s(segments[index])
        if best is not None and suffix >= best.cost_s:
            break  # costs are >= 0: earlier joins only add segments
        if coster.joinable(segments[index:], have, remaining):
            best = Continuation(candidate, index, suffix, current)
    if best is None or best.cost_s >= margin * current:
        return None
    return best
