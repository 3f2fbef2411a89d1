"""The server's handoff service: both sides of protocol.md §15 behind one object.

Owns :class:`HandoffService`, which the :class:`~ionn_net.server.EdgeServer` creates and
asks for three things: the handlers of the §15 requests (:meth:`handlers`), to hand staged
blobs to a session that has just sent its manifest (:meth:`claim`), and to close its peer
connections (:meth:`close`). The previous server's side lives in :mod:`.source`, the next
server's in :mod:`.target`; they share the cache of peer connections (:mod:`.peers`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ionn_net.aio import ServerStream
from ionn_net.config import Limits
from ionn_net.handoff.config import HandoffConfig
from ionn_net.handoff.peers import PeerLinks
from ionn_net.handoff.source import HandoffSource
from ionn_net.handoff.target import HandoffTarget
from ionn_net.handoff.views import ConnView, ModelView, ServerView, SessionView
from ionn_net.ingest import BlobIngest
from ionn_net.messages import Fetch, Grant, Pull, Push, Redeem, Reply, Stage, StageBlob
from ionn_net.model.limits import SpecLimits

__all__ = ["HandoffService"]

Handler = Callable[[ConnView, ServerStream, object], Awaitable[tuple[Reply, bytes]]]


class HandoffService:
    """See the module docstring."""

    def __init__(
        self,
        server: ServerView,
        ingest: BlobIngest,
        config: HandoffConfig,
        limits: Limits,
        *,
        spec_limits: SpecLimits,
        max_manifest_bytes: int,
        nice: int,
    ) -> None:
        self.config = config
        self.links = PeerLinks(config, limits)
        self.source = HandoffSource(server, ingest.store, self.links, config, limits, nice=nice)
        self.target = HandoffTarget(
            server,
            ingest,
            self.links,
            config,
            limits,
            spec_limits=spec_limits,
            max_manifest_bytes=max_manifest_bytes,
        )

    def handlers(self) -> dict[type, Handler]:
        """The §15 requests and what answers each (the reply, and a body for ``pull``)."""

        def bodiless(method: Callable[..., Awaitable[Reply]]) -> Handler:
            async def handle(
                state: ConnView, stream: ServerStream, req: object
            ) -> tuple[Reply, bytes]:
                return await method(state, stream, req), b""

            return handle

        async def pull(state: ConnView, stream: ServerStream, req: object) -> tuple[Reply, bytes]:
            assert isinstance(req, Pull)
            return await self.source.on_pull(state, stream, req)

        return {
            Grant: bodiless(self.source.on_grant),
            Redeem: bodiless(self.source.on_redeem),
            Pull: pull,
            Push: bodiless(self.source.on_push),
            Fetch: bodiless(self.target.on_fetch),
            Stage: bodiless(self.target.on_stage),
            StageBlob: bodiless(self.target.on_stage_blob),
        }

    def claim(self, session: SessionView, model: str) -> ModelView | None:
        """Blobs staged for ``session`` and ``model`` become its own (§15.5); the model
        object staged layers were built into, if any (§15.5.5)."""
        return self.target.claim(session, model)

    @property
    def stats(self) -> dict[str, int]:
        return {**self.source.stats, **self.target.stats}

    async def close(self) -> None:
        await self.target.close()
        await self.links.close()
        self.source.close()
