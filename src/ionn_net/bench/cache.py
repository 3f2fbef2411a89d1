"""``ionn-bench cache``: what a model catalog spares a client (protocol.md §10.3.3, §14.5.1).

On an emulated link (:class:`~ionn_net.bench.links.BenchLink`), per rate, one client
process per case against a real ``ionn-server`` process:

* ``ionn``: IONN's planner uploading everything to a server without a catalog;
* ``upload``: the library's default planner, uploading everything to that server;
* ``catalog``: a second user of the model, whose every blob is in the server's catalog
  (``ionn-server --catalog``, the model built ahead before the client connects);
* ``head``: a fine-tuned head on the catalog's backbone: the model's last layer
  replaced by a new 10-class ``Dense`` reading the same features, so only it uploads.

The clock of a case starts when ``OffloadClient.start`` returns (connected: handshake,
cost model and ``manifest_ok`` exchanged; the model prepared and profiled before).
Queries are issued back to back with one input; a case ends once ``window_s`` have
passed, a query has been offloaded and the upload has finished (bounded by ``max_s``).
Each case prints one line
``cache <case> <rate>: first offload <s> s, mean 30 s <ms> ms, uploaded MB <MB>``
and the whole run is written as JSON to ``<out>/cache.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ionn_net.argtypes import positive
from ionn_net.bench.links import BACKEND_CHOICES, BenchLink
from ionn_net.bench.models import MODELS
from ionn_net.bench.runner import machine_info
from ionn_net.bench.scenario import LinkConfig

__all__ = ["CASES", "main"]

#: Case -> (planner, server has the catalog, model variant).
CASES: dict[str, tuple[str, bool, str]] = {
    "ionn": ("ionn", False, "base"),
    "upload": ("ours", False, "base"),
    "catalog": ("ours", True, "base"),
    "head": ("ours", True, "head"),
}
_HEAD_CLASSES = 10
_WARM_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class CacheOptions:
    model: str
    cases: tuple[str, ...]
    rates: tuple[float, ...]
    rtt_ms: float
    slowdown: float
    window_s: float
    max_s: float
    backend: str
    out: Path
    seed: int
    #: a calibration or cost model file for ``ionn-server --cost-model`` (None: the server
    #: calibrates this machine once and caches it, as a fresh install does)
    cost_model: Path | None = None


def variant(name: str, which: str, seed: int) -> Any:
    """The benchmark model ``name`` (``base``) or a fine-tuned head on it (``head``): its
    last layer replaced by a new ``Dense`` of 10 classes on the same features, so every
    other layer keeps the base model's weights (and blob digests)."""
    import keras

    from ionn_net.bench.models import build_model

    base = build_model(name, seed=seed)
    if which == "base":
        return base
    keras.utils.set_random_seed(seed + 1)
    features = base.layers[-1].input
    out = keras.layers.Dense(_HEAD_CLASSES, activation="softmax", name="head")(features)
    return keras.Model(base.inputs, out, name=f"{base.name}_head")


def export_catalog(name: str, root: Path, seed: int) -> tuple[str, int]:
    """Export the base model into a catalog at ``root``: (model digest, blob bytes)."""
    from ionn_net.catalog import add_manifest
    from ionn_net.model.layers import extract_manifest

    manifest, blobs, _ = extract_manifest(variant(name, "base", seed))
    digest, _ = add_manifest(root, manifest, blobs, name=name, source="ionn-bench cache")
    return digest, sum(len(b) for b in blobs.values())


# -- the client process ------------------------------------------------------------------


