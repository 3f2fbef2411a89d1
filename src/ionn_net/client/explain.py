"""What the client decided and why: :class:`PlanExplanation` (see
:meth:`~ionn_net.client.OffloadClient.explain`).

It reads the :class:`~ionn_net.client.plan_state.PlanState` only: per segment of the
active plan, where it runs and what it is predicted to cost (this device's time, the
server's compute, the transfer of its boundary tensors, the round trip), what the upload
will bring (the predicted latency once every planned partition is loaded), where the
server times came from (measured by the server, predicted by it, its cost model) and how
far they were from what the server then took. :func:`why_local` says why a client
does not offload at all, with the numbers.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from ionn_net.client.plan_state import PlanState
from ionn_net.planner.execution import ExecutionPlan, Segment

__all__ = ["PlanExplanation", "SegmentCost", "explain", "log_why_local", "why_local"]

logger = logging.getLogger("ionn_net.client")


@dataclass(frozen=True, slots=True)
class SegmentCost:
    """One segment of a plan and its predicted cost (milliseconds). ``client_ms``: this
    device running it (what a server segment saves); ``server_ms``, ``transfer_ms``
    (boundary tensors up and down) and ``rtt_ms``: zero for a client segment."""

    location: str
    layers: int
    first: str
    last: str
    client_ms: float
    server_ms: float = 0.0
    transfer_ms: float = 0.0
    rtt_ms: float = 0.0

    @property
    def predicted_ms(self) -> float:
        """What the segment costs the query where it runs."""
        if self.location == "client":
            return self.client_ms
        return self.server_ms + self.transfer_ms + self.rtt_ms


@dataclass(frozen=True, slots=True)
class PlanExplanation:
    """The active plan and why (see the module docstring). ``predicted_ms``: its latency
    predicted now (the sum of its segments, with the link and the server times as they
    are now); ``planned_ms``: as predicted when it was chosen. ``upload_ms``: the predicted
    latency once every planned partition is loaded (None when nothing is left to
    upload); ``sources``: layers per origin of their server time (``measured``,
    ``predicted``, ``cost_model``, ``assumed``); ``errors``: relative errors of the
    server's compute predictions for the server segments run so far (measured /
    predicted - 1, before the learned scale); ``server_scale``: the scale learned from
    them."""

    segments: tuple[SegmentCost, ...]
    predicted_ms: float
    planned_ms: float
    local_ms: float
    ready_layers: int
    upload_ms: float | None
    partitions_left: int
    sources: Mapping[str, int]
    errors: tuple[float, ...]
    server_scale: float
    why_local: str | None

    @property
    def offloads(self) -> bool:
        return any(s.location == "server" for s in self.segments)

    @property
    def median_error(self) -> float | None:
        """Median absolute relative error of the server predictions so far."""
        return statistics.median(abs(e) for e in self.errors) if self.errors else None

    def line(self) -> str:
        """One line for a log or a terminal."""
        parts = []
        for s in self.segments:
            if s.location == "client":
                parts.append(f"client {s.layers}L {s.client_ms:.1f}")
            else:
                parts.append(
                    f"server {s.layers}L {s.server_ms:.1f}+{s.transfer_ms:.1f}tx+"
                    f"{s.rtt_ms:.1f}rtt (local {s.client_ms:.1f})"
                )
        times = ", ".join(f"{k} {v}" for k, v in sorted(self.sources.items()))
        upload = "-" if self.upload_ms is None else f"{self.upload_ms:.1f} ms"
        err = self.median_error
        error = "-" if err is None else f"{err * 100:.0f}% over {len(self.errors)}"
        head = (
            f"plan {self.predicted_ms:.1f} ms (local {self.local_ms:.1f}): "
            f"{' | '.join(parts)}; after upload {upload} "
            f"({self.partitions_left} partitions left); server times: {times}; "
            f"error {error}, scale {self.server_scale:.2f}"
        )
        return head if self.why_local is None else f"{head}; {self.why_local}"


def _costs(state: PlanState, plan: ExecutionPlan) -> tuple[SegmentCost, ...]:
    link = state.link
    client_ms, server_ms = state.client_ms, state.server_times()
    out = []
    for seg in plan.segments:
        local = sum(client_ms[n] for n in seg.layers)
        if seg.location == "client":
            out.append(SegmentCost("client", len(seg.layers), seg.layers[0], seg.layers[-1], local))
            continue
        out.append(
            SegmentCost(
                "server",
                len(seg.layers),
                seg.layers[0],
                seg.layers[-1],
                local,
                sum(server_ms[n] for n in seg.layers),
                _transfer_ms(state, seg),
                link.rtt_s * 1000.0,
            )
        )
    return tuple(out)


def _transfer_ms(state: PlanState, seg: Segment) -> float:
    """Upload of the segment's boundary inputs and download of its outputs, as the
    planner charges them (:mod:`ionn_net.planner.execution`)."""
    graph, link = state.graph, state.link
    ins, outs = graph.boundary(seg.layers)
    up = sum(graph.tensor_bytes(r) / link.ratio_of(r) for r in ins) / link.bandwidth
    down = sum(graph.tensor_bytes(r) / link.ratio_of(r) for r in outs) / link.down
    return (up + down) * 1000.0


def why_local(state: PlanState) -> str | None:
    """Why the client would not offload even with every layer it may send on the
    server (None when it would): this device against the whole model on the server."""
    servable = frozenset(state.graph.order) - state.never()
    best = state.best_plan(servable, held=servable)
    if best.offloads:
        return None
    local = sum(state.client_ms.values())
    server_ms = state.server_times()
    inputs = frozenset(state.graph.inputs)
    runs = tuple(n for n in state.graph.order if n in servable and n not in inputs)
    if not runs:
        return "no layer of this model may run on the server"
    seg = Segment("server", runs)
    compute = sum(server_ms[n] for n in runs)
    transfer = _transfer_ms(state, seg)
    rtt = state.link.rtt_s * 1000.0
    return (
        f"not offloading: the server is not faster than this device for any segment "
        f"(whole model here {local:.1f} ms; on the server {compute:.1f} ms compute + "
        f"{transfer:.1f} ms transfer + {rtt:.1f} ms round trip)"
    )


def explain(state: PlanState) -> PlanExplanation:
    """The active plan of ``state`` explained."""
    active = state.active
    plan = active.plan
    planned = frozenset().union(*state.partitions) if state.partitions else frozenset()
    left = len(state.partitions) - state.loaded_parts
    upload_ms = None
    if left > 0:
        usable = state.ready | planned
        upload_ms = state.best_plan(usable, held=usable).predicted_s * 1000.0
    local_ms = sum(state.client_ms.values())
    segments = _costs(state, plan)
    return PlanExplanation(
        segments=segments,
        predicted_ms=sum(s.predicted_ms for s in segments),
        planned_ms=plan.predicted_s * 1000.0,
        local_ms=local_ms,
        ready_layers=len(active.ready),
        upload_ms=upload_ms,
        partitions_left=max(left, 0),
        sources=dict(Counter(v for n, v in state.timings.source.items() if state.graph[n].inbound)),
        errors=tuple(state.timings.errors),
        server_scale=state.learned.server_scale,
        why_local=None if plan.offloads else why_local(state),
    )


def log_why_local(state: PlanState) -> None:
    """Log at INFO, with the numbers, why the client will not offload at all (if so)."""
    reason = why_local(state)
    if reason is not None:
        logger.info("%s", reason)
