"""Integration tests of ionn_net.aio run on uvloop (the production loop) when installed.

Modules may list test names in ``BOTH_LOOPS`` to run them on asyncio's default loop too.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Mapping

import pytest

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {}
    if HAVE_UVLOOP:
        import uvloop

        factories["uvloop"] = uvloop.new_event_loop
    both = getattr(getattr(item, "module", None), "BOTH_LOOPS", ())
    if not factories or getattr(item, "originalname", item.name) in both:
        factories["asyncio"] = asyncio.new_event_loop
    return factories
