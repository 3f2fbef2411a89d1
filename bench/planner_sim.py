"""Upload strategies compared in the planner's simulator, on real model graphs.

Models: MobileNetV2, ResNet50, InceptionV3, VGG16 (Keras, ``weights=None``), converted
with ``graph_from_keras``. Measured once on this machine and cached under
``bench/data/planner/<model>.json`` (``--remeasure`` to redo; ``--data DIR`` reads another
set, e.g. ``bench/data/planner-loaded``, below):

* server per-layer ms: ``profile_layers`` (compiled slices, 5 runs) on this CPU, used
  directly as the server profile (the fitted ``ServerCostModel`` is only evaluated: its
  leave-one-model-out error is printed);
* server load: per layer its share of rebuilding the whole model in one call
  (instantiate from the safe spec, build, set weights; shared in proportion to the
  per-class medians of ``measure_load_times`` minus manifest validation, which the
  server does once per session); per partition the preparation
  of an identity slice (fixed cost) plus compilation of the pieces of the run sets the
  client asks the server to prepare (the server segments of the new best plan, as the
  client's upload session does) that the server has not compiled before (protocol.md
  §10.6), at the per-layer rate of compiling the whole model as one slice; per query, the
  dispatch of each extra piece of a chained run set until the complete model is
  consolidated;
* weight compression ratio: zstd level 1 with 4-byte shuffle over 1 MiB frames
  (protocol.md §12) of the model's random-init weights.

Client profile = server profile x 100 (the paper's speed gap; ``--gap`` adds others, 10
by default). Networks: 80 Mbit/s 1 ms RTT, 20 Mbit/s 20 ms, 5 Mbit/s 50 ms. The
simulator charges every strategy the same physics (compressed weights, RTT, link
sharing, serial loader). Each strategy plans with its own published rules and runs
queries with its own execution policy: ``ionn``/``efficiency`` the collapsed plan
chosen when a query starts (as published), ``all_at_once``/``local`` the best plan,
``ours`` fine cuts and mid-query re-planning. Planners know the profiles exactly (no
prediction error) and the query pattern only as "back-to-back, duration unknown".

Metrics per cell, back-to-back queries from t = 0:
  mean  mean latency of the queries issued during the upload window W = raw model
        bytes / bandwidth (the same W for every strategy)
  first issue time of the first query faster than a local run (0: the very first
        query, which mid-query re-planning speeds up while the upload runs)
  t100  time until 100 queries have completed
Then the geometric means of ours/ionn and ours/efficiency (mean latency), first over
the cells as run, then with every strategy given ours' execution policy (fine cuts,
adaptive), which isolates the upload order. Last, the time ``ours`` took to plan
(wall and CPU seconds, the worst cell of each model): it plans on the client at start.

``ours`` knows the reference window W's definition (raw model bytes / bandwidth, from
the graph and the link it is given) and refuses plans its own simulation predicts to
be worse than IONN's or EMDL's there; the query pattern it is told is still open-ended.

Two measured sets are kept. ``bench/data/planner`` (default) was measured on a quiet
machine (nothing else running): the server alone. ``bench/data/planner-loaded`` was
measured while other jobs shared the 2 vCPUs (load ~4-6): execution 1.1-9x, layer rebuild
7-13x and compile 3-10x longer, which is what the server sees in ``ionn-bench``, where client and
server share the machine (there a 45-layer ResNet50 partition took 3.1 s to load, the
loaded set's rate). Every strategy is simulated on the same numbers, so within one set
the ratios compare like with like; across sets they differ, and both are reported.

``--precision 16bit-first|8bit-first`` makes ``ours`` a precision-first upload (the
baselines stay exact): every layer first as its base stage, then the refinements
(:mod:`ionn_net.planner.precision`), charged with what ``bench/stages.py`` measured and
stored under ``"stages"`` (wire bytes of each stage, the server's decode time per MB, the
swap of exact weights per layer and per MB; the loaded set reads the default set's). The
table and the summary are the same; after them, per cell, when every stage of ``ours`` is
in use, from when every query runs on exact weights, and the share of the queries in W
that ran on approximate ones.

Usage: ``python bench/planner_sim.py [--models ...] [--gap 100 10] [--remeasure]
[--data DIR] [--bound N] [--precision P] [--regret] [--remeasure-calibration]``;
``--bound N`` adds, per cell, an optimistic bound on what the upload order can buy
(:func:`polished_bound`) and its geometric mean against IONN.

The server's prior (``ionn_net.calibrate``) is fitted on ``calibration.json`` of the data
directory: ten ``keras.applications`` models timed in chunks, measured by
``--remeasure-calibration`` exactly as a server calibrates at start. Its held-out error
(each of the four models left out of the fit in turn) is printed after the cost-model
check.

``--regret`` (:func:`regret_report`) then runs every strategy with the server profile a
client would really have had instead of the true one: first the server's prediction (the
prior fitted without the model; its per-layer relative error, measured on the calibration
data, applied to this set's true profile), then, from the moment the server has timed the
model (``--timed-after``, measured per model by ``bench/server_timing.py``), the server's
measurement (each timed chunk's true time with a ``--timing-noise`` relative error, shared
among its layers by the prediction), re-planning the rest of the upload then. Costs are
always charged with the true profile. It prints each strategy's loss of mean latency
during the upload window against the same strategy planned with exact profiles.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from ionn_net.model.graph import LayerGraph
from ionn_net.model.graph_io import graph_from_json, graph_to_json
from ionn_net.model.stages import STAGED_PRECISIONS
from ionn_net.planner.costmodel import ServerCostModel
from ionn_net.planner.link import Link
from ionn_net.planner.simulate import SimResult, simulate, simulate_partitions
from ionn_net.planner.upload import get_planner
from ionn_net.planner.workload import ExecutionPolicy, PlanningContext, QueryPattern, StageCosts
from planner_regret import (  # type: ignore[import-not-found]
    DEFAULT_TIMED_AFTER_S,
    DEFAULT_TIMING_NOISE,
    TIMED_AFTER_S,
    load_calibration_data,
    measure_calibration_data,
    predicted_profiles,
    prior_report,
    regret_report,
)

DATA = Path(__file__).resolve().parent / "data" / "planner"
MODELS = ("MobileNetV2", "ResNet50", "InceptionV3", "VGG16")
NETWORKS = ((80.0, 1.0), (20.0, 20.0), (5.0, 50.0))
STRATEGIES = ("local", "all_at_once", "ionn", "efficiency", "ours")


@dataclass(frozen=True)
class Measured:
    graph: LayerGraph
    server_ms: dict[str, float]
    load_ms: dict[str, float]
    overhead_ms: float
    compile_ms_per_layer: float
    weight_ratio: float
    note: str
    piece_call_ms: float
    stages: dict[str, Any] | None = None

    def stage_costs(self, precision: str) -> StageCosts:
        """What ``bench/stages.py`` measured for this model at ``precision``."""
        if self.stages is None:
            raise SystemExit("no stage measurements: run bench/stages.py --save DIR")
        got = self.stages[precision]
        return StageCosts(
            precision=precision,
            wire_fraction=tuple(got["wire_fraction"]),
            decode_ms_per_mb=tuple(got["decode_ms_per_mb"]),
            swap_ms_per_mb=self.stages["swap_ms_per_mb"],
            swap_ms_per_layer=self.stages["swap_ms_per_layer"],
        )


# -- measurement (TensorFlow) ------------------------------------------------------------


def _weight_ratio(model: object) -> float:
    import numpy as np

    from ionn_net.proto.codecs import Codec, encode

    raw = wire = 0
    for w in model.weights:  # type: ignore[attr-defined]
        data = np.ascontiguousarray(w.numpy(), dtype=np.float32).tobytes()
        for i in range(0, len(data), 1 << 20):
            chunk = data[i : i + (1 << 20)]
            raw += len(chunk)
            wire += min(len(chunk), len(encode(chunk, Codec.ZSTD_SHUFFLE4)))
    return raw / wire if wire else 1.0


def _piece_call_ms(executor: Any, pieces: int = 16, rounds: int = 15) -> float:
    """What one more piece costs a query on the server (§10.6 chains): the whole model
    as one slice against the same layers as a chain of ``pieces`` contiguous pieces,
    interleaved calls, medians; the difference per extra piece."""
    import numpy as np

    graph = executor.graph
    n = len(graph)
    batch_of = {name: graph.position(name) * pieces // n for name in graph.order}
    whole = executor.prepare(graph.order)
    chain = executor.prepare_chain(graph.pieces(graph.order, batch_of))
    feeds = whole.zero_feeds()
    times: dict[str, list[float]] = {"whole": [], "chain": []}
    for _ in range(rounds):
        for label, run in (("whole", whole), ("chain", chain)):
            t0 = time.perf_counter()
            run(feeds)
            times[label].append(time.perf_counter() - t0)
    extra = len(chain.pieces) - 1
    delta = float(np.median(times["chain"]) - np.median(times["whole"]))
    return max(delta, 0.0) * 1e3 / extra


def measure_piece_call(name: str) -> float:
    import keras

    from ionn_net.executor import Executor

    return _piece_call_ms(Executor.from_model(getattr(keras.applications, name)(weights=None)))


def measure(name: str) -> Measured:
    import keras

    from ionn_net.executor import Executor
    from ionn_net.measure import measure_load_times, profile_layers
    from ionn_net.model.layers import build_layers, extract_manifest

    model = getattr(keras.applications, name)(weights=None)
    executor = Executor.from_model(model)
    graph = executor.graph
    t0 = time.perf_counter()
    server_ms = profile_layers(executor, runs=5)
    manifest, blobs, _ = extract_manifest(model)

    def build(layer: str) -> object:
        return build_layers(manifest, blobs, names=[layer])[layer]

    loads = measure_load_times(graph, build, per_class=3)
    # each build() call validates the whole manifest first; the server does that once
    # per session, then builds a partition's layers in one call: time both, and
    # share the batch time among layers in proportion to their class's cost
    t1 = time.perf_counter()
    build_layers(manifest, blobs, names=[])
    validate_ms = (time.perf_counter() - t1) * 1e3
    t1 = time.perf_counter()
    rebuilt = build_layers(manifest, blobs)
    batch_ms = (time.perf_counter() - t1) * 1e3 - validate_ms
    share = {
        n.name: max(loads.build_ms.get(n.cls, 0.0) - validate_ms, 0.1)
        for n in graph
        if n.name in rebuilt
    }
    scale = batch_ms / sum(share.values())
    load_ms = {n: share.get(n, 0.0) * scale for n in graph.order}
    whole = Executor(graph, rebuilt).prepare(graph.order).build_seconds * 1e3
    compile_ms = max(whole - loads.slice_overhead_ms, 0.0) / max(len(rebuilt), 1)
    ratio = _weight_ratio(model)
    piece_ms = _piece_call_ms(executor)
    note = f"measured in {time.perf_counter() - t0:.0f} s on {os.uname().nodename}"
    return Measured(
        graph, server_ms, load_ms, loads.slice_overhead_ms, compile_ms, ratio, note, piece_ms
    )


def load_or_measure(name: str, remeasure: bool, data: Path = DATA) -> Measured:
    path = data / f"{name.lower()}.json"
    if path.exists() and not remeasure:
        doc = json.loads(path.read_text())
        if "piece_call_ms" not in doc:  # measured since the server chains pieces
            doc["piece_call_ms"] = measure_piece_call(name)
            path.write_text(json.dumps(doc, indent=0, sort_keys=True))
        return Measured(
            graph_from_json(doc["graph"]),
            doc["server_ms"],
            doc["load_ms"],
            doc["partition_overhead_ms"],
            doc["compile_ms_per_layer"],
            doc["weight_ratio"],
            doc["note"],
            doc["piece_call_ms"],
            doc.get("stages") or _stages_of(name, path),
        )
    m = measure(name)
    data.mkdir(parents=True, exist_ok=True)
    doc = {
        "graph": graph_to_json(m.graph),
        "server_ms": m.server_ms,
        "load_ms": m.load_ms,
        "partition_overhead_ms": m.overhead_ms,
        "compile_ms_per_layer": m.compile_ms_per_layer,
        "weight_ratio": m.weight_ratio,
        "note": m.note,
        "piece_call_ms": m.piece_call_ms,
    }
    path.write_text(json.dumps(doc, indent=0, sort_keys=True))
    return m


def _stages_of(name: str, path: Path) -> dict[str, Any] | None:
    """Stage measurements of ``name`` (``bench/stages.py``): the default set's when
    ``path`` has none (they do not depend on the server's load; the model is the same)."""
    default = DATA / path.name
    if default != path and default.exists():
        found = json.loads(default.read_text()).get("stages")
        return found if isinstance(found, dict) else None
    return None


# -- cost model check ----------------------------------------------------------------------


def cost_model_report(measured: dict[str, Measured]) -> None:
    print("ServerCostModel, leave-one-model-out (fit on the others, evaluate on this one):")
    for held, m in measured.items():
        train_exec, train_load = [], []
        for name, other in measured.items():
            if name == held:
                continue
            g = other.graph
            train_exec += [(g[n], t) for n, t in other.server_ms.items() if g[n].inbound]
            train_load += [(g[n], t) for n, t in other.load_ms.items() if g[n].inbound]
        model = ServerCostModel.fit(train_exec, train_load)
        ex = model.evaluate([(m.graph[n], t) for n, t in m.server_ms.items() if m.graph[n].inbound])
        ld = model.evaluate(
            [(m.graph[n], t) for n, t in m.load_ms.items() if m.graph[n].inbound], which="load"
        )
        total_true = sum(m.server_ms.values())
        total_pred = sum(model.exec_profile(m.graph).values())
        print(
            f"  {held:12s} exec MAPE {ex['mape']:6.1f}% median {ex['median_ape']:5.1f}%  "
            f"whole model {total_pred:7.1f} ms predicted vs {total_true:7.1f} ms  |  "
            f"load MAPE {ld['mape']:6.1f}%"
        )
    print(
        "  (profile_layers apportions each compiled chunk's time by a fitted MACs/elements\n"
        "   share, so per-layer 'truth' is itself partly a linear model: the whole-model\n"
        "   column is the independent check.)"
    )


# -- simulation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Staged:
    """A precision-first run: issue time of the first query from which all are exact,
    when the last stage was in use, share of the queries in W run on approximate weights."""

    exact_from: float | None
    done_s: float
    approx_share: float


@dataclass(frozen=True)
class Cell:
    mean: float
    first: float | None
    t100: float | None
    mean_same_policy: float
    plan_wall_s: float
    plan_cpu_s: float
    staged: Staged | None = None


def run_cell(ctx: PlanningContext, window: float, strategy: str) -> Cell:
    wall, cpu = time.perf_counter(), time.process_time()
    plan = get_planner(strategy).plan(ctx)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    in_window = ctx.with_(pattern=QueryPattern.back_to_back(duration_s=window))
    res: SimResult = simulate(in_window, plan)
    hundred = simulate(ctx.with_(pattern=QueryPattern.back_to_back(count=100)), plan)
    same = simulate_partitions(
        in_window,
        plan.partitions,
        ExecutionPolicy("fine", adaptive=True),
        refinements=plan.refinements,
    )
    first = res.first_faster_than_local()
    if first is None:
        first = hundred.first_faster_than_local()
    staged = None
    if ctx.stages is not None:  # precision-first: when it is exact, and how many were not
        whole = simulate(ctx.with_(pattern=QueryPattern.back_to_back()), plan)
        approx = res.approximate_queries(0.0, window) / max(len(res.window(0.0, window)), 1)
        # the run stops once every stage is in use: the next query is issued then, exact
        exact_from = whole.exact_from()
        if exact_from is None:
            exact_from = whole.queries[-1].finished_s
        staged = Staged(exact_from, whole.upload_done_s, approx)
    return Cell(
        res.mean_latency(0.0, window),
        first,
        hundred.completion_time(100),
        same.mean_latency(0.0, window),
        wall,
        cpu,
        staged,
    )


def polished_bound(ctx: PlanningContext, window: float, budget: int) -> float:
    """An optimistic bound on what re-ordering the upload can buy in one cell: start from
    the best of ours', IONN's and EMDL's partitions and run ours' local search judged
    directly on this cell's metric (mean latency during ``window``, fine cuts, mid-query
    re-planning). A cheat (the test is the objective), hence a bound, not a strategy."""
    from ionn_net.planner.ours import _polish
    from ionn_net.planner.simulate import SimMemo

    in_window = ctx.with_(pattern=QueryPattern.back_to_back(duration_s=window))
    policy = ExecutionPolicy("fine", adaptive=True)
    memo = SimMemo(in_window, policy)

    def score(parts: list[frozenset[str]]) -> tuple[float, float]:
        res = simulate_partitions(in_window, parts, policy, memo=memo)
        return (0.0, res.mean_latency(0.0, window))

    starts = [list(get_planner(s).plan(ctx).partitions) for s in ("ours", "ionn", "efficiency")]
    best = min(starts, key=score)
    _, value, _ = _polish(ctx, best, score(best), score, budget=budget, may_drop=False)
    return value[1]


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3g}"


