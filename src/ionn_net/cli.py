"""Console entry points: ``ionn-server`` and ``ionn-demo``.

This module owns argument parsing (every flag validated with a clear message) and
the terminal output of the demo: a live upload progress bar, one line per query
(latency and where its layers ran), and a final table comparing strategies. The
library itself never prints; only this module writes to the terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ionn_net.argtypes import port, positive
from ionn_net.errors import ConfigError, StoreError
from ionn_net.extras import REDIS_EXTRA, require_extra, require_extras
from ionn_net.handoff import cli as handoff_cli
from ionn_net.server_catalog import DEFAULT_TRUNKS
from ionn_net.store import REDIS_SCHEMES, open_store

__all__ = ["demo_main", "demo_runs", "server_main"]

MODELS = ("mobilenetv2", "resnet50", "inceptionv3", "vgg16")


# -- ionn-server ---------------------------------------------------------------------------


def _server_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ionn-server",
        description="Run an IONN edge server: clients upload their models to it layer by "
        "layer and offload parts of their inference while the upload proceeds.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument(
        "--port", type=port, default=7878, help="TCP port (default %(default)s; 0 picks one)"
    )
    p.add_argument(
        "--store",
        default=None,
        help="durable layer store: a directory, or redis://host:port/db for a store shared by "
        "a site's servers (needs the redis extra) (default: keep layers in memory only)",
    )
    p.add_argument(
        "--catalog",
        type=Path,
        default=None,
        metavar="DIR",
        help="serve the models of this catalog directory publicly (ionn-catalog add): clients "
        "naming their blobs load them without uploading; refused entries are logged and the "
        "rest is served; a directory that is not a catalog stops the start",
    )
    p.add_argument(
        "--catalog-warm",
        default="all",
        metavar="WHICH",
        help="catalog models to build and compile ahead, after the server listens, at the "
        "lowest priority: all, none, a number N (the first N) or comma-separated names or "
        "digests (default %(default)s; about 5 s of CPU and 120 MB of memory for ResNet50)",
    )
    p.add_argument(
        "--catalog-trunks",
        type=int,
        default=DEFAULT_TRUNKS,
        metavar="N",
        help="also compile ahead, for each warm catalog model, the model cut after each of "
        "its last N cut points (0-8): what a client of a fine-tuned head on it runs first "
        "(default %(default)s; each about one more compile of the model)",
    )
    p.add_argument(
        "--cost-model",
        type=Path,
        default=None,
        help="JSON file of the server cost model to send clients, or of a whole calibration "
        "(its cache file: cost model and prior) (default: calibrate on this machine once and "
        "cache the result)",
    )
    p.add_argument(
        "--secret-file",
        type=Path,
        default=None,
        help="file holding a shared secret; clients must prove they know it (protocol.md §10.2.3)",
    )
    p.add_argument(
        "--max-models",
        type=positive(int, "--max-models"),
        default=4,
        help="models per client session (default %(default)s)",
    )
    p.add_argument(
        "--max-bytes",
        type=positive(int, "--max-bytes"),
        default=1 << 30,
        help="stored blob bytes per client session (default %(default)s)",
    )
    p.add_argument(
        "--max-queries",
        type=positive(int, "--max-queries"),
        default=8,
        help="concurrent queries per client session (default %(default)s)",
    )
    p.add_argument(
        "--max-streams",
        type=positive(int, "--max-streams"),
        default=100,
        help="concurrent streams per connection (default %(default)s)",
    )
    p.add_argument(
        "--idle-timeout",
        type=positive(float, "--idle-timeout"),
        default=120.0,
        help="seconds before an idle connection is closed (default %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="logging level (default %(default)s)",
    )
    p.add_argument(
        "--log-format",
        default="text",
        choices=("text", "json"),
        help="log lines as text or one JSON object per line (default %(default)s)",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also show TensorFlow's native start-up logs (hidden by default)",
    )
    handoff_cli.add_arguments(p)
    ops = p.add_argument_group("operations")
    ops.add_argument(
        "--metrics-port",
        type=port,
        default=None,
        help="serve Prometheus metrics (/metrics) and health probes (/v2/health/live, "
        "/v2/health/ready) on this HTTP port (default: none; 0 picks one)",
    )
    ops.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of the metrics port (default %(default)s: loopback only)",
    )
    ops.add_argument(
        "--drain-timeout",
        type=positive(float, "--drain-timeout"),
        default=20.0,
        help="on SIGTERM, seconds to let running queries and blob pieces finish after "
        "GOAWAY before the rest is cut (default %(default)s)",
    )
    ops.add_argument(
        "--workers",
        type=positive(int, "--workers"),
        default=1,
        help="server processes sharing the port and the --store directory (default "
        "%(default)s; more than 1 needs --store)",
    )
    # set by the supervisor of --workers for each worker process: the Unix socket it
    # hands connections over, and the worker's number
    ops.add_argument("--worker-channel", type=int, default=None, help=argparse.SUPPRESS)
    ops.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    return p


def server_main(argv: list[str] | None = None) -> int:
    require_extras("ionn-server")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _server_parser().parse_args(argv)
    if args.workers > 1 and args.store is None and args.worker_channel is None:
        raise SystemExit("--workers: more than 1 worker needs --store (a directory or Redis)")
    if args.workers > 1 and args.peer:
        # a grant is verified, and a session's blobs are pulled, by the process that holds
        # the session (§15.2.2, §15.3): a peer's connection may reach another worker
        raise SystemExit("--peer: handoff needs a single worker (--workers 1)")
    if args.store is not None and args.store.startswith(REDIS_SCHEMES):
        require_extra("ionn-server", REDIS_EXTRA, "--store redis://")
    try:
        # before TensorFlow loads (and before any worker starts): a bad store fails fast
        store = open_store(args.store)
    except StoreError as exc:
        raise SystemExit(f"ionn-server: {exc}") from None
    from ionn_net.ops.logs import configure

    static = {} if args.worker_channel is None else {"worker": args.worker_index}
    configure(args.log_level, args.log_format, static=static)
    from ionn_net.ops.run import OpsOptions

    ops = OpsOptions(
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        drain_timeout_s=args.drain_timeout,
    )
    catalog = _open_catalog(args.catalog)
    config = _server_config(args, catalog)
    cost = _cost_model_file(args.cost_model)  # a bad file stops the supervisor, not each worker
    from ionn_net.aio import run

    if args.workers > 1 and args.worker_channel is None:
        store.close()  # opened to fail fast; each worker opens its own (and its catalog)
        return run(_supervise(args, argv, ops))  # no TensorFlow in the supervisor
    from ionn_net.tflog import import_tensorflow

    import_tensorflow(verbose=args.verbose)
    make = _server_factory(args, store, catalog, config, cost)
    if args.worker_channel is not None:
        from ionn_net.ops.workers import serve_worker

        return run(serve_worker(make, args.worker_channel, ops))
    from ionn_net.ops.run import serve_process

    return run(serve_process(make, ops, sys.stdout))


def _server_config(args: argparse.Namespace, catalog: Any) -> Any:
    """The :class:`~ionn_net.server.ServerConfig` of the command line; a bad value stops
    the start with one line (in the supervisor of ``--workers``, before any worker)."""
    from ionn_net.config import Limits
    from ionn_net.server_catalog import select_warm
    from ionn_net.server_config import ServerConfig

    secret = args.secret_file.read_bytes().strip() if args.secret_file else None
    try:
        config = ServerConfig(
            limits=Limits(
                max_concurrent_streams=args.max_streams, idle_timeout_s=args.idle_timeout
            ),
            max_models_per_session=args.max_models,
            max_bytes_per_session=args.max_bytes,
            max_queries_per_session=args.max_queries,
            secret=secret,
            catalog_warm=args.catalog_warm,
            catalog_trunks=args.catalog_trunks,
            handoff=handoff_cli.config_from(args),
            drain_timeout_s=args.drain_timeout,
        )
        if catalog is not None:  # a model name the catalog does not serve fails here
            select_warm(catalog, args.catalog_warm)
    except ConfigError as exc:
        raise SystemExit(f"ionn-server: {exc}") from None
    return config


def _server_factory(
    args: argparse.Namespace, store: Any, catalog: Any, config: Any, cost: tuple[Any, Any]
) -> Any:
    """``hooks -> EdgeServer`` configured from the command line (``cost``: the cost model
    and the prior of ``--cost-model``, or ``None`` for each)."""
    from ionn_net.server import EdgeServer

    worker = args.worker_channel is not None

    def make(hooks: Any) -> Any:
        return EdgeServer(
            args.host,
            args.port,
            store=store,
            config=config,
            cost_model=cost[0],
            prior=cost[1],
            catalog=catalog,
            hooks=hooks,
            listen=not worker,
        )

    return make


async def _supervise(args: argparse.Namespace, argv: list[str], ops: Any) -> int:
    from ionn_net.ops.workers import Supervisor, worker_command

    def worker_argv(index: int, channel: int) -> list[str]:
        extra = ["--worker-channel", str(channel), "--worker-index", str(index)]
        return worker_command([*argv, *extra])

    supervisor = Supervisor(
        worker_argv, args.workers, host=args.host, port=args.port, ops=ops, out=sys.stdout
    )
    return await supervisor.run()


def _open_catalog(path: Path | None) -> Any:
    """The catalog at ``path`` (None: none), opened before TensorFlow loads: a directory that
    is not a catalog stops the start with one line; refused entries are logged, naming their
    files, and the rest is served."""
    if path is None:
        return None
    from ionn_net.catalog import Catalog, CatalogError

    try:
        return Catalog.open(path)
    except CatalogError as exc:
        raise SystemExit(f"ionn-server: {exc}") from None


def _cost_model_file(path: Path | None) -> tuple[Any, Any]:
    """``--cost-model``: a calibration (cost model, prior; its held-out error is logged)
    or a bare cost model (the server then predicts a client's layers with it)."""
    if path is None:
        return None, None
    from ionn_net.calibrate import Calibration
    from ionn_net.planner.costmodel import ServerCostModel

    try:
        text = path.read_text()
        if '"ionn-calibration/' in text:
            found = Calibration.from_json(text)
            found.log_held_out()
            return found.cost_model, found.prior
        return ServerCostModel.from_json(text), None
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--cost-model: cannot use {path}: {exc}") from None


# -- ionn-demo -----------------------------------------------------------------------------


def _demo_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ionn-demo",
        description="Start an edge server and a slowed-down client on this machine, joined by "
        "an emulated link, and watch queries get faster while the model uploads. Runs "
        "local-only, all-at-once and the chosen planner one after the other and compares them.",
    )
    p.add_argument(
        "--model",
        default="resnet50",
        help=f"one of {', '.join(MODELS)} (random weights), or a path to a .keras file the "
        "client loads (default %(default)s)",
    )
    p.add_argument(
        "--mbit",
        type=positive(float, "--mbit"),
        default=80.0,
        help="link rate in Mbit/s, each direction (default %(default)s: the paper's Wi-Fi)",
    )
    p.add_argument(
        "--delay-ms",
        type=float,
        default=0.5,
        help="one-way delay in ms (default %(default)s, ~1 ms RTT)",
    )
    p.add_argument(
        "--slowdown",
        type=positive(float, "--slowdown"),
        default=10.0,
        help="the client is this many times slower than this machine: each local segment is "
        "stretched to slowdown x its measured time (default %(default)s)",
    )
    p.add_argument(
        "--planner",
        default="ours",
        choices=("ours", "ionn", "efficiency", "all_at_once", "local"),
        help="upload planner of the main run (default %(default)s)",
    )
    p.add_argument(
        "--precision",
        default="exact",
        choices=("exact", "16bit-first", "8bit-first"),
        help="also run the planner uploading each layer first at this lower precision, then "
        "its refinement (protocol.md §10.12): one more row in the table (default %(default)s: "
        "none)",
    )
    p.add_argument(
        "--window",
        type=positive(float, "--window"),
        default=None,
        help="seconds of back-to-back queries per run (default: until the upload ends + 6 s, "
        "at most 90 s)",
    )
    p.add_argument(
        "--no-compare",
        action="store_true",
        help="run only the chosen planner, not the local-only and all-at-once baselines",
    )
    p.add_argument("--quiet", action="store_true", help="no per-query lines")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also show TensorFlow's native start-up logs, here and in the server (hidden by "
        "default)",
    )
    return p


