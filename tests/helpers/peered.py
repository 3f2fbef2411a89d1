"""Edge servers that are each other's peers (protocol.md §15.1), for the handoff tests.

:func:`peered_servers` runs two or more :class:`~ionn_net.server.EdgeServer` on loopback, each
in its own thread (:func:`~tests.helpers.edge_server.running_server`), every one listing every
other in its peer table under the address clients use (the same loopback address here).
:func:`dense_model` is a three-layer Dense manifest written with the reference peer's builder,
with blobs large enough to cross several pulls.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import socket
import struct
from collections.abc import Iterator
from typing import Any

from tests.helpers.edge_server import running_server
from tests.refpeer.manifest import Manifest, Weight


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def name(port: int) -> str:
    """A server as clients (and peers) name it (§15.1)."""
    return f"127.0.0.1:{port}"


@contextlib.contextmanager
def peered_servers(
    n: int = 2, *, handoff: dict[str, Any] | None = None, **config: Any
) -> Iterator[list[Any]]:
    """``n`` started servers, each the peer of every other; ``handoff`` and ``config`` are
    HandoffConfig and ServerConfig fields for all of them (``peers`` is filled in)."""
    from ionn_net.handoff import HandoffConfig
    from ionn_net.server import ServerConfig

    ports = [free_port() for _ in range(n)]
    peers = {name(p): name(p) for p in ports}
    with contextlib.ExitStack() as stack:
        servers = []
        for port in ports:
            hc = HandoffConfig(peers=peers, **(handoff or {}))
            cfg = ServerConfig(handoff=hc, **config)
            servers.append(stack.enter_context(running_server(cfg, port=port)))
        yield servers


@contextlib.contextmanager
def server_peering(
    port: int, *, handoff: dict[str, Any] | None = None, **config: Any
) -> Iterator[Any]:
    """One started server whose only peer is whatever listens on ``port`` (e.g. the
    reference peer playing a previous server)."""
    from ionn_net.handoff import HandoffConfig
    from ionn_net.server import ServerConfig

    hc = HandoffConfig(peers={name(port): name(port)}, **(handoff or {}))
    with running_server(ServerConfig(handoff=hc, **config)) as server:
        yield server


def _floats(rng: random.Random, count: int) -> bytes:
    return struct.pack(f"<{count}f", *(rng.uniform(-0.1, 0.1) for _ in range(count)))


def dense_model(seed: int = 0, width: int = 256) -> tuple[bytes, str, dict[str, bytes], Manifest]:
    """x(64) -> Dense(width) -> Dense(width) -> Dense(8): (manifest body, digest, blobs by
    digest in layer order, builder). At width 256 the middle blob is 263 KB."""
    rng = random.Random(seed)
    m = Manifest(f"dense{seed}")

    def dense(layer: str, units: int, fan_in: int, inbound: str, **config: Any) -> str:
        weights = [Weight([fan_in, units], _floats(rng, fan_in * units))]
        weights.append(Weight([units], _floats(rng, units)))
        return m.layer(layer, "Dense", {"units": units, **config}, [inbound], weights)

    x = m.input("x", [64])
    h1 = dense("d1", width, 64, x, activation="relu")
    h2 = dense("d2", width, width, h1, activation="relu")
    out = dense("d3", 8, width, h2)
    body = m.body([out])
    return body, hashlib.sha256(body).hexdigest(), dict(m.blobs), m