def geomean(values: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


# -- the server's prior and its regret (bench/planner_regret.py) ---------------------------


def add_regret_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--regret",
        action="store_true",
        help="also run every strategy with predicted, then measured server profiles",
    )
    ap.add_argument(
        "--remeasure-calibration",
        action="store_true",
        help="time the calibration models again (as a server does at start)",
    )
    ap.add_argument(
        "--timed-after",
        type=float,
        default=None,
        metavar="S",
        help="seconds until the server has timed a model (default: measured per model)",
    )
    ap.add_argument("--timing-noise", type=float, default=DEFAULT_TIMING_NOISE)


def model_checks(args: argparse.Namespace, measured: dict[str, Measured]) -> dict[str, Any] | None:
    """The cost model's check, then the prior's (returns the calibration data)."""
    if len(measured) > 1:
        cost_model_report(measured)
    return calibration_data(args)


def calibration_data(args: argparse.Namespace) -> dict[str, Any] | None:
    """The calibration measurements of the data directory (measured on request); prints
    the prior's held-out error when there are some."""
    path = args.data / "calibration.json"
    cal = measure_calibration_data(path) if args.remeasure_calibration else None
    cal = cal or load_calibration_data(path)
    if cal is not None:
        prior_report(cal)
    return cal


def run_regret(
    args: argparse.Namespace, measured: dict[str, Measured], cal: dict[str, Any] | None
) -> None:
    if cal is None:
        print("\nregret: no calibration.json in the data directory (--remeasure-calibration)")
        return
    ratios = predicted_profiles(cal, [m for m in measured if m in cal])
    cells = []
    for gap in args.gap:
        for name, m in measured.items():
            if name not in ratios:
                continue
            for mbit, rtt in NETWORKS:
                ctx, window = cell_context(m, gap, mbit, rtt)
                cells.append((name, gap, f"{mbit:g}M/{rtt:g}ms", ctx, window))

    def timed_after(name: str) -> float:
        if args.timed_after is not None:
            return float(args.timed_after)
        return TIMED_AFTER_S.get(name, DEFAULT_TIMED_AFTER_S)

    regret_report(cells, ratios, timed_after=timed_after, noise=args.timing_noise)


