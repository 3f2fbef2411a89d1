"""Pacing over a real socket: upload-urgency streams leave no faster than the paced rate."""

from __future__ import annotations

import asyncio
import os
import time

from ionn_net.aio import PacingConfig, ServerStream, TransportOptions, connect, serve
from ionn_net.proto import Codec

RATE_BPS = 16e6  # 2 MB/s: a 1 MB body needs about half a second


async def _sink(stream: ServerStream) -> None:
    total = 0
    async for chunk in stream:
        total += len(chunk)
    await stream.respond({"m": "ok", "n": total})


async def test_paced_upload_respects_the_rate_but_queries_are_not_paced() -> None:
    pacing = PacingConfig(rate_bps=RATE_BPS, gain=1.0)
    options = TransportOptions(pacing=pacing)
    body = bytes(1_000_000)
    async with (
        serve(_sink, "127.0.0.1", 0) as srv,
        connect("127.0.0.1", srv.port, options=options) as conn,
    ):
        assert conn.pacer is not None
        started = time.perf_counter()
        head, _ = await conn.request({"m": "up"}, body, urgency=5, incremental=True)
        paced_s = time.perf_counter() - started
        assert head["n"] == len(body)
        # No faster than the rate allows (less one burst); load can only make it slower.
        burst = max(2 * conn.pacer.chunk_size(conn.send_chunk), RATE_BPS / 8 * 0.006)
        assert paced_s >= (len(body) - burst) / (RATE_BPS / 8) * 0.95
        # Paced releases are a few milliseconds of link time each.
        assert conn.pacer.chunk_size(conn.send_chunk) == int(RATE_BPS / 8 * 0.003)
        # The same body at query urgency is not paced: it is much faster on loopback.
        started = time.perf_counter()
        head, _ = await conn.request({"m": "q"}, body, urgency=1)
        assert head["n"] == len(body)
        assert time.perf_counter() - started < paced_s / 2


async def test_the_pacer_tells_a_compressed_upload_from_the_queries_beside_it() -> None:
    # Compressed upload frames are shorter on the wire than the chunks the pacer released:
    # counted by release, the difference absorbed the queries' bytes, and a queue they
    # caused was blamed on the rate. The connection tells the pacer what paced streams
    # really wrote.
    pacing = PacingConfig(rate_bps=40e6, gain=1.0)
    options = TransportOptions(pacing=pacing)
    # four bits of entropy a byte: zstd halves it, and it still takes ~0.4 s paced
    upload = bytes(b & 15 for b in os.urandom(4_000_000))
    query = os.urandom(300_000)  # incompressible, unpaced
    async with (
        serve(_sink, "127.0.0.1", 0) as srv,
        connect("127.0.0.1", srv.port, options=options) as conn,
    ):
        assert conn.pacer is not None
        before = conn.pacer.unpaced_bytes
        up = asyncio.create_task(
            conn.request({"m": "up"}, upload, urgency=5, incremental=True, codec=Codec.ZSTD)
        )
        await asyncio.sleep(0.05)  # the upload is under way
        head, _ = await conn.request({"m": "q"}, query, urgency=1)
        assert head["n"] == len(query)
        assert not up.done()  # (the upload's next chunks charge what the query wrote)
        head, _ = await up
        assert head["n"] == len(upload)
        unpaced = conn.pacer.unpaced_bytes - before
        # the query's body and frame headers, plus a few control and header frames
        assert len(query) <= unpaced <= len(query) + 20_000
