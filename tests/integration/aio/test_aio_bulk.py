"""The bulk paths of ionn_net.aio on real sockets: vectored writes of frame batches
(``writelines``: writev on uvloop, joined by asyncio), DATA runs delivered as one chunk per
read, and the receive buffer growing under bulk reads."""

from __future__ import annotations

import asyncio
import hashlib
import os

from ionn_net.aio import ServerStream, TransportOptions, connect, serve
from ionn_net.config import Limits

BOTH_LOOPS = {"test_a_bulk_body_arrives_byte_exact_in_large_chunks"}
MIB = 1 << 20


async def test_a_bulk_body_arrives_byte_exact_in_large_chunks() -> None:
    sizes: list[int] = []
    buffers: list[int] = []

    async def handler(stream: ServerStream) -> None:
        digest = hashlib.sha256()
        async for chunk in stream:
            sizes.append(len(chunk))
            digest.update(chunk)
        for conn in srv.connections:
            buffers.append(len(conn.protocol.get_buffer(-1)))
        await stream.respond({"m": "ok", "sha": digest.hexdigest()})

    body = os.urandom(24 * MIB)
    async with serve(handler, "127.0.0.1", 0) as srv, connect("127.0.0.1", srv.port) as conn:
        assert conn.protocol.writes_vectored  # plain TCP: batches go out as vectors
        stream = await conn.open_stream({"m": "up", "body_len": len(body)}, urgency=5)
        # Pieces of odd sizes, from a read-only buffer the writer references.
        view = memoryview(body)
        for off in range(0, len(body), 3 * MIB + 7):
            piece = view[off : off + 3 * MIB + 7]
            await stream.send_data(piece, end_stream=off + len(piece) == len(body))
        head = await asyncio.wait_for(stream.receive_head(), 30)
    assert head["sha"] == hashlib.sha256(body).hexdigest()
    # Frames are at most 32 KiB; chunks span whole runs of them (one per read, mostly).
    assert max(sizes) > 32 * 1024
    assert len(sizes) < len(body) // (32 * 1024)
    # The receive buffer grew from 64 KiB, and not past read_buffer_size.
    assert buffers and 64 * 1024 < buffers[0] <= TransportOptions().read_buffer_size


async def test_a_small_read_buffer_option_stays_small() -> None:
    buffers: list[int] = []

    async def handler(stream: ServerStream) -> None:
        body = await stream.read_body()
        for conn in srv.connections:
            buffers.append(len(conn.protocol.get_buffer(-1)))
        await stream.respond({"m": "ok", "n": len(body)})

    options = TransportOptions(read_buffer_size=16 * 1024)
    async with (
        serve(handler, "127.0.0.1", 0, options=options) as srv,
        connect("127.0.0.1", srv.port) as conn,
    ):
        head, _ = await conn.request({"m": "up"}, os.urandom(2 * MIB), urgency=5)
    assert head["n"] == 2 * MIB
    assert buffers == [16 * 1024]


async def test_a_stream_reset_before_its_headers_left_does_not_block_the_next() -> None:
    async def handler(stream: ServerStream) -> None:
        await stream.respond({"m": "ok", "got": stream.head["m"]})

    limits = Limits()
    async with (
        serve(handler, "127.0.0.1", 0, limits=limits) as srv,
        connect("127.0.0.1", srv.port, limits=limits) as conn,
    ):
        first = await conn.open_stream({"m": "first"}, end_stream=True)
        first.reset()  # same loop turn: its HEADERS never left, the peer never sees it
        second = await asyncio.wait_for(conn.open_stream({"m": "second"}, end_stream=True), 5)
        head = await asyncio.wait_for(second.receive_head(), 5)
    assert head["got"] == "second"