#: The demo's last seconds, averaged on their own (RunSummary.mean_last), and how long each
#: run goes on after its upload by default: twice that, so that the server's background
#: compile after the upload (a few seconds, §10.6) is over before the last window.
_STEADY_S = 3.0


@dataclass
class RunSummary:
    strategy: str
    latencies: list[tuple[float, float, int]] = field(
        default_factory=list
    )  # (t, ms, server layers)
    upload_done_s: float | None = None
    fallbacks: int = 0
    approximate: int = 0  # queries computed on base-stage weights

    def mean_during_upload(self) -> float:
        """Mean latency of queries that started before the upload was done (all
        queries for local-only, which never uploads)."""
        end = self.upload_done_s if self.upload_done_s is not None else math.inf
        during = [ms for t, ms, _ in self.latencies if t - ms / 1000.0 <= end]
        return statistics.fmean(during) if during else float("nan")

    def first_offloaded(self) -> float | None:
        return next((t for t, _, n in self.latencies if n > 0), None)

    def mean_after(self) -> float:
        if self.upload_done_s is None:
            return float("nan")
        after = [ms for t, ms, _ in self.latencies if t > self.upload_done_s]
        return statistics.fmean(after) if after else float("nan")

    def mean_last(self, seconds: float = _STEADY_S) -> float:
        """Mean latency of the queries that ended in the run's last ``seconds``: the steady
        state, once the server has compiled the chained pieces of an incremental upload as
        one slice (protocol.md §10.6), which takes a few seconds after the upload ends."""
        if not self.latencies:
            return float("nan")
        end = self.latencies[-1][0]
        return statistics.fmean(ms for t, ms, _ in self.latencies if t >= end - seconds)


