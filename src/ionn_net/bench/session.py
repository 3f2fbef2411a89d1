"""One measured run inside the worker: an OffloadClient, queries back to back.

Owns :func:`run_session` (called by :class:`~ionn_net.bench.worker.Worker` for each
``run`` command). The clock of a run starts when the client has connected
(``OffloadClient.start`` returned: model prepared, handshake, cost model and manifest
exchanged); every time reported is seconds since then. Queries are issued back to
back with the same input; each is checked against the whole model's output computed
locally at preparation (a result computed on base-stage weights, ``ours-16``/``ours-8``,
within :data:`APPROX_TOLERANCE` of the output's largest magnitude; its error is recorded).
The run stops once ``target_queries`` have completed and the
upload finished ``tail_s`` ago, or at ``max_run_s`` (the query in flight then gets
``grace_s`` to finish).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ionn_net.bench.worker import HOST_DEVICE, emit, ranges

if TYPE_CHECKING:
    from ionn_net.bench.worker import Worker

__all__ = ["run_session"]

_GRACE_S = 60.0
_NEVER_MS = 1e9
#: An approximate result (protocol.md §10.12.5) is ok within this fraction of the
#: largest output magnitude (the fidelity bench measures 0.3-3% on the four models).
APPROX_TOLERANCE = 0.1


def _client_config(worker: Worker, cmd: Mapping[str, Any], run_cache: Path) -> Any:
    """The ClientConfig for the device setting and the strategy's precision in ``cmd``."""
    from ionn_net.bench.scenario import strategy_planner
    from ionn_net.client import ClientConfig, paced_transport
    from ionn_net.planner.profiles import ProfileCache

    prep = worker.prep
    assert prep is not None
    precision = strategy_planner(str(cmd["strategy"]))[1]
    device = cmd["device"]
    mbit = float(cmd["assumed_mbit"])
    pace_mbit = cmd.get("pace_mbit")
    transport = paced_transport(None if pace_mbit is None else float(pace_mbit) * 1e6)
    if device["kind"] == "cgroup":
        # The client rescales its cached profile to the whole-model time it measures
        # at start(), which runs under the quota: it thus learns the device's speed.
        assert prep.factor is not None
        device_id = f"bench-quota-{device['quota']:g}"
        ProfileCache(run_cache).store(prep.profile.scaled(prep.factor, device_id))
        return ClientConfig(
            slowdown=1.0,
            profile_cache=str(run_cache),
            device_id=device_id,
            assumed_mbit=mbit,
            transport=transport,
            precision=precision,
        )
    # Every run of the group runs on the same emulated device: the host profile
    # (normalised to the whole model measured once at preparation) times the factor.
    # Letting each run rescale to its own start-time measurement would give each
    # strategy a different device, depending on the host's load at that moment.
    factor = float(device["factor"])
    ProfileCache(run_cache).store(prep.profile)
    return ClientConfig(
        slowdown=factor,
        profile_cache=str(run_cache),
        device_id=HOST_DEVICE,
        assumed_mbit=mbit,
        device_ms={n: v * factor for n, v in prep.profile.layer_ms.items()},
        transport=transport,
        precision=precision,
    )


def _query_doc(
    index: int, *, issued: float, ended: float, result: Any, error: float, graph: Any
) -> dict[str, Any]:
    segments = [
        [
            s.location,
            ranges([graph.position(n) for n in s.layers]),
            round(s.ms, 3),
            bool(s.fallback),
        ]
        for s in result.segments
    ]
    return {
        "i": index,
        "t": round(issued, 4),
        "end": round(ended, 4),
        "ms": round(result.total_ms, 3),
        "pred_ms": round(result.predicted_ms, 3),
        "fallback": bool(result.fallback),
        "server_layers": int(result.server_layers),
        "replans": int(result.replans),
        # compute time the server reported for each server segment (None: it failed)
        "server_ms": [
            None if s.server_ms is None else round(s.server_ms, 3)
            for s in result.segments
            if s.location == "server"
        ],
        "ok": error <= (APPROX_TOLERANCE if not result.exact else 0.0),
        # False when a server layer ran on base-stage weights; the error is the largest
        # difference to the exact output relative to its largest magnitude
        "exact": bool(result.exact),
        "rel_err": float(error),
        "segments": segments,
    }


