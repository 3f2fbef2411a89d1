"""An emulated device of a given speed, whatever this host's: ``ClientConfig(slowdown=...)``
stretches what the host takes, so a fixed slowdown made a different device on every
machine, and the tests whose premise is that offloading pays over their link (a 96x96
narrow MobileNetV2 over 4 Mbit/s: its input alone takes 220 ms) lost it on a host three
times faster than the one they were written on."""

from __future__ import annotations

from typing import Any


def slowdown_for(model: Any, device_ms: float) -> float:
    """The ``ClientConfig.slowdown`` that makes a query of ``model`` take about
    ``device_ms`` on the emulated device: the whole model timed here as the client times
    it (one compiled slice, the median of five calls), never below 1."""
    from ionn_net.executor import Executor
    from ionn_net.measure import time_slice

    executor = Executor.from_model(model)
    whole = executor.prepare(executor.graph.order)
    host_ms = time_slice(whole, whole.zero_feeds(), runs=5)
    return max(1.0, device_ms / max(host_ms, 1e-3))
