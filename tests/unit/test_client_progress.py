"""ionn_net.client.progress: computing upload progress and publishing it."""

from __future__ import annotations

import asyncio

import pytest

from ionn_net.client import UploadProgress
from ionn_net.client.progress import ProgressFeed, upload_progress


def _progress(done: bool = False, sent: int = 0) -> UploadProgress:
    return UploadProgress(
        sent_bytes=sent,
        total_bytes=10,
        partitions_done=0,
        partitions_total=1,
        layers_ready=0,
        elapsed_s=0.0,
        bandwidth_mbit=1.0,
        done=done,
    )


def test_upload_progress_counts_held_blobs_whole_and_partial_ones_by_offset() -> None:
    blobs = {"a": ("da", 100), "b": ("db", 50), "c": ("dc", 30), "input": (None, 0)}
    p = upload_progress(
        [["input", "a"], ["b", "c"]],
        blobs,
        held={"da"},
        partial={"db": 20},
        partitions_done=1,
        layers_ready=2,
        elapsed_s=1.5,
        bandwidth_mbit=20.0,
        pacing_mbit=None,
        done=False,
    )
    assert (p.sent_bytes, p.total_bytes, p.partitions_total) == (120, 180, 2)
    assert p.fraction == pytest.approx(120 / 180)


async def test_feed_reaches_callback_iterators_and_waiters() -> None:
    seen: list[UploadProgress] = []
    feed = ProgressFeed(seen.append)
    got: list[int] = []

    async def read() -> None:
        async for event in feed.events():
            got.append(event.sent_bytes)

    reader = asyncio.create_task(read())
    await asyncio.sleep(0)  # the reader subscribes
    waiter = asyncio.create_task(feed.wait_done(5.0))
    feed.publish(_progress(sent=3))
    assert not waiter.done()
    feed.publish(_progress(done=True, sent=10))
    await asyncio.wait_for(reader, 5.0)  # the iterator ends at the event saying done
    await waiter
    assert got == [3, 10] and [p.sent_bytes for p in seen] == [3, 10]
    assert feed.last is not None and feed.last.done
    with pytest.raises(TimeoutError):
        await ProgressFeed(None).wait_done(0.01)


async def test_a_wait_that_times_out_says_how_far_the_upload_got() -> None:
    feed = ProgressFeed(None)
    with pytest.raises(TimeoutError, match="no progress reported yet"):
        await feed.wait_done(0.01)
    feed.publish(_progress(sent=300))
    with pytest.raises(TimeoutError, match=r"after 0\.01 s: 300 of \d+ bytes sent"):
        await feed.wait_done(0.01)
