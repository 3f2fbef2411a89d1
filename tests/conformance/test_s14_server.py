"""protocol.md §14.3.1-§14.3.2 (outbound cap and no-progress close), §14.4.1-§14.4.2
(handshake and session deadlines) and §14.5 (how per-client limits combine), against the real
EdgeServer with the reference peer.

Timeouts are shortened through ``Limits``; the §14.3 tests run the server on the test's event
loop (the peer in a worker thread) so that what the server holds for a peer can be read through
``EdgeServer.connections`` / ``AioConnection.outbound_bytes``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from tests.helpers.edge_server import running_server
from tests.refpeer import Code, PeerClosed, RefPeer, SocketChannel
from tests.refpeer import wire as rw
from tests.refpeer.channels import PeerTimeout
from tests.refpeer.manifest import Manifest
from tests.refpeer.session import hello

from ionn_net.config import Limits
from ionn_net.planner.costmodel import ServerCostModel
from ionn_net.server import EdgeServer, ServerConfig

pytestmark = pytest.mark.timeout(120)

MIB = 1 << 20
BIG_CREDIT = {rw.S.INITIAL_STREAM_CREDIT: 2**31 - 1, rw.S.INITIAL_CONNECTION_CREDIT: 2**31 - 1}

# ----- §14.3: a peer that asks for large results and never reads -----------------------------

IN_SHAPE = [32, 32, 4]  # UpSampling2D 16x16: a 16 KiB query, a 4 MiB result
RESULT_BYTES = 512 * 512 * 4 * 4


def upsample_model() -> tuple[bytes, str]:
    m = Manifest("upsample")
    x = m.input("x", IN_SHAPE)
    m.layer("up", "UpSampling2D", {"size": [16, 16]}, [x])
    body = m.body(["up:0"])
    return body, hashlib.sha256(body).hexdigest()


def query_head(digest: str, qid: str, deadline_ms: int, nbytes: int) -> dict[str, object]:
    desc = {"ref": "x:0", "dtype": "float32", "shape": [1, *IN_SHAPE], "nbytes": nbytes}
    return {"m": "query", "model": digest, "qid": qid, "deadline_ms": deadline_ms,
            "run": ["up"], "tensors": [desc], "body_len": nbytes}  # fmt: skip


def ask_without_reading(port: int, queries: int, deadline_ms: int) -> tuple[RefPeer, list[int]]:
    """Set the model up, send ``queries`` queries, then read nothing more. The socket's
    receive buffer is fixed small (no autotuning), so the kernel absorbs little of what the
    server writes: what piles up is held by the server."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect(("127.0.0.1", port))
    peer = RefPeer(SocketChannel(sock), client=True, settings=BIG_CREDIT, timeout=30.0)
    peer.handshake()
    assert hello(peer)[0].head["m"] == "welcome"
    body, digest = upsample_model()
    assert peer.request({"m": "manifest", "model": digest}, body).head["m"] == "manifest_ok"
    loaded = peer.request({"m": "load", "model": digest, "layers": ["up"], "prepare": [["up"]]})
    assert loaded.head["m"] == "load_ok", loaded.head
    # Random floats: the server compresses results (§12), and zeros would shrink to nothing.
    x = np.random.default_rng(0).standard_normal([1, *IN_SHAPE]).astype("<f4").tobytes()
    sids = []
    for i in range(queries):
        sid = peer.open_stream(query_head(digest, f"q{i}", deadline_ms, len(x)), urgency=1)
        peer.send_body(sid, x)
        sids.append(sid)
    peer.flush()
    return peer, sids


async def peak_outbound(server: EdgeServer, seconds: float) -> int:
    peak, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max([peak, *(c.outbound_bytes for c in server.connections)])
        await asyncio.sleep(0.005)
    return peak


def edge(limits: Limits, **config: Any) -> EdgeServer:
    return EdgeServer(config=ServerConfig(limits=limits, **config), cost_model=ServerCostModel())


@pytest.mark.spec("14.3.1")
async def test_results_waiting_to_be_written_stay_under_the_outbound_cap() -> None:
    limits = Limits(heartbeat_timeout_s=60.0, keepalive_interval_s=60.0)
    async with edge(limits, max_queries_per_session=8) as server:
        peer, _ = await asyncio.to_thread(ask_without_reading, server.port, 8, 60_000)
        try:
            peak = await peak_outbound(server, 3.0)
        finally:
            peer.channel.close()
    cap = limits.max_outbound_bytes
    assert RESULT_BYTES // 2 <= peak <= cap + 64 * 1024, peak / MIB


