"""ShapingProxy and the link probe over loopback: rate, delay, queue, loss, CLI."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import pytest
from netem_targets import Target

from ionn_net.errors import ConfigError
from ionn_net.netem.probe import ProbeResult, ProbeServer, probe_link
from ionn_net.netem.proxy import MSS, LinkSpec, ShapingProxy, ThreadedShapingProxy


async def _best_of(attempts: int, measure: Callable[[], Awaitable[ProbeResult]]) -> ProbeResult:
    """First result within tolerance, else the last one.

    The machine is shared and noisy: a scheduling stall longer than the proxy's
    queue costs link time. A broken shaper misses on every attempt.
    """
    result = await measure()
    for _ in range(attempts - 1):
        ratio = result.rate_ratio()
        error = result.rtt_error_ms()
        if (ratio is None or abs(ratio - 1) <= 0.05) and (error is None or -0.5 <= error <= 2):
            break
        result = await measure()
    return result


@pytest.mark.parametrize("rate", [10e6, 50e6])
async def test_rate_held_within_5_percent_with_delay(rate: float) -> None:
    # 20 ms one-way delay too: a delay line that released one chunk per round trip
    # could not reach these rates.
    spec = LinkSpec(rate_bps=rate, delay_ms=20)

    async def measure() -> ProbeResult:
        async with ProbeServer() as server, ShapingProxy("127.0.0.1", server.port, up=spec) as px:
            return await probe_link(
                "127.0.0.1", px.port, duration_s=1.0, pings=0, configured_rate_bps=rate
            )

    result = await _best_of(3, measure)
    ratio = result.rate_ratio()
    assert ratio is not None
    assert 0.95 <= ratio <= 1.05, result.describe()


async def test_download_direction_rate() -> None:
    async def measure() -> ProbeResult:
        async with (
            ProbeServer() as server,
            ShapingProxy("127.0.0.1", server.port, down=LinkSpec(rate_bps=20e6)) as px,
        ):
            return await probe_link(
                "127.0.0.1",
                px.port,
                duration_s=0.6,
                pings=0,
                direction="down",
                configured_rate_bps=20e6,
            )

    result = await _best_of(3, measure)
    assert result.rate_ratio() == pytest.approx(1.0, abs=0.05), result.describe()


async def test_delay_20ms_within_2ms() -> None:
    up = LinkSpec(rate_bps=50e6, delay_ms=20)

    async def measure() -> ProbeResult:
        async with ProbeServer() as server, ShapingProxy("127.0.0.1", server.port, up=up) as px:
            return await probe_link(
                "127.0.0.1", px.port, duration_s=0, pings=15, configured_rtt_ms=20.0
            )

    result = await _best_of(3, measure)
    error = result.rtt_error_ms()
    assert error is not None
    # Typically +0.5-1.5 ms (timer wake-ups, two loopback hops); up to ~2.5 ms when
    # the two cores are shared by many busy processes.
    assert -0.5 <= error <= 3.0, result.describe()
    assert result.rtt_ms_min is not None and result.rtt_ms_min >= 19.5


async def test_jitter_spreads_delay_without_reordering(echo_target: Target) -> None:
    up = LinkSpec(delay_ms=10, jitter_ms=8)
    async with ShapingProxy("127.0.0.1", echo_target.port, up=up, seed=7) as px:
        reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
        rtts = []
        payload = bytearray()
        for i in range(30):
            msg = i.to_bytes(4, "big")
            t0 = time.perf_counter()
            writer.write(msg)
            payload += await asyncio.wait_for(reader.readexactly(4), 5)
            rtts.append((time.perf_counter() - t0) * 1000)
        writer.close()
    assert payload == b"".join(i.to_bytes(4, "big") for i in range(30))
    assert max(rtts) - min(rtts) > 4  # jitter is there
    assert min(rtts) >= 1.5  # 10 - 8 ms, never less
    assert statistics.median(rtts) < 16


async def test_queue_limit_bounds_queueing_delay() -> None:
    # A bulk flow fills the shared bottleneck; a ping on a second connection waits
    # behind the queue, which the limit keeps near queue_ms.
    up = LinkSpec(rate_bps=10e6, queue_ms=30)
    async with ProbeServer() as server, ShapingProxy("127.0.0.1", server.port, up=up) as px:
        bulk = asyncio.ensure_future(
            probe_link("127.0.0.1", px.port, duration_s=1.0, pings=0, warmup_s=0.1)
        )
        await asyncio.sleep(0.3)
        loaded = await probe_link("127.0.0.1", px.port, duration_s=0, pings=10)
        rate = await bulk
    assert loaded.rtt_ms_p50 is not None
    assert 15 <= loaded.rtt_ms_p50 <= 45, loaded.describe()
    assert rate.measured_rate_bps is not None and rate.measured_rate_bps < 10.5e6


async def test_loss_is_modelled_as_stalls(echo_target: Target) -> None:
    # One MSS per ping-pong round: each round is one segment, lost with p = 0.2;
    # a lost one comes back a 30 ms stall late, the others at once.
    up = LinkSpec(loss=0.2, loss_stall_ms=30)
    async with ShapingProxy("127.0.0.1", echo_target.port, up=up, seed=5) as px:
        reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
        rtts = []
        for i in range(40):
            t0 = time.perf_counter()
            writer.write(bytes([i]) * MSS)
            assert await asyncio.wait_for(reader.readexactly(MSS), 5) == bytes([i]) * MSS
            rtts.append(time.perf_counter() - t0)
        lost = px.stats().segments_lost_up
        writer.close()
    stalled = sum(1 for rtt in rtts if rtt >= 0.03)
    assert 3 <= lost <= 16
    assert lost <= stalled <= lost + 2  # + 2: a scheduling hiccup on a busy machine


async def test_stats_and_connection_limit(echo_target: Target) -> None:
    async with ShapingProxy("127.0.0.1", echo_target.port, max_connections=1) as px:
        r1, w1 = await asyncio.open_connection("127.0.0.1", px.port)
        w1.write(b"abc")
        assert await asyncio.wait_for(r1.readexactly(3), 5) == b"abc"
        r2, _ = await asyncio.open_connection("127.0.0.1", px.port)
        assert await asyncio.wait_for(r2.read(10), 5) == b""  # refused: closed at once
        stats = px.stats()
        assert (stats.bytes_up, stats.bytes_down, stats.refused) == (3, 3, 1)
        w1.close()


async def test_sever_breaks_open_connections_at_once_and_accepts_new_ones(
    echo_target: Target,
) -> None:
    async with ShapingProxy("127.0.0.1", echo_target.port, up=LinkSpec(delay_ms=50)) as px:
        r1, w1 = await asyncio.open_connection("127.0.0.1", px.port)
        w1.write(b"abc")
        assert await asyncio.wait_for(r1.readexactly(3), 5) == b"abc"
        w1.write(b"held")  # still in the 50 ms delay line when the path breaks
        await asyncio.sleep(0.01)
        px.sever()
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(r1.readexactly(4), 5)  # the held bytes never come back
        r2, w2 = await asyncio.open_connection("127.0.0.1", px.port)
        w2.write(b"new")
        assert await asyncio.wait_for(r2.readexactly(3), 5) == b"new"
        w1.close()
        w2.close()


def test_threaded_proxy_from_blocking_code() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    with ThreadedShapingProxy("127.0.0.1", port, up=LinkSpec(delay_ms=15)) as px:
        client = socket.create_connection(("127.0.0.1", px.port), timeout=5)
        conn, _ = server.accept()
        t0 = time.monotonic()
        client.sendall(b"ping")
        conn.settimeout(5)
        assert conn.recv(10) == b"ping"
        assert time.monotonic() - t0 >= 0.014
        assert px.stats().bytes_up == 4
        client.close()
        conn.close()
    server.close()


def test_cli_runs_and_forwards() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "ionn_net.netem.proxy", "--target", f"127.0.0.1:{port}"),
            *("--up-delay-ms", "5", "--duration-s", "20"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        words = proc.stdout.readline().split()
        assert words[:2] == ["listening", "127.0.0.1"]
        client = socket.create_connection(("127.0.0.1", int(words[2])), timeout=5)
        conn, _ = server.accept()
        client.sendall(b"via cli")
        conn.settimeout(5)
        assert conn.recv(100) == b"via cli"
        client.close()
        conn.close()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        server.close()


def test_probe_cli_reports_json() -> None:
    serve = subprocess.Popen(
        [sys.executable, "-m", "ionn_net.netem.probe", "serve", "--duration-s", "20"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stdout is not None
        port = serve.stdout.readline().split()[2]
        out = subprocess.run(
            [
                *(sys.executable, "-m", "ionn_net.netem.probe", "client"),
                *("--host", "127.0.0.1", "--port", port, "--duration-s", "0.3", "--pings", "5"),
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        result = json.loads(out.stdout)
        assert result["measured_rate_bps"] > 100e6  # bare loopback
        assert 0 < result["rtt_ms_p50"] < 5
    finally:
        serve.terminate()
        serve.wait(10)


def test_linkspec_validation() -> None:
    with pytest.raises(ConfigError, match="rate_bps"):
        LinkSpec(rate_bps=0)
    with pytest.raises(ConfigError, match="at most one"):
        LinkSpec(rate_bps=1e6, queue_bytes=10_000, queue_ms=5)
    with pytest.raises(ConfigError, match="loss"):
        LinkSpec(loss=1.0)
    with pytest.raises(ConfigError, match="queue_bytes"):
        LinkSpec(queue_bytes=10)
    assert LinkSpec(rate_bps=8e6, queue_bytes=10_000).queue_limit_s() == pytest.approx(0.01)
    assert LinkSpec(rate_bps=8e6).queue_limit_s() == pytest.approx(0.05)
    assert LinkSpec().queue_limit_s() is None
