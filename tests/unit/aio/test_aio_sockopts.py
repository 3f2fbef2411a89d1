"""Unit tests of ionn_net.aio.sockopts on real loopback sockets."""

from __future__ import annotations

import socket
import struct
import sys
import time

import pytest

from ionn_net.aio.sockopts import (
    TCP_NOTSENT_LOWAT,
    configure_socket,
    read_tcp_info,
    set_max_pacing_rate,
)
from ionn_net.errors import ConfigError

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO layout is Linux's")


@pytest.fixture
def pair() -> object:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    yield client, server
    for s in (client, server, listener):
        s.close()


def test_configure_sets_nodelay_and_lowat(pair: tuple[socket.socket, socket.socket]) -> None:
    client, _ = pair
    applied = configure_socket(client, notsent_lowat=96 * 1024)
    assert applied.nodelay
    assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    if sys.platform == "linux":
        assert applied.notsent_lowat == 96 * 1024
        assert client.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT) == 96 * 1024


def test_configure_leaves_lowat_alone_when_none(pair: tuple[socket.socket, socket.socket]) -> None:
    client, _ = pair
    before = client.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT)
    applied = configure_socket(client, notsent_lowat=None)
    assert applied.notsent_lowat is None
    assert client.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT) == before


def test_configure_skips_unix_sockets() -> None:
    a, b = socket.socketpair()
    try:
        assert configure_socket(a, notsent_lowat=1024).nodelay is False
        assert read_tcp_info(a) is None
    finally:
        a.close()
        b.close()


def test_configure_rejects_bad_lowat(pair: tuple[socket.socket, socket.socket]) -> None:
    with pytest.raises(ConfigError, match="notsent_lowat"):
        configure_socket(pair[0], notsent_lowat=0)


@linux_only
def test_tcp_info_counts_acknowledged_bytes(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    payload = b"x" * 200_000
    client.sendall(payload)
    received = 0
    while received < len(payload):
        received += len(server.recv(1 << 20))
    info = None
    for _ in range(100):  # the final ACK may trail the last recv by a moment
        info = read_tcp_info(client)
        assert info is not None
        if info.bytes_acked >= len(payload):
            break
    assert info is not None
    # bytes_acked counts the SYN as one byte (RFC 4898); bytes_sent does not.
    assert info.bytes_acked == len(payload) + 1
    assert info.bytes_sent == len(payload)
    assert info.notsent_bytes == 0
    assert info.total_retrans == 0  # loopback loses nothing; neighbours of the field are > 0
    assert 0 < info.rtt_s < 1.0
    assert info.delivery_rate > 0
    # The sender's MSS as the socket reports it (loopback: MTU 65536 less the headers).
    assert info.mss == client.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)


@linux_only
def test_tcp_info_reports_time_held_back_by_a_reader_that_stopped(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, _server = pair  # the server side never reads
    client.setblocking(False)
    before = read_tcp_info(client)
    assert before is not None and before.rwnd_limited_s == 0.0
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        try:
            client.send(b"x" * 65536)
        except BlockingIOError:
            time.sleep(0.01)
    info = read_tcp_info(client)
    assert info is not None
    assert info.notsent_bytes > 0
    assert 0.1 < info.rwnd_limited_s < 1.0  # about the 0.3 s since the window filled


@linux_only
def test_max_pacing_rate_is_set(pair: tuple[socket.socket, socket.socket]) -> None:
    client, _ = pair
    assert set_max_pacing_rate(client, 1_000_000)
    raw = client.getsockopt(socket.SOL_SOCKET, 47, 4)
    assert struct.unpack("=I", raw)[0] == 1_000_000
    assert set_max_pacing_rate(client, None)
    with pytest.raises(ConfigError, match="pacing rate"):
        set_max_pacing_rate(client, 0)


@linux_only
def test_congestion_control_is_set_and_read_back(pair: tuple[socket.socket, socket.socket]) -> None:
    client, _ = pair
    assert configure_socket(client, notsent_lowat=None, congestion="reno").congestion == "reno"
    # An unknown algorithm is refused by the kernel and reported as what stays in use.
    applied = configure_socket(client, notsent_lowat=None, congestion="no-such-cc")
    assert applied.congestion == "reno"
