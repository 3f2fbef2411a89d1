"""ionn_net.aio lifecycles: cancellation -> RESET, GOAWAY drain, ping, keepalive, heartbeat."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
from tests.refpeer import RefPeer, SocketChannel

from ionn_net.aio import (
    ConnectionClosedError,
    ServerStream,
    StreamResetError,
    connect,
    serve,
)
from ionn_net.config import Limits
from ionn_net.proto import ErrorCode

BOTH_LOOPS = {"test_cancelling_a_request_resets_the_stream_at_the_peer"}


async def test_cancelling_a_request_resets_the_stream_at_the_peer() -> None:
    seen: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
    started = asyncio.Event()

    async def handler(stream: ServerStream) -> None:
        started.set()
        try:
            await stream.read_body()
        except StreamResetError as exc:
            seen.set_result(exc)
            raise

    async with serve(handler, "127.0.0.1", 0) as srv, connect("127.0.0.1", srv.port) as conn:
        stream = await conn.open_stream({"m": "q", "body_len": 1 << 20})
        await stream.send_data(b"partial")  # the rest never comes
        waiting = asyncio.create_task(stream.receive_head())
        await started.wait()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        exc = await asyncio.wait_for(seen, 5)
        assert isinstance(exc, StreamResetError)
        assert exc.error_code is ErrorCode.CANCEL
        assert exc.remote
        # Our side sees the stream as reset too, and the connection carries on.
        with pytest.raises(StreamResetError):
            await stream.send_data(b"more")
        await conn.ping()


async def test_cancelling_a_handler_task_resets_for_the_client() -> None:
    async def handler(stream: ServerStream) -> None:
        await asyncio.sleep(30)

    async with serve(handler, "127.0.0.1", 0) as srv, connect("127.0.0.1", srv.port) as conn:
        request = asyncio.create_task(conn.request({"m": "q"}))
        for _ in range(100):
            (server_conn,) = srv.connections
            if server_conn._tasks:
                break
            await asyncio.sleep(0.01)
        for task in list(server_conn._tasks):
            task.cancel()
        with pytest.raises(StreamResetError) as info:
            await asyncio.wait_for(request, 5)
        assert info.value.error_code is ErrorCode.CANCEL
        assert info.value.remote


async def test_goaway_drains_in_flight_and_refuses_new_streams() -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def handler(stream: ServerStream) -> None:
        entered.set()
        await release.wait()
        await stream.respond({"m": "done"}, b"payload")

    srv = await serve(handler, "127.0.0.1", 0)
    conn = await connect("127.0.0.1", srv.port)
    in_flight = asyncio.create_task(conn.request({"m": "slow"}))
    await entered.wait()
    srv.close()  # GOAWAY(last_stream_id=1), then drain
    # Opened (without yielding to the loop) before our side read the GOAWAY: refused,
    # safe to retry (§13.2).
    late = await conn.open_stream({"m": "late"}, end_stream=True)
    with pytest.raises(StreamResetError) as info:
        await asyncio.wait_for(late.receive_head(), 5)
    assert info.value.error_code is ErrorCode.REFUSED_STREAM
    for _ in range(200):
        if conn._goaway is not None:
            break
        await asyncio.sleep(0.01)
    with pytest.raises(ConnectionClosedError, match="GOAWAY"):
        await conn.open_stream({"m": "new"}, end_stream=True)
    assert not in_flight.done()
    release.set()
    head, body = await asyncio.wait_for(in_flight, 5)  # the accepted stream completes
    assert (head["m"], body) == ("done", b"payload")
    await asyncio.wait_for(srv.wait_closed(), 5)
    await asyncio.wait_for(conn.wait_closed(), 5)
    assert conn.error is None  # a graceful close


async def test_ping_measures_a_round_trip() -> None:
    async def handler(stream: ServerStream) -> None:
        await stream.respond({"m": "ok"})

    async with serve(handler, "127.0.0.1", 0) as srv, connect("127.0.0.1", srv.port) as conn:
        assert conn.rtt is None
        rtt = await conn.ping()
        assert 0 < rtt < 1.0
        assert conn.rtt == rtt


async def test_keepalive_pings_keep_an_idle_connection_alive() -> None:
    async def handler(stream: ServerStream) -> None:
        await stream.respond({"m": "ok"})

    limits = Limits(keepalive_interval_s=0.1, heartbeat_timeout_s=1.0)
    async with (
        serve(handler, "127.0.0.1", 0) as srv,
        connect("127.0.0.1", srv.port, limits=limits) as conn,
    ):
        await asyncio.sleep(0.6)
        assert conn.pings_acked >= 3  # the core's keepalive PINGs were answered
        assert not conn.closed
        assert (await conn.request({"m": "q"}))[0]["m"] == "ok"


async def test_unanswered_heartbeat_closes_with_timeout() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def mute_server() -> None:
        sock, _ = listener.accept()
        peer = RefPeer(SocketChannel(sock), client=False, timeout=2.0)
        peer.handshake(wait_ack=False)
        stop.wait(5)  # alive but silent: never answers PING
        sock.close()

    thread = threading.Thread(target=mute_server, daemon=True)
    thread.start()
    try:
        limits = Limits(keepalive_interval_s=0.1, heartbeat_timeout_s=0.3)
        conn = await connect("127.0.0.1", port, limits=limits)
        await asyncio.wait_for(conn.wait_closed(), 5)
        assert conn.error is not None
        assert conn.error.error_code is ErrorCode.TIMEOUT
        assert "heartbeat" in str(conn.error)
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 5)
        listener.close()


async def test_connect_to_nothing_fails_cleanly() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(ConnectionClosedError, match="cannot connect"):
        await connect("127.0.0.1", port)


async def test_close_with_an_error_code_fails_streams_at_once() -> None:
    seen: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def handler(stream: ServerStream) -> None:
        try:
            await stream.read_body()
        except ConnectionClosedError as exc:
            seen.set_result(exc)

    async with serve(handler, "127.0.0.1", 0) as srv:
        conn = await connect("127.0.0.1", srv.port)
        stream = await conn.open_stream({"m": "q", "body_len": 10})
        waiting = asyncio.create_task(stream.receive_head())
        await asyncio.sleep(0.05)
        conn.close(ErrorCode.INTERNAL_ERROR, "giving up")
        with pytest.raises(ConnectionClosedError) as info:
            await asyncio.wait_for(waiting, 5)
        assert info.value.error_code is ErrorCode.INTERNAL_ERROR
        await asyncio.wait_for(conn.wait_closed(), 5)
        # The peer learns the code from our GOAWAY (§5.2).
        exc = await asyncio.wait_for(seen, 5)
        assert isinstance(exc, ConnectionClosedError)
        assert exc.error_code is ErrorCode.INTERNAL_ERROR
        assert exc.remote