async def _client(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from ionn_net.bench.models import query_input
    from ionn_net.client import ClientConfig, OffloadClient, paced_transport

    model = variant(args.model, args.variant, args.seed)
    x = query_input(model, seed=args.seed)
    config = ClientConfig(
        slowdown=args.slowdown,
        profile_cache=args.profiles,
        assumed_mbit=args.rate,
        transport=paced_transport(args.pace_mbit * 1e6 if args.pace_mbit else None),
    )
    client = OffloadClient(args.host, args.port, model, planner=args.planner, config=config)
    queries: list[tuple[float, float, bool]] = []
    async with client:  # start(): the model prepared and profiled, then connected
        t0 = time.monotonic()
        total = sum(len(b) for b in client.blobs.values())
        public = len(client.plan_state.public_blobs)
        while (now := time.monotonic() - t0) < args.max_s:
            result = await client.infer_detailed(x)
            end = time.monotonic() - t0
            queries.append((now, end, result.offloaded))
            np.asarray(result.output)  # a result that arrived is a result
            progress = client.last_progress
            done = progress is not None and progress.done
            if end >= args.window_s and done and any(q[2] for q in queries):
                break
        sent = client.stats["sent_bytes"]
    return _summary(queries, args.window_s, sent=sent, total=total, public=public)


def _summary(
    queries: list[tuple[float, float, bool]], window_s: float, *, sent: int, total: int, public: int
) -> dict[str, Any]:
    first = next((end for _, end, off in queries if off), None)
    window = [(end - start) * 1e3 for start, end, _ in queries if end <= window_s]
    return {
        "first_offload_s": first,
        "mean_window_ms": statistics.fmean(window) if window else None,
        "queries_in_window": len(window),
        "offloaded_in_window": sum(1 for _, end, off in queries if off and end <= window_s),
        "uploaded_bytes": sent,
        "model_bytes": total,
        "public_blobs": public,
        "elapsed_s": queries[-1][1] if queries else 0.0,
    }


# -- the driver ----------------------------------------------------------------------------


class _Server:
    """An ``ionn-server`` process on the server side of the link, listening and (with a
    catalog) done building it ahead."""

    def __init__(
        self, link: BenchLink, catalog: Path | None, log: Path, cost_model: Path | None
    ) -> None:
        argv = [*link.prefix("server"), str(Path(sys.executable).parent / "ionn-server")]
        argv += ["--host", link.server_host, "--port", "0", "--log-level", "INFO"]
        if cost_model is not None:
            argv += ["--cost-model", str(cost_model)]
        if catalog is not None:
            argv += ["--catalog", str(catalog), "--catalog-warm", "all"]
        self.argv, self.catalog, self.log = argv, catalog, log
        self.proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self._early: list[bytes] = []
        self.port = 0

    async def __aenter__(self) -> _Server:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            await asyncio.wait_for(self._ready(), _WARM_TIMEOUT_S)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _ready(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None and proc.stderr is not None
        line = (await proc.stdout.readline()).decode()
        if not line.startswith("ionn-server listening on"):
            raise RuntimeError(f"ionn-server did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        while self.catalog is not None:  # until the catalog is built ahead (or failed)
            raw = await proc.stderr.readline()
            self._early.append(raw)
            text = raw.decode()
            if not text:
                raise RuntimeError("ionn-server exited while building its catalog")
            if "built ahead" in text or "ahead failed" in text:
                print("   server: " + text.strip().split(" INFO ", 1)[-1], file=sys.stderr)
                break
        self._drain = asyncio.create_task(self._keep_log(proc.stderr))

    async def _keep_log(self, stream: asyncio.StreamReader) -> None:
        """Read the server's log while it runs (a full pipe would block the server)."""
        with self.log.open("wb") as out:
            out.write(b"".join(self._early))
            while chunk := await stream.read(1 << 16):
                out.write(chunk)

    async def __aexit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 60)
        if self._drain is not None:
            await asyncio.wait_for(self._drain, 10)


async def _run_case(
    opts: CacheOptions, link: BenchLink, case: str, port: int, rate: float
) -> dict[str, Any]:
    planner, _, which = CASES[case]
    address = await link.attach(port)
    argv = [*link.prefix("client"), sys.executable, "-m", "ionn_net.bench.cache", "client"]
    argv += ["--host", address[0], "--port", str(address[1]), "--model", opts.model]
    argv += ["--variant", which, "--planner", planner, "--seed", str(opts.seed)]
    argv += ["--slowdown", str(opts.slowdown), "--rate", str(rate)]
    argv += ["--window-s", str(opts.window_s), "--max-s", str(opts.max_s)]
    argv += ["--profiles", str(opts.out / "profiles")]
    if link.kind == "userspace-proxy":  # TCP cannot see the proxy's bottleneck
        argv += ["--pace-mbit", str(rate)]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), opts.max_s + _WARM_TIMEOUT_S)
    await link.detach()
    (opts.out / "logs").mkdir(parents=True, exist_ok=True)
    (opts.out / "logs" / f"{case}_{rate:g}.log").write_bytes(err)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case}: the client failed: {err.decode()[-800:]}")
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


def line(case: str, rate: float, r: dict[str, Any]) -> str:
    """``cache <case> <rate>: first offload <s> s, mean 30 s <ms> ms, uploaded MB <MB>``."""
    first = "never" if r["first_offload_s"] is None else f"{r['first_offload_s']:.2f}"
    mean = "-" if r["mean_window_ms"] is None else f"{r['mean_window_ms']:.0f}"
    share = 100.0 * r["uploaded_bytes"] / r["model_bytes"] if r["model_bytes"] else 0.0
    return (
        f"cache {case} {rate:g}Mbit: first offload {first} s, mean {r['window_s']:g} s "
        f"{mean} ms, uploaded MB {r['uploaded_bytes'] / 1e6:.2f} ({share:.1f}% of the model)"
    )


