"""The operator's HTTP port (ionn_net.ops.http): routes, readiness, bounds, exposition."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ionn_net.ops.http import OpsEndpoint

pytestmark = pytest.mark.timeout(60)


class State:
    ready = False
    refreshed = 0


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[OpsEndpoint, CollectorRegistry, type[State]]]:
    registry = CollectorRegistry()
    Counter("ionn_test_events", "Test events.", registry=registry).inc(3)
    state = State
    state.ready, state.refreshed = False, 0

    def refresh() -> None:
        state.refreshed += 1

    ep = OpsEndpoint(
        registry,
        lambda: (state.ready, "" if state.ready else "starting"),
        refresh=refresh,
        max_connections=4,
        read_timeout_s=0.5,
        write_timeout_s=1.0,
    )
    await ep.start("127.0.0.1", 0)
    yield ep, registry, state
    await ep.close()


async def get(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


def request(method: str, path: str, accept: str = "") -> bytes:
    extra = f"Accept: {accept}\r\n" if accept else ""
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


async def test_liveness_is_200_and_readiness_follows_the_server(endpoint: tuple) -> None:
    ep, _, state = endpoint
    assert (await get(ep.port, request("GET", "/v2/health/live")))[0] == 200
    status, _, body = await get(ep.port, request("GET", "/v2/health/ready"))
    assert (status, body) == (503, b"not ready: starting\n")
    state.ready = True
    assert (await get(ep.port, request("GET", "/v2/health/ready")))[0] == 200


async def test_unknown_paths_are_404_other_methods_405_garbage_400(endpoint: tuple) -> None:
    ep, _, _ = endpoint
    assert (await get(ep.port, request("GET", "/v2/health")))[0] == 404
    assert (await get(ep.port, request("GET", "/metrics/../x")))[0] == 404
    assert (await get(ep.port, request("POST", "/metrics")))[0] == 405
    assert (await get(ep.port, b"hello\r\n\r\n"))[0] == 400


async def test_metrics_are_prometheus_client_exposition(endpoint: tuple) -> None:
    ep, _, state = endpoint
    status, headers, body = await get(ep.port, request("GET", "/metrics?x=1"))
    assert status == 200 and headers["content-type"].startswith("text/plain; version=")
    samples = {
        s.name: s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples
    }
    assert samples["ionn_test_events_total"] == 3.0
    assert state.refreshed == 1  # the gauges were sampled for this scrape
    status, headers, body = await get(
        ep.port, request("GET", "/metrics", "application/openmetrics-text; version=1.0.0")
    )
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    status, headers, body = await get(ep.port, request("HEAD", "/metrics"))
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


async def test_connections_beyond_the_cap_are_closed_and_silent_ones_time_out(
    endpoint: tuple,
) -> None:
    ep, _, _ = endpoint
    silent = [await asyncio.open_connection("127.0.0.1", ep.port) for _ in range(4)]
    await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection("127.0.0.1", ep.port)
    writer.write(request("GET", "/v2/health/live"))
    with pytest.raises(ConnectionError):  # closed unanswered (reset)
        assert await asyncio.wait_for(reader.read(), 2) == b""
        raise ConnectionResetError
    writer.close()
    await asyncio.sleep(0.7)  # past read_timeout_s: the silent ones were dropped
    for r, w in silent:
        with pytest.raises(ConnectionError):
            assert await asyncio.wait_for(r.read(), 2) == b""
            raise ConnectionResetError
        w.close()
    assert (await get(ep.port, request("GET", "/v2/health/live")))[0] == 200


def _drain_socket(sock: socket.socket) -> tuple[int, bool]:
    """Read ``sock`` to its end: (bytes read, whether it was reset)."""
    sock.settimeout(5)
    got = 0
    try:
        while chunk := sock.recv(1 << 16):
            got += len(chunk)
    except ConnectionError:
        return got, True
    finally:
        sock.close()
    return got, False


async def test_a_slow_reader_neither_stalls_the_loop_nor_keeps_its_slot(endpoint: tuple) -> None:
    ep, registry, _ = endpoint
    big = Counter("ionn_test_big", "Many series.", ["i"], registry=registry)
    for i in range(8000):  # ~600 KB: more than the socket buffers (64 KiB send buffer)
        big.labels(i=str(i)).inc()
    slow = []
    for _ in range(3):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", ep.port))
        sock.sendall(request("GET", "/metrics"))
        slow.append(sock)
    loop = asyncio.get_running_loop()
    worst, last, end = 0.0, loop.time(), loop.time() + 2.0
    while loop.time() < end:  # the loop keeps ticking while the slow readers read nothing
        await asyncio.sleep(0.01)
        now = loop.time()
        worst, last = max(worst, now - last), now
        if now > end - 1.0:
            assert (await get(ep.port, request("GET", "/v2/health/live")))[0] == 200
    assert worst < 1.0, f"the event loop stalled {worst:.3f} s"  # a blocking write: for ever
    deadline = loop.time() + 10.0
    while ep.active and loop.time() < deadline:  # write_timeout_s frees the slots
        await asyncio.sleep(0.05)
    assert ep.active == 0
    whole = len(generate_latest(registry))
    for got, _reset in await asyncio.gather(*(asyncio.to_thread(_drain_socket, s) for s in slow)):
        # cut at the write deadline: what the kernel had taken arrives, the rest never does
        assert got < whole, (got, whole)
