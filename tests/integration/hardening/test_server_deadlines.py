"""Two server limits of protocol.md §14 against a real EdgeServer and a raw peer on loopback.

* §14.4: the session deadline counts from the accept, whatever the peer sends meanwhile: a
  peer that completes the framing handshake, answers (and sends) PINGs but never says
  ``hello`` and never opens a stream is closed with TIMEOUT at the handshake deadline, not
  at the idle timeout.
* §14.3: finished results waiting to be written count against the outbound cap: a peer
  that asks for large results and never reads makes the server hold at most the cap, not
  one result per concurrent query, and the connection is closed once writes make no
  progress.

The peer is the reference peer (written from protocol.md, blocking) run in a worker thread
while the server runs on the test's event loop, where what it holds is read through the
public ``EdgeServer.connections`` / ``AioConnection.outbound_bytes``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from tests.helpers.manifests import ManifestBuilder
from tests.integration.hardening.tenant import Tenant
from tests.refpeer import Code, PeerClosed, RefPeer, SocketChannel
from tests.refpeer import wire as rw
from tests.refpeer.channels import PeerTimeout
from tests.refpeer.session import hello

from ionn_net.aio import connect
from ionn_net.config import Limits
from ionn_net.model.spec import canonical_json
from ionn_net.planner.costmodel import ServerCostModel
from ionn_net.server import EdgeServer, ServerConfig

pytestmark = pytest.mark.timeout(90)

MIB = 1 << 20


# -- §14.4 ------------------------------------------------------------------------------------


def _linger_without_hello(port: int, own_pings: bool, give_up_s: float) -> tuple[Any, float]:
    """Handshake, then only answer (and optionally send) PINGs until the server closes or
    ``give_up_s`` passes. Returns (the GOAWAY received or None, seconds since connecting)."""
    started = time.monotonic()
    peer = RefPeer(SocketChannel.connect("127.0.0.1", port), client=True, timeout=0.2)
    peer.handshake()
    n, last_ping = 0, 0.0
    while time.monotonic() - started < give_up_s and not peer.closed:
        if own_pings and time.monotonic() - last_ping >= 0.2:  # well inside the flood budget
            payload = b"alive%03d" % (n % 1000)
            n, last_ping = n + 1, time.monotonic()
            peer.pings.add(payload)
            peer.send_raw(rw.ping_frame(payload))
        try:
            peer.poll()  # answers the server's keepalive PINGs (§4.5)
        except PeerTimeout:
            continue
        except PeerClosed:
            break
    elapsed = time.monotonic() - started
    peer.channel.close()
    return peer.goaway_received, elapsed


@pytest.mark.parametrize("own_pings", [False, True], ids=["answers_pings", "sends_pings"])
async def test_s14_4_no_hello_means_closed_at_the_handshake_deadline_from_the_accept(
    own_pings: bool,
) -> None:
    limits = Limits(handshake_timeout_s=1.5, keepalive_interval_s=0.3, heartbeat_timeout_s=5.0)
    config = ServerConfig(limits=limits)
    async with EdgeServer(config=config, cost_model=ServerCostModel()) as server:
        goaway, elapsed = await asyncio.to_thread(
            _linger_without_hello, server.port, own_pings, 8.0
        )
        assert goaway is not None, f"still open after {elapsed:.1f} s without a session"
        assert goaway[1] == Code.TIMEOUT, goaway
        deadline = limits.handshake_timeout_s
        assert deadline - 0.2 <= elapsed < deadline + 2.0, elapsed
        # A client that does say hello in time keeps its connection past the deadline.
        async with connect("127.0.0.1", server.port, limits=limits) as conn:
            tenant = Tenant(conn)
            assert (await tenant.hello())["m"] == "welcome"
            await asyncio.sleep(deadline + 0.5)
            assert not conn.closed


# -- §14.3 ------------------------------------------------------------------------------------

#: UpSampling2D (16, 16) of a 32x32x4 input: a 16 KiB query whose result is 4 MiB.
IN_SHAPE = [32, 32, 4]
RESULT_BYTES = 512 * 512 * 4 * 4


def big_result_model() -> tuple[bytes, str]:
    builder = ManifestBuilder(name="upsample")
    x = builder.input("x", IN_SHAPE)
    out = builder.add("up", "UpSampling2D", {"size": [16, 16]}, [x])
    body = canonical_json(builder.obj([out]))
    return body, hashlib.sha256(body).hexdigest()


def _ask_and_never_read(port: int, queries: int) -> RefPeer:
    """Set the model up, then send ``queries`` queries and stop reading (the socket stays
    open). Credit is granted generously so that only the server's own cap holds it back."""
    big = {rw.S.INITIAL_STREAM_CREDIT: 2**31 - 1, rw.S.INITIAL_CONNECTION_CREDIT: 2**31 - 1}
    sock = socket.socket()  # a fixed small receive buffer: the kernel absorbs little
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect(("127.0.0.1", port))
    peer = RefPeer(SocketChannel(sock), client=True, settings=big, timeout=20.0)
    peer.handshake()
    (welcome,) = hello(peer)
    assert welcome.head["m"] == "welcome", welcome.head
    body, digest = big_result_model()
    ok = peer.request({"m": "manifest", "model": digest}, body)
    assert ok.head["m"] == "manifest_ok", ok.head
    ok = peer.request({"m": "load", "model": digest, "layers": ["up"], "prepare": [["up"]]})
    assert ok.head["m"] == "load_ok", ok.head
    x = np.random.default_rng(0).standard_normal([1, *IN_SHAPE]).astype("<f4").tobytes()
    desc = {"ref": "x:0", "dtype": "float32", "shape": [1, *IN_SHAPE], "nbytes": len(x)}
    for i in range(queries):
        head = {
            "m": "query",
            "model": digest,
            "qid": f"q{i}",
            "deadline_ms": 60_000,
            "run": ["up"],
            "tensors": [desc],
            "body_len": len(x),
        }
        sid = peer.open_stream(head, urgency=1)
        peer.send_body(sid, x)
    peer.flush()
    return peer


