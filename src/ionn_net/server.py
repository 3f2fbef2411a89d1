"""EdgeServer: sessions, incremental model assembly and query execution.

This module owns the server side of protocol.md §10. One :class:`EdgeServer` serves
many clients, one *session* each (named by the client's session key, so it survives
reconnects). Per session it keeps one :class:`~ionn_net.server_model.ServerModel` per
validated manifest (the layers built so far, their executor and run sets); blobs live in
a content-addressed :class:`~ionn_net.store.BlobStore` shared by all sessions. Once a
manifest is valid the server times its layers in the background
(:mod:`ionn_net.server_timing`) and tells the client what it measured (§10.11).

Tenant rule (protocol.md §14.5): the server only ever tells a session about blobs that
this session uploaded (``blobs_held``) or that are public (``blobs_public``: its catalog
and blobs other sessions uploaded under a public marking, §14.5.1, handled by
:mod:`ionn_net.server_catalog`). Storage is deduplicated silently (a blob already stored
by another tenant is verified again when this session uploads it, and not written twice),
so nothing about other tenants' private models leaks through ``manifest_ok`` /
``have_ok`` or resume offsets (partials are keyed per session).

Everything slow (hashing blobs, building Keras layers, compiling slices, running
inference) runs in worker threads, never on the event loop. A request that fails
validation is answered with an ``error`` message and changes nothing; an unexpected
failure is logged once and answered with ``internal``; other sessions are unaffected.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ionn_net import __version__
from ionn_net.aio import ServerStream, TransportOptions, serve
from ionn_net.aio.connection import AioConnection
from ionn_net.catalog import Catalog
from ionn_net.errors import ConfigError, IonnError, SpecError, StoreError, TensorError
from ionn_net.handoff.service import HandoffService
from ionn_net.ingest import BlobIngest
from ionn_net.messages import (
    Auth,
    Blob,
    BlobOk,
    Challenge,
    Error,
    Have,
    HaveOk,
    Hello,
    Holdings,
    Load,
    LoadOk,
    Manifest,
    ManifestOk,
    PullOk,
    Query,
    Reply,
    Request,
    RequestError,
    Result,
    Timings,
    TimingsOk,
    Welcome,
    bad_member,
    check_body_len,
    hmac_proof,
    request_type,
)
from ionn_net.model.graph import LayerGraph, TensorRef
from ionn_net.model.spec import graph_from_manifest, loads_manifest
from ionn_net.ops.hooks import ServerGauges, ServerHooks
from ionn_net.planner.costmodel import ServerCostModel
from ionn_net.planner.prior import LayerPrior
from ionn_net.proto import Codec, ErrorCode
from ionn_net.server_catalog import PublicHoldings
from ionn_net.server_config import ServerConfig
from ionn_net.server_model import ServerModel, lower_priority, to_thread_to_the_end, warm_up
from ionn_net.server_stages import build_for_load
from ionn_net.server_timing import ServerTimer, WorkGauge, predicted_times
from ionn_net.store import (
    BlobStore,
    DirectoryStore,
    StoreUnavailableError,
    open_store,
    partial_key,
)
from ionn_net.tensors import SignatureError, boundary_signature, decode_tensors, encode_tensors

__all__ = ["EdgeServer", "ServerConfig"]

#: Threads that build and compile loaded layers (loads of one model are serial).
_LOADER_THREADS = 2

logger = logging.getLogger("ionn_net.server")

Response = tuple[Reply, bytes]


class _Session:
    def __init__(self, key: str, config: ServerConfig) -> None:
        self.key = key
        self.hash = hashlib.sha256(key.encode()).hexdigest()[:32]
        self.models: dict[str, ServerModel] = {}
        self.queries = asyncio.Semaphore(config.max_queries_per_session)
        self.last_used = time.monotonic()
        self.partials: set[str] = set()  # blobs with an unfinished upload in the store


@dataclass(slots=True)
class _Call:
    """What one request's hooks report (filled in as it is answered)."""

    kind: str = "unknown"
    outcome: str = "cancelled"
    qid: str | None = None
    detail: str = ""


@dataclass(slots=True)
class _ConnState:
    session: _Session | None = None
    client_nonce: bytes | None = None
    server_nonce: bytes | None = None
    pending_key: str | None = None


