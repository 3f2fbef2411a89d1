"""ionn_net.aio over real loopback sockets: messages, multiplexing, priorities, handler errors."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from ionn_net.aio import (
    AioConnection,
    ConnectionClosedError,
    PacingConfig,
    Server,
    ServerStream,
    StreamResetError,
    TransportOptions,
    connect,
    serve,
)
from ionn_net.config import Limits
from ionn_net.proto import Codec, ErrorCode, UsageError

BOTH_LOOPS = {"test_echo_small_large_and_empty_bodies"}
MIB = 1 << 20


async def _echo(stream: ServerStream) -> None:
    """Echo the body; 'upload' heads answer with the SHA-256 of the body instead."""
    head = stream.head
    if head.get("m") == "upload":
        digest = hashlib.sha256()
        total = 0
        async for chunk in stream:
            digest.update(chunk)
            total += len(chunk)
            if head.get("slow"):
                await asyncio.sleep(0.002)  # a slow consumer: credit comes back slowly
        await stream.respond({"m": "upload_ok", "sha256": digest.hexdigest(), "size": total})
        return
    if head.get("m") == "fail":
        raise RuntimeError("handler failure on purpose")
    if head.get("m") == "no_answer":
        await stream.read_body()
        return
    body = await stream.read_body()
    codec = Codec(head["codec"]) if "codec" in head else None
    await stream.respond(
        {"m": "echo", "body_len": len(body)} if body else {"m": "echo"}, body, codec=codec
    )


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with serve(_echo, "127.0.0.1", 0) as srv:
        yield srv


@pytest.fixture
async def conn(server: Server) -> AsyncIterator[AioConnection]:
    async with connect("127.0.0.1", server.port) as c:
        yield c


async def test_echo_small_large_and_empty_bodies(conn: AioConnection) -> None:
    for size in (0, 1, 5000, 3 * MIB + 7):
        body = os.urandom(size)
        head, echoed = await conn.request({"m": "echo"}, body)
        assert head["m"] == "echo"
        assert echoed == body
    assert conn.open_stream_count == 0


async def test_compressed_bodies_round_trip(conn: AioConnection) -> None:
    # Float data with structure compresses under the shuffle codec; both directions use it.
    values = np.round(np.random.default_rng(1).normal(size=300_000), 2).astype("<f4")
    body = values.tobytes()
    _head, echoed = await conn.request(
        {"m": "echo", "codec": int(Codec.ZSTD_SHUFFLE4)},
        body,
        codec=Codec.ZSTD_SHUFFLE4,
        element_width=4,
    )
    assert echoed == body
    # Fewer bytes crossed the socket than the two bodies (compression really happened).
    assert conn.protocol.bytes_written < len(body)
    assert conn.protocol.bytes_received < len(body)


async def test_await_connect_form_and_explicit_close(server: Server) -> None:
    conn = await connect("127.0.0.1", server.port)
    assert (await conn.request({"m": "echo"}, b"x"))[1] == b"x"
    await conn.aclose()
    assert conn.closed
    assert conn.error is None
    with pytest.raises(ConnectionClosedError):
        await conn.request({"m": "echo"}, b"y")


async def test_many_concurrent_queries_with_an_upload(server: Server) -> None:
    upload = os.urandom(4 * MIB) * 4  # 16 MiB, consumed slowly by the server
    async with connect("127.0.0.1", server.port) as conn:
        stream = await conn.open_stream(
            {"m": "upload", "slow": True, "body_len": len(upload)}, urgency=5, incremental=True
        )
        sender = asyncio.create_task(stream.send_data(upload, end_stream=True))
        await asyncio.sleep(0.05)
        payloads = [os.urandom(16 * 1024 + i) for i in range(40)]
        started = time.perf_counter()
        results = await asyncio.gather(*(conn.request({"m": "q"}, p) for p in payloads))
        queries_done = time.perf_counter() - started
        assert [body for _, body in results] == payloads
        # The upload is still running: queries did not queue behind its bytes.
        assert not sender.done()
        await sender
        head = await stream.receive_head()
        upload_total = time.perf_counter() - started
        assert head["sha256"] == hashlib.sha256(upload).hexdigest()
        assert queries_done < upload_total


async def test_open_stream_waits_for_a_free_slot() -> None:
    gate = asyncio.Event()
    active = 0
    peak = 0

    async def handler(stream: ServerStream) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await gate.wait()
        active -= 1
        await stream.respond({"m": "ok"})

    limits = Limits(max_concurrent_streams=2)
    async with (
        serve(handler, "127.0.0.1", 0, limits=limits) as srv,
        connect("127.0.0.1", srv.port) as conn,
    ):
        tasks = [asyncio.create_task(conn.request({"m": "q"})) for _ in range(5)]
        await asyncio.sleep(0.1)
        assert peak == 2  # the third request waits for a slot instead of being refused
        gate.set()
        results = await asyncio.gather(*tasks)
        assert [head["m"] for head, _ in results] == ["ok"] * 5


async def test_handler_errors_reset_the_stream(conn: AioConnection) -> None:
    with pytest.raises(StreamResetError) as info:
        await conn.request({"m": "fail"}, b"abc")
    assert info.value.error_code is ErrorCode.INTERNAL_ERROR
    assert info.value.remote
    with pytest.raises(StreamResetError) as info:
        await conn.request({"m": "no_answer"})
    assert info.value.error_code is ErrorCode.INTERNAL_ERROR
    # The connection survives stream errors.
    assert (await conn.request({"m": "echo"}, b"ok"))[1] == b"ok"


async def test_usage_errors_are_local(conn: AioConnection) -> None:
    with pytest.raises(UsageError):
        await conn.open_stream({"m": "echo"})  # a body without body_len (§10.1.2)
    stream = await conn.open_stream({"m": "echo", "body_len": 3})
    await stream.send_data(b"abc", end_stream=True)
    with pytest.raises(UsageError):
        await stream.send_data(b"more")
    assert (await stream.read_body()) == b"abc"


async def test_read_body_limit_resets(conn: AioConnection) -> None:
    stream = await conn.open_stream({"m": "echo", "body_len": 10_000})
    await stream.send_data(bytes(10_000), end_stream=True)
    with pytest.raises(StreamResetError) as info:
        await stream.read_body(limit=1000)
    assert info.value.error_code is ErrorCode.MESSAGE_TOO_LARGE
    assert (await conn.request({"m": "echo"}, b"next"))[1] == b"next"


def _ipv4_sysctl(name: str) -> str | None:
    try:
        with open(f"/proc/sys/net/ipv4/{name}") as f:
            return f.read().strip()
    except OSError:
        return None


def _may_set_cubic() -> bool:
    """cubic is in the kernel and this process may select it (root may pick any
    available algorithm, others only the allowed ones)."""
    if "cubic" not in (_ipv4_sysctl("tcp_available_congestion_control") or "").split():
        return False
    allowed = (_ipv4_sysctl("tcp_allowed_congestion_control") or "").split()
    return os.geteuid() == 0 or "cubic" in allowed


@pytest.mark.skipif(
    not _may_set_cubic(), reason="needs Linux with cubic available and allowed to this user"
)
async def test_paced_connection_runs_cubic_unpaced_keeps_the_system_default() -> None:
    paced = TransportOptions(pacing=PacingConfig(rate_bps=100e6))
    async with (
        serve(_echo, "127.0.0.1", 0) as srv,
        connect("127.0.0.1", srv.port, options=paced) as paced_conn,
        connect("127.0.0.1", srv.port) as plain_conn,
    ):
        assert (await paced_conn.request({"m": "echo"}, b"x"))[1] == b"x"
        assert paced_conn.protocol.applied.congestion == "cubic"
        assert plain_conn.protocol.applied.congestion == _ipv4_sysctl("tcp_congestion_control")


@pytest.mark.skipif(
    _ipv4_sysctl("tcp_congestion_control") is None, reason="needs Linux's TCP_CONGESTION"
)
async def test_a_refused_congestion_control_keeps_the_default_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    options = TransportOptions(congestion="no-such-cc")
    with caplog.at_level("WARNING", logger="ionn_net.aio"):
        async with (
            serve(_echo, "127.0.0.1", 0) as srv,
            connect("127.0.0.1", srv.port, options=options) as conn,
        ):
            assert (await conn.request({"m": "echo"}, b"x"))[1] == b"x"
            assert conn.protocol.applied.congestion == _ipv4_sysctl("tcp_congestion_control")
    assert "'no-such-cc' refused by the kernel" in caplog.text


async def test_server_applies_transport_options() -> None:
    options = TransportOptions(notsent_lowat=32 * 1024, write_high_water=8192, hol_budget_s=None)
    async with (
        serve(_echo, "127.0.0.1", 0, options=options) as srv,
        connect("127.0.0.1", srv.port, options=options) as conn,
    ):
        await conn.request({"m": "echo"}, b"x")
        assert conn.protocol.applied.nodelay
        assert conn.protocol.applied.notsent_lowat == 32 * 1024
        (server_conn,) = srv.connections
        assert server_conn.protocol.applied.notsent_lowat == 32 * 1024
        assert server_conn.protocol.transport is not None
        _low, high = server_conn.protocol.transport.get_write_buffer_limits()
        assert high == 8192