class _RunState:
    """The clock of one run and when its upload finished (both on that clock)."""

    def __init__(self) -> None:
        self.t0: float | None = None
        self.upload_done: float | None = None

    def now(self) -> float:
        return 0.0 if self.t0 is None else time.monotonic() - self.t0


async def _query_loop(worker: Worker, client: Any, cmd: Mapping[str, Any], run: _RunState) -> str:
    """Issue queries until a stop condition; returns why it stopped."""
    prep = worker.prep
    assert prep is not None
    target = int(cmd["target_queries"])
    tail_s = float(cmd["tail_s"])
    max_run_s = float(cmd["max_run_s"])
    n = 0
    while True:
        t = run.now()
        done_at = run.upload_done
        if t >= max_run_s:
            return "max_run_s"
        if done_at is not None and n >= target and t >= done_at + tail_s:
            return "complete"
        try:
            result = await asyncio.wait_for(client.infer_detailed(prep.x), max_run_s - t + _GRACE_S)
        except TimeoutError:
            emit(worker.out, "log", t=t, level="ERROR", msg="query timed out past max_run_s")
            return "query_timeout"
        ended = run.now()
        output = result.output if not isinstance(result.output, list) else result.output[0]
        doc = _query_doc(
            n, issued=t, ended=ended, result=result, error=_error(output, prep.expected),
            graph=prep.graph,
        )  # fmt: skip
        emit(worker.out, "q", **doc)
        n += 1


def _error(output: np.ndarray, expected: np.ndarray) -> float:
    """0 when ``output`` is the expected one (within float tolerance), else the largest
    difference relative to the largest expected magnitude."""
    if np.allclose(output, expected, rtol=1e-3, atol=1e-4):
        return 0.0
    scale = float(np.abs(expected).max()) or 1.0
    return float(np.abs(np.asarray(output, np.float64) - expected).max()) / scale


def _progress_cb(worker: Worker, run: _RunState) -> Callable[[Any], None]:
    def on_progress(p: Any) -> None:
        t = run.now()
        if p.done and run.upload_done is None:
            run.upload_done = t
        emit(
            worker.out,
            "p",
            t=round(t, 4),
            sent=p.sent_bytes,
            total=p.total_bytes,
            parts_done=p.partitions_done,
            parts_total=p.partitions_total,
            ready=p.layers_ready,
            mbit=round(p.bandwidth_mbit, 3),
            pace_mbit=None if p.pacing_mbit is None else round(p.pacing_mbit, 3),
            done=bool(p.done),
        )

    return on_progress


def _plan_doc(client: Any) -> dict[str, Any]:
    """The upload plan and per-layer inputs the simulator needs."""
    g = client.graph
    plan = client.upload_plan
    never = set(client.refused) | set(client.local_only) | set(g.inputs)
    server_ms = {n: (_NEVER_MS if n in never else v) for n, v in client.server_ms.items()}
    doc: dict[str, Any] = {
        "client_ms": dict(client.client_ms),
        "server_ms": server_ms,
        "load_ms": dict(client.load_ms),
        "refused": sorted(client.refused),
        "local_only": sorted(client.local_only),
        "client_link": {
            "bandwidth_bps": client.link.bandwidth * 8,
            "rtt_ms": client.link.rtt_s * 1000,
        },
        "stats": dict(client.stats),
        "plan": None,
    }
    if plan is not None:
        # the partitions the session really sent: the strategy's, re-planned where the
        # link moved, completed by the layers the best final plan runs on the server
        sent = client.plan_state.partitions or plan.partitions
        parts = [sorted(p - never, key=g.position) for p in sent]
        refinements = [
            (sorted(r.layers - never, key=g.position), r.stage) for r in plan.refinements
        ]
        costs = client.stage_costs
        doc["plan"] = {
            "strategy": plan.strategy,
            "precision": plan.precision,
            "refinements": [[layers, stage] for layers, stage in refinements if layers],
            "stages": None
            if costs is None
            else {
                "precision": costs.precision,
                "wire_fraction": list(costs.wire_fraction),
                "decode_ms_per_mb": list(costs.decode_ms_per_mb),
                "swap_ms_per_mb": costs.swap_ms_per_mb,
                "swap_ms_per_layer": costs.swap_ms_per_layer,
            },
            "partitions": [p for p in parts if p],
            "policy": {
                "method": plan.policy.method,
                "adaptive": plan.policy.adaptive,
                "objective": plan.policy.objective,
            },
            "notes": {str(k): v for k, v in plan.notes.items()},
            "planned_partitions": len(plan.partitions),
        }
    return doc