def cell_context(m: Measured, gap: float, mbit: float, rtt: float) -> tuple[PlanningContext, float]:
    """The true planning context of one cell and its window W."""
    ctx = _context(m, gap, mbit, rtt)
    return ctx, m.graph.total_weight_bytes / ctx.link.bandwidth


def _context(m: Measured, gap: float, mbit: float, rtt: float) -> PlanningContext:
    return PlanningContext(
        graph=m.graph,
        client_ms={k: v * gap for k, v in m.server_ms.items()},
        server_ms=m.server_ms,
        load_ms=m.load_ms,
        link=Link.from_mbit(mbit, rtt, weight_ratio=m.weight_ratio),
        partition_overhead_ms=m.overhead_ms,
        compile_ms_per_layer=m.compile_ms_per_layer,
        piece_call_ms=m.piece_call_ms,
        pattern=QueryPattern.back_to_back(),
    )


def _staged_line(label: str, window: float, cell: Cell) -> str:
    st = cell.staged
    assert st is not None
    return (
        f"  {label:22s} W {window:6.1f} s: all stages in use at {st.done_s:7.1f} s, "
        f"every query exact from {_fmt(st.exact_from):>7s} s, "
        f"{100 * st.approx_share:5.1f}% of the queries in W on approximate weights"
    )


