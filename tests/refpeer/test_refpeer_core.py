"""The reference peer against the ionn_net sans-I/O core over an in-memory pipe.

Two implementations of protocol.md that share no code exchange real traffic: handshake,
1 MiB bodies both ways (RAW and every zstd codec), PING both ways, credit, and graceful GOAWAY
from either side. The core runs as server (RefPeer is the client) and as client.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from tests.helpers.core_app import CoreApp, echo_handler
from tests.refpeer import Code, PeerClosed, PipeChannel, RefPeer
from tests.refpeer.wire import T

from ionn_net.proto import events as ev
from ionn_net.proto.codecs import Codec
from ionn_net.proto.connection import Connection

MIB = 1 << 20


def _server_pair() -> tuple[RefPeer, CoreApp]:
    app = CoreApp(Connection(client=False), echo_handler)
    app.conn.initiate()
    peer = RefPeer(PipeChannel(app.pump), client=True, timeout=2.0)
    return peer, app


def _float_body(n: int = MIB) -> bytes:
    rng = np.random.default_rng(7)
    return np.maximum(rng.normal(0, 1, n // 4), 0).astype("<f4").tobytes()  # ReLU-like


def test_handshake_agrees_on_version_and_settings() -> None:
    peer, app = _server_pair()
    peer.handshake()
    assert peer.version == 1 and app.conn.version == 1
    assert peer.settings_acked and peer.settings_received
    app.pump(peer.channel)  # deliver our ACK of the core's SETTINGS
    assert any(isinstance(e, ev.SettingsAcked) for e in app.events)


@pytest.mark.parametrize("codec", list(Codec))
def test_megabyte_request_and_response_through_the_core(codec: Codec) -> None:
    peer, app = _server_pair()
    peer.handshake()
    body = os.urandom(MIB) if codec == Codec.RAW else _float_body()
    resp = peer.request({"m": "echo", "codec": int(codec)}, body, codec=codec)
    assert resp.head["n"] == len(body)
    assert resp.body == body
    (rec,) = app.streams.values()
    assert bytes(rec.body) == body
    data = [i.frame for i in peer.log if i.kind == "data" and i.frame is not None]
    assert all(len(f.payload) <= 65536 for f in data)  # our MAX_FRAME_SIZE (§8.3)
    if codec != Codec.RAW:  # compressible floats: the core must have used the codec (§12)
        assert any(f.codec == codec for f in data)
        assert sum(len(f.payload) for f in data) < len(body)


def test_several_requests_multiplexed_with_small_credit() -> None:
    app = CoreApp(Connection(client=False), echo_handler)
    peer = RefPeer(
        PipeChannel(app.pump), client=True, timeout=2.0, settings={4: 65536, 5: 65536, 1: 65536}
    )
    peer.handshake()
    bodies = [os.urandom(300_000 + i) for i in range(2)] + [os.urandom(MIB + MIB // 2)]
    for body in bodies:
        assert peer.request({"m": "echo"}, body).body == body
    # Our 64 KiB windows were raised by us many times, and the core's 1 MiB stream window was
    # raised by the core's CREDIT frames: both implementations honoured the other's limits.
    assert peer.conn_recv_limit > 2 * MIB
    credits = [i for i in peer.log if i.kind == "credit"]
    assert 5 in {i.stream_id for i in credits}  # the 1.5 MiB request exceeded 1 MiB


def test_ping_both_ways() -> None:
    peer, app = _server_pair()
    peer.handshake()
    peer.ping(b"refpeer1")
    assert peer.log[-1].kind == "ping_ack" and peer.log[-1].data == b"refpeer1"
    app.conn.ping(b"corecore")
    inc = peer.poll()
    assert inc.kind == "ping" and inc.data == b"corecore"
    peer.send_raw(b"")  # nothing; the ACK went out in poll()
    app.pump(peer.channel)
    assert any(isinstance(e, ev.PingAcked) and e.payload == b"corecore" for e in app.events)


def test_goaway_from_the_reference_peer_is_graceful() -> None:
    peer, app = _server_pair()
    peer.handshake()
    assert peer.request({"m": "echo"}, b"x" * 1000).body == b"x" * 1000
    peer.goaway(Code.NO_ERROR, "done")
    app.pump(peer.channel)
    got = [e for e in app.events if isinstance(e, ev.GoAwayReceived)]
    assert got and got[0].error_code == 0 and got[0].last_stream_id == 0


def test_goaway_from_the_core_drains_open_streams() -> None:
    peer, app = _server_pair()
    peer.handshake()
    sid = peer.open_stream({"m": "echo", "body_len": 200_000})
    peer.send_body(sid, b"a" * 100_000, end=False)
    app.pump(peer.channel)
    app.conn.close()  # graceful: GOAWAY NO_ERROR, then finish stream 1
    inc = peer.poll()
    while inc.kind != "goaway":
        inc = peer.poll()
    assert inc.code == Code.NO_ERROR and inc.stream_id == sid
    peer.send_body(sid, b"b" * 100_000)
    resp = peer.read_message(sid)
    assert resp.body == b"a" * 100_000 + b"b" * 100_000
    with pytest.raises(PeerClosed):
        while True:
            peer.poll()
    assert app.conn.closed


def test_core_as_client_against_the_reference_server() -> None:
    app = CoreApp(Connection(client=True))
    app.conn.initiate()
    pipe = PipeChannel(app.pump)
    server = RefPeer(pipe, client=False, timeout=2.0)
    body = _float_body()
    sid = app.request({"m": "echo"}, body, codec=Codec.ZSTD_SHUFFLE4)
    server.handshake()
    req = server.accept_request()
    assert req.stream_id == sid and req.body == body
    assert any(
        i.frame is not None and i.frame.codec == Codec.ZSTD_SHUFFLE4
        for i in server.log
        if i.kind == "data"
    )
    server.send_message(sid, {"m": "echo_ok"}, body[::-1], codec=Codec.ZSTD)
    for _ in range(100):
        app.pump(pipe)
        if app.streams[sid].complete:
            break
    assert app.streams[sid].head is not None and app.streams[sid].head["m"] == "echo_ok"
    assert bytes(app.streams[sid].body) == body[::-1]
    app.conn.close()
    app.pump(pipe)
    seen = server.drain()
    assert any(i.kind == "goaway" and i.code == Code.NO_ERROR for i in seen)
    assert not [i for i in server.log if i.frame is not None and i.frame.type == T.RESET]
