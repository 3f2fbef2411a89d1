"""Entry points of the asyncio API: ``connect()`` and ``serve()``.

Both follow the ``websockets`` idiom: the returned object is awaitable *and* an async
context manager, so either form works::

    async with connect("127.0.0.1", port) as conn:          # closes gracefully on exit
        head, body = await conn.request({"m": "have", "model": digest})

    conn = await connect("127.0.0.1", port)                 # caller closes: conn.aclose()

    async with serve(handler, "127.0.0.1", 0) as server:    # handler(stream: ServerStream)
        print(server.port)

The event loop is chosen where it is created (``ionn_net.aio.run(main())`` uses uvloop when
installed; ``IONN_NET_NO_UVLOOP=1`` opts out); these functions run on the current loop.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as _ssl
from collections.abc import Callable, Generator
from typing import Any

from ionn_net.aio.connection import AioConnection, Handler
from ionn_net.aio.errors import ConnectionClosedError
from ionn_net.aio.options import TransportOptions
from ionn_net.aio.protocol import logger
from ionn_net.config import Limits
from ionn_net.errors import ConfigError
from ionn_net.proto import ErrorCode

__all__ = ["ConnectionHook", "Server", "connect", "serve"]

#: Called with each accepted connection once its socket (and TLS) is up, before the peer's
#: preface is read: e.g. to arm an application deadline that counts from the accept (§14.4).
ConnectionHook = Callable[[AioConnection], None]


def _check_port(port: object) -> int:
    if type(port) is not int or not 0 <= port <= 65535:
        raise ConfigError(f"port: expected an int in 0..65535, got {port!r}")
    return port


class _Connect:
    """Awaitable / async context manager returned by :func:`connect`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        limits: Limits,
        options: TransportOptions,
        ssl: _ssl.SSLContext | None,
        server_hostname: str | None,
    ) -> None:
        self._args = (host, _check_port(port), limits, options, ssl, server_hostname)
        self._conn: AioConnection | None = None

    async def _open(self) -> AioConnection:
        host, port, limits, options, ssl, server_hostname = self._args
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.handshake_timeout_s
        conn = AioConnection(client=True, limits=limits, options=options)
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: conn.protocol, host, port, ssl=ssl, server_hostname=server_hostname
                ),
                limits.handshake_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise ConnectionClosedError(
                f"cannot connect to {host}:{port}: {exc or 'timed out'}",
                error_code=ErrorCode.TIMEOUT
                if isinstance(exc, TimeoutError)
                else (ErrorCode.INTERNAL_ERROR),
                remote=False,
                cause=exc,
            ) from exc
        await conn.wait_ready(max(deadline - loop.time(), 0.001))
        logger.debug("connected to %s:%d", host, port)
        return conn

    def __await__(self) -> Generator[Any, None, AioConnection]:
        return self._open().__await__()

    async def __aenter__(self) -> AioConnection:
        self._conn = await self._open()
        return self._conn

    async def __aexit__(self, *exc_info: object) -> None:
        if self._conn is not None:
            await self._conn.aclose()