async def _run(opts: CacheOptions) -> list[dict[str, Any]]:
    catalog = opts.out / "catalog"
    digest, size = await asyncio.to_thread(export_catalog, opts.model, catalog, opts.seed)
    print(f"catalog: {opts.model} {digest[:12]}, {size / 1e6:.1f} MB of blobs", file=sys.stderr)
    results: list[dict[str, Any]] = []
    for rate in opts.rates:
        config = LinkConfig(rate_mbit=rate, rtt_ms=opts.rtt_ms)
        async with BenchLink(config, backend=opts.backend, probe_s=1.0, seed=opts.seed) as link:
            print(f"== {config.describe()}: {link.message}", file=sys.stderr)
            for with_catalog in sorted({CASES[c][1] for c in opts.cases}):
                log = opts.out / "logs" / f"server_{rate:g}_{int(with_catalog)}.log"
                held = catalog if with_catalog else None
                async with _Server(link, held, log, opts.cost_model) as server:
                    for case, (_, uses, _) in CASES.items():
                        if uses != with_catalog or case not in opts.cases:
                            continue
                        r = await _run_case(opts, link, case, server.port, rate)
                        r.update(case=case, rate_mbit=rate, window_s=opts.window_s)
                        r["link"] = link.kind
                        results.append(r)
                        print(line(case, rate, r), flush=True)
    return results


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ionn-bench cache",
        description="A second user of a catalog model, and a fine-tuned head on its "
        "backbone, against uploading everything (ionn, and the default planner).",
    )
    p.add_argument("--quick", action="store_true", help="CI: cnn_small, 20 Mbit/s, 5 s window")
    p.add_argument("--model", choices=tuple(MODELS), default="resnet50")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated (default: all)")
    p.add_argument("--rates", default="20,80", help="Mbit/s, comma-separated (default 20,80)")
    p.add_argument("--rtt-ms", type=float, default=1.0)
    p.add_argument("--slowdown", type=positive(float), default=10.0)
    p.add_argument("--window-s", type=positive(float), default=30.0)
    p.add_argument("--max-s", type=positive(float), default=180.0)
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cost-model",
        type=Path,
        default=None,
        help="calibration or cost model file for the servers (ionn-server --cost-model; "
        "default: they calibrate this machine once and cache it)",
    )
    return p


def _client_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ionn-bench cache client")
    for name in ("host", "model", "variant", "planner", "profiles"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--port", type=int, required=True)
    for name in ("slowdown", "rate", "window-s", "max-s"):
        p.add_argument(f"--{name}", type=float, required=True)
    p.add_argument("--pace-mbit", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    return p


def _options(args: argparse.Namespace) -> CacheOptions:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    quick = bool(args.quick)
    try:
        rates = tuple(float(r) for r in args.rates.split(",") if r.strip())
    except ValueError:
        bad = f"ionn-bench cache: --rates: expected numbers, got {args.rates!r}"
        raise SystemExit(bad) from None
    cases = tuple(c for c in args.cases.split(",") if c)
    if not cases or any(c not in CASES for c in cases):
        raise SystemExit(f"ionn-bench cache: --cases: expected names from {', '.join(CASES)}")
    return CacheOptions(
        model="cnn_small" if quick else args.model,
        cases=cases,
        rates=(20.0,) if quick else rates,
        rtt_ms=args.rtt_ms,
        slowdown=30.0 if quick else args.slowdown,
        window_s=5.0 if quick else args.window_s,
        max_s=60.0 if quick else args.max_s,
        backend="userspace-proxy" if quick and args.backend == "auto" else args.backend,
        out=args.out or Path("bench/out") / f"{stamp}-cache{'-quick' if quick else ''}",
        seed=args.seed,
        cost_model=_cost_model_file(args.cost_model),
    )


def _cost_model_file(path: Path | None) -> Path | None:
    if path is not None and not path.is_file():
        raise SystemExit(f"ionn-bench cache: --cost-model: expected a file, got {str(path)!r}")
    return None if path is None else path.resolve()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["client"]:
        from ionn_net.tflog import import_tensorflow

        import_tensorflow()
        # the client's own account of each load (server load, client compile) to the log
        logging.basicConfig(level=logging.INFO, format="%(relativeCreated)8.0f ms %(message)s")
        result = asyncio.run(_client(_client_parser().parse_args(argv[1:])))
        print(json.dumps(result))
        return 0
    opts = _options(_parser().parse_args(argv))
    opts.out.mkdir(parents=True, exist_ok=True)
    from ionn_net.tflog import import_tensorflow

    import_tensorflow()  # quietly, before the catalog's export needs it
    results = asyncio.run(_run(opts))
    doc: dict[str, Any] = {"command": "ionn-bench cache " + " ".join(argv)}
    doc["machine"] = machine_info()
    doc["options"] = _opts_doc(opts)
    doc["results"] = results
    (opts.out / "cache.json").write_text(json.dumps(doc, indent=1, default=str))
    print(f"written {opts.out / 'cache.json'}", file=sys.stderr)
    return 0


def _opts_doc(opts: CacheOptions) -> dict[str, Any]:
    return {
        "model": opts.model,
        "cases": list(opts.cases),
        "rates_mbit": list(opts.rates),
        "rtt_ms": opts.rtt_ms,
        "slowdown": opts.slowdown,
        "window_s": opts.window_s,
        "backend": opts.backend,
    }


if __name__ == "__main__":
    sys.exit(main())
