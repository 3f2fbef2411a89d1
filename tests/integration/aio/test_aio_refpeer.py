"""The independent reference peer (tests/refpeer) against ionn_net.aio over real sockets.

The reference peer is blocking, so it runs in a worker thread while the asyncio side runs
in the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading

import numpy as np
import pytest
from tests.refpeer import Code, PeerClosed, RefPeer, SocketChannel
from tests.refpeer import Codec as RefCodec

from ionn_net.aio import ServerStream, connect, serve
from ionn_net.proto import Codec

MIB = 1 << 20


async def _echo(stream: ServerStream) -> None:
    body = await stream.read_body()
    codec = Codec(int(stream.head.get("codec", 0))) if stream.head.get("codec") else None
    reply = {"m": "echo", "n": len(body)}
    await stream.respond(reply, body, codec=codec, element_width=4)


def _floats(n: int) -> bytes:
    rng = np.random.default_rng(3)
    return np.maximum(rng.normal(0, 1, n // 4), 0).astype("<f4").tobytes()


@pytest.mark.parametrize("codec", [RefCodec.RAW, RefCodec.ZSTD, RefCodec.ZSTD_SHUFFLE4])
async def test_refpeer_client_against_serve_echo(codec: RefCodec) -> None:
    async with serve(_echo, "127.0.0.1", 0) as srv:

        def client() -> tuple[list[object], list[bytes]]:
            peer = RefPeer(SocketChannel.connect("127.0.0.1", srv.port), client=True)
            peer.handshake()
            body = os.urandom(MIB) if codec == RefCodec.RAW else _floats(MIB)
            heads, bodies = [], []
            for payload in (body, b"", b"tiny"):
                msg = peer.request({"m": "echo", "codec": int(codec)}, payload, codec=codec)
                heads.append(msg.head)
                bodies.append(msg.body)
                assert msg.body == payload
            peer.ping(b"refpeer1")  # answered by the core behind serve()
            peer.goaway(Code.NO_ERROR)
            peer.drain()  # our server drains and closes
            return heads, bodies

        heads, bodies = await asyncio.wait_for(asyncio.to_thread(client), 30)
    assert [h["n"] for h in heads] == [len(b) for b in bodies]  # type: ignore[index]


async def test_refpeer_multiplexes_streams_against_serve() -> None:
    release = asyncio.Event()

    async def handler(stream: ServerStream) -> None:
        body = await stream.read_body()
        if stream.head["m"] == "wait":
            await release.wait()
        await stream.respond({"m": "ok", "n": len(body)}, body)

    async with serve(handler, "127.0.0.1", 0) as srv:
        loop = asyncio.get_running_loop()

        def client() -> list[int]:
            peer = RefPeer(SocketChannel.connect("127.0.0.1", srv.port), client=True)
            peer.handshake()
            slow = peer.open_stream({"m": "wait"}, end_stream=True)
            fast = [peer.request({"m": "go"}, os.urandom(1000 + i)).body for i in range(5)]
            loop.call_soon_threadsafe(release.set)  # the first stream did not block the rest
            done = peer.read_message(slow)
            assert done.head["n"] == 0
            return [len(b) for b in fast]

        sizes = await asyncio.wait_for(asyncio.to_thread(client), 30)
    assert sizes == [1000 + i for i in range(5)]


async def test_aio_client_against_a_refpeer_server() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def server() -> None:
        sock, _ = listener.accept()
        peer = RefPeer(SocketChannel(sock), client=False, timeout=5.0)
        peer.handshake(wait_ack=False)
        for _ in range(2):
            msg = peer.accept_request()
            peer.send_message(msg.stream_id, {"m": "echo"}, msg.body, codec=RefCodec.ZSTD)
        with contextlib.suppress(PeerClosed):
            peer.drain()
        sock.close()

    thread = threading.Thread(target=server, daemon=True)
    thread.start()
    try:
        async with connect("127.0.0.1", port) as conn:
            body = _floats(MIB)
            head, echoed = await conn.request({"m": "echo"}, body)
            assert echoed == body
            assert head["body_len"] == len(body)
            head, echoed = await conn.request({"m": "echo"})
            assert echoed == b""
            assert await conn.ping() > 0
    finally:
        await asyncio.to_thread(thread.join, 10)
        listener.close()