def describe(measured: dict[str, Measured], precision: str) -> None:
    for name, m in measured.items():
        print(
            f"{name}: {len(m.graph)} layers, {m.graph.total_weight_bytes / 1e6:.1f} MB, "
            f"server {sum(m.server_ms.values()):.1f} ms, rebuild {sum(m.load_ms.values()):.0f} ms, "
            f"compile {m.compile_ms_per_layer:.1f} ms/layer + {m.overhead_ms:.0f} ms/partition, "
            f"{m.piece_call_ms:.2f} ms per chained piece, "
            f"weight zstd ratio {m.weight_ratio:.3f} "
            f"({m.note})"
        )
        if precision != "exact":
            sc = m.stage_costs(precision)
            print(
                f"  {precision}: stages {', '.join(f'{f:.3f}' for f in sc.wire_fraction)} "
                f"of the raw bytes on the wire, decode "
                f"{', '.join(f'{d:.1f}' for d in sc.decode_ms_per_mb)} ms/MB, swap "
                f"{sc.swap_ms_per_layer:.2f} ms/layer + {sc.swap_ms_per_mb:.2f} ms/MB"
            )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--gap", nargs="+", type=float, default=[100.0, 10.0])
    ap.add_argument("--remeasure", action="store_true")
    ap.add_argument("--data", type=Path, default=DATA, help="directory of measured models")
    ap.add_argument(
        "--bound",
        type=int,
        default=0,
        metavar="N",
        help="also polish each cell on its own metric for N simulations (an optimistic bound)",
    )
    ap.add_argument(
        "--precision",
        choices=("exact", *STAGED_PRECISIONS),
        default="exact",
        help="upload of ours: exact blobs, or base stages first (the baselines stay exact)",
    )
    add_regret_arguments(ap)
    return ap.parse_args(argv)


