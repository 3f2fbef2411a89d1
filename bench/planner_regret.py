"""The server's prior and the plan quality its errors cost, for ``bench/planner_sim.py``.

* :func:`load_calibration_data` / :func:`measure_calibration_data`: the calibration
  measurements (``calibration.json`` of a data directory: the models of
  ``ionn_net.calibrate`` timed in chunks, as a server does at start);
* :func:`prior_report`: the prior's held-out error (leave one model out), as the server
  logs it at start;
* :func:`regret_report`: every strategy planned and run with the server profile a client
  would really have had (predicted, then measured from ``timed_after``), against the true
  profile it is charged with; the loss of mean latency during the upload window.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ionn_net.calibrate import (
    EXTRA,
    HELD_OUT,
    Calibration,
    MeasuredModel,
    fit_calibration,
    layer_ms,
    measure_models,
)
from ionn_net.planner.link import Link
from ionn_net.planner.prior import LayerPrior, chunks_of
from ionn_net.planner.simulate import Belief, simulate
from ionn_net.planner.upload import get_planner
from ionn_net.planner.workload import PlanningContext, QueryPattern

__all__ = [
    "load_calibration_data",
    "measure_calibration_data",
    "predicted_profiles",
    "prior_report",
    "regret_report",
]

#: Seconds from the manifest to the server's last timing of each model
#: (``bench/server_timing.py``); models not listed use :data:`DEFAULT_TIMED_AFTER_S`.
TIMED_AFTER_S: dict[str, float] = {}
DEFAULT_TIMED_AFTER_S = 30.0
#: Relative error of a timed chunk against what the server then takes.
DEFAULT_TIMING_NOISE = 0.10
REGRET_STRATEGIES = ("all_at_once", "ionn", "efficiency", "ours")


def load_calibration_data(path: Path) -> dict[str, MeasuredModel] | None:
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    return {name: MeasuredModel.from_doc(m) for name, m in doc["models"].items()}


def measure_calibration_data(path: Path, runs: int = 5) -> dict[str, MeasuredModel]:
    """Measure the calibration models as a server does at start, and store them."""
    import os

    started = time.monotonic()
    found = measure_models([*HELD_OUT, *EXTRA], runs=runs)
    doc = {
        "note": f"measured in {time.monotonic() - started:.0f} s on {os.uname().nodename}, "
        f"load average {os.getloadavg()[0]:.1f}",
        "models": {n: m.to_doc() for n, m in found.items()},
    }
    path.write_text(json.dumps(doc, sort_keys=True))
    return found


def prior_report(cal: Mapping[str, MeasuredModel]) -> Calibration:
    found = fit_calibration(cal)
    print(
        "Server prior (per-class regression fitted on the chunk times of "
        f"{len(cal)} models), leave one model out:"
    )
    for line in found.summary():
        print(f"  {line}")
    return found


def predicted_profiles(
    cal: Mapping[str, MeasuredModel], models: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per model of ``models``: each layer's predicted / measured time on the calibration
    data, the prediction by the prior fitted without that model, the measurement its
    chunk's time shared by the prior fitted on every model (ratios capped to 1/10..10)."""
    every = {n: chunks_of(m.graph, m.chunks, m.chunk_ms) for n, m in cal.items()}
    consensus = LayerPrior.fit([c for rows in every.values() for c in rows])
    ratios = {}
    for name in models:
        prior = LayerPrior.fit([c for n, rows in every.items() if n != name for c in rows])
        truth = layer_ms(consensus, cal[name])
        graph = cal[name].graph
        ratios[name] = {
            layer: min(max(prior.predict_ms(graph, layer) / max(t, 1e-6), 0.1), 10.0)
            for layer, t in truth.items()
        }
    return ratios


