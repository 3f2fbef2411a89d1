"""The client process of the handoff benchmark (``ionn-bench handoff``).

Run by :mod:`.handoff` as ``python -m ionn_net.bench.handoff_session --model M ...`` (in the
client's network namespace when there is one). It is the group worker of :mod:`.worker`
(TensorFlow imported at once, the model built and profiled on ``prepare``, events as JSON lines
on stdout) with another ``run``: one :class:`~ionn_net.client.OffloadClient` connects to the
first server, uploads with the strategy's planner and issues queries back to back; once it has
sent half of its planned upload it emits ``move`` and moves to the second server
(:meth:`~ionn_net.client.OffloadClient.move_to`) while the queries go on; the run ends
``after_s`` after the move.

Strategies: ``ionn`` (IONN's planner, re-upload at the new server: no grant, no fetch),
``reupload`` (our planner, re-upload), ``ours`` (our planner; the new server fetches from the
previous one at the move), ``ours-premigrate`` (the same, and the first server pushes to the
second ahead of the move).

Per query it reports issue and end times, latency, whether it ran on a server, whether its
output equals the local model's (``ok``) and, for a query that raised, the error (``lost``).
The bytes the client exchanged with the second server (every connection to it, both ways)
are sampled as ``wire_after``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ionn_net.bench.worker import HOST_DEVICE, Worker, emit

__all__ = ["HANDOFF_STRATEGIES", "main"]

#: strategy -> (upload planner, the new server fetches, pre-migration)
HANDOFF_STRATEGIES: dict[str, tuple[str, bool, bool]] = {
    "ionn": ("ionn", False, False),
    "reupload": ("ours", False, False),
    "ours": ("ours", True, False),
    "ours-premigrate": ("ours", True, True),
}
#: The move comes once the client has sent this fraction of its planned upload to the first
#: server: mid-upload for every strategy and link.
MOVE_AT = 0.5
_GRACE_S = 60.0


def _client(worker: Worker, cmd: Mapping[str, Any], cache: Path) -> Any:
    from ionn_net.client import ClientConfig, HandoffOptions, OffloadClient, paced_transport
    from ionn_net.planner.profiles import ProfileCache

    prep = worker.prep
    assert prep is not None
    planner, fetch, premigrate = HANDOFF_STRATEGIES[str(cmd["strategy"])]
    factor = float(cmd["slowdown"])
    ProfileCache(cache).store(prep.profile)
    pace = cmd.get("pace_mbit")
    config = ClientConfig(
        slowdown=factor,
        profile_cache=str(cache),
        device_id=HOST_DEVICE,
        assumed_mbit=float(cmd["assumed_mbit"]),
        device_ms={n: v * factor for n, v in prep.profile.layer_ms.items()},
        transport=paced_transport(None if pace is None else float(pace) * 1e6),
    )
    first, second = cmd["first"], cmd["second"]
    return OffloadClient(
        str(first[0]),
        int(first[1]),
        prep.model,
        planner=planner,
        config=config,
        candidates=[(str(second[0]), int(second[1]))] if premigrate else [],
        handoff=HandoffOptions(fetch=fetch),
    )


class _Run:
    """One run's clock, its move, and the bytes exchanged with the second server."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.moved: float | None = None
        self.sent_before = 0
        self._conns: dict[int, tuple[Any, int]] = {}

    def now(self) -> float:
        return time.monotonic() - self.t0

    def sample(self, client: Any) -> None:
        """Note the current connection's byte counts (only after the move: to the second
        server)."""
        conn = client.connection
        if self.moved is not None and conn is not None:
            self._conns[id(conn)] = (conn, conn.bytes_sent + conn.bytes_received)

    @property
    def wire_after(self) -> int:
        return sum(n for _, n in self._conns.values())


