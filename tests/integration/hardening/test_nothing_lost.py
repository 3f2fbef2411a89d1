"""Nothing lost when a client vanishes at the worst moment of an upload.

The store is the real MemoryStore with a gate in ``complete_partial`` (the digest check of
a finished blob), so the test can drop the client's connection exactly while the server
verifies the last bytes. The blob is complete and verified by then: the session must own it
on reconnect, not have to send it again.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from tests.integration.hardening.tenant import Tenant, call

from ionn_net.aio import connect
from ionn_net.planner.costmodel import ServerCostModel
from ionn_net.server import EdgeServer
from ionn_net.store import MemoryStore

pytestmark = pytest.mark.timeout(60)


class GatedStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def complete_partial(self, digest: str, **options: Any) -> None:
        self.entered.set()
        self.gate.wait(20)
        super().complete_partial(digest, **options)


async def test_client_vanishing_during_the_digest_check_keeps_the_blob() -> None:
    store = GatedStore()
    async with EdgeServer(store=store, cost_model=ServerCostModel()) as srv:
        conn = await connect("127.0.0.1", srv.port)
        tenant = Tenant(conn)
        await tenant.hello()
        await tenant.manifest()
        sha, blob = next(iter(tenant.builder.blobs.items()))
        head = {"m": "blob", "model": tenant.digest, "sha256": sha, "size": len(blob)}
        stream = await conn.open_stream({**head, "offset": 0, "body_len": len(blob)})
        await stream.send_data(blob, end_stream=True)
        assert await asyncio.to_thread(store.entered.wait, 10)
        conn.abort()  # gone while the server verifies the last bytes
        await asyncio.sleep(0.2)
        store.gate.set()
        async with connect("127.0.0.1", srv.port) as again:
            back = Tenant(again, session=tenant.session)
            await back.hello()
            for _ in range(50):
                holdings = await back.manifest()
                if sha in holdings["blobs_held"]:
                    break
                await asyncio.sleep(0.05)
            assert sha in holdings["blobs_held"], holdings
            assert sha not in holdings["partial"]
            have, _ = await call(again, {"m": "have", "model": tenant.digest})
            assert sha in have["blobs_held"]
