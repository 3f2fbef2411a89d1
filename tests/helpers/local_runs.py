"""Record what a client runs on its own device: the layer lists of its runner's
``run_local`` hook (the documented hook for tests), in order."""

from __future__ import annotations

from typing import Any


def record_local_runs(client: Any) -> list[tuple[str, ...]]:
    """Wrap ``client.runner.run_local``; the returned list grows with each call."""
    ran: list[tuple[str, ...]] = []
    run = client.runner.run_local

    async def recording(layers: Any, tensors: Any, due: Any) -> Any:
        ran.append(tuple(layers))
        return await run(layers, tensors, due)

    client.runner.run_local = recording
    return ran