async def _peak_outbound(server: EdgeServer, seconds: float) -> int:
    peak = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max([peak, *(c.outbound_bytes for c in server.connections)])
        await asyncio.sleep(0.005)
    return peak


@pytest.fixture
async def cap_server() -> AsyncIterator[EdgeServer]:
    limits = Limits(heartbeat_timeout_s=3.0, keepalive_interval_s=60.0)
    config = ServerConfig(limits=limits, max_queries_per_session=8)
    async with EdgeServer(config=config, cost_model=ServerCostModel()) as server:
        yield server


async def test_s14_3_finished_results_count_against_the_outbound_cap(
    cap_server: EdgeServer,
) -> None:
    cap = cap_server.config.limits.max_outbound_bytes
    queries = 8  # 8 x 4 MiB of results: four times the 8 MiB cap
    assert queries * RESULT_BYTES >= 4 * cap
    peer = await asyncio.to_thread(_ask_and_never_read, cap_server.port, queries)
    try:
        peak = await _peak_outbound(cap_server, 4.0)
        # At most the cap (plus a few frame headers): the other results were never computed.
        assert peak <= cap + 64 * 1024, f"held {peak / MIB:.1f} MiB for a peer that never reads"
        assert peak >= RESULT_BYTES // 2, peak  # the peer really was sent large results
        held_back = cap_server.stats["queries"]
        assert held_back < queries, held_back
        # §14.3: no write progress for the timeout (heartbeat_timeout_s here): closed.
        async with asyncio.timeout(cap_server.config.limits.heartbeat_timeout_s + 5.0):
            while cap_server.connections:
                await asyncio.sleep(0.05)
    finally:
        peer.channel.close()
    # Another client is served normally afterwards.
    async with connect("127.0.0.1", cap_server.port) as conn:
        tenant = Tenant(conn, session=os.urandom(16).hex())
        await tenant.setup()
        await tenant.check_works()