@pytest.mark.spec("14.3.1")
async def test_held_back_queries_are_answered_deadline_exceeded() -> None:
    """Queries that could not start within their deadline (their results would not fit)
    are answered deadline_exceeded, not run: the peer reads only after the deadline."""
    limits = Limits(heartbeat_timeout_s=60.0, keepalive_interval_s=60.0)
    async with edge(limits, max_queries_per_session=8) as server:
        peer, sids = await asyncio.to_thread(ask_without_reading, server.port, 8, 1500)
        await asyncio.sleep(2.5)  # every held-back query is past its deadline now

        def read_all() -> list[str]:
            codes = []
            for sid in sids:
                msg = peer.read_message(sid)
                codes.append(str(msg.head.get("code", msg.head["m"])))
            return codes

        try:
            answers = await asyncio.to_thread(read_all)
        finally:
            peer.channel.close()
    assert set(answers) <= {"result", "deadline_exceeded"}, answers
    assert 1 <= answers.count("result") < len(sids), answers
    assert server.stats["queries"] == answers.count("result")


@pytest.mark.spec("14.3.2")
async def test_a_peer_that_stops_reading_is_closed_for_lack_of_progress() -> None:
    stall = 2.0
    limits = Limits(heartbeat_timeout_s=stall, keepalive_interval_s=60.0)
    async with edge(limits, max_queries_per_session=8) as server:
        peer, _ = await asyncio.to_thread(ask_without_reading, server.port, 4, 60_000)
        try:
            (conn,) = server.connections
            started = time.monotonic()
            await asyncio.wait_for(conn.wait_closed(), stall + 10.0)
            elapsed = time.monotonic() - started
        finally:
            peer.channel.close()
    assert conn.error is not None and conn.error.error_code.name == "TIMEOUT", conn.error
    assert "peer stopped reading" in str(conn.error)
    assert stall - 0.5 <= elapsed <= stall + 8.0, elapsed


# ----- §14.4: handshake and session deadlines -------------------------------------------------

SHORT = Limits(handshake_timeout_s=1.0, keepalive_interval_s=0.3, heartbeat_timeout_s=5.0)


@pytest.fixture(scope="module")
def short_server() -> Iterator[Any]:
    with running_server(ServerConfig(limits=SHORT)) as srv:
        yield srv