async def _mover(worker: Worker, client: Any, cmd: Mapping[str, Any], run: _Run) -> None:
    """Move once half of the planned upload has gone to the first server; then sample the
    bytes exchanged with the second one until cancelled."""
    while True:
        p = client.last_progress
        if p is not None and p.total_bytes and p.sent_bytes >= MOVE_AT * p.total_bytes:
            break
        await asyncio.sleep(0.005)
    run.moved = run.now()
    run.sent_before = int(client.stats["sent_bytes"])
    emit(worker.out, "move", t=round(run.moved, 4), sent_before=run.sent_before,
         total=p.total_bytes, stats=dict(client.stats))  # fmt: skip
    second = cmd["second"]
    await client.move_to(str(second[0]), int(second[1]))
    while True:
        run.sample(client)
        await asyncio.sleep(0.05)


def _query_doc(i: int, issued: float, ended: float, result: Any, ok: bool) -> dict[str, Any]:
    return {
        "i": i,
        "t": round(issued, 4),
        "end": round(ended, 4),
        "ms": round(result.total_ms, 3),
        "offloaded": bool(result.offloaded),
        "fallback": bool(result.fallback),
        "server_layers": int(result.server_layers),
        "ok": ok,
    }


async def _queries(worker: Worker, client: Any, cmd: Mapping[str, Any], run: _Run) -> str:
    prep = worker.prep
    assert prep is not None
    after_s, max_before_s = float(cmd["after_s"]), float(cmd["max_before_s"])
    i = 0
    while True:
        t = run.now()
        if run.moved is None and t > max_before_s:
            return "no_move"
        if run.moved is not None and t >= run.moved + after_s:
            return "complete"
        try:
            result = await asyncio.wait_for(client.infer_detailed(prep.x), after_s + _GRACE_S)
        except (TimeoutError, Exception) as exc:  # a lost query: counted, never hidden
            emit(worker.out, "q", i=i, t=round(t, 4), end=round(run.now(), 4), lost=repr(exc))
            i += 1
            continue
        out = result.output if not isinstance(result.output, list) else result.output[0]
        ok = bool(np.allclose(out, prep.expected, rtol=1e-3, atol=1e-4))
        emit(worker.out, "q", **_query_doc(i, t, run.now(), result, ok))
        i += 1


async def run_handoff(worker: Worker, cmd: Mapping[str, Any]) -> None:
    """One run (see the module docstring); reports through ``worker.out``."""
    with tempfile.TemporaryDirectory(prefix="ionn-handoff-run-") as tmp:
        client = _client(worker, cmd, Path(tmp))
        run = _Run()
        reason = "error"
        mover: asyncio.Task[None] | None = None
        try:
            await client.start()
            run.t0 = time.monotonic()
            worker.relay.reset(run.t0)
            emit(worker.out, "connected")
            mover = asyncio.create_task(_mover(worker, client, cmd, run))
            reason = await _queries(worker, client, cmd, run)
        finally:
            if mover is not None:
                mover.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await mover
            run.sample(client)
            stats = dict(client.stats)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 30.0)
        emit(worker.out, "run_end", reason=reason, elapsed_s=round(run.now(), 3),
             moved=run.moved, sent_before=run.sent_before, wire_after=run.wire_after,
             stats=stats)  # fmt: skip


class HandoffWorker(Worker):
    """The group worker whose ``run`` is a handoff run."""

    async def run(self, cmd: Mapping[str, Any]) -> None:
        try:
            await run_handoff(self, cmd)
        except Exception as exc:  # reported; the worker stays usable for the next run
            emit(self.out, "error", what=f"{type(exc).__name__}: {exc}")


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import logging

    p = argparse.ArgumentParser(prog="python -m ionn_net.bench.handoff_session")
    p.add_argument("--model", required=True)
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from ionn_net.tflog import import_tensorflow

    import_tensorflow()
    worker = HandoffWorker(args, sys.stdout)
    log = logging.getLogger("ionn_net")
    log.setLevel(logging.INFO)
    log.addHandler(worker.relay)
    from ionn_net.aio import run

    try:
        return run(worker.serve())
    except Exception as exc:
        emit(sys.stdout, "error", what=f"{type(exc).__name__}: {exc}", fatal=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
