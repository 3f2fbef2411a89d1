"""Runs a scenario: its link, then per model a server, a client worker and every strategy.

Owns :func:`run_scenario` and :class:`BenchOptions`. For one scenario:

1. the link is built and probed (:class:`~ionn_net.bench.links.BenchLink`), the device
   emulation resolved (:func:`~ionn_net.bench.device.resolve_device`) and, for a CPU
   quota, its cgroup created;
2. per model (a *group*): a server process starts on the server side of the link
   and loads its cost model; a worker process starts on the client side, imports
   TensorFlow meanwhile, and prepares the model once the server listens; then each
   strategy runs in turn against the same server (a fresh session each: the server
   tells a session only about blobs it uploaded itself, so every run uploads from
   scratch) with a pause between runs so queues drain;
3. each run's events become one JSON document (:mod:`.results`), completed with its
   metrics and the simulator's prediction (:mod:`.predict`) and written to
   ``<out>/runs/``. A run that fails or times out is recorded with its status; the
   worker is restarted for the next strategy.

Every wait is bounded (preparation, each run: ``max_run_s`` + preparation allowance);
everything started is stopped on the way out, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ionn_net.bench.device import DeviceSetting, QuotaController, resolve_device
from ionn_net.bench.isolation import Isolation, resolve_isolation
from ionn_net.bench.links import BenchLink
from ionn_net.bench.models import MODELS
from ionn_net.bench.procs import BenchError, Child
from ionn_net.bench.progress import Console, RunBar
from ionn_net.bench.results import SCHEMA, run_metrics
from ionn_net.bench.scenario import Scenario
from ionn_net.netem.base import NetemError

__all__ = ["BenchOptions", "machine_info", "run_scenario"]

_PAUSE_S = 0.5
_RUN_SLACK_S = 120.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchOptions:
    """Invocation-wide settings."""

    out_dir: Path
    cache_dir: Path
    backend: str = "auto"
    device: str | None = None
    probe_s: float = 1.0
    seed: int = 0
    command: str = ""
    prep_timeout_s: float = 900.0
    server_costs: str = "calibrated"
    #: CPU isolation of server and client side (:mod:`.isolation`): "cores" or "shared"
    isolation: str = "cores"
    #: "estimate": the client paces at a rate it estimates (on namespace links); "link":
    #: at the configured link rate (diagnosis: is the estimate what limits the upload?)
    pace: str = "estimate"


def _git_commit() -> str | None:
    """The commit of the source checkout this package runs from; None for an installed
    package (whose parent directories may lie inside some unrelated repository)."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "pyproject.toml").is_file() or not (root / "src" / "ionn_net").is_dir():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    return None


