"""The public accessors and hooks of ionn_net.aio over real loopback sockets: what servers,
clients and benchmarks use instead of reaching into private members.

``ServerStream.connection``, ``AioConnection.peer_settings``, ``on_stream_opened``, the
``serve(on_connection=...)`` hook, outbound reservations (§14.3) and the shared wait for send
room (a cancelled waiter must not cancel the others)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from ionn_net.aio import AioConnection, ServerStream, Stream, TransportOptions, connect, serve
from ionn_net.config import Limits, Setting

MIB = 1 << 20


async def _echo(stream: ServerStream) -> None:
    body = await stream.read_body()
    await stream.respond({"m": "echo"}, body)


async def test_server_stream_connection_is_the_accepted_connection() -> None:
    seen: list[AioConnection] = []
    accepted: list[AioConnection] = []

    async def handler(stream: ServerStream) -> None:
        seen.append(stream.connection)
        with pytest.raises(AttributeError):
            stream.connection = None  # type: ignore[misc,assignment]  (read-only)
        await _echo(stream)

    async with serve(handler, "127.0.0.1", 0, on_connection=accepted.append) as server:
        async with connect("127.0.0.1", server.port) as conn:
            for _ in range(2):
                head, body = await conn.request({"m": "x"}, b"abc")
                assert (head["m"], body) == ("echo", b"abc")
        assert len(accepted) == 1 and seen == [accepted[0], accepted[0]]
        assert isinstance(seen[0], AioConnection) and not seen[0].client


async def test_peer_settings_are_the_peers_and_read_only() -> None:
    server_limits = Limits(max_frame_size=1 << 17, max_message_size=64 * MIB)
    async with (
        serve(_echo, "127.0.0.1", 0, limits=server_limits) as server,
        connect("127.0.0.1", server.port) as conn,
    ):
        await conn.ping(5.0)  # the server's SETTINGS has arrived by its PING answer
        settings = conn.peer_settings
        assert isinstance(settings, Mapping)
        assert settings[Setting.MAX_FRAME_SIZE] == 1 << 17
        assert settings[Setting.MAX_MESSAGE_SIZE] == 64 * MIB
        with pytest.raises(TypeError):
            settings[Setting.MAX_FRAME_SIZE] = 1  # type: ignore[index]
        assert conn.peer_settings[Setting.MAX_FRAME_SIZE] == 1 << 17


async def test_on_stream_opened_sees_every_stream_we_open_before_it_is_written() -> None:
    async with (
        serve(_echo, "127.0.0.1", 0) as server,
        connect("127.0.0.1", server.port) as conn,
    ):
        opened: list[tuple[int, int]] = []

        def observe(stream: Stream) -> None:
            assert stream.connection is conn
            opened.append((stream.id, conn.protocol.headers_sent_own))

        conn.on_stream_opened = observe
        for _ in range(3):
            await conn.request({"m": "x"}, b"1")
        assert [sid for sid, _ in opened] == [1, 3, 5]
        # Called when the HEADERS is queued, before the writer wrote it.
        assert all(written < sid for sid, written in opened)


async def test_on_connection_runs_at_accept_even_if_the_peer_sends_nothing() -> None:
    accepted: list[AioConnection] = []
    calls: list[str] = []

    async def handler(stream: ServerStream) -> None:
        calls.append("stream")
        await _echo(stream)

    async with serve(handler, "127.0.0.1", 0, on_connection=accepted.append) as server:
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for _ in range(100):
            if accepted:
                break
            await asyncio.sleep(0.01)
        assert len(accepted) == 1 and calls == []  # no preface, no stream: still reported
        writer.close()


async def test_reserved_room_counts_as_outbound_until_the_body_is_queued() -> None:
    cap = 1 * MIB
    limits = Limits(max_outbound_bytes=cap)
    results: dict[str, Any] = {}

    async def handler(stream: ServerStream) -> None:
        conn = stream.connection
        await stream.read_body()
        results["before"] = conn.outbound_bytes
        assert await stream.reserve_outbound(600_000, timeout=1.0)
        results["reserved"] = conn.outbound_bytes
        # Another 600 kB would pass the 1 MiB cap: refused within the timeout.
        results["second"] = await stream.reserve_outbound(600_000, timeout=0.2)
        await stream.respond({"m": "big"}, b"\x01" * 600_000)
        results["after_send"] = conn.outbound_bytes

    async with (
        serve(handler, "127.0.0.1", 0, limits=limits) as server,
        connect("127.0.0.1", server.port) as conn,
    ):
        head, body = await conn.request({"m": "x"}, b"q")
        assert head["m"] == "big" and len(body) == 600_000
        (server_conn,) = server.connections
        for _ in range(100):
            if server_conn.outbound_bytes == 0:
                break
            await asyncio.sleep(0.01)
        assert server_conn.outbound_bytes == 0
    assert results["before"] == 0
    assert results["reserved"] >= 600_000
    assert results["second"] is False
    assert results["after_send"] <= 600_000  # the body left the reservation, not doubled


async def test_a_cancelled_sender_does_not_cancel_others_waiting_for_room() -> None:
    """Two uploads wait for send room on one connection; cancelling one leaves the other
    waiting, and it completes once the server reads."""
    release = asyncio.Event()

    async def slow_reader(stream: ServerStream) -> None:
        await release.wait()
        await _echo(stream)

    options = TransportOptions(send_chunk=64 * 1024)
    async with (
        serve(slow_reader, "127.0.0.1", 0) as server,
        connect("127.0.0.1", server.port, options=options) as conn,
    ):
        body = b"\x02" * (3 * MIB)  # beyond the 1 MiB stream credit: blocks on room
        victim = asyncio.create_task(conn.request({"m": "a"}, body))
        survivor = asyncio.create_task(conn.request({"m": "b"}, body))
        await asyncio.sleep(0.5)
        assert not victim.done() and not survivor.done()
        victim.cancel()
        await asyncio.sleep(0.2)
        assert not survivor.done(), survivor
        release.set()
        head, echoed = await asyncio.wait_for(survivor, 20)
        assert head["m"] == "echo" and echoed == body
        with pytest.raises(asyncio.CancelledError):
            await victim
