"""The start of an estimated pacing rate over a real bottleneck (root: tbf and a delay line
between network namespaces): a query issued as the upload begins does not wait behind a
queue the upload built before its rate was known.

Server in namespace b, client in a, 20 Mbit/s with 20 ms each way; the client runs with the
transport options the IONN client uses by default (pacing at an estimated rate). Before the
pacer was paced from the first byte, the query issued at t = 0 waited 93-94 ms more than an
idle one here (bench/transport.py, BENCHMARKS.md); the bound below is loose for a busy host.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

import pytest

from ionn_net.aio import ServerStream, connect, run, serve
from ionn_net.client.types import ClientConfig
from ionn_net.config import Limits
from ionn_net.netem.netns import NamespaceLink, environment_problem

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(120)]

QUERY = 16 * 1024
UPLOAD_S = 3.0
RATE_BPS = 20e6
#: wide windows, as bench/transport.py: the default 1 MiB stream credit is not the subject
LIMITS = Limits(initial_stream_credit=4 << 20, initial_connection_credit=32 << 20)


async def _handler(stream: ServerStream) -> None:
    async for _ in stream:
        pass
    await stream.respond({"m": "ok"}, bytes(QUERY) if stream.head.get("m") == "q" else b"")


async def _serve(host: str) -> None:
    async with serve(_handler, host, 0, limits=LIMITS) as server:
        print(f"PORT {server.port}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def serve_main(host: str) -> None:
    """The server process (namespace b): serves until its stdin closes."""
    run(_serve(host))


async def _client(host: str, port: int) -> dict[str, Any]:
    payload = bytes(QUERY)
    options = ClientConfig().transport  # what the IONN client runs with by default
    async with connect(host, port, limits=LIMITS, options=options) as conn:

        async def query() -> float:
            start = time.perf_counter()
            await conn.request({"m": "q"}, payload, urgency=1)
            return time.perf_counter() - start

        idle = [await query() for _ in range(20)]
        total = int(RATE_BPS / 8 * UPLOAD_S)
        began = time.perf_counter()
        upload = asyncio.create_task(
            conn.request({"m": "up"}, bytes(total), urgency=5, incremental=True)
        )
        first: list[tuple[float, float]] = []  # (issued, round trip), from the first byte on
        while time.perf_counter() - began < 1.0:
            first.append((round(time.perf_counter() - began, 3), await query()))
        await upload
        elapsed = time.perf_counter() - began
        pacer = conn.pacer
        assert pacer is not None
        events, rate = dict(pacer.events), pacer.pacing_rate
    return {
        "idle": idle,
        "first": first,
        "share": total * 8 / elapsed / RATE_BPS,
        "pacer": (events, None if rate is None else rate * 8 / RATE_BPS),
    }


def client_main(host: str, port: int) -> dict[str, Any]:
    """The client process (namespace a)."""
    return run(_client(host, port))


# Timing-sensitive on a shared 2-core machine (RELIABILITY.md, "Tests given one rerun"):
# an unpaced start fails both runs.
@pytest.mark.flaky(reruns=1, reruns_delay=2)
def test_a_query_issued_as_the_upload_begins_does_not_wait_behind_it() -> None:
    problem = environment_problem()
    if problem is not None:
        pytest.skip(f"namespace links cannot run here: {problem}")
    with NamespaceLink(rate_bps=RATE_BPS, delay_ms=20) as link:
        host = link.addresses["b"]
        code = f"import sys; sys.path[:0] = {sys.path!r}; import {__name__} as m; "
        code += f"m.serve_main({host!r})"
        server = link.popen_in("b", [sys.executable, "-c", code], stdin=-1, stdout=-1)
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[-1])
        result: Any = link.call_in("a", client_main, host, port, timeout=90)
    idle = statistics.median(result["idle"])
    first = [rtt for _, rtt in result["first"]]
    assert len(first) >= 5
    # Every query of the upload's first second within 40 ms of an idle one (one query is
    # 2 x 6.6 ms of transfer at 20 Mbit/s on top of the 40 ms round trip). An unpaced start
    # is 93-94 ms; in a full suite's load one of three runs saw 35 ms (25 was the bound).
    assert max(first) - idle <= 0.040, (idle, result["first"], result["pacer"])
    # ...and the start did not cost the upload its rate: a 3 s upload still gets most of
    # the link (queries take about a third of it in the first second here).
    assert result["share"] >= 0.75, result["share"]