def _measured(
    ctx: PlanningContext, predicted: Mapping[str, float], noise: float, seed: int
) -> dict[str, float]:
    """What the server's timing announces (``ionn_net.server_timing``): chunks of 8 layers
    or 10 ms predicted, each chunk's true time off by a lognormal error of ``noise``,
    shared among its layers by the prediction."""
    rng = np.random.default_rng(seed)
    graph, true = ctx.graph, ctx.server_ms
    out = dict.fromkeys(graph.order, 0.0)
    chunk: list[str] = []
    acc = 0.0
    names = [n for n in graph.order if graph[n].inbound]
    for i, name in enumerate(names):
        chunk.append(name)
        acc += predicted[name]
        if acc >= 10.0 or len(chunk) >= 8 or i == len(names) - 1:
            total = sum(true[n] for n in chunk) * math.exp(rng.normal(0.0, noise))
            weights = [max(predicted[n], 1e-6) for n in chunk]
            for n, w in zip(chunk, weights, strict=True):
                out[n] = total * w / sum(weights)
            chunk, acc = [], 0.0
    return out


def _mean_with_belief(
    ctx: PlanningContext,
    window: float,
    strategy: str,
    before: Mapping[str, float],
    after: Mapping[str, float],
    *,
    switch_s: float,
) -> float:
    """Mean latency during ``window`` of ``strategy`` planned with ``before``, then (from
    ``switch_s``) with ``after``, its upload re-planned then; costs from ``ctx``."""
    planner = get_planner(strategy)
    believed = {s: ctx.with_(server_ms=dict(m)) for s, m in (("b", before), ("a", after))}
    plan = planner.plan(believed["b"])
    times = {k: c.times for k, c in believed.items()}
    belief = Belief(times["b"], times["a"], switch_s)
    in_window = ctx.with_(pattern=QueryPattern.back_to_back(duration_s=window))

    def replan(sent: frozenset[str], link: Link) -> Sequence[frozenset[str]]:
        return planner.replan(believed["a"], sent - ctx.held, link, switch_s).partitions

    changes = [(switch_s, ctx.link)] if math.isfinite(switch_s) else []
    res = simulate(
        in_window,
        plan,
        belief=belief,
        link_changes=changes,
        replanner=replan if changes else None,
    )
    return res.mean_latency(0.0, window)


def regret_report(
    contexts: Sequence[tuple[str, float, str, PlanningContext, float]],
    ratios: Mapping[str, Mapping[str, float]],
    *,
    timed_after: Callable[[str], float],
    noise: float,
) -> dict[str, list[float]]:
    """Per cell ``(model, gap, net label, true context, window)``: print each strategy's
    regret with predicted profiles only, and with measured profiles from
    ``timed_after(model)`` (against exact profiles with the same re-plan at that moment,
    so that only what the client believed differs); returns the regrets of ``ours``."""
    print(
        "\nregret: mean latency during W with the profile a client would have had, over "
        "the same strategy with exact profiles, -1 (predicted only / measured from t_m)"
    )
    head = " ".join(f"{s:>17s}" for s in REGRET_STRATEGIES)
    print(f"{'model':12s} {'gap':>5s} {'net':>10s} {'t_m s':>6s} {head}")
    worst: dict[str, list[float]] = {"predicted": [], "measured": []}
    for index, (name, gap, net, ctx, window) in enumerate(contexts):
        true = ctx.server_ms
        predicted = {n: true[n] * ratios[name].get(n, 1.0) for n in ctx.graph.order}
        measured = _measured(ctx, predicted, noise, seed=index)
        t_m = timed_after(name)
        cells = []
        for strategy in REGRET_STRATEGIES:
            exact = _mean_with_belief(ctx, window, strategy, true, true, switch_s=math.inf)
            exact_then = _mean_with_belief(ctx, window, strategy, true, true, switch_s=t_m)
            only = _mean_with_belief(ctx, window, strategy, predicted, predicted, switch_s=math.inf)
            then = _mean_with_belief(ctx, window, strategy, predicted, measured, switch_s=t_m)
            r_pred, r_meas = only / exact - 1, then / exact_then - 1
            cells.append(f"{r_pred * 100:+7.1f}%/{r_meas * 100:+6.1f}%")
            if strategy == "ours":
                worst["predicted"].append(r_pred)
                worst["measured"].append(r_meas)
        print(f"{name:12s} {gap:5g} {net:>10s} {t_m:6.1f} {' '.join(cells)}")
    for kind, values in worst.items():
        print(
            f"ours, {kind}: regret max {max(values) * 100:+.1f}%, "
            f"median {statistics.median(values) * 100:+.1f}% over {len(values)} cells"
        )
    return worst
