"""The next server's side of a handoff (protocol.md §15.4, §15.5).

Owns :class:`HandoffTarget`: it pulls a session's blobs from the previous server when the
client asks (``fetch``), accepts blobs a previous server pushes ahead of a client
(``stage``, ``stage_blob``) and hands them to the session that arrives with the matching
key and manifest (:meth:`HandoffTarget.claim`).

A peer server is untrusted input like any client: a pulled blob goes through the very path
of a client's upload (:class:`~ionn_net.ingest.BlobIngest`: this session's manifest names
it with this size, the session's byte budget, the SHA-256 of the whole blob before it is
stored), a pushed one through the same checks against the forwarded manifest, which is
validated like a client's (§10.3.2) and must hash to the digest it is staged under.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping

from ionn_net.aio import ServerStream
from ionn_net.config import Limits
from ionn_net.errors import SpecError
from ionn_net.handoff.config import HandoffConfig, stage_tag
from ionn_net.handoff.peers import PeerLink, PeerLinks, PeerUnreachable
from ionn_net.handoff.staging import Staged, StagingArea
from ionn_net.handoff.transfer import Transfer
from ionn_net.handoff.views import (
    ConnView,
    ModelView,
    ServerView,
    SessionView,
    model_of,
    session_of,
)
from ionn_net.ingest import BlobIngest, one_chunk
from ionn_net.messages import (
    BlobOk,
    Fetch,
    FetchOk,
    Pull,
    PullOk,
    Redeem,
    RedeemOk,
    RemoteError,
    RequestError,
    Stage,
    StageBlob,
    StageOk,
    bad_member,
    check_body_len,
    parse_reply,
)
from ionn_net.model.limits import SpecLimits
from ionn_net.model.schema import LOCAL_ONLY
from ionn_net.model.spec import graph_from_manifest, loads_manifest
from ionn_net.store import partial_key

__all__ = ["HandoffTarget"]

logger = logging.getLogger("ionn_net.handoff")

#: At most this many run sets are built ahead per staged model (as ``load``'s ``prepare``).
_MAX_PREPARE = 16


def _host(address: object) -> str:
    return str(address[0]) if isinstance(address, tuple) and address else str(address)


class HandoffTarget:
    """See the module docstring. ``stats`` counts what arrived and how."""

    def __init__(
        self,
        server: ServerView,
        ingest: BlobIngest,
        links: PeerLinks,
        config: HandoffConfig,
        limits: Limits,
        *,
        spec_limits: SpecLimits,
        max_manifest_bytes: int,
    ) -> None:
        self._server = server
        self._ingest = ingest
        self._store = ingest.store
        self._links = links
        self._config = config
        self._limit = limits.max_message_size
        self._spec_limits = spec_limits
        self._max_manifest_bytes = max_manifest_bytes
        self.staging = StagingArea(ingest.store, config)
        self._warming: dict[Staged, asyncio.Task[None]] = {}
        self.stats = {
            "fetched_blobs": 0,
            "fetch_failed": 0,
            "staged_blobs": 0,
            "claimed": 0,
            "built_ahead": 0,
            "build_ahead_failed": 0,
        }

    # -- §15.4 fetch ---------------------------------------------------------------------

    async def on_fetch(self, state: ConnView, stream: ServerStream, req: Fetch) -> FetchOk:
        session = session_of(state)
        model = model_of(session, req.model)  # never layers without the session's manifest
        unknown = [d for d in req.blobs if d not in model.blob_sizes]
        if unknown:
            raise RequestError("unknown_blob", f"blob {unknown[0]}: not in this model's manifest")
        if self._config.backhaul(req.source) is None:
            raise RequestError("unknown_peer", f"{req.source}: not a peer of this server")
        transfer = Transfer(req.blobs)
        owned = self._store.owned_by(session.hash)
        for digest in transfer.order:
            if digest in owned:
                transfer.ok(digest)
        budget = min(req.deadline_ms / 1000.0, self._config.max_transfer_s)
        try:
            async with asyncio.timeout(budget):
                async with self._links.use(session.hash, req.source) as link:
                    sizes = await self._redeem(link, req, stage_tag(session.key))
                    await self._pull_all(link, session, req, sizes, transfer)
        except TimeoutError:
            transfer.fail_rest("deadline_exceeded")
        except PeerUnreachable as exc:
            logger.info("fetch from %s stopped: %s", req.source, exc)
            transfer.give_up("unreachable")
        except RemoteError as exc:  # the source refused the grant (§15.3)
            transfer.give_up(exc.code)
        except RequestError as exc:  # busy, or a malformed answer from the source
            transfer.give_up(exc.code)
        self.stats["fetch_failed"] += len(transfer.failed)
        return FetchOk(
            fetched=tuple(transfer.done),
            failed=transfer.failed,
            source_error=transfer.peer_error,
            holdings=self._server.holdings_of(session.key, req.model),
        )

    async def _redeem(self, link: PeerLink, req: Fetch, tag: str) -> Mapping[str, int]:
        """The source's blob sizes for the model, redeeming the grant unless this link
        already did with the same one."""
        key = f"{req.model}:{req.grant}"
        sizes = link.redeemed.get(key)
        if sizes is None:
            redeem = Redeem(grant=req.grant, model=req.model, tag=tag)
            head, _ = await link.call(
                redeem.to_head(), limit=self._limit, timeout=self._config.max_transfer_s
            )
            sizes = link.redeemed[key] = parse_reply(head, RedeemOk).blobs
        return sizes

    async def _pull_all(
        self,
        link: PeerLink,
        session: SessionView,
        req: Fetch,
        sizes: Mapping[str, int],
        transfer: Transfer,
    ) -> None:
        slots = asyncio.Semaphore(self._config.pulls_in_flight)
        model = model_of(session, req.model)

        async def one(digest: str) -> None:
            size = model.blob_sizes[digest]
            if sizes.get(digest) != size:  # not held there, or not what the manifest says
                transfer.fail(digest, "unknown_blob")
                return
            async with slots:
                code = await self._pull_blob(link, session, req.model, digest, size)
            if code is None:
                transfer.ok(digest)
                self.stats["fetched_blobs"] += 1
            else:
                transfer.fail(digest, code)

        pending = [d for d in transfer.order if d not in transfer.done]
        results = await asyncio.gather(*(one(d) for d in pending), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result  # the link failed: the caller reports the rest

    async def _pull_blob(
        self, link: PeerLink, session: SessionView, model: str, digest: str, size: int
    ) -> str | None:
        """Pull one blob into the session exactly as if its client uploaded it; None when
        it is stored, else the error code. What arrived of it stays as the session's
        partial blob, which the client's upload resumes (§10.5.2)."""
        sizes = {d: n for m in session.models.values() for d, n in m.blob_sizes.items()}
        try:
            self._ingest.check_budget(session.hash, session.partials, sizes, digest, size)
        except RequestError as exc:
            return exc.code
        key = partial_key(session.hash, digest)
        session.partials.add(digest)
        offset = self._store.partial_offset(key)
        while offset < size:
            n = min(self._config.pull_piece, size - offset)
            pull = Pull(model=model, sha256=digest, offset=offset, length=n)
            head, data = await link.call(
                pull.to_head(), limit=n, timeout=self._config.max_transfer_s
            )
            try:
                ok = parse_reply(head, PullOk)
            except RemoteError as exc:
                return exc.code
            if ok.sha256 != digest or ok.offset != offset or len(data) != n:
                link.conn.abort()  # not what was asked: the source is not trusted further
                raise PeerUnreachable(f"pull of {digest}: the source answered another range")
            offset = await self._ingest.append(key, offset, one_chunk(data), n, kind="pull")
        try:
            # published when its client marked it public, as its own upload would be
            public = any(digest in m.public_marked for m in session.models.values())
            await self._ingest.complete(session.hash, digest, key, public=public)
        except RequestError as exc:  # digest_mismatch: dropped, as a client's would be
            return exc.code
        finally:
            session.partials.discard(digest)
        return None

    # -- §15.5 stage -----------------------------------------------------------------------

    def _peer_of(self, stream: ServerStream) -> str:
        """The pushing peer's host; ``unknown_peer`` unless it is one of this server's peers
        (§15.5.2): staging is for servers, and nothing else vouches for the sender."""
        host = _host(stream.connection.remote_address)
        if host not in self._config.peer_hosts():
            raise RequestError("unknown_peer", f"{host}: only peers of this server may stage")
        return host

    async def on_stage(self, state: ConnView, stream: ServerStream, req: Stage) -> StageOk:
        session_of(state)
        peer = self._peer_of(stream)
        expected = check_body_len(req.body_len, limit=self._max_manifest_bytes)
        body = await stream.read_body(expected)
        if len(body) != expected:
            raise RequestError("bad_request", f"body: expected {expected} bytes, got {len(body)}")
        if hashlib.sha256(body).hexdigest() != req.model:
            raise RequestError("bad_manifest", "model: the digest does not match the manifest")
        try:
            sizes, layer_blob, buildable = await asyncio.to_thread(self._validate, body)
        except SpecError as exc:
            raise RequestError("bad_manifest", str(exc)) from None
        if len(req.prepare) > _MAX_PREPARE or any(set(r) - buildable for r in req.prepare):
            raise bad_member("prepare", f"at most {_MAX_PREPARE} sets of buildable layers", None)
        entry = self.staging.stage(peer, req.tag, req.model, sizes, now=time.monotonic())
        entry.body, entry.layer_blob = body, layer_blob
        entry.prepare = tuple(r for r in req.prepare if r) or entry.prepare
        self._warm_soon(entry)
        return StageOk(model=req.model)

    def _validate(self, body: bytes) -> tuple[dict[str, int], dict[str, str | None], set[str]]:
        """§10.3.2, as for a client's manifest: the blobs' sizes, each layer's blob, and the
        layers a server may build (not inputs, not LocalOnly)."""
        manifest = loads_manifest(body, self._spec_limits, canonical=True)
        graph_from_manifest(manifest, self._spec_limits)
        layers = manifest.layers
        sizes = {s.blob_sha256: s.blob_size for s in layers if s.blob_sha256 is not None}
        layer_blob = {s.name: s.blob_sha256 for s in layers}
        buildable = {s.name for s in layers if s.cls not in ("InputLayer", LOCAL_ONLY)}
        return sizes, layer_blob, buildable

    async def on_stage_blob(self, state: ConnView, stream: ServerStream, req: StageBlob) -> BlobOk:
        session_of(state)
        peer = self._peer_of(stream)
        entry = self.staging.entry(peer, req.tag, req.model, now=time.monotonic())
        digest = req.sha256
        size = entry.sizes.get(digest)
        if size is None or req.size != size:
            raise RequestError("unknown_blob", f"blob {digest}: not in the staged manifest")
        if digest in entry.blobs:  # the bytes are read, and not looked at
            await stream.read_body(check_body_len(req.body_len, limit=size))
            return BlobOk(sha256=digest, offset=size, complete=True)
        key = entry.partial_key(digest)
        current = self._store.partial_offset(key)
        if req.offset != current:
            raise RequestError(
                "offset_conflict", f"blob {digest}: resume at {current}", offset=current
            )
        self.staging.check_budget(entry, digest)
        body_len = check_body_len(req.body_len, limit=size - req.offset)
        entry.partials.add(digest)
        offset = await self._ingest.append(key, req.offset, stream, body_len, kind="stage_blob")
        complete = offset == size
        if complete:
            try:
                await self._ingest.complete(None, digest, key)  # verified; nobody's yet
            finally:
                entry.partials.discard(digest)
            entry.blobs.add(digest)
            self.stats["staged_blobs"] += 1
            self._warm_soon(entry)
        if not self.staging.live(entry):  # claimed or expired meanwhile: keep nothing
            self._store.drop_partial(key)
        return BlobOk(sha256=digest, offset=offset, complete=complete)

    # -- §15.5 claim -----------------------------------------------------------------------

    def claim(self, session: SessionView, model: str) -> ModelView | None:
        """A session sent the manifest ``model``: the blobs staged for its key's tag and
        that manifest become its own, within its byte budget (§14.5, §15.5.4). Returns the
        model object staged layers were built into, if any was and every staged blob fitted
        (§15.5.5), for the session to take as its model."""
        entries = self.staging.claim(stage_tag(session.key), model, now=time.monotonic())
        owned = self._store.owned_by(session.hash)
        used = self._store.bytes_owned_by(session.hash)
        claimed, complete = 0, True
        for entry in entries:
            for digest in sorted(entry.blobs - owned, key=lambda d: entry.sizes[d]):
                size = entry.sizes[digest]
                if used + size > self._ingest.max_bytes_per_session:
                    complete = False
                    continue
                self._store.record_owner(session.hash, digest)
                owned |= {digest}
                used += size
                claimed += 1
        self.stats["claimed"] += claimed
        built = [e.built for e in entries if e.built is not None]
        return built[0] if built and complete else None

    # -- §15.5.5 layers built ahead ---------------------------------------------------------

    def _warm_soon(self, entry: Staged) -> None:
        """Build the staged run sets whose blobs are all here, in the background (one task
        per entry; blobs that arrive meanwhile are picked up by the same task)."""
        if not entry.prepare or not any(entry.buildable(r) for r in entry.prepare):
            return
        entry.dirty = True
        if entry in self._warming:
            return
        task = asyncio.get_running_loop().create_task(self._warm(entry))
        self._warming[entry] = task
        task.add_done_callback(lambda _: self._warming.pop(entry, None))

    async def _warm(self, entry: Staged) -> None:
        try:
            while entry.dirty and self.staging.live(entry):
                entry.dirty = False
                if entry.built is None:
                    entry.built = await asyncio.to_thread(self._server.new_model, entry.body)
                built = entry.built
                ready = built.ready
                sets = [r for r in entry.prepare if entry.buildable(r) and not set(r) <= ready]
                names = sorted({n for r in sets for n in r} - ready)
                if sets:
                    await self._server.build(built, names, sets)
                    self.stats["built_ahead"] += len(names)
        except Exception:  # the client loads them itself; nothing is lost
            self.stats["build_ahead_failed"] += 1
            logger.exception("building staged layers ahead failed")

    async def close(self) -> None:
        """Stop building ahead (waits for the build in progress: threads cannot stop)."""
        tasks = list(self._warming.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