def machine_info() -> dict[str, Any]:
    """This machine, for the record (no host names or addresses)."""
    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "git": _git_commit(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


class _Group:
    """One scenario x model: a server, a worker, every strategy (see module)."""

    def __init__(
        self,
        scenario: Scenario,
        model: str,
        link: BenchLink,
        *,
        device: DeviceSetting,
        quota: QuotaController | None,
        isolation: Isolation,
        opts: BenchOptions,
        console: Console,
    ) -> None:
        self.scenario, self.model, self.link = scenario, model, link
        self.device, self.quota, self.opts, self.console = device, quota, opts, console
        self.isolation = isolation
        self.tag = f"{scenario.name}__{model}"
        self.server: Child | None = None
        self.worker: Child | None = None
        self.address: tuple[str, int] | None = None
        self.ready: dict[str, Any] | None = None
        self.worker_pid = 0
        self.cost_model: dict[str, Any] = {}
        self.factor_probe: dict[str, Any] | None = None  # measured once per worker
        self.server_stats: dict[str, Any] = {}

    def _python(self, side: str, module: str, *args: str) -> list[str]:
        return [*self.link.prefix(side), sys.executable, "-m", module, *args]

    async def _start_server(self) -> None:
        host = self.link.server_host
        cache = str(self.isolation.cache_dir(self.opts.cache_dir))
        argv = self._python(
            "server", "ionn_net.bench.serverproc", "--host", host, "--cache-dir", cache
        )
        argv += ["--seed", str(self.opts.seed)]
        if self.opts.server_costs == "workload":
            argv += ["--workload-model", self.model]
        preexec = self.isolation.server_preexec()
        self.server = await Child("server", argv, self._log("server"), preexec=preexec).start()

    async def _start_worker(self) -> None:
        argv = self._python(
            "client",
            "ionn_net.bench.worker",
            "--model",
            self.model,
            "--cache-dir",
            str(self.opts.cache_dir),
            "--seed",
            str(self.opts.seed),
        )
        self.worker = await Child("client", argv, self._log("client")).start()

    def _log(self, side: str) -> Path:
        return self.opts.out_dir / "logs" / f"{self.tag}__{side}.log"

    async def _prepare_worker(self) -> dict[str, Any]:
        worker = self.worker
        assert worker is not None
        started = await worker.expect("started", self.opts.prep_timeout_s)
        self.worker_pid = int(started["pid"])  # the Python process (not a wrapper's)
        worker.send({"cmd": "prepare"})
        return await worker.expect("ready", self.opts.prep_timeout_s)

    async def open(self) -> None:
        self.console.line(f"-- {self.tag}: starting the server and the client worker")
        await self._start_server()
        await self._start_worker()
        assert self.server is not None
        listening = await self.server.expect("listening", self.opts.prep_timeout_s)
        self.cost_model = {k: listening.get(k) for k in ("cost_model", "cost_model_doc")}
        info = listening.get("cost_model") or {}
        if info.get("kind") == "workload":
            self.console.line(
                f"   server cost model fitted on {self.model}: predicts the whole model at "
                f"{info['predicted_whole_ms']:.1f} ms, measured {info['whole_ms']:.1f} ms"
            )
        self.address = await self.link.attach(int(listening["port"]))
        self.ready = await self._prepare_worker()
        r = self.ready
        self.console.line(
            f"   {self.model}: {r['layers']} layers, {r['weight_bytes'] / 1e6:.1f} MB weights, "
            f"whole model {r['whole_ms']:.1f} ms here, upload codec ratio {r['weight_ratio']:.2f}"
        )

    async def close(self) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            with contextlib.suppress(BenchError):
                worker.send({"cmd": "quit"})
            await worker.close()
        server, self.server = self.server, None
        if server is not None:
            server.close_stdin()
            with contextlib.suppress(BenchError):
                stats = await server.expect("stats", 15.0)
                self.server_stats = {k: v for k, v in stats.items() if k != "ev"}
                totals = ", ".join(f"{k} {v}" for k, v in self.server_stats.items())
                self.console.line(f"   server totals: {totals}")
            await server.close()
        await self.link.detach()

    async def run_all(self, docs: list[dict[str, Any]]) -> None:
        """Every strategy in turn; each finished run is appended to ``docs`` at once
        (so an interrupted group still reports the runs it completed)."""
        for strategy in self.scenario.run.strategies:
            if self.worker is None or not self.worker.alive:
                await self._restart_worker()
            docs.append(await self._run_one(strategy))
            await asyncio.sleep(_PAUSE_S)

    def failed(self, reason: str) -> list[dict[str, Any]]:
        """Documents for every strategy of a group that could not start."""
        docs = []
        for strategy in self.scenario.run.strategies:
            doc = self._base_doc(strategy)
            doc["reason"] = reason
            self._finish(doc)
            docs.append(doc)
        return docs

    async def _restart_worker(self) -> None:
        self.factor_probe = None  # a new process measures again
        if self.worker is not None:
            await self.worker.close()
        await self._start_worker()
        self.ready = await self._prepare_worker()

    def _base_doc(self, strategy: str) -> dict[str, Any]:
        sc, r = self.scenario, self.ready or {}
        link = self.link.report
        assert link is not None
        order = json.loads(r["graph"])["layers"] if r else []
        return {
            "schema": SCHEMA,
            "scenario": {
                "name": sc.name,
                "description": sc.description,
                "source": sc.source,
                "link": asdict(sc.link),
                "link_text": sc.link.describe(),
                "device": asdict(sc.device),
                "run": {**asdict(sc.run), "models": list(sc.run.models)},
            },
            "model": {
                "name": self.model,
                "note": MODELS[self.model].note,
                **{k: r.get(k) for k in ("digest", "layers", "params", "weight_bytes")},
                **{k: r.get(k) for k in ("whole_ms", "profile_ms", "profile_raw_ms")},
                "weight_ratio": r.get("weight_ratio"),
                "layer_order": [layer["name"] for layer in order],
            },
            "strategy": strategy,
            "status": "error",
            "reason": "",
            "link": link.to_dict(),
            "device": {
                **self.device.to_dict(),
                "measured_factor": None,
                "effective_factor": self.device.factor,
                "describe": self.device.describe(),
            },
            "versions": dict(r.get("versions", {})),
            "isolation": self.isolation.to_dict(),
            "server": dict(self.cost_model),
            "machine": machine_info(),
            "command": self.opts.command,
            "timing": {"started": datetime.datetime.now(datetime.UTC).isoformat()},
            "queries": [],
            "progress": [],
            "logs": [],
            "metrics": {},
        }

    def _command(self, strategy: str) -> dict[str, Any]:
        assert self.address is not None
        run = self.scenario.run
        return {
            "cmd": "run",
            "strategy": strategy,
            "host": self.address[0],
            "port": self.address[1],
            "device": self.device.command(),
            "target_queries": run.target_queries,
            "tail_s": run.tail_s,
            "max_run_s": run.max_run_s,
            "assumed_mbit": self.scenario.link.rate_mbit,
            "pace_mbit": self._pace_mbit(),
        }

    def _pace_mbit(self) -> float | None:
        """The client paces its upload at an estimated rate from the kernel's TCP_INFO
        (ClientConfig.transport). The userspace proxy terminates TCP on loopback, so the
        client's socket never sees that bottleneck: there it is told the configured rate.
        Behind a kernel qdisc (namespace backends), as on a real link, it estimates."""
        told = self.link.kind == "userspace-proxy" or self.opts.pace == "link"
        return self.scenario.link.rate_mbit if told else None

    async def _run_one(self, strategy: str) -> dict[str, Any]:
        doc = self._base_doc(strategy)
        self._apply_factor(doc)
        worker = self.worker
        assert worker is not None
        limit = self.scenario.run.max_run_s
        bar = self.console.bar(f"{self.tag}__{strategy}", limit)
        worker.send(self._command(strategy))
        deadline = asyncio.get_running_loop().time() + limit + self.opts.prep_timeout_s
        try:
            await self._events(worker, doc, bar, deadline + _RUN_SLACK_S)
        except BenchError as exc:
            doc["status"], doc["reason"] = "error", str(exc)
            await worker.close()  # restarted before the next run
        doc["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        self._finish(doc)
        m = doc["metrics"]
        bar.finish(
            f"{doc['status']} {doc['reason']}".strip()
            + (
                f", mean during upload {m['mean_during_upload_ms']:.0f} ms"
                if m.get("mean_during_upload_ms")
                else ""
            )
        )
        return doc

    async def _events(
        self, worker: Child, doc: dict[str, Any], bar: RunBar, deadline: float
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            ev = await worker.event(deadline - loop.time())
            if ev is None:
                raise BenchError(f"the client worker exited: {worker.tail()}")
            kind = ev.pop("ev")
            if kind == "q":
                doc["queries"].append(ev)
                offl = any(s[0] == "server" and not s[3] for s in ev["segments"])
                bar.query(ev["t"], ev["ms"], offl)
            elif kind == "p":
                doc["progress"].append(ev)
                bar.progress(ev["t"], ev["sent"], ev["total"], ev["done"])
            elif kind == "log":
                doc["logs"].append(ev)
            elif kind == "quota":
                self._quota(worker, doc, bool(ev["on"]))
            elif kind == "factor":
                self.factor_probe = ev
                self._apply_factor(doc)
            elif kind == "connected":
                doc["timing"]["prep_s"] = ev["prep_s"]
                bar.set_phase("running")
            elif kind == "skipped":
                doc["status"], doc["reason"] = "skipped", ev["reason"]
                return
            elif kind == "error":
                doc["status"], doc["reason"] = "error", ev["what"]
                return
            elif kind == "run_end":
                self._run_end(doc, ev)
                return

    def _apply_factor(self, doc: dict[str, Any]) -> None:
        """Record the slowdown the quota achieved (the worker measures it once)."""
        ev = self.factor_probe
        if ev is None:
            return
        doc["device"]["measured_factor"] = ev["factor"]
        doc["device"]["effective_factor"] = ev["factor"]
        doc["device"]["factor_probe"] = ev
        doc["device"]["describe"] = self.device.describe(ev["factor"])

    def _quota(self, worker: Child, doc: dict[str, Any], on: bool) -> None:
        if self.quota is None:
            raise BenchError("the worker asked for a CPU quota, but none is set up")
        try:
            self.quota.move(self.worker_pid, on)
        except NetemError as exc:  # e.g. the worker died meanwhile: this run fails
            raise BenchError(str(exc)) from exc
        worker.send({"cmd": "quota_ok", "on": on})

    @staticmethod
    def _run_end(doc: dict[str, Any], ev: dict[str, Any]) -> None:
        doc["status"] = "ok"
        doc["reason"] = ev["reason"]
        doc["timing"]["elapsed_s"] = ev["elapsed_s"]
        doc["plan"] = ev["plan"]
        doc["per_layer"] = {k: ev[k] for k in ("client_ms", "server_ms", "load_ms")}
        doc["client"] = {k: ev[k] for k in ("client_link", "stats", "refused", "local_only")}
        doc["timing"].update(ev.get("timeline") or {})

    def _finish(self, doc: dict[str, Any]) -> None:
        from ionn_net.bench.predict import predict_run
        from ionn_net.bench.results import query_points
        from ionn_net.model.graph_io import graph_from_json

        doc["metrics"] = run_metrics(doc, n=self.scenario.run.target_queries)
        doc["timing"]["upload_done_s"] = doc["metrics"].get("upload_done_s")
        if doc["status"] == "ok" and self.ready is not None and doc["queries"]:
            try:
                graph = graph_from_json(self.ready["graph"])
                doc["prediction"] = predict_run(doc, graph, query_points(doc["queries"]))
            except Exception as exc:  # a failed prediction must not lose the measurement
                doc["prediction"] = {"error": f"{type(exc).__name__}: {exc}"}
        path = self.opts.out_dir / "runs" / f"{self.tag}__{doc['strategy']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1, allow_nan=False, default=str))


async def run_scenario(
    scenario: Scenario, opts: BenchOptions, console: Console, groups: list[list[dict[str, Any]]]
) -> None:
    """Every model x strategy of ``scenario``; the run documents of each model are
    appended to ``groups`` as a list that grows run by run."""
    device = resolve_device(scenario.device, override=opts.device)
    isolation = resolve_isolation(opts.isolation)
    console.line(f"== scenario {scenario.name}: {scenario.link.describe()}")
    with isolation.pin_self():
        await _run_groups(scenario, opts, console, groups, device=device, isolation=isolation)


async def _run_groups(
    scenario: Scenario,
    opts: BenchOptions,
    console: Console,
    groups: list[list[dict[str, Any]]],
    *,
    device: DeviceSetting,
    isolation: Isolation,
) -> None:
    async with BenchLink(
        scenario.link, backend=opts.backend, probe_s=opts.probe_s, seed=opts.seed
    ) as link:
        assert link.report is not None
        console.line(link.message)
        for text in link.report.describe():
            console.line("   " + text)
        _warn_rate(link, console)
        console.line(f"   device: {device.describe()}")
        console.line(f"   isolation: {isolation.describe()}")
        quota_cm = QuotaController(device) if device.quota is not None else None
        with quota_cm if quota_cm is not None else contextlib.nullcontext():
            for model in scenario.run.models:
                group = _Group(
                    scenario,
                    model,
                    link,
                    device=device,
                    quota=quota_cm,
                    isolation=isolation,
                    opts=opts,
                    console=console,
                )
                docs: list[dict[str, Any]] = []
                groups.append(docs)
                try:
                    await group.open()
                    await group.run_all(docs)
                except BenchError as exc:
                    console.line(f"   ERROR {scenario.name}/{model}: {exc}")
                    docs += group.failed(str(exc))[len(docs) :]
                finally:
                    await group.close()


def _warn_rate(link: BenchLink, console: Console) -> None:
    assert link.report is not None
    for direction, probe in link.report.probes.items():
        ratio = probe.rate_ratio()
        if ratio is not None and not 0.9 <= ratio <= 1.1:
            console.line(
                f"   WARNING: {direction} measured rate is {ratio * 100:.0f}% of configured"
            )
