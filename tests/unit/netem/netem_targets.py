"""Loopback target server for the netem tests (real sockets, nothing faked)."""

from __future__ import annotations

import asyncio


class Target:
    """A TCP server that records what each connection sent and echoes it back.

    ``echo=False`` only records. ``received[i]`` holds the bytes of connection i,
    ``ended[i]`` how its read side ended: "eof", "reset" or None (still open).
    """

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.received: list[bytearray] = []
        self.ended: list[str | None] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.connected = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Target:
        def spawn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            task = asyncio.ensure_future(self._handle(r, w))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._server = await asyncio.start_server(spawn, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.received)
        self.received.append(bytearray())
        self.ended.append(None)
        self.writers.append(writer)
        self.connected.set()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    self.ended[index] = "eof"
                    break
                self.received[index] += data
                if self.echo:
                    writer.write(data)
                    await writer.drain()
        except ConnectionResetError:
            self.ended[index] = "reset"
        except OSError:
            self.ended[index] = "error"
        finally:
            writer.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
