"""Pacing over a real socket: upload-urgency streams leave no faster than the paced rate."""

from __future__ import annotations

import time

from ionn_net.aio import PacingConfig, ServerStream, TransportOptions, connect, serve

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
