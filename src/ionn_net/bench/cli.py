"""The ``ionn-bench`` console script.

Owns argument parsing (each flag validated with a clear message), scenario lookup
(a name means ``<scenarios dir>/<name>.toml``; by default the scenarios installed with
the package, :func:`~ionn_net.bench.scenario.default_scenarios_dir`), the output
directory and the final plots and summary. Progress goes to stderr; the paths of what
was written go to stdout. Exit status: 0 when every run completed (skipped strategies
included), 1 when some run failed, 2 on bad arguments, an unusable environment or a
missing ``bench`` extra (:mod:`ionn_net.extras`), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from ionn_net.argtypes import positive
from ionn_net.bench.isolation import ISOLATION_MODES, resolve_isolation
from ionn_net.bench.links import BACKEND_CHOICES
from ionn_net.bench.models import MODELS
from ionn_net.bench.progress import Console
from ionn_net.bench.runner import BenchOptions, machine_info, run_scenario
from ionn_net.bench.scenario import (
    STRATEGIES,
    Scenario,
    default_scenarios_dir,
    load_scenario,
    quick_scenario,
    scenario_files,
)
from ionn_net.errors import ConfigError, IonnError
from ionn_net.extras import require_extras
from ionn_net.tflog import VERBOSE_ENV

__all__ = ["default_scenarios_dir", "main"]


def _csv(choices: Sequence[str]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(t.strip() for t in text.split(",") if t.strip())
        bad = [t for t in items if t not in choices]
        if not items or bad:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list from {', '.join(choices)}, got {text!r}"
            )
        return items

    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ionn-bench",
        description="Run every upload strategy side by side on an emulated link with an "
        "emulated slow client, and write one JSON per run, latency-over-time plots, the "
        "simulator's prediction beside each measurement and a markdown summary.",
        epilog="Scenarios: " + ", ".join(_names(default_scenarios_dir())) + " (--list "
        "describes them). Models: " + ", ".join(MODELS) + ". 'ionn-bench handoff --help': "
        "a client moving between two edge servers.",
    )
    p.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help="scenario names (files in --scenarios-dir) or paths to .toml files (default: wifi)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke run: a small CNN, 5 s runs, userspace link, every strategy (1-2 min)",
    )
    p.add_argument(
        "--scenarios-dir",
        type=Path,
        default=None,
        help="where scenario names resolve (default: the scenarios installed with the package)",
    )
    p.add_argument(
        "--list",
        action="store_true",
        help="run nothing: list the scenarios found (in --scenarios-dir if given) and exit",
    )
    p.add_argument("--models", type=_csv(tuple(MODELS)), help="override the models")
    p.add_argument("--strategies", type=_csv(STRATEGIES), help="override the strategies")
    p.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="link emulation (default auto: netem > tbf+pktdelay > userspace-proxy; an "
        "explicit choice fails when it cannot run)",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cgroup", "slowdown"),
        default=None,
        help="override the scenario's device emulation mode",
    )
    p.add_argument(
        "--server-costs",
        choices=("calibrated", "workload"),
        default="calibrated",
        help="the cost model the server announces: calibrated on small models (the "
        "library's default) or fitted on the benchmark model's own layers timed here",
    )
    p.add_argument(
        "--isolation",
        choices=ISOLATION_MODES,
        default="cores",
        help="cores (default): the edge server on its own CPU(s), the client and the link "
        "emulation on the others, as in a deployment; shared: every process on every CPU",
    )
    p.add_argument(
        "--pace",
        choices=("estimate", "link"),
        default="estimate",
        help="the client's upload pacing rate on namespace links: estimated from TCP_INFO "
        "(default, as deployed) or the configured link rate",
    )
    p.add_argument("--quota", type=positive(float), help="CPU quota (cores)")
    p.add_argument("--slowdown", type=positive(float), help="slowdown factor")
    p.add_argument("--max-run-s", type=positive(float), help="bound per run")
    p.add_argument("--target-queries", type=positive(int), help="queries per run")
    p.add_argument(
        "--probe-s",
        type=positive(float),
        default=1.0,
        help="seconds of bulk transfer per direction when probing the link (default 1)",
    )
    p.add_argument("--out", type=Path, default=None, help="output directory (default bench/out/…)")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("IONN_NET_CACHE", Path.home() / ".cache" / "ionn_net")),
        help="server cost model and client profiles cache (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="model weights, inputs, link jitter/loss")
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="DIR",
        help="run nothing: rebuild the plots and summary of DIR from its runs/*.json",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show TensorFlow's native start-up logs of the server and client processes "
        "(hidden by default)",
    )
    return p


def _names(directory: Traversable) -> list[str]:
    return [f.name.removesuffix(".toml") for f in scenario_files(directory)]


def _resolve(names: Sequence[str], directory: Traversable) -> list[Scenario]:
    out = []
    for name in names:
        path: Traversable = Path(name)
        if not name.endswith(".toml"):
            path = directory.joinpath(f"{name}.toml")
        if not path.is_file():
            known = ", ".join(_names(directory)) or "none"
            raise ConfigError(f"scenario {name!r}: no file {path} (known: {known})")
        out.append(load_scenario(path))
    return out


def _list(directory: Traversable) -> int:
    """``--list``: one line per scenario file of ``directory`` (name, link, description)."""
    found = scenario_files(directory)
    if not found:
        print(f"ionn-bench: no scenario files (*.toml) in {directory}", file=sys.stderr)
        return 2
    print(f"scenarios in {directory}:")
    for f in found:
        name = f.name.removesuffix(".toml")
        try:
            sc = load_scenario(f)
        except ConfigError as exc:
            print(f"  {name:<12} unusable: {exc}")
            continue
        print(f"  {name:<12} {sc.description or sc.link.describe()}")
    return 0


def _apply_overrides(sc: Scenario, args: argparse.Namespace) -> Scenario:
    run = sc.run
    if args.models:
        run = replace(run, models=args.models)
    if args.strategies:
        run = replace(run, strategies=args.strategies)
    if args.max_run_s:
        run = replace(run, max_run_s=args.max_run_s)
    if args.target_queries:
        run = replace(run, target_queries=args.target_queries)
    device = sc.device
    if args.quota:
        device = replace(device, quota=args.quota)
    if args.slowdown:
        device = replace(device, slowdown=args.slowdown)
    return sc.with_(run=run, device=device)


def _write_report(
    out: Path, groups: list[list[dict[str, Any]]], command: str, console: Console
) -> Path:
    from ionn_net.bench.report import (
        plot_group,
        plot_prediction,
        precision_lines,
        summary_markdown,
    )

    plots: dict[tuple[str, str], list[str]] = {}
    for docs in groups:
        shown = [d for d in docs if d["queries"]]
        if not shown:
            continue
        d = docs[0]
        key = (d["scenario"]["name"], d["model"]["name"])
        tag = f"{key[0]}__{key[1]}"
        main = plot_group(shown, out / "plots" / f"{tag}.png")
        pred = plot_prediction(shown, out / "plots" / f"{tag}__predicted.png")
        plots[key] = [str(main.relative_to(out)), str(pred.relative_to(out))]
    first = next((d for docs in groups for d in docs), None)
    versions = dict(first["versions"]) if first else {}
    import matplotlib

    versions["matplotlib"] = matplotlib.__version__
    text = summary_markdown(
        groups, command=command, machine=machine_info(), versions=versions, plots=plots
    )
    path = out / "summary.md"
    path.write_text(text)
    for line in precision_lines(groups):
        if line.startswith("- "):
            console.line(line[2:])
    return path


def main(argv: Sequence[str] | None = None) -> int:
    require_extras("ionn-bench")
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["handoff"]:  # a client moving between two servers (protocol.md §15)
        from ionn_net.bench.handoff import main as handoff_main

        return handoff_main(given[1:])
    if given[:1] == ["cache"]:  # its own command: what a model catalog spares a client
        from ionn_net.bench.cache import main as cache_main

        return cache_main(given[1:])
    args = _parser().parse_args(argv)
    if args.verbose:  # the server and worker processes read it (ionn_net.tflog)
        os.environ[VERBOSE_ENV] = "1"
    console = Console(sys.stderr, quiet=args.quiet)
    command = "ionn-bench " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    if args.report is not None:
        return _report_only(args.report, console)
    directory: Traversable = args.scenarios_dir or default_scenarios_dir()
    if args.list:
        return _list(directory)
    try:
        if args.quick:
            if args.scenarios:
                raise ConfigError("--quick: expected no scenario names (it has its own)")
            scenarios = [quick_scenario()]
            backend = "userspace-proxy" if args.backend == "auto" else args.backend
        else:
            scenarios = _resolve(args.scenarios or ["wifi"], directory)
            backend = args.backend
        scenarios = [_apply_overrides(s, args) for s in scenarios]
        resolve_isolation(args.isolation)  # refused here, before anything starts
    except ConfigError as exc:
        print(f"ionn-bench: {exc}", file=sys.stderr)
        return 2
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or Path("bench/out") / (f"{stamp}-quick" if args.quick else stamp)
    out.mkdir(parents=True, exist_ok=True)
    opts = BenchOptions(
        out_dir=out,
        cache_dir=args.cache_dir,
        backend=backend,
        device=args.device,
        probe_s=args.probe_s,
        seed=args.seed,
        command=command,
        server_costs=args.server_costs,
        isolation=args.isolation,
        pace=args.pace,
    )
    return _run(scenarios, opts, console, out, command)


def load_groups(out: Path) -> list[list[dict[str, Any]]]:
    """The run documents under ``out/runs``, grouped by scenario x model (in first-seen
    order of their start times) with strategies in the bench's order; their metrics are
    recomputed (so documents written by an older version get every column)."""
    from ionn_net.bench.results import check_run_doc, run_metrics

    docs = []
    for path in sorted((out / "runs").glob("*.json")):
        try:
            doc = check_run_doc(json.loads(path.read_text()))
            n = int(doc["scenario"].get("run", {}).get("target_queries", 100))
            doc["metrics"] = run_metrics(doc, n=n)
            docs.append(doc)
        except (ValueError, ConfigError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
    docs.sort(key=lambda d: str(d.get("timing", {}).get("started", "")))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for d in docs:
        groups.setdefault((d["scenario"]["name"], d["model"]["name"]), []).append(d)
    rank = {s: i for i, s in enumerate(STRATEGIES)}
    return [sorted(g, key=lambda d: rank.get(d["strategy"], len(rank))) for g in groups.values()]


def _report_only(out: Path, console: Console) -> int:
    try:
        groups = load_groups(out)
        if not groups:
            raise ConfigError(f"--report: no run documents in {out / 'runs'}")
    except ConfigError as exc:
        print(f"ionn-bench: {exc}", file=sys.stderr)
        return 2
    commands = sorted({str(d.get("command", "")) for g in groups for d in g})
    summary = _write_report(out, groups, " ; ".join(commands), console)
    print(f"summary: {summary}")
    return 0


def _run(
    scenarios: list[Scenario], opts: BenchOptions, console: Console, out: Path, command: str
) -> int:
    from ionn_net.aio import run

    groups: list[list[dict[str, Any]]] = []
    stopped: list[int] = []

    async def body() -> None:
        # SIGINT and SIGTERM cancel the run, so every context manager on the way out
        # stops its children and removes its namespaces and cgroups. (SIGINT may have
        # been ignored by a non-interactive parent shell; SIGTERM would kill at once.)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def stop(sig: int) -> None:
            if not stopped:
                stopped.append(sig)
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop, sig)
        try:
            for scenario in scenarios:
                await run_scenario(scenario, opts, console, groups)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    status = 0
    try:
        run(body())
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.line("ionn-bench: interrupted; everything started was stopped")
        status = 130
    except (ConfigError, IonnError, OSError) as exc:
        console.line(f"ionn-bench: {type(exc).__name__}: {exc}")
        status = 2
    groups = [docs for docs in groups if docs]
    if groups:
        summary = _write_report(out, groups, command, console)
        index = {
            "command": command,
            "runs": [
                {k: d[k] for k in ("strategy", "status", "reason")}
                | {"scenario": d["scenario"]["name"], "model": d["model"]["name"]}
                for docs in groups
                for d in docs
            ],
        }
        (out / "index.json").write_text(json.dumps(index, indent=1))
        print(f"summary: {summary}")
        print(f"runs: {out / 'runs'}")
        print(f"plots: {out / 'plots'}")
        if status == 0 and any(d["status"] == "error" for docs in groups for d in docs):
            status = 1
    return status
