"""Event-loop selection: uvloop when installed, unless opted out.

The loop is chosen when it is created, so the choice lives here rather than in ``connect()``
(a coroutine runs on whatever loop is already running). ``run(main)`` and ``new_event_loop()``
use uvloop when ``uvloop=True`` (the default), the package is importable and the environment
variable ``IONN_NET_NO_UVLOOP`` is not set to a true value ("1", "true", "yes").
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["ENV_NO_UVLOOP", "loop_factory", "new_event_loop", "run", "uvloop_wanted"]

ENV_NO_UVLOOP = "IONN_NET_NO_UVLOOP"
_T = TypeVar("_T")


def uvloop_wanted(requested: bool = True) -> bool:
    """True when uvloop should be used: requested, not opted out by env, and importable."""
    if not requested:
        return False
    if os.environ.get(ENV_NO_UVLOOP, "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        importlib.import_module("uvloop")
    except ImportError:
        return False
    return True


def loop_factory(uvloop: bool = True) -> Callable[[], asyncio.AbstractEventLoop]:
    """A zero-argument loop factory for ``asyncio.Runner`` honouring :func:`uvloop_wanted`."""
    if uvloop_wanted(uvloop):
        module: Any = importlib.import_module("uvloop")
        factory: Callable[[], asyncio.AbstractEventLoop] = module.new_event_loop
        return factory
    return asyncio.new_event_loop


def new_event_loop(uvloop: bool = True) -> asyncio.AbstractEventLoop:
    """Create (not install) an event loop, uvloop when wanted."""
    return loop_factory(uvloop)()


def run(main: Coroutine[Any, Any, _T], *, uvloop: bool = True, debug: bool | None = None) -> _T:
    """Like ``asyncio.run`` but on uvloop when wanted."""
    with asyncio.Runner(loop_factory=loop_factory(uvloop), debug=debug) as runner:
        return runner.run(main)
