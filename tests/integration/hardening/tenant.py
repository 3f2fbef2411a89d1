"""Well-behaved and raw clients shared by the hardening tests.

Owns :func:`mlp` (a Dense-only manifest whose output numpy computes exactly, so every
answer can be checked), :class:`Tenant` (a protocol.md §10 client over the asyncio API)
and :class:`RawPeer` (bytes on a socket, frames built by the reference peer's encoder, for
traffic the library's own client refuses to send).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from tests.helpers.manifests import ManifestBuilder
from tests.refpeer import wire as rw

from ionn_net.aio import AioConnection
from ionn_net.model.spec import canonical_json
from ionn_net.tensors import decode_tensors, encode_tensors

IN, HIDDEN, OUT = 16, 24, 6


def mlp(seed: int = 0, name: str = "mlp") -> tuple[dict[str, Any], ManifestBuilder]:
    """input(16) -> Dense(24, relu) -> Dense(6, softmax)."""
    rng = np.random.default_rng(seed)
    b = ManifestBuilder(name=name)
    x = b.input("x", [IN])
    w1 = [rng.standard_normal((IN, HIDDEN)).astype(np.float32), rng.standard_normal(HIDDEN)]
    h = b.add("d1", "Dense", {"units": HIDDEN, "activation": "relu"}, [x], _f32(w1))
    w2 = [rng.standard_normal((HIDDEN, OUT)).astype(np.float32), rng.standard_normal(OUT)]
    out = b.add("d2", "Dense", {"units": OUT, "activation": "softmax"}, [h], _f32(w2))
    return b.obj([out]), b


def _f32(arrays: list[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(a, np.float32) for a in arrays]


def mlp_reference(builder: ManifestBuilder, x: np.ndarray) -> np.ndarray:
    (w1, b1), (w2, b2) = builder.arrays["d1"], builder.arrays["d2"]
    h = np.maximum(x.astype(np.float64) @ w1 + b1, 0.0)
    logits = h @ w2 + b2
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


async def call(
    conn: AioConnection, head: Mapping[str, Any], body: bytes = b"", timeout: float = 15.0
) -> tuple[Mapping[str, Any], bytes]:
    return await asyncio.wait_for(conn.request(dict(head), body, urgency=2), timeout)


class Tenant:
    """A protocol.md §10 client of :func:`mlp` (or any builder's manifest)."""

    def __init__(
        self,
        conn: AioConnection,
        session: str | None = None,
        built: tuple[dict[str, Any], ManifestBuilder] | None = None,
    ) -> None:
        self.conn = conn
        self.session = session or os.urandom(16).hex()
        self.obj, self.builder = built or mlp()
        self.body = canonical_json(self.obj)
        self.digest = hashlib.sha256(self.body).hexdigest()
        self.names = [layer["name"] for layer in self.obj["layers"][1:]]

    async def hello(self) -> Mapping[str, Any]:
        head, _ = await call(
            self.conn, {"m": "hello", "session": self.session, "nonce": os.urandom(16).hex()}
        )
        return head

    async def manifest(self) -> Mapping[str, Any]:
        head, _ = await call(self.conn, {"m": "manifest", "model": self.digest}, self.body)
        return head

    async def blob(self, sha: str, offset: int, data: bytes) -> Mapping[str, Any]:
        size = len(self.builder.blobs[sha])
        head = {"m": "blob", "model": self.digest, "sha256": sha, "size": size, "offset": offset}
        reply, _ = await call(self.conn, head, data)
        return reply

    async def load(self) -> Mapping[str, Any]:
        head = {"m": "load", "model": self.digest, "layers": self.names, "prepare": [self.names]}
        reply, _ = await call(self.conn, head)
        return reply

    async def setup(self) -> None:
        """hello, manifest, every blob, load: the whole model on the server."""
        assert (await self.hello())["m"] == "welcome"
        assert (await self.manifest())["m"] == "manifest_ok"
        for sha, blob in self.builder.blobs.items():
            reply = await self.blob(sha, 0, blob)
            assert reply.get("complete"), reply
        assert (await self.load())["m"] == "load_ok"

    def query_head(self, x: np.ndarray, qid: str = "q") -> tuple[dict[str, Any], bytes]:
        descs, parts = encode_tensors({f"{self.obj['layers'][0]['name']}:0": x})
        head = {
            "m": "query",
            "model": self.digest,
            "qid": qid,
            "deadline_ms": 20_000,
            "run": self.names,
            "tensors": descs,
        }
        return head, b"".join(parts)

    async def query(self, x: np.ndarray, qid: str = "q") -> Mapping[str, Any]:
        head, body = self.query_head(x, qid)
        reply, out = await call(self.conn, head, body)
        if reply["m"] == "result":
            return {**reply, "values": decode_tensors(reply["tensors"], out)}
        return reply

    async def check_works(self) -> None:
        """One query answered correctly (the tenant must be set up)."""
        x = np.random.default_rng(7).standard_normal((1, IN)).astype(np.float32)
        reply = await self.query(x)
        assert reply["m"] == "result", reply
        got = reply["values"][f"{self.names[-1]}:0"]
        np.testing.assert_allclose(got, mlp_reference(self.builder, x), rtol=1e-4, atol=1e-6)


class RawPeer:
    """A client that writes raw frames and reads whatever comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.received = bytearray()

    @classmethod
    async def open(cls, port: int, *, handshake: bool = True, rcvbuf: int = 0) -> RawPeer:
        import socket

        sock = socket.socket()
        if rcvbuf:  # a small receive window makes "never reads" bite quickly
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect(("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 24)
        peer = cls(reader, writer)
        if handshake:
            peer.send(rw.client_preface() + rw.settings_frame() + rw.settings_ack())
        return peer

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    async def read_until_closed(self, timeout: float = 10.0) -> list[rw.Frame]:
        """Every frame the server sent until it closed (fails if it never closes)."""
        async with asyncio.timeout(timeout):
            while chunk := await self.reader.read(1 << 16):
                self.received += chunk
        return self.frames()

    def frames(self) -> list[rw.Frame]:
        reader = rw.FrameReader(dict(rw.DEFAULT_SETTINGS))
        data = bytes(self.received[rw.PREFACE_SIZE :])
        try:
            return reader.feed(data)
        except rw.PeerError:
            return []

    def goaway_code(self) -> int | None:
        codes = [
            int.from_bytes(f.payload[4:8], "big") for f in self.frames() if f.type == rw.T.GOAWAY
        ]
        return codes[-1] if codes else None

    def close(self) -> None:
        self.writer.transport.abort()
