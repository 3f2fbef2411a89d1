"""The operator's HTTP port: ``/metrics``, ``/v2/health/live``, ``/v2/health/ready``.

A deliberately small HTTP/1.x server on the event loop (``asyncio.start_server``), so that
no request can hold a thread, and a slow client costs a socket and a timer only:

* ``GET``/``HEAD`` ``/metrics``: ``prometheus_client``'s own exposition of the registry
  (text format, or OpenMetrics when the scraper's ``Accept`` asks for it), encoded in a
  worker thread after the gauges are refreshed on the loop;
* ``/v2/health/live``: 200 while the process serves this port (the Open Inference
  Protocol's liveness path);
* ``/v2/health/ready``: 200 once the server is warmed up and its store is open, 503
  before that and while it drains (§13.3);
* any other path 404, any other method 405. Every response closes its connection.

Bounds: at most ``max_connections`` requests at once (more are closed unanswered), a
request head of at most 8 KiB read within ``read_timeout_s``, and the response written
within ``write_timeout_s``, else the connection is aborted; a 64 KiB kernel send buffer
per connection (loopback would otherwise grow it to megabytes for a reader that reads
nothing). The response is handed to the
transport in one write: a scraper that reads one byte a second keeps only its own bytes
buffered, never the loop. No work depends on the number of sessions beyond the
exposition itself (label sets are bounded, :mod:`ionn_net.ops.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

__all__ = ["HEALTH_LIVE", "HEALTH_READY", "METRICS", "OpsEndpoint"]

logger = logging.getLogger("ionn_net.ops")

METRICS = "/metrics"
HEALTH_LIVE = "/v2/health/live"
HEALTH_READY = "/v2/health/ready"
_MAX_HEAD = 8 << 10
_SNDBUF = 64 << 10
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_REASONS[503] = "Service Unavailable"

#: ``ready() -> (ready, why not)``
Readiness = Callable[[], tuple[bool, str]]


class OpsEndpoint:
    """The metrics and health endpoint of one process (see the module docstring)."""

    def __init__(
        self,
        registry: CollectorRegistry | None,
        ready: Readiness,
        *,
        refresh: Callable[[], None] | None = None,
        max_connections: int = 16,
        read_timeout_s: float = 5.0,
        write_timeout_s: float = 10.0,
    ) -> None:
        self._registry = registry
        self._ready = ready
        self._refresh = refresh
        self._max = max_connections
        self._read_timeout = read_timeout_s
        self._write_timeout = write_timeout_s
        self._active = 0
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the ops endpoint is not listening")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def active(self) -> int:
        """Requests being served now (at most ``max_connections``)."""
        return self._active

    async def start(self, host: str, port: int) -> OpsEndpoint:
        self._server = await asyncio.start_server(self._serve, host, port, limit=_MAX_HEAD)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active >= self._max:
            writer.transport.abort()
            return
        self._active += 1
        clean = False
        sock = writer.get_extra_info("socket")
        if sock is not None:  # what a slow reader can leave in the kernel stays small
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SNDBUF)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._read_timeout)
            status, ctype, body, method = await self._respond(head)
            lines = [
                f"HTTP/1.1 {status} {_REASONS[status]}",
                f"Content-Type: {ctype}",
                f"Content-Length: {len(body)}",
                "Connection: close",
                "",
                "",
            ]
            writer.write("\r\n".join(lines).encode("latin-1") + (b"" if method == "HEAD" else body))
            await asyncio.wait_for(writer.drain(), self._write_timeout)
            clean = True
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a slow, silent or broken client: drop it
        finally:
            self._active -= 1
            if clean:
                writer.close()
            else:
                writer.transport.abort()

    async def _respond(self, head: bytes) -> tuple[int, str, bytes, str]:
        """(status, content type, body, method) for a request head."""
        text = head.decode("latin-1")
        request_line, _, rest = text.partition("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return 400, "text/plain; charset=utf-8", b"bad request\n", "GET"
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0]
        if path not in (METRICS, HEALTH_LIVE, HEALTH_READY):
            return 404, "text/plain; charset=utf-8", b"not found\n", method
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"method not allowed\n", method
        if path == HEALTH_LIVE:
            return 200, "text/plain; charset=utf-8", b"live\n", method
        if path == HEALTH_READY:
            ready, why = self._ready()
            if ready:
                return 200, "text/plain; charset=utf-8", b"ready\n", method
            return 503, "text/plain; charset=utf-8", f"not ready: {why}\n".encode(), method
        if self._registry is None:
            return 404, "text/plain; charset=utf-8", b"no metrics here\n", method
        if self._refresh is not None:
            self._refresh()  # on the loop: it reads server state
        encoder, ctype = choose_encoder(_header(rest, "accept"))
        body = await asyncio.to_thread(encoder, self._registry)
        return 200, ctype, body, method


def _header(headers: str, name: str) -> str:
    for line in headers.split("\r\n"):
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == name:
            return value.strip()
    return ""
