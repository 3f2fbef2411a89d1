"""The reference peer against itself over a real socket pair (no ionn_net involved).

Checks that the peer is internally consistent before it is used to judge the library: handshake,
1 MiB bodies both ways within credit and MAX_FRAME_SIZE, zstd codecs, ping, graceful GOAWAY.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from tests.refpeer import Codec, Message, PeerClosed, RefPeer, SocketChannel
from tests.refpeer.wire import Code, shuffle, unshuffle


def _echo_server(sock: socket.socket, errors: list[BaseException], count: int) -> None:
    peer = RefPeer(SocketChannel(sock), client=False, timeout=5.0)
    try:
        peer.handshake()
        for _ in range(count):
            req = peer.accept_request()
            codec = int(str(req.head.get("codec", 0)))
            peer.send_message(req.stream_id, {"m": "echo", "n": len(req.body)}, req.body, codec)
        peer.drain()
    except BaseException as exc:  # reported to the test thread
        errors.append(exc)
    finally:
        sock.close()


@pytest.fixture
def pair() -> Iterator[Callable[[int], RefPeer]]:
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []
    clients: list[RefPeer] = []

    def start(count: int) -> RefPeer:
        a, b = socket.socketpair()
        t = threading.Thread(target=_echo_server, args=(b, errors, count), daemon=True)
        t.start()
        threads.append(t)
        client = RefPeer(SocketChannel(a), client=True, timeout=5.0)
        clients.append(client)
        return client

    yield start
    for c in clients:
        c.channel.close()
    for t in threads:
        t.join(timeout=5)
    assert not errors, errors


def test_handshake_and_megabyte_bodies_both_ways(pair: Callable[[int], RefPeer]) -> None:
    client = pair(3)
    client.handshake()
    assert client.version == 1
    body = os.urandom(1 << 20)
    for codec in (Codec.RAW, Codec.ZSTD, Codec.ZSTD_SHUFFLE4):
        resp: Message = client.request({"m": "echo", "codec": int(codec)}, body, codec=codec)
        assert resp.head["n"] == len(body)
        assert resp.body == body
    client.ping(b"12345678")
    client.goaway(Code.NO_ERROR)


def test_compressible_body_uses_zstd_frames(pair: Callable[[int], RefPeer]) -> None:
    client = pair(1)
    client.handshake()
    body = bytes(range(256)) * 4096
    resp = client.request({"m": "echo", "codec": 1}, body, codec=Codec.ZSTD)
    assert resp.body == body
    data_frames = [i.frame for i in client.log if i.kind == "data" and i.frame is not None]
    assert data_frames and all(f.codec == Codec.ZSTD for f in data_frames)
    assert sum(len(f.payload) for f in data_frames) < len(body) // 10


def test_shuffle_is_the_documented_permutation() -> None:
    data = bytes(range(12))
    # §12.2: input byte i*w + j goes to output byte j*n + i (w = 4, n = 3)
    assert shuffle(data, 4) == bytes([0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11])
    assert unshuffle(shuffle(data, 4), 4) == data
    assert unshuffle(shuffle(data, 2), 2) == data


def test_goaway_with_error_closes(pair: Callable[[int], RefPeer]) -> None:
    client = pair(0)
    client.handshake()
    client.goaway(Code.ENHANCE_YOUR_CALM, "bye")
    with pytest.raises(PeerClosed):
        client.poll()
