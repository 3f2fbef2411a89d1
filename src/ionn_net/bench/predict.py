"""The planner simulator's timeline of a run, beside the measured one, and the error.

Owns :func:`predict_run`. It replays the run's own upload plan (the partitions the
client planned, minus layers the server refuses) with
:func:`ionn_net.planner.simulate.simulate_partitions`, on the inputs the client
planned with (its per-layer client profile, the server's cost model, load times) and
the link *as probed* (measured goodput each way, idle round trip, full duplex as the
emulation is, weights compressed by the ratio the upload codec achieves on this
model). Queries run back to back with the execution policy the client really uses
(best ``fine`` plan for the layers ready when a query starts, no mid-query
re-planning), until the measured run's last query.

A precision-first run (``ours-16``, ``ours-8``) is replayed with its stages: the client's
own stage costs (the stages' wire bytes it measured, the server's decode and swap priors)
and the plan's refinements after its base partitions (the simulator then completes any
layer left at base), each predicted query marked exact or not.

Errors reported: per-query latency error (each measured query against the predicted
query in progress at its issue time: mean and median absolute percentage error,
mean signed error), and the error of every summary metric (mean latency during
upload and in the lossless window, upload completion, first offloaded query, time to
N queries).

Two replays: the main one takes the server's speed, its loads' duration, the contention
between its loader and its queries, the client's own contention and compile time and the
upload's pacing rate from what the run itself measured (:mod:`.measured`), and lets
queries choose their plans with the announced costs until one has run on the server, as
the client does; ``announced`` takes the server's cost model as
announced and the probed link. Both charge the planning time the client really took
(the head start goes up meanwhile, ``timing.planned_s``). Known blind spots (part of
the error): the client's compile time for each new plan, and the server's background
consolidation after the upload.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from ionn_net.bench.measured import MeasuredInputs, measured_inputs
from ionn_net.bench.results import QueryPoint, lossless_window_s, metrics_from_points
from ionn_net.model.graph import LayerGraph
from ionn_net.planner.link import Link
from ionn_net.planner.simulate import SimResult, simulate_partitions
from ionn_net.planner.workload import (
    ExecutionPolicy,
    PlanningContext,
    QueryPattern,
    Refinement,
    StageCosts,
)

__all__ = ["latency_errors", "predict_run", "sim_points"]

_MAX_SIM_QUERIES = 100_000


def _link(doc: Mapping[str, Any], weight_ratio: float) -> Link:
    link = doc["link"]
    measured = link.get("measured", {})
    configured = link["configured"]

    def rate(direction: str) -> float:
        probe = measured.get(direction) or {}
        value = probe.get("measured_rate_bps")
        return float(value if value else configured["rate_bps"])

    rtts = [p.get("rtt_ms_p50") for p in measured.values() if p and p.get("rtt_ms_p50")]
    rtt_ms = min(rtts) if rtts else float(configured["rtt_ms"])
    return Link(
        bandwidth=rate("up") / 8.0,
        down_bandwidth=rate("down") / 8.0,
        rtt_s=rtt_ms / 1000.0,
        weight_ratio=min(max(weight_ratio, 0.01), 1000.0),
        half_duplex=False,
    )


def sim_points(result: SimResult) -> list[QueryPoint]:
    return [
        QueryPoint(
            issued_s=q.issued_s,
            ended_s=q.finished_s,
            latency_ms=q.latency_s * 1000.0,
            offloaded=bool(q.server_layers),
        )
        for q in result.queries
    ]


def latency_errors(
    measured: Sequence[QueryPoint], predicted: Sequence[QueryPoint]
) -> dict[str, float | None]:
    """Each measured query against the predicted query in progress at its issue time."""
    if not measured or not predicted:
        return {"mape_pct": None, "median_ape_pct": None, "mean_signed_pct": None}
    starts = [p.issued_s for p in predicted]
    ape: list[float] = []
    signed: list[float] = []
    for m in measured:
        k = max(0, bisect.bisect_right(starts, m.issued_s) - 1)
        pred = predicted[k].latency_ms
        signed.append((pred - m.latency_ms) / m.latency_ms * 100.0)
        ape.append(abs(signed[-1]))
    return {
        "mape_pct": statistics.fmean(ape),
        "median_ape_pct": statistics.median(ape),
        "mean_signed_pct": statistics.fmean(signed),
    }


def _pct(pred: float | None, meas: float | None) -> float | None:
    if pred is None or meas is None or meas == 0 or not math.isfinite(pred):
        return None
    return (pred - meas) / meas * 100.0


def _diff(pred: float | None, meas: float | None) -> float | None:
    return None if pred is None or meas is None else pred - meas


def _replay(
    doc: Mapping[str, Any],
    graph: LayerGraph,
    horizon: float,
    inputs: MeasuredInputs | None,
) -> tuple[SimResult, Link]:
    """The run's plan replayed with the announced costs (``inputs`` None) or with what
    the run measured (:mod:`.measured`)."""
    per_layer = doc["per_layer"]
    plan = doc.get("plan") or {}
    weight_ratio = float(doc["model"].get("weight_ratio", 1.0))
    link = _link(doc, weight_ratio)
    objective = (plan.get("policy") or {}).get("objective", "latency")
    stages = plan.get("stages")
    overhead = _overhead_ms(doc)
    server_ms, load_ms = per_layer["server_ms"], per_layer["load_ms"]
    extra = 0.0
    activation: tuple[float, ...] = ()
    load_s: tuple[float, ...] = ()
    if inputs is not None:
        activation, load_s = inputs.activation_s, inputs.load_s
        server_ms = {n: v * inputs.exec_scale for n, v in server_ms.items()}
        load_ms = {n: v * inputs.load_scale for n, v in load_ms.items()}
        overhead *= inputs.load_scale
        extra = inputs.loader_extra_s
    ctx = PlanningContext(
        graph=graph,
        client_ms=per_layer["client_ms"],
        server_ms=server_ms,
        load_ms=load_ms,
        link=link,
        pattern=QueryPattern.back_to_back(),
        objective=objective,
        partition_overhead_ms=overhead,
        stages=None if not stages else StageCosts(**stages),
    )
    refinements = [
        Refinement(frozenset(layers), int(k)) for layers, k in plan.get("refinements", [])
    ]
    timing = doc.get("timing") or {}
    # the planning time the run really took (the client sends its head start meanwhile)
    planned_s = max(0.0, float(timing.get("planned_s") or 0.0))
    head = [n for n in timing.get("head_start") or () if n in graph]
    result = simulate_partitions(
        ctx,
        [frozenset(p) for p in plan.get("partitions", [])],
        ExecutionPolicy("fine", objective=objective),
        until_s=horizon,
        max_queries=_MAX_SIM_QUERIES,
        refinements=refinements if stages else (),
        head_start=head,
        planned_s=planned_s,
        pace=inputs.pace if inputs is not None else (),
        client_extra_s=inputs.client_extra_s if inputs is not None else 0.0,
        # the client plans with the announced costs until its queries measure the server
        plan_server_ms=per_layer["server_ms"] if inputs is not None else None,
        loader_extra_s=extra,
        activation_s=activation,
        load_s=load_s,
    )
    return result, link


def _overhead_ms(doc: Mapping[str, Any]) -> float:
    cost = (doc.get("server") or {}).get("cost_model_doc") or {}
    value = cost.get("partition_overhead_ms") if isinstance(cost, Mapping) else None
    return float(value) if isinstance(value, int | float) and value >= 0 else 0.0


def _errors(
    doc: Mapping[str, Any], measured: Sequence[QueryPoint], result: SimResult
) -> tuple[list[QueryPoint], dict[str, Any], dict[str, float | None]]:
    points = sim_points(result)
    uploads = doc["strategy"] != "local"
    done = result.upload_done_s if result.partitions else (0.0 if uploads else None)
    n = int(doc["metrics"].get("n", 100))
    window = lossless_window_s(doc)
    pm = metrics_from_points(points, done, uploads=uploads, n=n, window_s=window)
    pm["approximate_in_window"] = result.approximate_queries(0.0, window or 0.0)
    mm = doc["metrics"]
    errors: dict[str, float | None] = dict(latency_errors(measured, points))
    errors["mean_during_upload_pct"] = _pct(
        pm["mean_during_upload_ms"], mm.get("mean_during_upload_ms")
    )
    errors["mean_in_window_pct"] = _pct(pm["mean_in_window_ms"], mm.get("mean_in_window_ms"))
    errors["upload_done_pct"] = _pct(pm["upload_done_s"], mm.get("upload_done_s"))
    errors["first_offloaded_diff_s"] = _diff(pm["first_offloaded_s"], mm.get("first_offloaded_s"))
    errors["time_to_n_pct"] = _pct(pm["time_to_n_s"], mm.get("time_to_n_s"))
    return points, pm, errors


def predict_run(
    doc: Mapping[str, Any], graph: LayerGraph, measured: Sequence[QueryPoint]
) -> dict[str, Any]:
    """The prediction block of a run document (see the module docstring): the replay with
    the server and pacing inputs this run measured, and (``announced``) the replay with
    the server's announced cost model and the probed link alone."""
    horizon = max((m.issued_s for m in measured), default=0.0) + 1e-6
    plan = doc.get("plan") or {}
    inputs = measured_inputs(doc, graph.order, plan.get("partitions", []), _overhead_ms(doc))
    result, link = _replay(doc, graph, horizon, inputs)
    points, pm, errors = _errors(doc, measured, result)
    announced, _ = _replay(doc, graph, horizon, None)
    _, am, aerr = _errors(doc, measured, announced)
    return {
        "link": {
            "up_bps": link.bandwidth * 8,
            "down_bps": link.down * 8,
            "rtt_ms": link.rtt_s * 1000,
            "weight_ratio": link.weight_ratio,
            "half_duplex": link.half_duplex,
        },
        "policy": "fine, not adaptive (what the client executes)",
        "inputs": inputs.to_dict(),
        "queries": [
            [round(p.issued_s, 4), round(p.latency_ms, 3), len(q.server_layers), q.exact]
            for p, q in zip(points, result.queries, strict=True)
        ],
        "partitions": [
            [round(r.sent_s, 4), round(r.arrived_s, 4), round(r.ready_s, 4), len(r.layers), r.stage]
            for r in result.partitions
        ],
        "metrics": pm,
        "errors": errors,
        "announced": {"metrics": am, "errors": aerr},
    }
