"""A Hypothesis rule-based state machine over client/server sessions.

Two tenants with distinct session keys upload the SAME Dense-only model to one EdgeServer on
a DirectoryStore, so tenant scoping is tested on identical digests. Rules: connect (hello +
manifest), upload part or all of a blob from the server's offset, send a corrupted tail,
drop the connection (optionally in the middle of a blob body), load, query, and restart
the server on the same directory. The model of the world is what each tenant knows was
acknowledged: complete blobs (``blob_ok complete``) and offsets the server reported.

Invariants checked after every step: every stored blob verifies against its digest; what the
server reports held for a session is exactly that session's acknowledged blobs (never the
other tenant's); partial offsets never exceed the bytes that session sent; a resume never
re-sends a blob the server already holds; every query is answered exactly once (one
``result`` per qid) and matches numpy.

Everything runs on one event loop owned by the machine (server and clients alike): each
rule is one ``run_until_complete``, so the run is deterministic for a given example.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from tests.integration.hardening.tenant import IN, mlp, mlp_reference

from ionn_net.aio import AioConnection, connect
from ionn_net.errors import IonnError
from ionn_net.model.spec import canonical_json
from ionn_net.planner.costmodel import ServerCostModel
from ionn_net.server import EdgeServer, ServerConfig
from ionn_net.store import DirectoryStore
from ionn_net.tensors import decode_tensors, encode_tensors

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

OBJ, BUILDER = mlp(seed=3)
BODY = canonical_json(OBJ)
DIGEST = hashlib.sha256(BODY).hexdigest()
BLOBS = dict(BUILDER.blobs)
SHAS = sorted(BLOBS)
NAMES = [layer["name"] for layer in OBJ["layers"][1:]]


class Client:
    """What one tenant knows: its session key, connection and acknowledged state."""

    def __init__(self, index: int) -> None:
        self.session = hashlib.sha256(f"tenant-{index}".encode()).hexdigest()[:32]
        self.conn: AioConnection | None = None
        self.complete: set[str] = set()  # acknowledged complete blobs
        self.sent_hi: dict[str, int] = {}  # highest byte this tenant ever sent per blob
        self.offsets: dict[str, int] = {}  # last offsets the server reported
        self.loaded = False

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed


class SessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="ionn-sm-"))
        self.server: EdgeServer | None = None
        self.clients = [Client(0), Client(1)]
        self.answers: dict[str, int] = {}
        self.asked = 0
        self.restarts = 0
        self.run(self._start())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 30))

    async def _start(self) -> None:
        self.server = EdgeServer(
            store=DirectoryStore(self.dir, fsync=False),
            config=ServerConfig(),
            cost_model=ServerCostModel(),
        )
        await self.server.start()

    async def _call(self, c: Client, head: dict[str, Any], body: bytes = b"") -> Any:
        assert c.conn is not None
        reply, out = await c.conn.request(head, body, urgency=2)
        return reply, out

    def _note(self, c: Client, holdings: Any) -> None:
        held = set(holdings["blobs_held"])
        assert held == c.complete, (held, c.complete)  # own blobs only, and all of them
        for sha, off in holdings["partial"].items():
            assert sha in BLOBS and sha not in c.complete
            assert 0 < off <= c.sent_hi.get(sha, 0), (off, c.sent_hi)
        c.offsets = {sha: int(holdings["partial"].get(sha, 0)) for sha in SHAS}
        if held != set(SHAS):
            c.loaded = False

    # -- rules ---------------------------------------------------------------------

    @rule(i=st.integers(0, 1))
    def connect(self, i: int) -> None:
        self._ensure(self.clients[i])

    def _ensure(self, c: Client) -> None:
        """(Re)connect: hello with the same session key, manifest, resume state noted."""
        if c.connected:
            return

        async def go() -> None:
            assert self.server is not None
            c.conn = await connect("127.0.0.1", self.server.port)
            nonce = os.urandom(16).hex()
            head, _ = await self._call(c, {"m": "hello", "session": c.session, "nonce": nonce})
            assert head["m"] == "welcome"
            head, _ = await self._call(c, {"m": "manifest", "model": DIGEST}, BODY)
            assert head["m"] == "manifest_ok", head
            c.loaded = set(head["layers_ready"]) == set(NAMES)  # kept by the session
            self._note(c, head)

        self.run(go())

    @rule(
        i=st.integers(0, 1),
        b=st.sampled_from(SHAS),
        frac=st.sampled_from([1.0, 1.0, 0.5]) | st.floats(0.05, 1.0),
    )
    def upload(self, i: int, b: str, frac: float) -> None:
        c = self.clients[i]
        self._ensure(c)
        blob = BLOBS[b]
        if b in c.complete:  # resume never re-sends a complete blob: the client skips it
            return
        start = c.offsets[b]
        end = max(start + 1, min(len(blob), int(len(blob) * frac)))
        end = len(blob) if end >= len(blob) - 1 else end
        head = {"m": "blob", "model": DIGEST, "sha256": b, "size": len(blob), "offset": start}
        c.sent_hi[b] = max(c.sent_hi.get(b, 0), end)
        reply, _ = self.run(self._call(c, head, blob[start:end]))
        assert reply["m"] == "blob_ok", reply
        assert reply["offset"] == end and reply["complete"] == (end == len(blob))
        c.offsets[b] = 0 if end == len(blob) else end
        if end == len(blob):
            c.complete.add(b)

    @rule(i=st.integers(0, 1), b=st.sampled_from(SHAS), pos=st.floats(0.0, 1.0))
    def corrupt(self, i: int, b: str, pos: float) -> None:
        c = self.clients[i]
        self._ensure(c)
        if b in c.complete:
            return
        blob = bytearray(BLOBS[b])
        start = c.offsets[b]
        flip = start + int((len(blob) - start - 1) * pos)
        blob[flip] ^= 0x40
        head = {"m": "blob", "model": DIGEST, "sha256": b, "size": len(blob), "offset": start}
        c.sent_hi[b] = len(blob)
        reply, _ = self.run(self._call(c, head, bytes(blob[start:])))
        assert reply["m"] == "error" and reply["code"] == "digest_mismatch", reply
        c.offsets[b] = 0  # the partial upload is dropped
        c.sent_hi[b] = 0

    @precondition(lambda self: any(c.connected for c in self.clients))
    @rule(i=st.integers(0, 1), mid_blob=st.booleans(), nbytes=st.integers(1, 900))
    def drop(self, i: int, mid_blob: bool, nbytes: int) -> None:
        c = self.clients[i]
        if not c.connected:
            return
        assert c.conn is not None
        todo = [b for b in SHAS if b not in c.complete]

        async def go() -> None:
            assert c.conn is not None
            if mid_blob and todo:
                b = todo[0]
                blob, start = BLOBS[b], c.offsets[b]
                n = min(nbytes, len(blob) - start - 1)
                if n > 0:
                    head = {
                        "m": "blob",
                        "model": DIGEST,
                        "sha256": b,
                        "size": len(blob),
                        "offset": start,
                        "body_len": len(blob) - start,
                    }
                    stream = await c.conn.open_stream(head)
                    await stream.send_data(blob[start : start + n])
                    c.sent_hi[b] = max(c.sent_hi.get(b, 0), start + n)
                    await asyncio.sleep(0.05)
            c.conn.abort()
            await asyncio.sleep(0.1)  # the server notices and keeps what arrived

        self.run(go())
        c.conn = None

    @rule(i=st.integers(0, 1))
    def resume_all_and_load(self, i: int) -> None:
        """Finish every blob from the server's offset (complete ones are skipped), load."""
        c = self.clients[i]
        for b in SHAS:
            self.upload(i, b, 1.0)
        head = {"m": "load", "model": DIGEST, "layers": NAMES, "prepare": [NAMES]}
        reply, _ = self.run(self._call(c, head))
        assert reply["m"] == "load_ok", reply
        c.loaded = True

    @rule(i=st.integers(0, 1), seed=st.integers(0, 2**16))
    def query(self, i: int, seed: int) -> None:
        c = self.clients[i]
        self._ensure(c)
        if not c.loaded:
            return
        x = np.random.default_rng(seed).standard_normal((1, IN)).astype(np.float32)
        self.asked += 1
        qid = f"q{self.asked}"
        descs, parts = encode_tensors({"x:0": x})
        head = {
            "m": "query",
            "model": DIGEST,
            "qid": qid,
            "deadline_ms": 10_000,
            "run": NAMES,
            "tensors": descs,
        }
        reply, body = self.run(self._call(c, head, b"".join(parts)))
        assert reply["m"] == "result" and reply["qid"] == qid, reply
        self.answers[qid] = self.answers.get(qid, 0) + 1
        got = decode_tensors(reply["tensors"], body)["d2:0"]
        np.testing.assert_allclose(got, mlp_reference(BUILDER, x), rtol=1e-4, atol=1e-6)

    @precondition(lambda self: self.restarts < 2)
    @rule()
    def restart_server(self) -> None:
        async def go() -> None:
            assert self.server is not None
            for c in self.clients:
                if c.conn is not None:
                    c.conn.abort()
                    c.conn = None
                c.loaded = False  # a new process builds layers again on load
            await self.server.close()
            await self._start()

        self.run(go())
        self.restarts += 1

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def stored_blobs_verify(self) -> None:
        store = DirectoryStore(self.dir, fsync=False)  # as a restarted server would see it
        for digest in store.digests():
            assert hashlib.sha256(store.get(digest)).hexdigest() == digest
        for c in self.clients:  # acknowledged blobs survive everything
            session_hash = hashlib.sha256(c.session.encode()).hexdigest()[:32]
            assert store.owned_by(session_hash) == frozenset(c.complete)

    @invariant()
    def every_query_answered_once(self) -> None:
        assert len(self.answers) == self.asked
        assert all(n == 1 for n in self.answers.values())

    @invariant()
    def holdings_are_scoped_to_the_session(self) -> None:
        for c in self.clients:
            if not c.connected:
                continue
            try:
                head, _ = self.run(self._call(c, {"m": "have", "model": DIGEST}))
            except IonnError:
                continue
            self._note(c, head)

    def teardown(self) -> None:

        async def go() -> None:
            for c in self.clients:
                if c.conn is not None:
                    c.conn.abort()
            if self.server is not None:
                await self.server.close()

        try:
            self.run(go())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)


SessionMachine.TestCase.settings = settings(
    max_examples=12,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSessions = SessionMachine.TestCase