def _timeline_doc(client: Any, run: _RunState) -> dict[str, Any]:
    """When the session became ready, the first upload byte left and the plan was known,
    on the run's clock (the session is ready just before the clock starts: negative)."""
    tl = client.upload_timeline
    t0 = run.t0
    assert t0 is not None

    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - t0, 4)

    delay = tl.first_byte_delay_s
    return {
        "session_ready_s": rel(tl.ready_at),
        "first_byte_s": rel(tl.first_byte_at),
        "planned_s": rel(tl.planned_at),
        "strategy_planned_s": rel(tl.strategy_planned_at),
        "quick_plan": tl.quick_plan,
        "first_byte_delay_ms": None if delay is None else round(delay * 1000, 3),
        "head_start": list(tl.head_start),
        "loads": [[rel(a), rel(b), n, round(ms, 3)] for a, b, n, ms in tl.loads],
        "activations": [[rel(a), rel(b)] for a, b in tl.activations],
    }


async def run_session(worker: Worker, cmd: Mapping[str, Any]) -> None:
    """One run (see the module docstring); reports through ``worker.out``."""
    from ionn_net.bench.scenario import strategy_planner
    from ionn_net.client import OffloadClient
    from ionn_net.errors import PlannerError

    prep = worker.prep
    assert prep is not None
    strategy = str(cmd["strategy"])
    planner = strategy_planner(strategy)[0]
    device = cmd["device"]
    if device["kind"] == "cgroup" and prep.factor is None:
        prep.factor = await worker.measure_factor(float(device["quota"]))
    run = _RunState()
    with tempfile.TemporaryDirectory(prefix="ionn-bench-run-") as tmp:
        config = _client_config(worker, cmd, Path(tmp))
        try:
            client = OffloadClient(
                str(cmd["host"]),
                int(cmd["port"]),
                prep.model,
                planner=planner,
                config=config,
                on_progress=_progress_cb(worker, run),
            )
        except PlannerError as exc:
            emit(worker.out, "skipped", strategy=strategy, reason=str(exc))
            return
        await _measured(worker, client, cmd, run)


async def _measured(worker: Worker, client: Any, cmd: Mapping[str, Any], run: _RunState) -> None:
    quota_on = False
    reason = "error"
    try:
        if cmd["device"]["kind"] == "cgroup":
            # Before start(): the client measures its whole model there and scales its
            # profile to that, so it must run throttled (its trace then is too: slow,
            # but before the run's clock starts).
            await worker.quota(True, "run")
            quota_on = True
        started = time.monotonic()
        # start() prepares (graph, manifest, profile, whole-model trace) and connects;
        # the upload task it spawns has not run yet when it returns, so the run's clock
        # and every progress event start here.
        await client.start()
        run.t0 = time.monotonic()
        worker.relay.reset(run.t0)
        emit(worker.out, "connected", prep_s=round(run.t0 - started, 3))
        reason = await _query_loop(worker, client, cmd, run)
    finally:
        if quota_on:
            with contextlib.suppress(Exception):
                await worker.quota(False, "run")
        elapsed = run.now()
        # Without a start (it raised) there is nothing to report: the error event is.
        doc = _plan_doc(client) if run.t0 is not None else None
        if doc is not None:
            doc["timeline"] = _timeline_doc(client, run)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 30.0)
        if doc is not None:
            emit(worker.out, "run_end", reason=reason, elapsed_s=round(elapsed, 3), **doc)