def read_until_eof(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    started = time.monotonic()
    data = b""
    sock.settimeout(limit_s)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data, time.monotonic() - started


@pytest.mark.spec("14.4.1")
def test_no_whole_preface_by_the_deadline_closes_without_sending_anything(
    short_server: Any,
) -> None:
    with socket.create_connection(("127.0.0.1", short_server.port)) as sock:
        sock.sendall(rw.client_preface()[:5])
        data, elapsed = read_until_eof(sock, 6.0)
    assert data == b""
    assert elapsed < SHORT.handshake_timeout_s + 3.0


@pytest.mark.spec("14.4.1")
def test_preface_without_settings_gets_preface_settings_then_goaway_timeout(
    short_server: Any,
) -> None:
    with socket.create_connection(("127.0.0.1", short_server.port)) as sock:
        sock.sendall(rw.client_preface())
        data, elapsed = read_until_eof(sock, 6.0)
    assert data[: rw.PREFACE_SIZE] == rw.PREFACE_MAGIC + bytes([1, 1, 0, 0])
    frames = rw.FrameReader(dict(rw.DEFAULT_SETTINGS)).feed(data[rw.PREFACE_SIZE :])
    assert frames[0].type == rw.T.SETTINGS and not frames[0].flags & rw.ACK
    goaway = frames[-1]
    assert goaway.type == rw.T.GOAWAY
    assert int.from_bytes(goaway.payload[4:8], "big") == Code.TIMEOUT
    assert elapsed < SHORT.handshake_timeout_s + 3.0


def linger(port: int, *, own_pings: bool, no_session: bool, give_up_s: float) -> tuple[Any, float]:
    """Handshake, then only PINGs (and requests before hello) until closed or ``give_up_s``."""
    started = time.monotonic()
    peer = RefPeer(SocketChannel.connect("127.0.0.1", port), client=True, timeout=0.2)
    peer.handshake()
    if no_session:
        reply = peer.request({"m": "have", "model": "0" * 64})
        assert reply.head.get("code") == "no_session"
    last = 0.0
    while time.monotonic() - started < give_up_s and not peer.closed:
        if own_pings and time.monotonic() - last >= 0.2:
            last = time.monotonic()
            payload = os.urandom(8)
            peer.pings.add(payload)
            peer.send_raw(rw.ping_frame(payload))
        try:
            peer.poll()
        except PeerTimeout:
            continue
        except PeerClosed:
            break
    peer.channel.close()
    return peer.goaway_received, time.monotonic() - started


@pytest.mark.spec("14.4.2")
@pytest.mark.parametrize(
    ("own_pings", "no_session"),
    [(False, False), (True, False), (False, True)],
    ids=["answers_pings", "sends_pings", "request_before_hello"],
)
def test_no_session_by_the_deadline_from_the_accept_closes_with_timeout(
    short_server: Any, own_pings: bool, no_session: bool
) -> None:
    goaway, elapsed = linger(
        short_server.port, own_pings=own_pings, no_session=no_session, give_up_s=6.0
    )
    assert goaway is not None and goaway[1] == Code.TIMEOUT, (goaway, elapsed)
    assert SHORT.handshake_timeout_s - 0.2 <= elapsed < SHORT.handshake_timeout_s + 2.5, elapsed


@pytest.mark.spec("14.4.2")
def test_a_client_with_a_session_keeps_its_connection(short_server: Any) -> None:
    peer = RefPeer(SocketChannel.connect("127.0.0.1", short_server.port), client=True)
    peer.handshake()
    assert hello(peer)[0].head["m"] == "welcome"
    time.sleep(SHORT.handshake_timeout_s + 0.5)
    reply = peer.request({"m": "have", "model": "0" * 64})
    assert reply.head.get("code") == "unknown_model"
    assert peer.goaway_received is None


# ----- §14.5: per session key and per address, each on its own --------------------------------


def tiny_manifest(i: int) -> tuple[bytes, str]:
    m = Manifest(f"tiny{i}")
    x = m.input("x", [4])
    m.layer("relu", "ReLU", {}, [x])
    body = m.body(["relu:0"])
    return body, hashlib.sha256(body).hexdigest()


def connect_session(port: int, key: str) -> RefPeer:
    peer = RefPeer(SocketChannel.connect("127.0.0.1", port), client=True, timeout=20.0)
    peer.handshake()
    assert hello(peer, session=key)[0].head["m"] == "welcome"
    return peer


def send_manifest(peer: RefPeer, i: int) -> str:
    body, digest = tiny_manifest(i)
    reply = peer.request({"m": "manifest", "model": digest}, body)
    return str(reply.head.get("code", reply.head["m"]))


@pytest.mark.spec("14.5")
def test_per_session_limits_count_every_connection_of_the_key() -> None:
    with running_server(ServerConfig(max_models_per_session=2)) as srv:
        key = os.urandom(16).hex()
        first, second = connect_session(srv.port, key), connect_session(srv.port, key)
        assert send_manifest(first, 0) == "manifest_ok"
        assert send_manifest(second, 1) == "manifest_ok"  # same key, other connection
        assert send_manifest(second, 2) == "limit_exceeded"
        assert send_manifest(first, 3) == "limit_exceeded"
        # Another key from the same address has a budget of its own.
        other = connect_session(srv.port, os.urandom(16).hex())
        assert send_manifest(other, 4) == "manifest_ok"


@pytest.mark.spec("14.5")
def test_per_address_limit_counts_connections_whatever_their_session_key() -> None:
    with running_server(ServerConfig(max_connections_per_address=2)) as srv:
        key = os.urandom(16).hex()
        peers = [connect_session(srv.port, key), connect_session(srv.port, os.urandom(16).hex())]
        third = RefPeer(SocketChannel.connect("127.0.0.1", srv.port), client=True, timeout=10.0)
        third.handshake()
        with pytest.raises(PeerClosed):
            hello(third, session=key)  # a known key does not lift the address limit
        assert third.goaway_received is not None
        assert third.goaway_received[1] == Code.ENHANCE_YOUR_CALM
        peers[0].goaway(Code.NO_ERROR, "done")
        peers[0].channel.close()
        deadline = time.monotonic() + 5.0
        while True:  # the slot frees once the server has seen the close
            try:
                connect_session(srv.port, os.urandom(16).hex())
                break
            except PeerClosed:
                assert time.monotonic() < deadline, "the freed slot was never reused"
                time.sleep(0.1)