def _load_model(name: str) -> Any:
    import keras

    keras.utils.set_random_seed(0)
    apps = {
        "mobilenetv2": lambda: keras.applications.MobileNetV2(weights=None),
        "resnet50": lambda: keras.applications.ResNet50(weights=None),
        "inceptionv3": lambda: keras.applications.InceptionV3(weights=None),
        "vgg16": lambda: keras.applications.VGG16(weights=None),
    }
    if name.lower() in apps:
        return apps[name.lower()]()
    path = Path(name)
    if path.suffix != ".keras" or not path.is_file():
        raise SystemExit(
            f"--model: expected one of {', '.join(MODELS)} or an existing .keras file, got {name!r}"
        )
    # The client loads its own model file; only the server must never deserialize.
    return keras.saving.load_model(path, compile=False)


class _Printer:
    def __init__(self, out: TextIO, quiet: bool) -> None:
        self.out, self.quiet = out, quiet
        self.tty = out.isatty()
        self._last_bar = 0.0
        self._plan: tuple[tuple[str, str, str], ...] = ()

    def bar(self, progress: Any) -> None:
        now = time.monotonic()
        if not progress.done and now - self._last_bar < (0.1 if self.tty else 2.0):
            return
        self._last_bar = now
        width = 30
        filled = int(width * progress.fraction)
        line = (
            f"upload [{'#' * filled}{'.' * (width - filled)}] {progress.fraction * 100:5.1f}% "
            f"{progress.sent_bytes / 1e6:6.1f}/{progress.total_bytes / 1e6:.1f} MB  "
            f"partitions {progress.partitions_done}/{progress.partitions_total}  "
            f"layers ready {progress.layers_ready}  {progress.bandwidth_mbit:5.1f} Mbit/s"
        )
        self.out.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        if progress.done and self.tty:
            self.out.write("\n")
        self.out.flush()

    def progress_callback(self, strategy: str) -> Any:
        """The upload bar for a run of ``strategy``; none for ``local``, which uploads
        nothing (its bar would sit at 100% of 0 MB)."""
        return None if strategy == "local" else self.bar

    def query(self, n: int, t: float, result: Any, total_layers: int) -> None:
        if self.quiet:
            return
        where = " | ".join(
            f"{s.location}{'(fallback)' if s.fallback else ''} {len(s.layers)}"
            for s in result.segments
        )
        line = (
            f"  q{n:<3d} t={t:6.2f}s  {result.total_ms:8.1f} ms  "
            f"server {result.server_layers:3d}/{total_layers} layers  [{where}]"
        )
        prefix = "\r\x1b[K" if self.tty else ""
        self.out.write(prefix + line + "\n")
        self.out.flush()

    def line(self, text: str) -> None:
        self.out.write(("\r\x1b[K" if self.tty else "") + text + "\n")
        self.out.flush()

    def plan(self, explained: Any) -> None:
        """One line each time the active plan changes: what it runs where and why
        (``OffloadClient.explain``)."""
        key = tuple((s.location, s.first, s.last) for s in explained.segments)
        if self.quiet or key == self._plan:
            return
        self._plan = key
        self.line(f"  {explained.line()}")


