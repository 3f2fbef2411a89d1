"""Receive-window auto-tuning on real sockets: windows grow while the application keeps up,
never beyond ``Limits.max_stream_credit``, and not at all for a slow reader."""

from __future__ import annotations

import asyncio
import os

from ionn_net.aio import ServerStream, connect, serve
from ionn_net.config import Limits

KIB = 1024
INITIAL = 64 * KIB  # the smallest INITIAL_STREAM_CREDIT (§11): growth starts early
CAP = 1024 * KIB


async def _upload(
    port: int, body: bytes, piece: int, limits: Limits
) -> tuple[dict[str, object], int]:
    """Send ``body`` on one stream; returns the answer and the largest send credit seen."""
    most = 0
    async with connect("127.0.0.1", port, limits=limits) as conn:
        stream = await conn.open_stream({"m": "up", "body_len": len(body)}, urgency=5)
        for off in range(0, len(body), piece):
            most = max(most, conn.core.available_credit(stream.id))
            await stream.send_data(body[off : off + piece], end_stream=off + piece >= len(body))
        head = dict(await stream.receive_head())
    return head, most


async def _upload_recording_windows(
    body: bytes, piece: int, timeout: float, *, pause_s: float = 0.0
) -> tuple[dict[str, object], int, list[int]]:
    """Upload ``body`` to a server whose reader records its stream window after each
    chunk (and sleeps ``pause_s``); returns the answer, the largest send credit and the
    windows seen."""
    limits = Limits(initial_stream_credit=INITIAL, max_stream_credit=CAP)
    windows: list[int] = []

    async def handler(stream: ServerStream) -> None:
        total = 0
        async for chunk in stream:
            total += len(chunk)
            for conn in srv.connections:
                windows.append(conn.core.receive_windows(stream.id)[0])
            if pause_s:
                await asyncio.sleep(pause_s)
        await stream.respond({"m": "ok", "n": total})

    async with serve(handler, "127.0.0.1", 0, limits=limits) as srv:
        head, most = await asyncio.wait_for(_upload(srv.port, body, piece, Limits()), timeout)
    return head, most, windows


async def test_a_fast_reader_grows_the_window_up_to_the_cap() -> None:
    body = os.urandom(24 * 1024 * KIB)
    head, most_credit, windows = await _upload_recording_windows(body, 256 * KIB, 60)
    assert head["n"] == len(body)
    assert windows[0] == INITIAL
    assert INITIAL < max(windows) <= CAP  # grew, and never past the cap
    # What the sender was allowed ahead of the reader never exceeded the cap either.
    assert 0 < most_credit <= CAP


async def test_a_slow_reader_keeps_the_initial_window() -> None:
    body = os.urandom(384 * KIB)
    # the reader sleeps 50 ms per chunk: far slower than the link, 1.3 MB/s at most
    head, most_credit, windows = await _upload_recording_windows(body, 64 * KIB, 30, pause_s=0.05)
    assert head["n"] == len(body)
    assert windows and set(windows) == {INITIAL}
    assert most_credit <= INITIAL
