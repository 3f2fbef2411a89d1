"""Backpressure in ionn_net.aio: a peer that stops reading, and read-side pausing."""

from __future__ import annotations

import asyncio
import os
import socket
import threading

from tests.refpeer import RefPeer, S, SocketChannel

from ionn_net.aio import ConnectionClosedError, ServerStream, TransportOptions, connect, serve
from ionn_net.config import Limits
from ionn_net.proto import ErrorCode

MIB = 1 << 20
CAP = 256 * 1024


async def test_a_peer_that_stops_reading_cannot_make_us_buffer() -> None:
    outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    body = bytes(64 * MIB)

    async def handler(stream: ServerStream) -> None:
        try:
            await stream.respond({"m": "big"}, body)
        except ConnectionClosedError as exc:
            outcome.set_result(exc)
            raise
        outcome.set_result(None)

    limits = Limits(max_outbound_bytes=CAP)
    options = TransportOptions(stall_timeout_s=0.5)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)  # fills quickly
    stop = threading.Event()
    async with serve(handler, "127.0.0.1", 0, limits=limits, options=options) as srv:
        await asyncio.to_thread(sock.connect, ("127.0.0.1", srv.port))

        def greedy_mute_client() -> None:
            # Grants far more credit than the server may queue, then never reads again.
            big = {S.INITIAL_STREAM_CREDIT: 2**31 - 1, S.INITIAL_CONNECTION_CREDIT: 2**31 - 1}
            peer = RefPeer(SocketChannel(sock), client=True, settings=big, timeout=5.0)
            peer.handshake()
            peer.open_stream({"m": "download"}, end_stream=True)
            stop.wait(10)

        thread = threading.Thread(target=greedy_mute_client, daemon=True)
        thread.start()
        peak = 0
        try:
            for _ in range(1000):  # sample the server's queue while it is stuck
                for conn in srv.connections:
                    peak = max(peak, conn.protocol.outbound_bytes)
                if outcome.done():
                    break
                await asyncio.sleep(0.005)
            exc = await asyncio.wait_for(outcome, 5)
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 5)
            sock.close()
    assert isinstance(exc, ConnectionClosedError)
    assert exc.error_code is ErrorCode.TIMEOUT
    assert "peer stopped reading" in str(exc)
    # Core + transport never held more than the cap plus one frame of slack.
    assert 0 < peak <= CAP + 64 * 1024


async def test_many_streams_answering_a_mute_peer_stay_within_the_outbound_cap() -> None:
    """The cap bounds the connection as a whole: 100 handlers answering a peer that never
    reads, all at once, queue no more than the cap between them (25 MiB of answers; each
    stream's own limit of two send chunks would let them queue all of it)."""
    answered = 0
    body = bytes(256 * 1024)  # 25 MiB in all: far more than the socket buffers take

    async def handler(stream: ServerStream) -> None:
        nonlocal answered
        await stream.respond({"m": "r"}, body)
        answered += 1

    limits = Limits(max_outbound_bytes=CAP)
    options = TransportOptions(stall_timeout_s=30.0)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)  # fills quickly
    stop = threading.Event()
    async with serve(handler, "127.0.0.1", 0, limits=limits, options=options) as srv:
        await asyncio.to_thread(sock.connect, ("127.0.0.1", srv.port))

        def mute_client() -> None:
            peer = RefPeer(SocketChannel(sock), client=True, timeout=5.0)
            peer.handshake()
            for _ in range(100):
                peer.open_stream({"m": "q"}, end_stream=True)
            stop.wait(10)

        thread = threading.Thread(target=mute_client, daemon=True)
        thread.start()
        peak = 0
        try:
            for _ in range(200):  # 1 s: sample the server's queue while it is stuck
                for conn in srv.connections:
                    peak = max(peak, conn.protocol.outbound_bytes)
                await asyncio.sleep(0.005)
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 5)
            sock.close()
    assert answered < 100  # most handlers were still waiting for room
    assert 0 < peak <= CAP + 64 * 1024, peak


async def test_reading_pauses_while_the_application_holds_data() -> None:
    gate = asyncio.Event()
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def handler(stream: ServerStream) -> None:
        await gate.wait()
        received.set_result(await stream.read_body())
        await stream.respond({"m": "ok"})

    options = TransportOptions(read_budget=128 * 1024, read_buffer_size=64 * 1024)
    body = os.urandom(MIB)
    async with (
        serve(handler, "127.0.0.1", 0, options=options) as srv,
        connect("127.0.0.1", srv.port) as conn,
    ):
        stream = await conn.open_stream({"m": "up", "body_len": len(body)})
        sending = asyncio.create_task(stream.send_data(body, end_stream=True))
        (server_conn,) = srv.connections
        for _ in range(200):
            if server_conn.protocol.reading_paused:
                break
            await asyncio.sleep(0.01)
        transport = server_conn.protocol.transport
        assert transport is not None
        assert server_conn.protocol.reading_paused
        assert not transport.is_reading()
        held = server_conn.protocol.unconsumed_bytes
        assert 128 * 1024 < held <= 128 * 1024 + 64 * 1024
        await asyncio.sleep(0.1)
        assert server_conn.protocol.unconsumed_bytes == held  # nothing more was read
        gate.set()
        assert await asyncio.wait_for(received, 5) == body
        await asyncio.wait_for(sending, 5)
        assert (await stream.receive_head())["m"] == "ok"
        assert not server_conn.protocol.reading_paused
        assert server_conn.protocol.unconsumed_bytes == 0