def print_plan_times(plan_times: dict[str, list[tuple[float, float]]]) -> None:
    print("ours planning time per model, max over its cells (wall / CPU s):")
    for name, times in plan_times.items():
        if times:
            wall = max(w for w, _ in times)
            cpu = max(c for _, c in times)
            print(f"  {name:12s} {wall:5.2f} / {cpu:5.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    measured = {name: load_or_measure(name, args.remeasure, args.data) for name in args.models}
    describe(measured, args.precision)
    calibration = model_checks(args, measured)

    ratios: dict[str, list[float]] = {"ionn": [], "efficiency": []}
    same_ratios: dict[str, list[float]] = {"ionn": [], "efficiency": []}
    failures: list[str] = []
    bounds: list[float] = []
    staged: list[str] = []
    plan_times: dict[str, list[tuple[float, float]]] = {name: [] for name in measured}
    t_start = time.perf_counter()
    for gap in args.gap:
        print(f"\nclient = server x {gap:g}")
        head = " ".join(f"{s:>24s}" for s in STRATEGIES)
        print(f"{'model':12s} {'net':>10s} {'W s':>7s} {'local s':>8s} {head}")
        print(f"{'':40s}" + " ".join(f"{'mean / first / t100':>24s}" for _ in STRATEGIES))
        for name, m in measured.items():
            for mbit, rtt in NETWORKS:
                ctx = _context(m, gap, mbit, rtt)
                staged_ctx = ctx
                if args.precision != "exact":
                    staged_ctx = ctx.with_(stages=m.stage_costs(args.precision))
                window = m.graph.total_weight_bytes / ctx.link.bandwidth
                cells = {
                    s: run_cell(staged_ctx if s == "ours" else ctx, window, s) for s in STRATEGIES
                }
                row = " ".join(
                    f"{_fmt(c.mean):>8s}/{_fmt(c.first):>7s}/{_fmt(c.t100):>7s}"
                    for c in cells.values()
                )
                print(f"{name:12s} {mbit:4g}M/{rtt:3g}ms {window:7.1f} {ctx.local_s():8.2f} {row}")
                ours = cells["ours"]
                plan_times[name].append((ours.plan_wall_s, ours.plan_cpu_s))
                if ours.staged is not None:
                    label = f"{name} {mbit:g}M x{gap:g}"
                    staged.append(_staged_line(label, window, ours))
                if args.bound:
                    bound = polished_bound(ctx, window, args.bound)
                    bounds.append(cells["ionn"].mean / bound)
                    print(f"{'':40s} bound: {_fmt(bound)} ({bounds[-1]:.2f}x below ionn)")
                for base in ("ionn", "efficiency"):
                    ratios[base].append(ours.mean / cells[base].mean)
                    same_ratios[base].append(ours.mean_same_policy / cells[base].mean_same_policy)
                    if ours.mean > cells[base].mean * (1 + 1e-9):
                        failures.append(f"{name} {mbit:g}M x{gap:g}: ours > {base}")
    print(f"\n({time.perf_counter() - t_start:.0f} s of planning and simulation)")
    for base in ("ionn", "efficiency"):
        print(
            f"geomean mean-latency ratio ours/{base}: {geomean(ratios[base]):.3f} as run "
            f"({1 / geomean(ratios[base]):.2f}x better), "
            f"{geomean(same_ratios[base]):.3f} with the same execution policy for all "
            f"({1 / geomean(same_ratios[base]):.2f}x)"
        )
    if bounds:
        print(f"geomean of the polished bound below ionn: {geomean(bounds):.2f}x")
    print("ours <= ionn and efficiency in every cell:", failures or "yes")
    print_plan_times(plan_times)
    if staged:
        print(f"ours, {args.precision} (whole session until every stage is in use):")
        print("\n".join(staged))
    if args.regret:
        run_regret(args, measured, calibration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
