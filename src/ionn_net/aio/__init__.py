"""The asyncio layer of ionn_net: the only asyncio code of the protocol.

``connect()`` / ``serve()`` give :class:`AioConnection` objects whose streams
(:class:`Stream`, :class:`ServerStream`) send and receive messages over the sans-I/O core
(:mod:`ionn_net.proto`). ``run()`` starts an event loop (uvloop when installed).
"""

from __future__ import annotations

from ionn_net.aio.api import Server, connect, serve
from ionn_net.aio.connection import AioConnection, Handler, ServerStream, Stream
from ionn_net.aio.errors import ConnectionClosedError, StreamResetError
from ionn_net.aio.loop import ENV_NO_UVLOOP, loop_factory, new_event_loop, run, uvloop_wanted
from ionn_net.aio.options import TransportOptions
from ionn_net.aio.pacing import Pacer, PacingConfig, RateEstimator, TokenBucket
from ionn_net.aio.stream import BaseStream, StreamHost

__all__ = [
    "ENV_NO_UVLOOP",
    "AioConnection",
    "BaseStream",
    "ConnectionClosedError",
    "Handler",
    "Pacer",
    "PacingConfig",
    "RateEstimator",
    "Server",
    "ServerStream",
    "Stream",
    "StreamHost",
    "StreamResetError",
    "TokenBucket",
    "TransportOptions",
    "connect",
    "loop_factory",
    "new_event_loop",
    "run",
    "serve",
    "uvloop_wanted",
]
