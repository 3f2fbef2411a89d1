"""The client's upload progress: one :class:`~ionn_net.client.types.UploadProgress` computed
from the upload's state (:func:`upload_progress`, pure) and published to the application
(:class:`ProgressFeed`: the latest event, a callback, async iterators, waiters).

The upload session computes and publishes events (on the event loop); the application
reads them through :class:`~ionn_net.client.OffloadClient`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping

from ionn_net.client.staged import StagedLayer
from ionn_net.client.types import UploadProgress

__all__ = ["ProgressFeed", "upload_progress"]


def upload_progress(
    partitions: Iterable[Iterable[str]],
    layer_blob: Mapping[str, tuple[str | None, int]],
    held: Collection[str],
    partial: Mapping[str, int],
    *,
    partitions_done: int,
    layers_ready: int,
    elapsed_s: float,
    bandwidth_mbit: float,
    pacing_mbit: float | None,
    done: bool,
    staged: Mapping[str, StagedLayer] | None = None,
    layers_base: Collection[str] = (),
) -> UploadProgress:
    """Bytes planned and sent so far: a blob the server holds counts whole, a partly sent
    one by its offset. A layer sent as stages (§10.12) counts each stage, whole once the
    server holds it or the exact blob it makes; a layer at base precision that no
    partition names (its base went up before a re-plan or a reconnect) counts its
    refinement."""
    parts = [list(p) for p in partitions]
    total = sent = 0
    planned = [n for p in parts for n in p]
    refining = sorted(set(layers_base) - set(planned))
    for name, first in [(n, 0) for n in planned] + [(n, 1) for n in refining]:
        digest, size = layer_blob[name]
        layer = None if staged is None else staged.get(name)
        units = (
            [(digest, size)]
            if layer is None
            else [(d, len(b)) for d, b in zip(layer.digests, layer.data, strict=True)][first:]
        )
        for unit, n in units:
            total += n
            whole = unit in held or (layer is not None and layer.blob in held)
            sent += n if whole else int(partial.get(unit or "", 0))
    return UploadProgress(
        sent_bytes=sent,
        total_bytes=total,
        partitions_done=partitions_done,
        partitions_total=len(parts),
        layers_ready=layers_ready,
        elapsed_s=elapsed_s,
        bandwidth_mbit=bandwidth_mbit,
        pacing_mbit=pacing_mbit,
        done=done,
        layers_base=len(layers_base),
    )


class ProgressFeed:
    """Publishes progress events: ``last``, the callback, every :meth:`events` iterator (a
    bounded queue each: a reader that falls 1024 events behind misses some) and
    :meth:`wait_done`."""

    def __init__(self, callback: Callable[[UploadProgress], None] | None) -> None:
        self.last: UploadProgress | None = None
        self._callback = callback
        self._queues: list[asyncio.Queue[UploadProgress]] = []
        self._done = asyncio.Event()

    def publish(self, progress: UploadProgress) -> None:
        self.last = progress
        if progress.done:
            self._done.set()
        if self._callback is not None:
            self._callback(progress)
        for queue in self._queues:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(progress)

    async def events(self) -> AsyncIterator[UploadProgress]:
        """Events from now on, until the one that says the upload is done."""
        queue: asyncio.Queue[UploadProgress] = asyncio.Queue(maxsize=1024)
        self._queues.append(queue)
        try:
            while True:
                event = await queue.get()
                yield event
                if event.done:
                    return
        finally:
            self._queues.remove(queue)

    async def wait_done(self, timeout: float | None = None) -> None:
        """Until an event has said the upload is done (TimeoutError after ``timeout``,
        saying how far the upload got: a stalled upload and a slow link look alike
        otherwise)."""
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"upload not done after {timeout} s: {self.where()}") from None

    def where(self) -> str:
        """How far the upload got, from the latest event, on one line."""
        p = self.last
        if p is None:
            return "no progress reported yet"
        pacing = "unpaced" if p.pacing_mbit is None else f"paced at {p.pacing_mbit:.2f} Mbit/s"
        return (
            f"{p.sent_bytes} of {p.total_bytes} bytes sent, {p.partitions_done} of "
            f"{p.partitions_total} partitions done, {p.layers_ready} layers ready, "
            f"{p.elapsed_s:.1f} s in; link estimate {p.bandwidth_mbit:.2f} Mbit/s, {pacing}"
        )
