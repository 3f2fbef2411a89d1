"""Byte channels for the reference peer: a TCP socket or an in-memory pipe.

A channel moves bytes and nothing else. ``recv`` blocks until at least one byte arrives, returns
b"" at end of stream, and raises :class:`PeerTimeout` when the peer stays silent past the deadline
(silence is a failure, as in h2spec's verifier).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Protocol


class PeerTimeout(Exception):
    """The peer sent nothing before the deadline."""


class Channel(Protocol):
    def send(self, data: bytes) -> None: ...

    def recv(self, max_bytes: int, timeout: float) -> bytes: ...

    def close(self) -> None: ...


class SocketChannel:
    """A connected TCP (or Unix) socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 5.0) -> SocketChannel:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, max_bytes: int, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(max_bytes)
        except TimeoutError:
            raise PeerTimeout(f"no byte from the peer within {timeout} s") from None
        except ConnectionResetError:
            return b""

    def close(self) -> None:
        self.sock.close()


class PipeChannel:
    """An in-memory pipe to a sans-I/O peer driven by ``pump``.

    The reference peer appends to ``outbound``; ``pump(channel)`` is called whenever the peer
    wants bytes that have not arrived: it must move ``outbound`` to the other implementation and
    append whatever that one produces to ``inbound`` (and set ``eof`` when it closed). A pump that
    produces nothing means the other side is silent, which is a timeout here because nothing else
    could ever make bytes appear.
    """

    def __init__(self, pump: Callable[[PipeChannel], None] | None = None) -> None:
        self.outbound = bytearray()
        self.inbound = bytearray()
        self.eof = False
        self.closed = False
        self.pump = pump

    def send(self, data: bytes) -> None:
        if self.closed:
            raise BrokenPipeError("send on a closed pipe")
        self.outbound += data

    def recv(self, max_bytes: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        for _ in range(3):  # a pump may need a round for replies to replies
            if self.inbound or self.eof or time.monotonic() > deadline:
                break
            if self.pump is not None:
                self.pump(self)
        if not self.inbound:
            if self.eof:
                return b""
            raise PeerTimeout("the in-memory peer produced no bytes")
        chunk = bytes(self.inbound[:max_bytes])
        del self.inbound[:max_bytes]
        return chunk

    def take_outbound(self) -> bytes:
        data = bytes(self.outbound)
        self.outbound.clear()
        return data

    def close(self) -> None:
        self.closed = True