class EdgeServer:
    """The edge server. ``async with EdgeServer(port=0) as server: server.port``.

    ``store`` is a :class:`BlobStore`, a directory path (durable store), a
    ``redis://host:port/db`` URL (store shared by a site's servers) or ``None`` (in
    memory). ``catalog`` is a :class:`~ionn_net.catalog.Catalog` or its directory, opened
    at start (a directory that is not a catalog raises
    :class:`~ionn_net.catalog.CatalogError` and the server does not start; refused entries
    are logged and the rest is served). ``cost_model`` is sent to clients in ``welcome``
    (§10.10); by default the server calibrates one on this machine on first start, cached
    in the store directory, in the Redis store (per host), or else in ``~/.cache/ionn_net``.
    ``hooks`` receive every event (logs, metrics: :mod:`ionn_net.ops`). With
    ``listen=False`` the server opens no socket and serves the connections handed to
    :meth:`adopt` (a worker of ``ionn-server --workers``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        store: BlobStore | str | os.PathLike[str] | None = None,
        config: ServerConfig | None = None,
        cost_model: ServerCostModel | None = None,
        prior: LayerPrior | None = None,
        ssl: Any = None,
        catalog: Catalog | str | os.PathLike[str] | None = None,
        hooks: ServerHooks | None = None,
        listen: bool = True,
    ) -> None:
        self.host = host
        self._port = port
        self.config = config or ServerConfig()
        self.store: BlobStore = open_store(store)
        self._catalog = catalog
        #: The catalog and the published blobs (§14.5.1).
        self.public = PublicHoldings(
            self.store,
            limits=self.config.spec_limits,
            jit=self.config.jit,
            trunks=self.config.catalog_trunks,
        )
        self._cost_model = cost_model
        self._prior = prior
        self._ssl = ssl
        self.hooks = hooks or ServerHooks()
        self.ingest = BlobIngest(
            self.store, self.config.max_bytes_per_session, received=self.hooks.received
        )
        self._listen = listen
        self._draining = False
        self._layers_ready = 0  # over every session's models (a gauge)
        self._sessions: dict[str, _Session] = {}
        self._conns: weakref.WeakKeyDictionary[AioConnection, _ConnState] = (
            weakref.WeakKeyDictionary()
        )
        self._server: Any = None
        self._inference = asyncio.Semaphore(self.config.inference_threads)
        # §10 requests by type: each handler gets the parsed message.
        self._handlers: dict[type[Request], Callable[..., Awaitable[Response]]] = {
            Hello: self._on_hello,
            Auth: self._on_auth,
            Manifest: self._on_manifest,
            Have: self._on_have,
            Blob: self._on_blob,
            Load: self._on_load,
            Query: self._on_query,
            Timings: self._on_timings,
        }
        self.handoff = HandoffService(
            self,
            self.ingest,
            self.config.handoff,
            self.config.limits,
            spec_limits=self.config.spec_limits,
            max_manifest_bytes=self.config.max_manifest_bytes,
            nice=self.config.loader_nice,
        )
        self._handlers.update(self.handoff.handlers())  # §15
        self.stats = {"queries": 0, "errors": 0, "blobs": 0, "loads": 0}
        self._background: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Future[None] | None = None
        self._loader = ThreadPoolExecutor(
            max_workers=_LOADER_THREADS,
            thread_name_prefix="ionn-loader",
            initializer=lower_priority,
            initargs=(self.config.loader_nice,),
        )
        #: queries and loads in flight: the timer keeps out of their way (§10.11.1)
        self.work = WorkGauge()
        self._timer = ServerTimer(
            self.config.timing, self.work, limits=self.config.spec_limits, jit=self.config.jit
        )

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise ConfigError("the server is not started")
        port: int = self._server.port
        return port

    @property
    def connections(self) -> tuple[AioConnection, ...]:
        """The live client connections (e.g. to watch their ``outbound_bytes``, §14.3)."""
        return () if self._server is None else tuple(self._server.connections)

    async def start(self) -> EdgeServer:
        await asyncio.to_thread(self.public.open_catalog, self._catalog, self.config.catalog_warm)
        if self._cost_model is None:
            self._cost_model, self._prior = await asyncio.to_thread(self._load_or_calibrate)
        await asyncio.to_thread(warm_up)
        self._server = await serve(
            self._handle,
            self.host,
            self._port,
            limits=self.config.limits,
            # A drain (§13.3) lets connections finish their streams until its own deadline,
            # then aborts them (and counts them): each connection's deadline comes later.
            options=TransportOptions(close_timeout_s=self.config.drain_timeout_s + 1.0),
            ssl=self._ssl,
            listen=self._listen,
            on_connection=self._arm_hello_deadline,
        )
        if self._listen:
            logger.info("edge server listening on %s:%d", self.host, self.port)
        self.public.start_warm()  # its own thread, lowest priority: never on a query's path
        self._sweeper = asyncio.ensure_future(self._sweep_periodically())
        return self

    async def _sweep_periodically(self) -> None:
        """§14.5: partial uploads not appended to for the store's TTL expire while the
        server runs, not only when a store opens."""
        while True:
            await asyncio.sleep(self.config.sweep_interval_s)
            try:
                if swept := await asyncio.to_thread(self.store.sweep_partials):
                    logger.info("swept %d stale partial uploads", swept)
            except StoreError as exc:
                logger.warning("sweeping stale partial uploads failed: %s", exc)

    async def adopt(self, sock: Any) -> None:
        """Serve a connection another process accepted (see ``listen``)."""
        if self._server is None:
            raise ConfigError("the server is not started")
        await self._server.adopt(sock)

    @property
    def draining(self) -> bool:
        """True once :meth:`drain` began: the server is not ready for new clients."""
        return self._draining

    def gauges(self) -> ServerGauges:
        """What the server holds now (each O(1): read at every metrics scrape)."""
        usage = self.store.usage()
        connections = 0 if self._server is None else len(self._server.connections)
        return ServerGauges(
            connections=connections,
            sessions=len(self._sessions),
            layers_ready=self._layers_ready,
            draining=self._draining,
            store_blobs=None if usage is None else usage[0],
            store_bytes=None if usage is None else usage[1],
        )

    async def drain(self, timeout: float | None = None) -> int:
        """Graceful drain (§13.3, §13.4): stop accepting, send GOAWAY on every connection,
        let the streams already accepted finish (queries answered, blob pieces stored)
        until ``timeout`` (default ``config.drain_timeout_s``), abort what is left, then
        close. Returns the number of connections aborted at the deadline."""
        self._draining = True
        timeout = self.config.drain_timeout_s if timeout is None else timeout
        started = time.monotonic()
        aborted = 0
        server = self._server
        if server is not None:
            server.close()  # GOAWAY NO_ERROR with the last accepted stream id on each
            try:
                await asyncio.wait_for(server.wait_closed(), timeout)
            except TimeoutError:
                left = [c for c in server.connections if not c.closed]
                aborted = len(left)
                for conn in left:
                    conn.abort(ErrorCode.TIMEOUT, "drain deadline passed")
        self.hooks.drained(time.monotonic() - started, aborted)
        await self.close()
        return aborted

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await asyncio.to_thread(self.public.stop_warm)  # waits for the model being built
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self.handoff.close()
        if self._background:  # a compile in a thread cannot be interrupted: wait for it
            await asyncio.gather(*self._background, return_exceptions=True)
        await self._timer.close()
        self._loader.shutdown(wait=False)

    async def __aenter__(self) -> EdgeServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _load_or_calibrate(self) -> tuple[ServerCostModel, LayerPrior]:
        from ionn_net.calibrate import load_calibration

        root = self.store.root if isinstance(self.store, DirectoryStore) else None
        found = load_calibration(root, notes=self.store)
        found.log_held_out()
        return found.cost_model, found.prior

    # -- dispatch ----------------------------------------------------------------------

    async def _handle(self, stream: ServerStream) -> None:
        conn = stream.connection
        state = self._conns.get(conn)
        if state is None:  # weak keys: the state goes away with the connection
            if self._too_many_from(conn):
                self.hooks.refused("connections_per_address", peer=conn.remote_address)
                conn.close(ErrorCode.ENHANCE_YOUR_CALM, "too many connections from this address")
                refusal = Error(code="busy", message="too many connections from this address")
                await stream.respond(refusal.to_head())
                return
            state = self._conns[conn] = _ConnState()
            self._watch(conn, state)
        if state.session is not None:
            state.session.last_used = time.monotonic()
        started = time.perf_counter()
        call = _Call()
        try:
            reply, body = await self._answer(state, stream, call)
            if reply is not None:
                # Weights pulled by a peer cross the backhaul RAW: compressing them costs
                # more CPU than the fast link saves (§12.4).
                raw = not body or isinstance(reply, PullOk)
                await stream.respond(reply.to_head(), body, codec=None if raw else Codec.ZSTD)
                self.hooks.sent(call.kind, len(body))
        except BaseException:
            call.outcome = "cancelled"  # the stream or connection went first
            raise
        finally:
            session = None if state.session is None else state.session.hash
            seconds = time.perf_counter() - started
            self.hooks.request_done(
                call.kind, call.outcome, seconds, session=session, qid=call.qid, detail=call.detail
            )

    async def _answer(
        self, state: _ConnState, stream: ServerStream, call: _Call
    ) -> tuple[Reply | None, bytes]:
        """The reply to one request (None: authentication failed, the connection goes)
        and its body; ``call`` records what the hooks report."""
        body = b""
        try:
            cls = request_type(stream.head)  # unknown_message (§10.1.3)
            call.kind = cls.KIND
            if state.pending_key is not None and cls is not Auth:
                self._refuse_auth(stream, f"{cls.KIND!r} while authentication is pending")
                call.outcome = "bad_request"
                return None, b""
            if state.session is None and cls not in (Hello, Auth):
                raise RequestError("no_session", "send hello first (protocol.md §10.2.1)")
            if cls is Hello and state.session is not None:
                raise RequestError("bad_request", "hello: the session is already established")
            request = cls.parse(stream.head)
            call.qid = request.qid if isinstance(request, Query) else None
            reply, body = await self._handlers[cls](state, stream, request)
            call.outcome = "ok"
        except RequestError as exc:
            self.stats["errors"] += 1
            reply = Error.of(exc)
        except StoreUnavailableError as exc:  # not the client's fault: the store is down
            self.stats["errors"] += 1
            logger.warning("request %r failed: %s", call.kind, exc)
            reply = Error(code="internal", message=str(exc))
        except (SpecError, TensorError, StoreError) as exc:
            self.stats["errors"] += 1
            reply = Error(code="bad_request", message=str(exc))
        except IonnError as exc:
            self.stats["errors"] += 1
            logger.warning("request %r failed: %s", call.kind, exc)
            reply = Error(code="internal", message=str(exc))
        if isinstance(reply, Error):
            call.outcome, call.detail = reply.code, reply.message
        return reply, body

    def _watch(self, conn: AioConnection, state: _ConnState) -> None:
        """Report the connection's end (a disconnect, with its session if it had one)."""

        def closed(_: object) -> None:
            session = None if state.session is None else state.session.hash
            self.hooks.disconnected(session, conn.remote_address, conn.error)

        asyncio.ensure_future(conn.wait_closed()).add_done_callback(closed)

    def _arm_hello_deadline(self, conn: AioConnection) -> None:
        """§14.4: a session (welcome) within the handshake deadline counted from the accept,
        or the connection goes, whatever the peer sends meanwhile (PINGs, requests before
        hello, or nothing after its SETTINGS)."""
        asyncio.get_running_loop().call_later(
            self.config.limits.handshake_timeout_s, self._check_hello, weakref.ref(conn)
        )

    def _check_hello(self, ref: weakref.ref[AioConnection]) -> None:
        conn = ref()
        if conn is None or conn.closed:
            return
        state = self._conns.get(conn)
        if state is not None and state.session is not None:
            return
        self.hooks.refused("handshake_timeout", peer=conn.remote_address)
        conn.close(ErrorCode.TIMEOUT, "no hello within the handshake deadline")

    def _too_many_from(self, conn: AioConnection) -> bool:
        host = _host(conn.remote_address)
        live = sum(1 for c in self._conns if not c.closed and _host(c.remote_address) == host)
        return live >= self.config.max_connections_per_address

    async def _read_body(
        self, stream: ServerStream, body_len: int, limit: int, *, kind: str
    ) -> bytes:
        expected = check_body_len(body_len, limit=limit)
        body = await stream.read_body(expected)
        self.hooks.received(kind, len(body))
        if len(body) != expected:
            raise RequestError("bad_request", f"body: expected {expected} bytes, got {len(body)}")
        return body

    # -- §10.2 session -----------------------------------------------------------------

    async def _on_hello(self, state: _ConnState, stream: ServerStream, hello: Hello) -> Response:
        # a second hello was refused before parsing (_handle), as it was while pending
        key = hello.session
        nonce = bytes.fromhex(hello.nonce)
        if self.config.secret is None:
            return self._welcome(state, key, stream.connection.remote_address), b""
        state.client_nonce, state.server_nonce = nonce, os.urandom(16)
        state.pending_key = key
        proof = hmac_proof(self.config.secret, "server", nonce, state.server_nonce)
        return Challenge(nonce=state.server_nonce.hex(), proof=proof), b""

    async def _on_auth(self, state: _ConnState, stream: ServerStream, auth: Auth) -> Response:
        secret = self.config.secret
        if secret is None or state.pending_key is None:
            raise RequestError("bad_request", "auth: no authentication is pending")
        assert state.client_nonce is not None and state.server_nonce is not None
        expected = hmac_proof(secret, "client", state.client_nonce, state.server_nonce)
        proof = auth.proof
        if proof is None or not hmac.compare_digest(proof, expected):
            self._refuse_auth(stream, "wrong proof")
            raise RequestError("bad_request", "auth: wrong proof")
        key, state.pending_key = state.pending_key, None
        return self._welcome(state, key, stream.connection.remote_address), b""

    def _refuse_auth(self, stream: ServerStream, why: str) -> None:
        """§10.2.3: GOAWAY AUTH_FAILED, revealing nothing."""
        self.hooks.auth_failed(stream.connection.remote_address, why)
        stream.connection.close(ErrorCode.AUTH_FAILED, "authentication failed")

    def _welcome(self, state: _ConnState, key: str, peer: Any) -> Welcome:
        session = self._sessions.get(key)
        new = session is None
        if session is None:
            if len(self._sessions) >= self.config.max_sessions and not self._evict_idle():
                self.hooks.refused("sessions", peer=peer)
                raise RequestError("busy", "the server holds too many sessions")
            session = self._sessions[key] = _Session(key, self.config)
        session.last_used = time.monotonic()
        state.session = session
        self.hooks.welcomed(session.hash, new=new, peer=peer)
        assert self._cost_model is not None
        limits = self.config.limits
        return Welcome(
            server=f"ionn_net/{__version__}",
            session=key,
            cost_model=self._cost_model.to_doc(),
            limits={
                "max_message_size": limits.max_message_size,
                "max_batch": limits.max_batch,
                "max_models": self.config.max_models_per_session,
                "max_bytes": self.config.max_bytes_per_session,
                "max_queries": self.config.max_queries_per_session,
            },
        )

    def _evict_idle(self) -> bool:
        """At capacity, forget the least recently used session that has no live
        connection: otherwise hellos with fresh keys (one per connection) would fill the
        table for good and lock every new client out. Its blobs stay in the store with
        their owner records, so the client only re-sends its manifest and loads again; its
        unfinished uploads are dropped (they would otherwise stay on disk forever)."""
        live = {id(st.session) for c, st in list(self._conns.items()) if not c.closed}
        idle = [s for s in self._sessions.values() if id(s) not in live]
        if not idle:
            return False
        victim = min(idle, key=lambda s: s.last_used)
        del self._sessions[victim.key]
        self._layers_ready -= sum(len(m.ready) for m in victim.models.values())
        for digest in victim.partials:  # stale partial uploads expire with their session
            try:
                self.store.drop_partial(partial_key(victim.hash, digest))
            except StoreError as exc:  # best effort: the store's sweep expires it later
                logger.warning("could not drop a partial upload of %s: %s", victim.hash[:8], exc)
        self.hooks.evicted(victim.hash)
        return True

    # -- §10.3 manifest, §10.4 have ----------------------------------------------------

    async def _on_manifest(
        self, state: _ConnState, stream: ServerStream, request: Manifest
    ) -> Response:
        session = state.session
        assert session is not None
        digest = request.model
        body = await self._read_body(
            stream, request.body_len, self.config.max_manifest_bytes, kind="manifest"
        )
        if hashlib.sha256(body).hexdigest() != digest:
            raise RequestError("bad_manifest", "model: the digest does not match the manifest")
        model = session.models.get(digest)
        if model is None:
            if len(session.models) >= self.config.max_models_per_session:
                self.hooks.refused("models_per_session", session=session.hash)
                raise RequestError("limit_exceeded", "this session holds too many models")
            try:
                model = await asyncio.to_thread(self._parse_model, body)
            except SpecError as exc:
                raise RequestError("bad_manifest", str(exc)) from None
        # §10.3.4: a bad marking refuses the whole request (before anything is claimed).
        marked = self.public.marking(model.manifest, request.public)
        # blobs pushed ahead of this client become its own, with any layer built (§15.5)
        built = self.handoff.claim(session, digest)
        if isinstance(built, ServerModel) and digest not in session.models:
            model = built
            self._layers_ready += len(model.ready)
        model.public_marked = marked
        session.models[digest] = model
        # §10.11.1: timed in the background, after this answer
        model.timing = self._timer.start(session.key, model.graph, model.manifest, model.predicted)
        # blobs this session already holds from its own verified uploads (or claimed) are
        # published at once
        self.public.publish(model.public_marked & self.store.owned_by(session.hash))
        holdings = self._holdings(session, model)
        layers, held = len(model.specs), len(holdings.blobs_held)
        self.hooks.manifest_accepted(session.hash, digest, layers=layers, held=held)
        return ManifestOk(model=digest, holdings=holdings), b""

    def _parse_model(self, body: bytes) -> ServerModel:
        manifest = loads_manifest(body, self.config.spec_limits, canonical=True)
        graph = graph_from_manifest(manifest, self.config.spec_limits)
        predict = self._prior.profile if self._prior is not None else self._predict_v1
        predicted = predicted_times(graph, predict)
        model = ServerModel(manifest, graph, self.config.jit, predicted, self.public.slices)
        shared = self.public.shared_executor(model.digest)
        if shared is not None:  # a warm catalog model: its compiled slices serve at once
            model.share_executor(shared)
        return model

    def _predict_v1(self, graph: LayerGraph) -> dict[str, float]:
        assert self._cost_model is not None
        return self._cost_model.exec_profile(graph)

    # -- §10.11 timings ------------------------------------------------------------------

    async def _on_timings(self, state: _ConnState, stream: ServerStream, ask: Timings) -> Response:
        model = self._model(state, ask.model)
        timing = model.timing
        await timing.wait(ask.wait_ms / 1000.0)
        body = timing.table().encode()
        reply = TimingsOk(
            model=ask.model, done=timing.done, call_ms=timing.call_ms, body_len=len(body)
        )
        return reply, body

    def _holdings(self, session: _Session, model: ServerModel) -> Holdings:
        owned = self.store.owned_by(session.hash)
        partial = {}
        for digest in model.blob_sizes:
            if digest not in owned:
                offset = self.store.partial_offset(partial_key(session.hash, digest))
                if offset:
                    partial[digest] = offset
                    session.partials.add(digest)  # left by an earlier connection or process
        return Holdings(
            blobs_held=tuple(sorted(d for d in model.blob_sizes if d in owned)),
            partial=partial,
            layers_ready=tuple(sorted(model.ready, key=model.graph.position)),
            refused=dict(model.refused),
            layers_base=_base_layers(model, model.ready),
            blobs_public=self.public.held(model.blob_sizes),
        )

    def find_session(self, session_hash: str) -> _Session | None:
        """The remembered session whose owner hash is ``session_hash`` (§15.3)."""
        return next((s for s in self._sessions.values() if s.hash == session_hash), None)

    def holdings_of(self, session_key: str, model: str) -> Holdings:
        """What this server holds of ``model`` for session ``session_key`` (§10.3.3, §15.4)."""
        session = self._sessions.get(session_key)
        if session is None or model not in session.models:
            return Holdings()
        return self._holdings(session, session.models[model])

    def _model(self, state: _ConnState, digest: str) -> ServerModel:
        assert state.session is not None
        model = state.session.models.get(digest)
        if model is None:
            raise RequestError("unknown_model", f"model {digest}: send its manifest first")
        return model

    async def _on_have(self, state: _ConnState, stream: ServerStream, have: Have) -> Response:
        model = self._model(state, have.model)
        assert state.session is not None
        return HaveOk(holdings=self._holdings(state.session, model)), b""

    # -- §10.5 blob ----------------------------------------------------------------------

    async def _on_blob(self, state: _ConnState, stream: ServerStream, blob: Blob) -> Response:
        session = state.session
        assert session is not None
        model = self._model(state, blob.model)
        digest = blob.sha256
        size = model.blob_sizes.get(digest)
        if size is None or blob.size != size:
            raise RequestError("unknown_blob", f"blob {digest}: not in this model's manifest")
        key = partial_key(session.hash, digest)
        owned, stages = self.store.owned_by(session.hash), model.stages
        held = digest in owned or self.public.holds(digest, size)
        if held or (stages is not None and stages.completes(digest, owned)):
            self.hooks.blob_resent(session.hash, digest)
            await stream.read_body(check_body_len(blob.body_len, limit=size))
            return BlobOk(sha256=digest, offset=size, complete=True), b""
        if stages is not None:  # §10.12.3: a refinement only after its base
            stages.check_order(digest, owned)
        offset = blob.offset
        if offset > size:
            raise bad_member("offset", f"an integer in 0..{size}", offset)
        current = self.store.partial_offset(key)
        if offset != current:
            raise RequestError(
                "offset_conflict", f"blob {digest}: resume at {current}", offset=current
            )
        # Unfinished uploads reserve their whole size: partials count against the budget.
        sizes = {d: n for m in session.models.values() for d, n in m.blob_sizes.items()}
        reserve = stages.reserve(digest, size, model.blob_sizes) if stages else size
        try:
            self.ingest.check_budget(
                session.hash, session.partials, sizes, digest, size, reserve=reserve
            )
        except RequestError:
            self.hooks.refused("bytes_per_session", session=session.hash)
            raise
        body_len = check_body_len(blob.body_len, limit=size - offset)
        session.partials.add(digest)
        new_offset = await self.ingest.append(key, offset, stream, body_len)
        complete = new_offset == size
        if complete:
            try:
                marked = frozenset().union(*(m.public_marked for m in session.models.values()))
                via = None
                if stages is not None:  # a refinement rebuilds its exact blob (§10.12.3)
                    owner = session.hash

                    def via() -> object:
                        assert stages is not None
                        return stages.complete(self.store, digest, key, owner=owner, public=marked)

                await self.ingest.complete(
                    session.hash, digest, key, public=digest in marked, via=via
                )
            finally:
                session.partials.discard(digest)  # stored, or dropped as corrupt
            self.stats["blobs"] += 1
            self.hooks.blob_completed(session.hash, digest, size)
        return BlobOk(sha256=digest, offset=new_offset, complete=complete), b""

    # -- §10.6 load ----------------------------------------------------------------------

    async def _on_load(self, state: _ConnState, stream: ServerStream, load: Load) -> Response:
        session = state.session
        assert session is not None
        model = self._model(state, load.model)
        names = list(load.layers)
        sets = [list(s) for s in load.prepare]
        cap = self.config.max_prepare_sets
        if len(sets) > cap:
            raise bad_member("prepare", f"a list of at most {cap} layer lists", sets)
        for name in [n for s in sets for n in s] + names:
            if name not in model.specs:
                raise RequestError("bad_request", f"layer {name!r}: not in the manifest")
            if name in model.refused:
                raise RequestError("bad_request", f"layer {name!r}: {model.refused[name]}")
        usable = self.store.owned_by(session.hash) | set(self.public.held(model.blob_sizes))
        missing = [n for n in names if model.specs[n].blob_sha256 not in (None, *usable)]
        if model.stages is not None and load.precision == "base":  # §10.12.4
            missing = [n for n in missing if not model.stages.buildable(n, model.ready, usable)]
        if missing:
            raise RequestError("missing_blobs", f"blobs missing for {missing[:8]}", layers=missing)
        started = time.perf_counter()
        prepared, built = await self.build(model, names, sets, usable)
        self._layers_ready += built
        if model.complete:
            for run in prepared:
                self._consolidate_later(model, run)
        self.stats["loads"] += 1
        load_ms = (time.perf_counter() - started) * 1000.0
        ready = tuple(sorted(model.ready, key=model.graph.position))
        self.hooks.loaded(
            session.hash, model.digest, built=built, ready=len(ready), seconds=load_ms / 1000.0
        )
        return LoadOk(
            layers_ready=ready,
            prepared=tuple(map(tuple, prepared)),
            load_ms=load_ms,
            layers_base=_base_layers(model, model.ready),
        ), b""

    async def build(
        self,
        model: ServerModel,
        names: Sequence[str],
        sets: Sequence[Sequence[str]],
        owned: Collection[str] | None = None,
    ) -> tuple[list[list[str]], int]:
        """Build ``names`` from verified blobs and compile the run sets of ``sets`` that are
        then ready (§10.6); the sets compiled and how many layers were built. For a
        ``load``, and for layers a peer pushed ahead of their client (§15.5.5). ``owned``:
        the blobs the session may build from (a layer whose blob is not among them is
        built from its base stage, §10.12.4); None: every blob of the model."""
        held = frozenset(model.blob_sizes) if owned is None else owned
        async with model.lock:
            before = len(model.ready)
            with self.work:  # §10.11.1: the timer pauses while a load runs
                await to_thread_to_the_end(self._build, model, names, held, pool=self._loader)
                built = len(model.ready) - before
                prepared = []
                for run in sets:
                    if set(run) <= model.ready:
                        await to_thread_to_the_end(model.runner, run, pool=self._loader)
                        prepared.append(list(run))
        return prepared, built

    def new_model(self, body: bytes) -> ServerModel:
        """A model from a manifest body, validated as a client's (§10.3.2; worker thread)."""
        return self._parse_model(body)

    def _build(self, model: ServerModel, names: Sequence[str], owned: Collection[str]) -> None:
        """Build the named layers from verified blobs (worker thread). The manifest was
        validated as a whole when it arrived; each layer is re-validated on its own by
        ``build_layer`` with the input shapes of the server's own graph. With declared
        stages (§10.12.4) a layer may be built from its base stage, and a layer built so
        becomes exact by a swap once its blob is held (server_stages.build_for_load);
        catalog layers built ahead are reused (§14.5.1)."""
        built, refined = build_for_load(
            model.stages, names, specs=model.specs, graph=model.graph, ready=model.ready,
            owned=owned, store=self.store, limits=self.config.spec_limits,
            read=self.public.read,
            reuse=lambda spec, shapes: self.public.reuse(model.digest, spec, shapes),
        )  # fmt: skip
        model.executor().add_layers(built)
        model.batch_of.update(dict.fromkeys(built, model.loads))
        model.loads += 1 if built else 0
        model.ready.update(built)
        if model.stages is not None and refined:
            model.stages.swap(model.executor(), refined)

    # -- §10.7 query ---------------------------------------------------------------------

    async def _on_query(self, state: _ConnState, stream: ServerStream, query: Query) -> Response:
        session = state.session
        assert session is not None
        received = time.monotonic()
        model = self._model(state, query.model)
        qid, deadline_ms, run = query.qid, query.deadline_ms, list(query.run)
        not_ready = [n for n in run if n not in model.ready]
        if query.exact and model.stages is not None:  # §10.12.5: never on base weights
            not_ready += model.stages.listed(run, model.graph.position)
        if not run or not_ready:
            raise RequestError("layer_not_ready", f"layers not ready: {not_ready[:8]}")
        ins, outs = model.graph.boundary(run)
        limits = self.config.limits
        body = await self._read_body(stream, query.body_len, limits.max_message_size, kind="query")
        signature = boundary_signature(model.graph, ins)
        try:
            tensors = decode_tensors(query.tensors, body, limits=limits, expected=signature)
        except SignatureError as exc:  # not the run set's boundary inputs (§10.7, §9.4)
            raise RequestError("bad_request", str(exc)) from None
        except TensorError as exc:  # malformed descriptors or payload, NaN/Inf (§9)
            raise RequestError("bad_tensor", str(exc)) from None
        if session.queries.locked():
            self.hooks.refused("queries_per_session", session=session.hash)
            raise RequestError("busy", "too many concurrent queries in this session")
        queued = time.perf_counter()
        async with session.queries:
            # §14.3: the result is held back (not computed) until it fits under the
            # connection's outbound cap, so unread results cannot pile up in memory.
            left_s = deadline_ms / 1000.0 - (time.monotonic() - received)
            size = _result_nbytes(model.graph, outs, tensors)
            if left_s <= 0 or not await stream.reserve_outbound(size, timeout=left_s):
                raise RequestError("deadline_exceeded", f"query {qid}: deadline passed")
            async with self._inference:
                if (time.monotonic() - received) * 1000.0 > deadline_ms:
                    raise RequestError("deadline_exceeded", f"query {qid}: deadline passed")
                feeds = {TensorRef.parse(k): v for k, v in tensors.items()}
                started = time.perf_counter()
                with self.work:
                    result, ran_base = await to_thread_to_the_end(self._run, model, run, feeds)
                server_ms = (time.perf_counter() - started) * 1000.0
        self.hooks.query_computed(started - queued, server_ms / 1000.0)
        if model.complete:
            self._consolidate_later(model, run)
        self.stats["queries"] += 1
        descs, parts = encode_tensors({str(r): result[r] for r in outs})
        out_body = b"".join(parts)
        order = tuple(sorted(run, key=model.graph.position))
        reply = Result(
            qid=qid,
            ran=order,
            last=order[-1],
            tensors=descs,
            server_ms=server_ms,
            body_len=len(out_body),
            ran_base=ran_base,
        )
        return reply, out_body

    @staticmethod
    def _run(
        model: ServerModel, run: Sequence[str], feeds: Mapping[TensorRef, np.ndarray]
    ) -> tuple[Any, tuple[str, ...] | None]:
        """The outputs, and the layers that ran at base precision (§10.12.5; None without
        stages): the query runs on the weights it started with, a swap waits for it
        (server_stages). Both are taken under the same read lock and the result reports
        this list as it is: a swap may land before the result is made, and the layers'
        precision then is not the one the query ran on."""
        runner = model.runner(run)  # compiled by load's prepare (§10.6), outside the lock
        if model.stages is None:
            return runner(feeds), None
        with model.stages.lock.reading():
            return runner(feeds), model.stages.listed(run, model.graph.position)

    def _consolidate_later(self, model: ServerModel, run: Sequence[str]) -> None:
        """Once the model is complete no piece will ever be added: compile each run set
        in use as one slice in the background (once, at most ``max_prepare_sets`` per
        model), under the model lock so that it never races a load."""
        key = frozenset(run)
        if key in model.consolidating or len(model.consolidating) >= self.config.max_prepare_sets:
            return
        model.consolidating.add(key)

        async def work() -> None:
            async with model.lock:
                try:
                    with self.work:
                        await to_thread_to_the_end(model.consolidate, run, pool=self._loader)
                except Exception:  # the chain keeps serving; nothing is lost
                    logger.exception("consolidating a run set of %d layers failed", len(run))

        task = asyncio.get_running_loop().create_task(work())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _result_nbytes(
    graph: LayerGraph, outs: Sequence[TensorRef], tensors: Mapping[str, np.ndarray]
) -> int:
    """Body bytes of the result of a query with these (checked) input tensors: its output
    tensors' shapes, from the server's own graph, at the inputs' batch size (§10.8)."""
    batch = next(iter(tensors.values())).shape[0] if tensors else 1
    return sum(
        batch
        * math.prod(graph[r.layer].output_shapes[r.index])
        * np.dtype(graph[r.layer].output_dtype).itemsize
        for r in outs
    )


def _base_layers(model: ServerModel, layers: Collection[str]) -> tuple[str, ...] | None:
    """§10.12.4, §10.12.5: which of ``layers`` are at base precision (None: no stages)."""
    stages = model.stages
    return None if stages is None else stages.listed(layers, model.graph.position)


def _host(address: Any) -> Any:
    return address[0] if isinstance(address, tuple) and address else address