def connect(
    host: str,
    port: int,
    *,
    limits: Limits | None = None,
    options: TransportOptions | None = None,
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> _Connect:
    """Open a client connection and complete the handshake (preface + SETTINGS).

    One deadline, ``limits.handshake_timeout_s``, bounds TCP connect, TLS and the handshake.
    Raises :class:`ConnectionClosedError` when it cannot be established.
    """
    return _Connect(
        host,
        port,
        limits=limits or Limits(),
        options=options or TransportOptions(),
        ssl=ssl,
        server_hostname=server_hostname,
    )


class Server:
    """A listening IONN-NET server; ``port`` is the bound port."""

    def __init__(
        self,
        handler: Handler,
        limits: Limits,
        options: TransportOptions,
        on_connection: ConnectionHook | None = None,
    ) -> None:
        self._handler = handler
        self._on_connection = on_connection
        self.limits = limits
        self.options = options
        self.connections: set[AioConnection] = set()
        self._server: asyncio.Server | None = None
        self._closing = False
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._finisher: asyncio.Task[None] | None = None
        self._ssl: _ssl.SSLContext | None = None

    def _protocol_factory(self) -> asyncio.BaseProtocol:
        conn = AioConnection(
            client=False,
            limits=self.limits,
            options=self.options,
            handler=self._handler,
            on_made=self._on_made,
            on_closed=self.connections.discard,
        )
        return conn.protocol

    def _on_made(self, conn: AioConnection) -> None:
        # Tracked only once the socket (and TLS) is up: a failed TLS handshake never
        # reaches the protocol, and must not leave a connection behind.
        self.connections.add(conn)
        if self._closing:
            conn.close()
        elif self._on_connection is not None:
            self._on_connection(conn)

    async def _start(
        self, host: str | None, port: int, ssl: _ssl.SSLContext | None, listen: bool
    ) -> Server:
        self._ssl = ssl
        if not listen:
            return self
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol_factory, host, port, ssl=ssl)
        logger.debug("serving on %s", self.sockets)
        return self

    async def adopt(self, sock: socket.socket) -> None:
        """Serve a connection accepted elsewhere (a supervisor process that accepts and
        hands sockets to workers) as if this server had accepted it; closed at once if
        the server is closing."""
        if self._closing:
            sock.close()
            return
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(self._protocol_factory, sock, ssl=self._ssl)

    @property
    def sockets(self) -> list[Any]:
        return [] if self._server is None else [s.getsockname() for s in self._server.sockets]

    @property
    def port(self) -> int:
        """The first bound port (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            raise ConnectionClosedError(
                "the server is not listening", error_code=ErrorCode.NO_ERROR, remote=False
            )
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def close(self) -> None:
        """Stop accepting and drain every connection gracefully (GOAWAY, §13.3)."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close()
        self._finisher = asyncio.get_running_loop().create_task(self._finish())

    async def _finish(self) -> None:
        try:
            if self._server is not None:
                await self._server.wait_closed()
            for conn in list(self.connections):
                await conn.wait_closed()
        finally:
            if not self._closed.done():
                self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()


class _Serve:
    """Awaitable / async context manager returned by :func:`serve`."""

    def __init__(
        self,
        handler: Handler,
        host: str | None,
        port: int,
        *,
        limits: Limits,
        options: TransportOptions,
        ssl: _ssl.SSLContext | None,
        listen: bool,
        on_connection: ConnectionHook | None,
    ) -> None:
        if not callable(handler):
            raise ConfigError(f"handler: expected an async callable, got {handler!r}")
        if on_connection is not None and not callable(on_connection):
            raise ConfigError(f"on_connection: expected a callable, got {on_connection!r}")
        self._args = (handler, host, _check_port(port), limits, options, ssl, listen)
        self._on_connection = on_connection
        self._server: Server | None = None

    async def _open(self) -> Server:
        handler, host, port, limits, options, ssl, listen = self._args
        server = Server(handler, limits, options, self._on_connection)
        return await server._start(host, port, ssl, listen)

    def __await__(self) -> Generator[Any, None, Server]:
        return self._open().__await__()

    async def __aenter__(self) -> Server:
        self._server = await self._open()
        return self._server

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            await self._server.__aexit__(*exc_info)


def serve(
    handler: Handler,
    host: str | None,
    port: int,
    *,
    limits: Limits | None = None,
    options: TransportOptions | None = None,
    ssl: _ssl.SSLContext | None = None,
    listen: bool = True,
    on_connection: ConnectionHook | None = None,
) -> _Serve:
    """Listen on ``host:port``; ``handler(stream)`` runs for every peer-initiated stream.

    A handler that raises resets its stream with INTERNAL_ERROR; one that returns without
    ending its response likewise. Closing the server drains connections gracefully. With
    ``listen=False`` no socket is opened: the server serves what :meth:`Server.adopt`
    hands it. ``on_connection(conn)`` (optional) is called with every accepted (or
    adopted) connection as soon as its socket is up, whatever the peer sends afterwards.
    """
    return _Serve(
        handler,
        host,
        port,
        limits=limits or Limits(),
        options=options or TransportOptions(),
        ssl=ssl,
        listen=listen,
        on_connection=on_connection,
    )
