"""Peer connections: this server as the client of another server (protocol.md §15.1).

Owns :class:`PeerLinks`, the bounded cache of outbound peer connections, and
:class:`PeerLink`, one of them. A link is opened to a server of the configured peer table
only (:class:`~ionn_net.handoff.config.HandoffConfig`), says ``hello`` with a fresh random
session key of its own (never a client's, §15.1), and serves one client session's transfers
(fetches from, or pushes to, that peer), one at a time; what it has redeemed (§15.3) or
staged (§15.5) stays with it, so a client fetching partition after partition redeems its
grant once. At most ``max_peer_links`` links are open; an idle one closes after
``peer_idle_s``, the least recently used one when room is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ionn_net.aio import AioConnection, TransportOptions, connect
from ionn_net.client.session import handshake
from ionn_net.config import Limits
from ionn_net.errors import IonnError
from ionn_net.handoff.config import HandoffConfig
from ionn_net.messages import CONTROL_URGENCY, RequestError
from ionn_net.proto import Codec

__all__ = ["PeerLink", "PeerLinks", "PeerUnreachable"]


class PeerUnreachable(IonnError):
    """The peer could not be reached, or its connection ended (code ``unreachable``)."""


class PeerLink:
    """One outbound peer connection serving one client session (see the module)."""

    def __init__(self, conn: AioConnection, public: str) -> None:
        self.conn = conn
        self.public = public
        self.lock = asyncio.Lock()
        self.last_used = time.monotonic()
        #: model digest -> blob sizes the peer listed when the grant was redeemed (§15.3)
        self.redeemed: dict[str, Mapping[str, int]] = {}
        #: models whose manifest the peer has staged for the session, with the run sets
        #: it was asked to build ahead (§15.5)
        self.staged: dict[str, tuple[tuple[str, ...], ...]] = {}

    @property
    def closed(self) -> bool:
        return self.conn.closed

    async def call(
        self,
        head: Mapping[str, Any],
        body: bytes | memoryview = b"",
        *,
        urgency: int = CONTROL_URGENCY,
        limit: int,
        timeout: float,
    ) -> tuple[Mapping[str, Any], bytes]:
        """One request on the link (the body RAW: the backhaul is fast, §12.4); a link
        that fails or stays silent past ``timeout`` is closed: :class:`PeerUnreachable`."""
        self.last_used = time.monotonic()
        try:
            return await asyncio.wait_for(
                self.conn.request(
                    head, body, urgency=urgency, limit=limit, codec=Codec.RAW, incremental=True
                ),
                timeout,
            )
        except (OSError, TimeoutError, IonnError) as exc:
            # closed, reset, silent, or an answer above ``limit``: the link is dropped
            self.conn.abort()
            raise PeerUnreachable(f"peer {self.public}: {exc or 'timed out'}") from None


class PeerLinks:
    """The bounded cache of peer links (see the module docstring)."""

    def __init__(self, config: HandoffConfig, limits: Limits) -> None:
        self._config = config
        self._limits = limits
        self._links: dict[tuple[str, str], PeerLink] = {}
        self._opening = 0

    def __len__(self) -> int:
        return len(self._links)

    @contextlib.asynccontextmanager
    async def use(self, owner: str, public: str) -> AsyncIterator[PeerLink]:
        """The link of session ``owner`` to the peer clients call ``public`` (opened if
        needed), held for one transfer. ``unknown_peer`` if ``public`` is not a peer,
        ``busy`` when every link is in use, :class:`PeerUnreachable` if it cannot open."""
        address = self._config.backhaul(public)
        if address is None:
            raise RequestError("unknown_peer", f"{public}: not a peer of this server")
        self._sweep()
        link = self._links.get((owner, public))
        if link is None or link.closed:
            link = await self._open(owner, public, address)
        async with link.lock:
            try:
                yield link
            finally:
                link.last_used = time.monotonic()

    async def _open(self, owner: str, public: str, address: tuple[str, int]) -> PeerLink:
        self._links.pop((owner, public), None)
        if len(self._links) + self._opening >= self._config.max_peer_links:
            idle = [k for k, v in self._links.items() if not v.lock.locked()]
            if not idle:
                raise RequestError("busy", "every peer connection of this server is in use")
            oldest = min(idle, key=lambda k: self._links[k].last_used)
            self._links.pop(oldest).conn.abort()
        self._opening += 1
        try:
            conn = await self._connect(*address)
        finally:
            self._opening -= 1
        link = self._links[(owner, public)] = PeerLink(conn, public)
        return link

    async def _connect(self, host: str, port: int) -> AioConnection:
        limits = self._limits
        try:
            conn = await connect(host, port, limits=limits, options=TransportOptions())
        except (OSError, IonnError) as exc:
            raise PeerUnreachable(f"peer {host}:{port}: {exc}") from None
        try:
            key = os.urandom(16).hex()  # the link's own session, never a client's (§15.1)
            await asyncio.wait_for(
                handshake(conn, key, self._config.peer_secret, limits.max_message_size),
                limits.handshake_timeout_s,
            )
        except (OSError, TimeoutError, IonnError) as exc:
            conn.abort()
            raise PeerUnreachable(f"peer {host}:{port}: no session ({exc})") from None
        return conn

    def _sweep(self) -> None:
        """Close links idle for ``peer_idle_s`` and forget closed ones."""
        now = time.monotonic()
        for key, link in list(self._links.items()):
            idle = not link.lock.locked() and now - link.last_used > self._config.peer_idle_s
            if link.closed or idle:
                del self._links[key]
                link.conn.abort()

    async def close(self) -> None:
        links, self._links = list(self._links.values()), {}
        for link in links:
            link.conn.abort()
