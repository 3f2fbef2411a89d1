"""The previous server's side of a handoff (protocol.md §15.2, §15.3, §15.5).

Owns :class:`HandoffSource`: it issues grants to its sessions (``grant``), opens a grant's
scope on the peer connection that redeems it (``redeem``), serves the blobs in that scope
(``pull``), and pushes a session's blobs to a candidate next server when the client asks
(``push``). Reading blobs for a push runs on a thread of lowered priority and the push's
messages go at the lowest urgency (§8.1), so that it yields to the client's queries and
upload on this server.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

from ionn_net.aio import AioConnection, ServerStream
from ionn_net.config import Limits
from ionn_net.errors import StoreError
from ionn_net.handoff.config import HandoffConfig, stage_tag
from ionn_net.handoff.grants import GrantIssuer, GrantScope
from ionn_net.handoff.peers import PeerLink, PeerLinks, PeerUnreachable
from ionn_net.handoff.transfer import Transfer
from ionn_net.handoff.views import ConnView, ModelView, ServerView, model_of, session_of
from ionn_net.messages import (
    BlobOk,
    Grant,
    GrantOk,
    Pull,
    PullOk,
    Push,
    PushOk,
    Redeem,
    RedeemOk,
    RemoteError,
    RequestError,
    Stage,
    StageBlob,
    StageOk,
    parse_reply,
)
from ionn_net.offthread import lower_priority, to_thread_to_the_end
from ionn_net.store import BlobStore, StoreUnavailableError

__all__ = ["PUSH_URGENCY", "HandoffSource"]

logger = logging.getLogger("ionn_net.handoff")

#: §8.1: a push is the least urgent traffic there is.
PUSH_URGENCY = 7
#: Blob bytes kept per peer connection between its pulls (at least the blob being pulled).
_READ_CACHE_BYTES = 256 << 20


class HandoffSource:
    """See the module docstring. ``stats`` counts grants, redemptions and bytes served."""

    def __init__(
        self,
        server: ServerView,
        store: BlobStore,
        links: PeerLinks,
        config: HandoffConfig,
        limits: Limits,
        *,
        nice: int,
    ) -> None:
        self._server = server
        self._store = store
        self._links = links
        self._config = config
        self._limits = limits
        self._limit = limits.max_message_size
        self.grants = GrantIssuer(
            config.grant_key,
            max_ttl_s=config.grant_ttl_s,
            uses=config.grant_uses,
            max_remembered=config.max_grants_remembered,
        )
        #: per peer connection: model digest -> the scope of the grant redeemed for it
        self._scopes: weakref.WeakKeyDictionary[AioConnection, dict[str, GrantScope]] = (
            weakref.WeakKeyDictionary()
        )
        #: per peer connection: the blobs read last (pulls of a blob come piece by piece,
        #: a few blobs at a time), so that a store that verifies every read reads each once
        self._reads: weakref.WeakKeyDictionary[AioConnection, dict[str, bytes]] = (
            weakref.WeakKeyDictionary()
        )
        self._reader = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ionn-push", initializer=lower_priority,
            initargs=(nice,),
        )  # fmt: skip
        self.stats = {"grants": 0, "redeemed": 0, "pulled_bytes": 0, "pushed_blobs": 0}

    def close(self) -> None:
        self._reader.shutdown(wait=False)

    # -- §15.2 grant -------------------------------------------------------------------

    async def on_grant(self, state: ConnView, stream: ServerStream, req: Grant) -> GrantOk:
        session = session_of(state)
        model_of(session, req.model)  # a grant only for a manifest this session sent
        token, life = self.grants.issue(session.hash, req.model, req.ttl_s, now=time.time())
        self.stats["grants"] += 1
        return GrantOk(grant=token, ttl_s=life, uses=self.grants.uses)

    # -- §15.3 redeem and pull ---------------------------------------------------------

    async def on_redeem(self, state: ConnView, stream: ServerStream, req: Redeem) -> RedeemOk:
        session_of(state)  # the peer said hello like any client (§15.1)
        now = time.time()
        scope, uses = self.grants.verify(req.grant, now=now)  # bad_grant, grant_expired
        if scope.model != req.model:
            raise RequestError("out_of_scope", f"grant: for model {scope.model}, not this one")
        session = self._server.find_session(scope.session)
        model = None if session is None else session.models.get(scope.model)
        if session is None or model is None:
            raise RequestError("unknown_model", "the granting session or its model is gone")
        if not hmac.compare_digest(stage_tag(session.key), req.tag):
            raise RequestError("out_of_scope", "grant: issued to another session")
        self.grants.consume(scope, uses, now=now)  # grant_used_up, busy: nothing changed
        self._scopes.setdefault(stream.connection, {})[req.model] = scope
        self.stats["redeemed"] += 1
        owned = self._store.owned_by(scope.session)
        held = {d: n for d, n in model.blob_sizes.items() if d in owned}
        return RedeemOk(model=req.model, blobs=held)

    async def on_pull(
        self, state: ConnView, stream: ServerStream, req: Pull
    ) -> tuple[PullOk, bytes]:
        session_of(state)
        scope = self._scopes.get(stream.connection, {}).get(req.model)
        if scope is None:
            raise RequestError("out_of_scope", "pull: redeem a grant for this model first")
        if time.time() >= scope.expires:
            raise RequestError("grant_expired", "pull: the redeemed grant has expired")
        session = self._server.find_session(scope.session)
        model = None if session is None else session.models.get(scope.model)
        size = None if model is None else model.blob_sizes.get(req.sha256)
        if size is None or req.sha256 not in self._store.owned_by(scope.session):
            raise RequestError("out_of_scope", f"pull: blob {req.sha256} is not in the grant")
        cap = self._limits.max_message_size
        if req.offset + req.length > size or req.length > cap:
            raise RequestError(
                "bad_request", f"pull: expected a range within {size} bytes, at most {cap}"
            )
        try:
            data = await self._read(stream.connection, req.sha256)
        except StoreUnavailableError as exc:
            raise RequestError("internal", f"pull: blob {req.sha256}: {exc}") from None
        except StoreError:  # failed verification on read and discarded: no longer held
            raise RequestError("out_of_scope", f"pull: blob {req.sha256} is not held") from None
        piece = data[req.offset : req.offset + req.length]
        self.stats["pulled_bytes"] += len(piece)
        return PullOk(sha256=req.sha256, offset=req.offset, body_len=len(piece)), piece

    async def _read(self, conn: AioConnection, digest: str) -> bytes:
        cached = self._reads.setdefault(conn, {})
        data = cached.pop(digest, None)
        if data is None:
            data = await to_thread_to_the_end(self._store.get, digest, pool=self._reader)
            while cached and sum(map(len, cached.values())) + len(data) > _READ_CACHE_BYTES:
                cached.pop(next(iter(cached)))  # the least recently used goes
        cached[digest] = data
        return data

    # -- §15.5 push ----------------------------------------------------------------------

    async def on_push(self, state: ConnView, stream: ServerStream, req: Push) -> PushOk:
        session = session_of(state)
        model = model_of(session, req.model)
        unknown = [d for d in req.blobs if d not in model.blob_sizes]
        if unknown:
            raise RequestError("unknown_blob", f"blob {unknown[0]}: not in this model's manifest")
        if self._config.backhaul(req.target) is None:
            raise RequestError("unknown_peer", f"{req.target}: not a peer of this server")
        transfer = Transfer(req.blobs)
        owned = self._store.owned_by(session.hash)
        for digest in transfer.order:
            if digest not in owned:
                transfer.fail(digest, "missing_blobs")
        budget = min(req.deadline_ms / 1000.0, self._config.max_transfer_s)
        try:
            async with asyncio.timeout(budget):
                async with self._links.use(session.hash, req.target) as link:
                    await self._stage(link, stage_tag(session.key), req, model)
                    for digest in [d for d in transfer.order if d not in transfer.failed]:
                        try:
                            await self._push_blob(link, req, stage_tag(session.key), digest, model)
                        except StoreUnavailableError:
                            raise
                        except StoreError:  # failed verification on read: no longer held
                            transfer.fail(digest, "missing_blobs")
                            continue
                        transfer.ok(digest)
                        self.stats["pushed_blobs"] += 1
        except TimeoutError:
            transfer.fail_rest("deadline_exceeded")
        except PeerUnreachable as exc:
            logger.info("push to %s stopped: %s", req.target, exc)
            transfer.give_up("unreachable")
        except RemoteError as exc:  # the target refused: staging, a limit, a blob
            transfer.give_up(exc.code)
        except RequestError as exc:  # busy, unknown_peer
            transfer.give_up(exc.code)
        return PushOk(
            pushed=tuple(transfer.done), failed=transfer.failed, target_error=transfer.peer_error
        )

    async def _stage(self, link: PeerLink, tag: str, req: Push, model: ModelView) -> None:
        """The manifest, once per peer connection, and again when the run sets to build
        ahead change (§15.5.2, §15.5.5)."""
        if link.staged.get(req.model) == req.prepare:
            return
        body = model.manifest.to_json_bytes()  # canonical: its SHA-256 is the digest (§10.3.1)
        stage = Stage(model=req.model, tag=tag, body_len=len(body), prepare=req.prepare)
        head, _ = await link.call(
            stage.to_head(), body, limit=self._limit, timeout=self._config.max_transfer_s
        )
        parse_reply(head, StageOk)
        link.staged[req.model] = req.prepare

    async def _push_blob(
        self, link: PeerLink, req: Push, tag: str, digest: str, model: ModelView
    ) -> None:
        size = model.blob_sizes[digest]
        data = memoryview(await to_thread_to_the_end(self._store.get, digest, pool=self._reader))
        offset, piece = 0, self._config.pull_piece
        for _ in range(size // piece + 3):  # each turn sends a piece or adopts an offset
            n = min(piece, size - offset)
            msg = StageBlob(
                model=req.model, tag=tag, sha256=digest, size=size, offset=offset, body_len=n
            )
            head, _ = await link.call(
                msg.to_head(), data[offset : offset + n], urgency=PUSH_URGENCY,
                limit=self._limit, timeout=self._config.max_transfer_s,
            )  # fmt: skip
            try:
                ok = parse_reply(head, BlobOk)
            except RemoteError as exc:
                if exc.code != "offset_conflict" or exc.error.offset is None:
                    raise
                offset = exc.error.offset  # the target's offset is authoritative (§10.5.2)
                continue
            if ok.complete:
                return
            offset = ok.offset
        link.conn.abort()
        raise PeerUnreachable(f"push of {digest}: the target makes no progress")
