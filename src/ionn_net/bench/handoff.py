"""``ionn-bench handoff``: a client moves between two edge servers mid-upload.

Owns the handoff benchmark's command line and runs. Per scenario (its wireless link: ``wifi``,
``lte``, any scenario file) it builds :class:`~ionn_net.bench.handoff_net.HandoffNet` (the
client's link to each server, the 1 Gbit/s, 2 ms backhaul between them); per model it starts
server A, server B (each with the other as its peer, protocol.md §15.1) and the client worker
(:mod:`.handoff_session`); then it runs each strategy in turn: the client uploads to A, moves
to B when half of its planned upload has gone, and queries back to back for ``after_s`` more
seconds. When the client says it moves, the link to A is cut.

For each run it prints one line (:func:`~.handoff_report.summary_line`) and writes
``runs/<scenario>__<model>__<strategy>.json``; at the end ``plots/`` (latency against time since
the move, the move marked) and ``summary.md``. Exit status: 0 when every run completed, 1 when
a run failed, 2 on bad arguments or an unusable environment, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ionn_net.bench.handoff_net import BACKHAUL, HandoffNet
from ionn_net.bench.handoff_report import (
    handoff_markdown,
    handoff_metrics,
    plot_handoff,
    summary_line,
)
from ionn_net.bench.handoff_session import HANDOFF_STRATEGIES
from ionn_net.bench.models import MODELS
from ionn_net.bench.procs import BenchError, Child
from ionn_net.bench.runner import machine_info
from ionn_net.bench.scenario import LinkConfig, default_scenarios_dir, load_scenario
from ionn_net.errors import ConfigError, IonnError

__all__ = ["main"]

DEFAULT_STRATEGIES = ("ionn", "ours", "ours-premigrate")
#: Seconds of queries after the move, by scenario (long enough for IONN's re-upload).
AFTER_S = {"wifi": 30.0, "lte": 75.0, "quick": 8.0}
_PAUSE_S = 1.0
_PREP_S = 900.0


@dataclass(frozen=True, slots=True)
class _Options:
    out: Path
    cache_dir: Path
    backend: str
    seed: int
    command: str
    slowdown: float
    after_s: float | None
    max_before_s: float


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ionn-bench handoff",
        description="A client moves between two edge servers mid-upload: re-upload (ionn), "
        "fetch from the previous server (ours) and pre-migration (ours-premigrate).",
    )
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="default: wifi lte")
    p.add_argument("--quick", action="store_true", help="CI smoke run: small CNN, short runs")
    p.add_argument("--models", default=None, help="comma-separated (default mobilenetv2,resnet50)")
    p.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                   help=f"comma-separated from {', '.join(HANDOFF_STRATEGIES)}")  # fmt: skip
    p.add_argument("--backend", choices=("auto", "netns", "userspace-proxy"), default="auto")
    p.add_argument("--slowdown", type=float, default=10.0, help="device slowdown (default 10)")
    p.add_argument("--after-s", type=float, default=None, help="seconds of queries after the move")
    p.add_argument("--max-before-s", type=float, default=300.0, help="bound before the move")
    p.add_argument("--out", type=Path, default=None)
    cache = os.environ.get("IONN_NET_CACHE", Path.home() / ".cache" / "ionn_net")
    p.add_argument("--cache-dir", type=Path, default=Path(cache))
    p.add_argument("--seed", type=int, default=0)
    return p


def _list(text: str, choices: Sequence[str], what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in choices]
    if not items or bad:
        raise ConfigError(f"{what}: expected names from {', '.join(choices)}, got {text!r}")
    return items


def _scenarios(args: argparse.Namespace) -> list[tuple[str, LinkConfig]]:
    if args.quick:
        if args.scenarios:
            raise ConfigError("--quick: expected no scenario names")
        return [("quick", LinkConfig(rate_mbit=20.0, rtt_ms=10.0))]
    out = []
    for name in args.scenarios or ["wifi", "lte"]:
        path: Any = (
            Path(name) if name.endswith(".toml") else default_scenarios_dir() / f"{name}.toml"
        )
        if not path.is_file():
            raise ConfigError(f"scenario {name!r}: no file {path}")
        sc = load_scenario(path)
        out.append((sc.name, sc.link))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = "ionn-bench handoff " + shlex.join(sys.argv[2:] if argv is None else list(argv))
    try:
        scenarios = _scenarios(args)
        default_models = "cnn_small" if args.quick else "mobilenetv2,resnet50"
        models = _list(args.models or default_models, tuple(MODELS), "--models")
        strategies = _list(args.strategies, tuple(HANDOFF_STRATEGIES), "--strategies")
    except ConfigError as exc:
        print(f"ionn-bench handoff: {exc}", file=sys.stderr)
        return 2
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or Path("bench/out") / f"{stamp}-handoff{'-quick' if args.quick else ''}"
    out.mkdir(parents=True, exist_ok=True)
    opts = _Options(out, args.cache_dir, args.backend, args.seed, command, args.slowdown,
                    args.after_s, args.max_before_s)  # fmt: skip
    if args.quick:
        opts = _Options(out, args.cache_dir, args.backend, args.seed, command, 30.0,
                        args.after_s or AFTER_S["quick"], 120.0)  # fmt: skip
    groups: list[list[dict[str, Any]]] = []
    from ionn_net.aio import run

    try:
        run(_run_all(scenarios, models, strategies, opts, groups))
    except KeyboardInterrupt:
        print("ionn-bench handoff: interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except (ConfigError, IonnError, OSError) as exc:
        print(f"ionn-bench handoff: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        _write_report(out, [g for g in groups if g], command)
    failed = any(d["status"] != "ok" for g in groups for d in g)
    return 1 if failed or not groups else 0


async def _run_all(
    scenarios: list[tuple[str, LinkConfig]],
    models: list[str],
    strategies: list[str],
    opts: _Options,
    groups: list[list[dict[str, Any]]],
) -> None:
    for name, link in scenarios:
        async with HandoffNet(link, backend=opts.backend) as net:
            describe = (
                f"{net.kind}{' (' + net.why + ')' if net.why else ''}: wireless "
                f"{link.describe()}, backhaul {BACKHAUL.describe()}"
            )
            print(f"== handoff {name}: {describe}", file=sys.stderr)
            info = {"kind": net.kind, "describe": describe, "probes": net.probes}
            for model in models:
                docs: list[dict[str, Any]] = []
                groups.append(docs)
                group = _Group(name, link, model, net, info=info, opts=opts)
                try:
                    await group.open()
                    for strategy in strategies:
                        docs.append(await group.run(strategy))
                        print(summary_line(docs[-1]), flush=True)
                        await asyncio.sleep(_PAUSE_S)
                finally:
                    await group.close()


class _Group:
    """One scenario x model: two servers, a client worker, every strategy."""

    def __init__(
        self, scenario: str, link: LinkConfig, model: str, net: HandoffNet, *,
        info: dict[str, Any], opts: _Options,
    ) -> None:  # fmt: skip
        self.scenario, self.link, self.model, self.net = scenario, link, model, net
        self.info, self.opts = info, opts
        self.tag = f"{scenario}__{model}"
        self.children: dict[str, Child] = {}
        self.server_stats: dict[str, dict[str, Any]] = {}

    def _log(self, who: str) -> Path:
        return self.opts.out / "logs" / f"{self.tag}__{who}.log"

    async def open(self) -> None:
        for server in ("a", "b"):
            host, port = self.net.listen(server)
            argv = [*self.net.prefix(server), sys.executable, "-m", "ionn_net.bench.serverproc"]
            argv += ["--host", host, "--port", str(port), "--cache-dir", str(self.opts.cache_dir)]
            for peer in self.net.peers(server):
                argv += ["--peer", peer]
            self.children[server] = await Child(server, argv, self._log(server)).start()
        argv = [*self.net.prefix("c"), sys.executable, "-m", "ionn_net.bench.handoff_session",
                "--model", self.model, "--cache-dir", str(self.opts.cache_dir),
                "--seed", str(self.opts.seed)]  # fmt: skip
        worker = self.children["c"] = await Child("client", argv, self._log("client")).start()
        for server in ("a", "b"):
            await self.children[server].expect("listening", _PREP_S)
        await worker.expect("started", _PREP_S)
        worker.send({"cmd": "prepare"})
        ready = await worker.expect("ready", _PREP_S)
        print(f"   {self.model}: {ready['layers']} layers, {ready['weight_bytes'] / 1e6:.1f} MB",
              file=sys.stderr)  # fmt: skip

    async def close(self) -> None:
        worker = self.children.pop("c", None)
        if worker is not None:
            with contextlib.suppress(BenchError):
                worker.send({"cmd": "quit"})
            await worker.close()
        for server in ("a", "b"):
            child = self.children.pop(server, None)
            if child is None:
                continue
            child.close_stdin()
            with contextlib.suppress(BenchError):
                stats = await child.expect("stats", 15.0)
                self.server_stats[server] = {k: v for k, v in stats.items() if k != "ev"}
            await child.close()

    def _after_s(self) -> float:
        return self.opts.after_s or AFTER_S.get(self.scenario, 60.0)

    async def run(self, strategy: str) -> dict[str, Any]:
        await self.net.restore()
        doc: dict[str, Any] = {
            "schema": "ionn-bench-handoff/1", "scenario": self.scenario, "model": self.model,
            "strategy": strategy, "status": "error", "reason": "", "net": self.info,
            "link": {"rate_mbit": self.link.rate_mbit, "rtt_ms": self.link.rtt_ms},
            "backhaul": {"rate_mbit": BACKHAUL.rate_mbit, "rtt_ms": BACKHAUL.rtt_ms},
            "after_s": self._after_s(), "slowdown": self.opts.slowdown,
            "command": self.opts.command, "machine": machine_info(),
            "started": datetime.datetime.now(datetime.UTC).isoformat(),
            "queries": [], "logs": [],
        }  # fmt: skip
        worker = self.children["c"]
        worker.send({
            "cmd": "run", "strategy": strategy, "first": list(self.net.public("a")),
            "second": list(self.net.public("b")), "slowdown": self.opts.slowdown,
            "assumed_mbit": self.link.rate_mbit, "after_s": self._after_s(),
            "max_before_s": self.opts.max_before_s,
            "pace_mbit": self.link.rate_mbit if self.net.kind == "userspace-proxy" else None,
        })  # fmt: skip
        try:
            await self._events(worker, doc)
        except BenchError as exc:
            doc["status"], doc["reason"] = "error", str(exc)
        doc["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        doc["metrics"] = handoff_metrics(doc)
        if doc["status"] == "ok" and (doc["metrics"]["lost"] or doc["metrics"]["wrong"]):
            doc["status"], doc["reason"] = "error", "lost or wrong answers"
        path = self.opts.out / "runs" / f"{self.tag}__{strategy}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1, default=str))
        return doc

    async def _events(self, worker: Child, doc: dict[str, Any]) -> None:
        deadline = (
            asyncio.get_running_loop().time() + self.opts.max_before_s + self._after_s() + 300
        )
        while True:
            ev = await worker.event(deadline - asyncio.get_running_loop().time())
            if ev is None:
                raise BenchError(f"the client worker exited: {worker.tail()}")
            kind = ev.pop("ev")
            if kind == "q":
                doc["queries"].append(ev)
            elif kind == "move":
                doc["move_t"], doc["move"] = ev["t"], ev
                await self.net.cut()  # the client has left the first server's range
            elif kind == "log":
                doc["logs"].append(ev)
            elif kind == "error":
                doc["reason"] = ev["what"]
                return
            elif kind == "run_end":
                doc.update(status="ok", reason=ev["reason"], wire_after=ev["wire_after"],
                           client_stats=ev["stats"], elapsed_s=ev["elapsed_s"])  # fmt: skip
                if ev["reason"] != "complete":
                    doc["status"] = "error"
                return


def _write_report(out: Path, groups: list[list[dict[str, Any]]], command: str) -> None:
    if not groups:
        return
    plots = [plot_handoff(docs, out / "plots" / f"handoff__{docs[0]['scenario']}__"
                          f"{docs[0]['model']}.png") for docs in groups]  # fmt: skip
    header = {"command": command, "machine": machine_info()}
    summary = out / "summary.md"
    summary.write_text(handoff_markdown(groups, header))
    print(f"summary: {summary}")
    print(f"plots: {', '.join(str(p) for p in plots)}")