@contextlib.asynccontextmanager
async def _server_process(cost_file: Path) -> Any:
    """A fresh ``ionn-server`` in its own process (its own interpreter and GIL, like a real
    edge server), on a free loopback port; yields the port and kills it afterwards."""
    exe = Path(sys.executable).parent / "ionn-server"
    argv = (
        [str(exe)]
        if exe.exists()
        else [
            sys.executable,
            "-c",
            "from ionn_net.cli import server_main; raise SystemExit(server_main())",
        ]
    )
    proc = await asyncio.create_subprocess_exec(
        *argv,
        "--port",
        "0",
        "--cost-model",
        str(cost_file),
        "--log-level",
        "ERROR",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
        if "listening on" not in line:
            raise SystemExit(f"ionn-demo: the edge server did not start ({line.strip()!r})")
        yield int(line.rsplit(":", 1)[1])
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _demo_run(
    args: argparse.Namespace,
    model: Any,
    strategy: str,
    cost_file: Path,
    printer: _Printer,
    *,
    device: dict[str, dict[str, float]],
    precision: str = "exact",
) -> RunSummary:
    import numpy as np

    from ionn_net.client import ClientConfig, OffloadClient, paced_transport
    from ionn_net.netem.proxy import LinkSpec, ShapingProxy

    link = LinkSpec(rate_bps=args.mbit * 1e6, delay_ms=args.delay_ms)
    config = ClientConfig(
        # The userspace proxy terminates TCP here, so the client's kernel cannot see the
        # bottleneck it would estimate a pacing rate from: it is told the link's rate.
        transport=paced_transport(args.mbit * 1e6),
        slowdown=args.slowdown,
        assumed_mbit=args.mbit,
        profile_cache=str(_cache_dir() / "profiles"),
        device_ms=device.get("ms"),  # every run on the same emulated device
        precision=precision,
    )
    label = strategy if precision == "exact" else f"{strategy} {precision}"
    summary = RunSummary(label)
    rng = np.random.default_rng(0)
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    x = rng.uniform(-1, 1, (1, *shape)).astype(np.float32)
    printer.line(
        f"== {label}: {args.mbit:g} Mbit/s, {2 * args.delay_ms:g} ms RTT, "
        f"client slowdown {args.slowdown:g}x"
    )
    async with (
        _server_process(cost_file) as port,
        ShapingProxy("127.0.0.1", port, up=link, down=link) as proxy,
        OffloadClient(
            "127.0.0.1",
            proxy.port,
            model,
            planner=strategy,
            config=config,
            on_progress=printer.progress_callback(strategy),
        ) as client,
    ):
        start = time.monotonic()
        device.setdefault("ms", dict(client.client_ms))
        n_layers = len(client.graph)
        n = 0
        while True:
            elapsed = time.monotonic() - start
            done = client.last_progress is not None and client.last_progress.done
            if done and summary.upload_done_s is None:
                summary.upload_done_s = elapsed
            limit = args.window or (min(90.0, (summary.upload_done_s or 1e9) + 2 * _STEADY_S))
            if elapsed >= limit or (strategy == "local" and elapsed >= (args.window or 8.0)):
                break
            result = await client.infer_detailed(x)
            n += 1
            t = time.monotonic() - start
            summary.latencies.append((t, result.total_ms, result.server_layers))
            summary.fallbacks += int(result.fallback)
            summary.approximate += int(not result.exact)
            printer.query(n, t, result, n_layers)
            printer.plan(client.explain())
    if strategy == "local":
        summary.upload_done_s = None
    return summary


def _cache_dir() -> Path:
    return Path(os.environ.get("IONN_NET_CACHE", Path.home() / ".cache" / "ionn_net"))


def _table(summaries: list[RunSummary]) -> str:
    rows = [
        "| strategy | queries | mean latency during upload (ms) | first offloaded query (s) "
        "| upload done (s) | mean latency after upload (ms) | mean latency, last 3 s (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        first = s.first_offloaded()
        rows.append(
            f"| {s.strategy} | {len(s.latencies)} | {_ms_cell(s.mean_during_upload())} | "
            f"{'-' if first is None else f'{first:.2f}'} | "
            f"{'-' if s.upload_done_s is None else f'{s.upload_done_s:.1f}'} | "
            f"{_ms_cell(s.mean_after())} | {_ms_cell(s.mean_last())} |"
        )
    return "\n".join(rows)


def _ms_cell(value: float) -> str:
    """A table cell: '-' where there is nothing to average (no upload, no query after it)."""
    return "-" if math.isnan(value) else f"{value:.1f}"


def demo_runs(planner: str, precision: str, *, no_compare: bool) -> list[tuple[str, str]]:
    """The demo's runs, in order, as (planner, upload precision): local-only, all-at-once
    and the planner (unless ``no_compare``), then the planner again precision-first when
    ``precision`` is not ``"exact"`` (one more row in the table)."""
    strategies = [planner] if no_compare else ["local", "all_at_once", planner]
    runs = [(s, "exact") for s in dict.fromkeys(strategies)]
    if precision != "exact" and planner != "local":
        runs.append((planner, precision))
    return runs


def demo_main(argv: list[str] | None = None) -> int:
    require_extras("ionn-demo")
    args = _demo_parser().parse_args(argv)
    if args.delay_ms < 0:
        raise SystemExit(f"--delay-ms: expected >= 0, got {args.delay_ms}")
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    printer = _Printer(sys.stdout, args.quiet)
    printer.line(
        f"ionn-demo: building {args.model} (random weights) and calibrating the server ..."
    )
    from ionn_net.tflog import import_tensorflow

    import_tensorflow(verbose=args.verbose)  # the server process inherits the choice
    from ionn_net.aio import run
    from ionn_net.calibrate import load_calibration

    model = _load_model(args.model)
    cost = load_calibration(_cache_dir())
    runs = demo_runs(args.planner, args.precision, no_compare=args.no_compare)
    summaries: list[RunSummary] = []

    cost_file = _cache_dir() / "demo-costmodel.json"
    cost_file.write_text(cost.to_json())

    device: dict[str, dict[str, float]] = {}

    async def main() -> None:
        for strategy, precision in runs:
            summaries.append(
                await _demo_run(
                    args, model, strategy, cost_file, printer, device=device, precision=precision
                )
            )

    run(main())
    printer.line("")
    printer.line(_table(summaries))
    local = next((s for s in summaries if s.strategy == "local"), None)
    mains = [i for i, (s, _) in enumerate(runs) if s == args.planner]
    for main_run in summaries[mains[0] :]:
        if local is not None and main_run.strategy != "local":
            ratio = local.mean_during_upload() / main_run.mean_during_upload()
            printer.line(
                f"\n{main_run.strategy}: {ratio:.1f}x faster than local-only during the upload"
            )
        if main_run.approximate:
            printer.line(
                f"{main_run.strategy}: {main_run.approximate} of {len(main_run.latencies)} "
                "queries ran on base-stage weights (approximate), the rest exact"
            )
    return 0
