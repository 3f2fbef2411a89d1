"""One test per attack listed in RELIABILITY.md against a real EdgeServer on loopback.

Malformed traffic goes out as raw frames (the reference peer's encoder over a plain
socket); well-behaved traffic uses the asyncio client. Each test asserts the defense
(the offender is refused or closed, nothing unbounded is allocated) AND that a second,
well-behaved session set up before the attack still gets correct answers afterwards.
Timeouts and budgets are shortened through ``Limits`` so the whole file runs in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import numpy as np
import pytest
from tests.helpers.manifests import tiny_cnn
from tests.integration.hardening.tenant import IN, RawPeer, Tenant, call, mlp
from tests.refpeer import wire as rw

from ionn_net.aio import ConnectionClosedError, connect
from ionn_net.config import Limits
from ionn_net.model.spec import canonical_json
from ionn_net.planner.costmodel import ServerCostModel
from ionn_net.server import EdgeServer, ServerConfig
from ionn_net.store import partial_key

pytestmark = pytest.mark.timeout(60)

LIMITS = Limits(
    handshake_timeout_s=1.0,
    settings_timeout_s=1.0,
    idle_timeout_s=30.0,
    keepalive_interval_s=0.5,
    heartbeat_timeout_s=1.0,
    control_frames_per_window=50,
    max_outbound_bytes=64 * 1024,
    reset_burst=50,
    reset_rate_per_s=5.0,
    max_useless_frames=20,
)
CONFIG = ServerConfig(limits=LIMITS, max_bytes_per_session=1 << 20, max_queries_per_session=4)
EYC, TIMEOUT, FRAME_SIZE = rw.Code.ENHANCE_YOUR_CALM, rw.Code.TIMEOUT, rw.Code.FRAME_SIZE_ERROR


@pytest.fixture
async def server() -> AsyncIterator[EdgeServer]:
    async with EdgeServer(config=CONFIG, cost_model=ServerCostModel()) as srv:
        yield srv


@pytest.fixture
async def good(server: EdgeServer) -> AsyncIterator[Tenant]:
    """A well-behaved tenant with its model loaded, connected before the attack."""
    async with connect("127.0.0.1", server.port) as conn:
        tenant = Tenant(conn)
        await tenant.setup()
        await tenant.check_works()
        yield tenant


async def closed_with(peer: RawPeer, timeout: float = 10.0) -> int | None:
    await peer.read_until_closed(timeout)
    return peer.goaway_code()


# -- peer never reads replies (CVE-2019-9511/9517) ------------------------------------


async def test_peer_that_never_reads_is_closed_with_bounded_backlog(
    server: EdgeServer, good: Tenant
) -> None:
    peer = await RawPeer.open(server.port, rcvbuf=4096)
    # Each request's error reply echoes its ~30 KB message type: replies pile up unread.
    big = {"m": "x" * 30_000}
    sent = 0
    for sid in range(1, 400, 2):
        peer.send(rw.headers_frame(sid, big, end_stream=True))
        sent += 1
    await peer.drain()
    # The stall watchdog fires heartbeat_timeout_s after the outbound queue filled up.
    await asyncio.sleep(LIMITS.heartbeat_timeout_s + 2.0)
    frames = await peer.read_until_closed(10)  # the server had already given up on us
    answered = sum(1 for f in frames if f.type == rw.T.HEADERS)
    assert answered < sent / 2, (answered, sent)
    # What it had queued for us: the cap plus kernel socket buffers, not 400 x 30 KB.
    assert len(peer.received) < 4 * (1 << 20), len(peer.received)
    await good.check_works()


# -- ping / settings floods (CVE-2019-9512/9515) ---------------------------------------


@pytest.mark.parametrize("kind", ["ping", "settings", "settings_entries"])
async def test_control_floods(server: EdgeServer, good: Tenant, kind: str) -> None:
    peer = await RawPeer.open(server.port)
    if kind == "settings_entries":  # one SETTINGS frame with 33 entries
        peer.send(rw.build_frame(rw.T.SETTINGS, 0, 0, rw.settings_payload([(3, 100)] * 33)))
        want = FRAME_SIZE
    else:
        frame = rw.ping_frame(b"floodfld") if kind == "ping" else rw.settings_frame([(3, 100)])
        peer.send(frame * 500)
        want = EYC
    assert await closed_with(peer) == want
    answers = [f for f in peer.frames() if f.type in (rw.T.PING, rw.T.SETTINGS) and f.ack]
    assert len(answers) <= LIMITS.control_frames_per_window + 2
    await good.check_works()


# -- reset floods, Rapid Reset, MadeYouReset -------------------------------------------


async def test_rapid_reset_flood_is_cut_off(server: EdgeServer, good: Tenant) -> None:
    async with connect("127.0.0.1", server.port) as conn:  # a session whose model is loaded
        attacker = Tenant(conn)
        await attacker.setup()
    peer = await RawPeer.open(server.port)
    peer.send(
        rw.headers_frame(
            1, {"m": "hello", "session": attacker.session, "nonce": "0" * 32}, end_stream=True
        )
    )
    head, body = attacker.query_head(np.ones((1, IN), np.float32))
    burst = b""
    for sid in range(3, 3 + 2 * 200, 2):  # open a query, cancel it at once; 200 times
        h = dict(head, body_len=len(body))
        burst += rw.headers_frame(sid, h) + rw.data_frame(sid, body, end_stream=True)
        burst += rw.reset_frame(sid, rw.Code.CANCEL)
    peer.send(burst)
    assert await closed_with(peer) == EYC
    # Every query slot of the session comes back once the cancelled work has stopped.
    queries = server._sessions[attacker.session].queries
    for _ in range(100):
        if queries._value == CONFIG.max_queries_per_session:
            break
        await asyncio.sleep(0.05)
    assert queries._value == CONFIG.max_queries_per_session
    await good.check_works()


class GatedServer(EdgeServer):
    """The real server whose inference waits on a gate, so a test can hold a query inside
    the model and count how many run at once."""

    gate = threading.Event()
    running = 0
    most = 0
    _lock = threading.Lock()

    @staticmethod
    def _run(model: Any, run: list[str], feeds: Mapping[Any, np.ndarray]) -> Any:
        cls = GatedServer
        with cls._lock:
            cls.running += 1
            cls.most = max(cls.most, cls.running)
        try:
            cls.gate.wait(20)
            return EdgeServer._run(model, run, feeds)
        finally:
            with cls._lock:
                cls.running -= 1


@pytest.mark.parametrize("how", ["reset", "drop_connection"])
async def test_a_cancelled_query_keeps_its_slot_until_inference_stops(how: str) -> None:
    config = ServerConfig(limits=LIMITS, max_queries_per_session=1, inference_threads=1)
    GatedServer.gate.clear()
    GatedServer.most = 0
    async with GatedServer(config=config, cost_model=ServerCostModel()) as srv:
        async with connect("127.0.0.1", srv.port) as conn:
            tenant = Tenant(conn)
            await tenant.hello()
            await tenant.manifest()
            for sha, blob in tenant.builder.blobs.items():
                await tenant.blob(sha, 0, blob)
            await tenant.load()
        x = np.ones((1, IN), np.float32)
        attacker_conn = await connect("127.0.0.1", srv.port)
        attacker = Tenant(attacker_conn, session=tenant.session)
        await attacker.hello()
        head, body = attacker.query_head(x, "stuck")
        stream = await attacker_conn.open_stream({**head, "body_len": len(body)})
        await stream.send_data(body, end_stream=True)
        for _ in range(100):
            if GatedServer.running:
                break
            await asyncio.sleep(0.02)
        assert GatedServer.running == 1
        if how == "reset":
            stream.reset()
        else:
            attacker_conn.abort()
        await asyncio.sleep(0.3)  # the server has seen the cancel
        async with connect("127.0.0.1", srv.port) as conn:
            again = Tenant(conn, session=tenant.session)
            await again.hello()
            for i in range(5):  # every further query is refused while the first still runs
                reply = await again.query(x, f"q{i}")
                assert reply["m"] == "error" and reply["code"] == "busy", reply
            assert GatedServer.most == 1
            GatedServer.gate.set()
            for _ in range(50):
                if not GatedServer.running:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            await again.check_works()
        attacker_conn.abort()
    assert GatedServer.most == 1


# -- empty frames, zero-length metadata (CVE-2019-9516/9518) ---------------------------


@pytest.mark.parametrize("kind", ["empty_data", "unknown_type", "zero_length_headers"])
async def test_useless_frames_and_empty_metadata(
    server: EdgeServer, good: Tenant, kind: str
) -> None:
    peer = await RawPeer.open(server.port)
    if kind == "zero_length_headers":  # no urgency byte, no head at all
        peer.send(rw.build_frame(rw.T.HEADERS, 0, 1, b""))
        code = await closed_with(peer)
        assert code in (rw.Code.PROTOCOL_ERROR, FRAME_SIZE), code
    else:
        peer.send(rw.headers_frame(1, {"m": "have", "body_len": 5}))
        frame = rw.data_frame(1, b"") if kind == "empty_data" else rw.build_frame(0x55, 0, 0)
        peer.send(frame * (LIMITS.max_useless_frames + 5))
        assert await closed_with(peer) == EYC
    await good.check_works()


async def test_oversized_metadata_is_refused(server: EdgeServer, good: Tenant) -> None:
    peer = await RawPeer.open(server.port)
    head = rw.headers_payload({"m": "hello", "pad": "x" * (LIMITS.max_header_size + 10)})
    peer.send(rw.build_frame(rw.T.HEADERS, 0, 1, head))
    assert await closed_with(peer) == FRAME_SIZE
    await good.check_works()


# -- slowloris, half-open mobile clients ------------------------------------------------


async def test_slowloris_handshake_is_timed_out(server: EdgeServer, good: Tenant) -> None:
    peer = await RawPeer.open(server.port, handshake=False)
    preface = rw.client_preface()
    started = time.monotonic()
    with pytest.raises((ConnectionError, TimeoutError)):
        async with asyncio.timeout(8):
            for byte in preface + rw.settings_frame()[:5]:  # one byte every 0.3 s
                peer.send(bytes([byte]))
                await peer.drain()
                await asyncio.sleep(0.3)
                if peer.reader.at_eof():
                    raise ConnectionResetError("closed by the server")
    await peer.read_until_closed(5)
    assert time.monotonic() - started < LIMITS.handshake_timeout_s + 3.0
    await good.check_works()


async def test_requests_without_hello_do_not_hold_a_connection(
    server: EdgeServer, good: Tenant
) -> None:
    """Application-level slowloris: framing done, PINGs answered, requests sent, but never
    a hello: the connection goes at the handshake deadline (§14.4), not at the idle one."""
    conn = await connect("127.0.0.1", server.port)
    started = time.monotonic()
    with pytest.raises(ConnectionClosedError) as info:
        for _ in range(100):
            head, _ = await call(conn, {"m": "have", "model": "0" * 64})
            assert head["code"] == "no_session"
            await asyncio.sleep(0.1)
    assert info.value.error_code.name == "TIMEOUT"
    assert time.monotonic() - started < LIMITS.handshake_timeout_s + 3.0
    conn.abort()
    await good.check_works()


async def test_half_open_client_is_reaped_by_heartbeat(server: EdgeServer, good: Tenant) -> None:
    peer = await RawPeer.open(server.port)  # handshakes, then never answers anything
    started = time.monotonic()
    assert await closed_with(peer, timeout=8) == TIMEOUT
    elapsed = time.monotonic() - started
    assert elapsed < LIMITS.keepalive_interval_s + LIMITS.heartbeat_timeout_s + 3.0, elapsed
    pings = [f for f in peer.frames() if f.type == rw.T.PING and not f.ack]
    assert pings, "the server never probed the silent peer"
    await good.check_works()


async def test_idle_session_is_closed_after_idle_timeout(good: Tenant) -> None:
    limits = Limits(idle_timeout_s=1.5, keepalive_interval_s=0.5, heartbeat_timeout_s=1.0)
    async with EdgeServer(config=ServerConfig(limits=limits), cost_model=ServerCostModel()) as s:
        conn = await connect("127.0.0.1", s.port)  # answers PINGs, never sends a request
        started = time.monotonic()
        await asyncio.wait_for(conn.wait_closed(), limits.idle_timeout_s + 3)
        assert time.monotonic() - started >= limits.idle_timeout_s - 0.5
        assert conn.error is not None and conn.error.error_code.name == "TIMEOUT"
    await good.check_works()


# -- length prefixes, decompression bombs -------------------------------------------------


MIB = 1 << 20


@contextlib.contextmanager
def allocation_peak() -> Iterator[list[int]]:
    """The largest amount of memory allocated at once while the block ran, above what was
    allocated when it began (bytes; appended to the yielded list on exit).

    The server runs in this process, so tracemalloc sees what it allocates through Python's
    allocators (bytes, bytearrays, numpy arrays, the zstd decoder's output). The process's
    peak RSS cannot show this: it already includes whatever the test run allocated before.
    """
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    out: list[int] = []
    try:
        yield out
    finally:
        out.append(tracemalloc.get_traced_memory()[1] - base)
        if started:
            tracemalloc.stop()


async def test_absurd_length_prefix_allocates_nothing(server: EdgeServer, good: Tenant) -> None:
    with allocation_peak() as peak:
        for declared in ((1 << 32) - 1, 1 << 24):
            peer = await RawPeer.open(server.port)
            peer.send(rw.headers_frame(1, {"m": "have", "body_len": 5}))
            header = rw.HEADER.pack(rw.T.DATA, 0, 0, 0, 1, declared, declared)
            peer.send(header + b"x" * 100)  # the body it announced never comes
            assert await closed_with(peer, timeout=5) == FRAME_SIZE
        # A body announced far above MAX_MESSAGE_SIZE is refused on the head alone.
        peer = await RawPeer.open(server.port)
        peer.send(rw.headers_frame(1, {"m": "blob", "body_len": 1 << 40}))
        await asyncio.sleep(0.3)
        frames = peer.frames() + await _more(peer)
        assert [f for f in frames if f.type in (rw.T.RESET, rw.T.GOAWAY)]
        peer.close()
    assert peak[0] < 8 * MIB, peak
    await good.check_works()


async def _more(peer: RawPeer) -> list[rw.Frame]:
    try:
        async with asyncio.timeout(1.0):
            while chunk := await peer.reader.read(1 << 16):
                peer.received += chunk
    except TimeoutError:
        pass
    return peer.frames()


async def test_decompression_bomb_is_refused(server: EdgeServer, good: Tenant) -> None:
    import zstandard

    # 64 MiB of zeros in one frame whose header declares that content size (§12.1)
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(64 * MIB))
    assert len(bomb) < LIMITS.max_frame_size
    assert zstandard.get_frame_parameters(bomb).content_size == 64 * MIB
    with allocation_peak() as peak:
        for declared in (1024, LIMITS.max_decoded_frame_size):  # lies about the decoded size
            peer = await RawPeer.open(server.port)
            peer.send(rw.headers_frame(1, {"m": "have", "body_len": declared}))
            frame = rw.build_frame(
                rw.T.DATA, 0, 1, bomb, codec=rw.Codec.ZSTD, decoded_length=declared
            )
            peer.send(frame)
            await asyncio.sleep(0.3)
            frames = await _more(peer)
            codes = {f.type for f in frames}
            assert rw.T.GOAWAY in codes or rw.T.RESET in codes, codes
            peer.close()
    # Refused on the frame header, before decompressing (about 0.5 MB measured): a decoder
    # that trusted the frame allocated the 64 MiB it declares, twice (134 MB).
    assert peak[0] < 8 * MIB, peak
    await good.check_works()


# -- models are programs ---------------------------------------------------------------------


def _manifest_with(layer_index: int, **changes: Any) -> tuple[bytes, str]:
    obj, _ = tiny_cnn()
    obj["layers"][layer_index].update(changes)
    body = canonical_json(obj)
    return body, hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize(
    "change",
    [
        {"class": "Lambda", "config": {"function": {"module": "os", "class_name": "system"}}},
        {
            "config": {
                "units": 5,
                "activation": {
                    "module": "keras.config",
                    "class_name": "function",
                    "config": "set_epsilon",
                    "registered_name": "function",
                },
            }
        },
        {"config": {"units": 2**40}},
        {"class": "TFSMLayer", "config": {"filepath": "/etc"}},
        {"class": "StringLookup", "config": {"vocabulary": "/etc/passwd"}},
    ],
    ids=["lambda", "dict_activation", "huge_units", "tfsm", "string_lookup"],
)
async def test_code_shaped_manifests_are_refused_without_side_effects(
    server: EdgeServer, good: Tenant, change: dict[str, Any]
) -> None:
    import keras

    epsilon = keras.config.epsilon()
    index = 6  # the Dense "predictions" layer of tiny_cnn
    body, digest = _manifest_with(index, **change)
    async with connect("127.0.0.1", server.port) as conn:
        bad = Tenant(conn)
        await bad.hello()
        head, _ = await call(conn, {"m": "manifest", "model": digest}, body)
        assert head["m"] == "error" and head["code"] == "bad_manifest", head
    assert keras.config.epsilon() == epsilon
    await good.check_works()


# -- tensors -----------------------------------------------------------------------------


def _desc(**over: Any) -> dict[str, Any]:
    desc: dict[str, Any] = {"ref": "x:0", "dtype": "float32", "shape": [1, IN], "nbytes": 4 * IN}
    return {**desc, **over}


F32 = 4 * IN
BAD_TENSORS: dict[str, tuple[dict[str, Any], bytes, str]] = {
    "nan": (_desc(), np.full((1, IN), np.nan, np.float32).tobytes(), "finite"),
    "inf": (_desc(), np.full((1, IN), -np.inf, np.float32).tobytes(), "finite"),
    "big_endian": (_desc(dtype=">f4"), bytes(F32), "dtype"),
    "void": (_desc(dtype="V4"), bytes(F32), "dtype"),
    "numpy_str": (_desc(dtype="<f4"), bytes(F32), "dtype"),
    "unicode": (_desc(dtype="U1"), bytes(F32), "dtype"),
    "overflow": (_desc(shape=[2**62, 4], nbytes=0), b"", "shape"),
    "zero_dim": (_desc(shape=[0, 2**40], nbytes=0), b"", "shape"),
    "negative": (_desc(shape=[-1, IN]), bytes(F32), "shape"),
    "ndim": (_desc(shape=[1] * 9), bytes(4), "shape"),
    "nbytes_lie": (_desc(nbytes=4 * IN - 1), bytes(F32 - 1), "nbytes"),
    "short_body": (_desc(), bytes(F32 - 1), "body"),
    "huge": (_desc(shape=[1, 2**31 - 1], nbytes=4 * (2**31 - 1)), b"", "at most"),
    "batch": (_desc(shape=[2, IN], nbytes=2 * F32), bytes(2 * F32), "1..1"),
    "signature": (_desc(shape=[1, IN + 1], nbytes=F32 + 4), bytes(F32 + 4), "expected shape"),
    "float64": (_desc(dtype="float64", nbytes=2 * F32), bytes(2 * F32), "expected float32"),
}


@pytest.mark.parametrize("case", sorted(BAD_TENSORS))
async def test_bad_tensors_are_refused(server: EdgeServer, good: Tenant, case: str) -> None:
    desc, body, reason = BAD_TENSORS[case]
    head, _ = good.query_head(np.zeros((1, IN), np.float32))
    head = {**head, "tensors": [desc], "body_len": len(body)}
    with allocation_peak() as peak:
        reply, _ = await call(good.conn, head, body)
    assert reply["m"] == "error" and reply["code"] in ("bad_tensor", "bad_request"), reply
    assert reason in reply["message"], reply
    assert peak[0] < MIB, peak  # about 13 KB measured
    await good.check_works()


# -- too many models / bytes / sessions per client ---------------------------------------------


async def test_bytes_per_session_are_capped(good: Tenant) -> None:
    config = ServerConfig(limits=LIMITS, max_bytes_per_session=3000)
    async with (
        EdgeServer(config=config, cost_model=ServerCostModel()) as srv,
        connect("127.0.0.1", srv.port) as conn,
    ):
        first = Tenant(conn)
        await first.setup()  # 2232 bytes of blobs: within the cap
        second = Tenant(conn, session=first.session, built=mlp(seed=1, name="other"))
        await second.manifest()
        replies = [await second.blob(sha, 0, b) for sha, b in second.builder.blobs.items()]
        big = next(iter(second.builder.blobs))  # 1632 bytes: 2232 + 1632 > 3000
        assert replies[0]["m"] == "error" and replies[0]["code"] == "limit_exceeded"
        have, _ = await call(conn, {"m": "have", "model": second.digest})
        assert big not in have["blobs_held"] and have["partial"] == {}
        await first.check_works()
        async with connect("127.0.0.1", srv.port) as c2:  # another session: unaffected
            other = Tenant(c2)
            await other.setup()
            await other.check_works()
    await good.check_works()


async def test_unfinished_uploads_count_against_the_byte_budget(good: Tenant) -> None:
    """Partial blobs that are never finished would otherwise fill the disk: each one
    reserves its full size in the session's budget."""
    config = ServerConfig(limits=LIMITS, max_bytes_per_session=3000)
    async with (
        EdgeServer(config=config, cost_model=ServerCostModel()) as srv,
        connect("127.0.0.1", srv.port) as conn,
    ):
        first = Tenant(conn)
        await first.hello()
        await first.manifest()
        second = Tenant(conn, session=first.session, built=mlp(seed=1, name="other"))
        await second.manifest()
        big1, big2 = next(iter(first.builder.blobs)), next(iter(second.builder.blobs))
        reply = await first.blob(big1, 0, first.builder.blobs[big1][:100])  # 1632 reserved
        assert reply["m"] == "blob_ok" and not reply["complete"]
        reply = await second.blob(big2, 0, second.builder.blobs[big2][:100])  # 1632 more
        assert reply["m"] == "error" and reply["code"] == "limit_exceeded", reply
        have, _ = await call(conn, {"m": "have", "model": second.digest})
        assert have["partial"] == {}
        rest = first.builder.blobs[big1][100:]  # finishing the first one is still allowed
        assert (await first.blob(big1, 100, rest))["complete"]
    await good.check_works()


async def test_session_table_cannot_be_filled_by_fresh_keys() -> None:
    """Hellos with fresh session keys (one per connection) would fill ``max_sessions`` for
    good; sessions without a live connection are forgotten first, and keep their blobs."""
    config = ServerConfig(limits=LIMITS, max_sessions=2)
    async with (
        EdgeServer(config=config, cost_model=ServerCostModel()) as srv,
        connect("127.0.0.1", srv.port) as conn,
    ):
        first = Tenant(conn)
        await first.setup()
        async with connect("127.0.0.1", srv.port) as c1:  # a tenant that leaves mid-upload
            gone = Tenant(c1)
            await gone.setup()
            left = Tenant(c1, session=gone.session, built=mlp(seed=2, name="left"))
            await left.manifest()
            sha = next(iter(left.builder.blobs))
            assert not (await left.blob(sha, 0, left.builder.blobs[sha][:64]))["complete"]
        key = partial_key(hashlib.sha256(gone.session.encode()).hexdigest()[:32], sha)
        assert srv.store.partial_offset(key) == 64
        for _ in range(5):  # an attacker cycling through keys and connections
            async with connect("127.0.0.1", srv.port) as c2:
                assert (await Tenant(c2).hello())["m"] == "welcome"
        assert gone.session not in srv._sessions  # forgotten to make room
        assert srv.store.partial_offset(key) == 0  # and its unfinished upload expired
        async with connect("127.0.0.1", srv.port) as c2, connect("127.0.0.1", srv.port) as c3:
            assert (await Tenant(c2).hello())["m"] == "welcome"
            reply = await Tenant(c3).hello()  # two live sessions: the table is really full
            assert reply["m"] == "error" and reply["code"] == "busy", reply
        await first.check_works()
        async with connect("127.0.0.1", srv.port) as c4:  # the forgotten tenant comes back
            back = Tenant(c4, session=gone.session)
            await back.hello()
            head = await back.manifest()
            assert sorted(head["blobs_held"]) == sorted(back.builder.blobs)  # nothing re-sent
            assert head["layers_ready"] == []
            assert (await back.load())["m"] == "load_ok"
            await back.check_works()
