"""Fixtures of the netem tests: loopback target servers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from netem_targets import Target


@pytest.fixture
async def echo_target() -> AsyncIterator[Target]:
    target = await Target(echo=True).start()
    yield target
    await target.close()


@pytest.fixture
async def sink_target() -> AsyncIterator[Target]:
    target = await Target(echo=False).start()
    yield target
    await target.close()
