"""An edge server on the Redis store while its redis-server dies and comes back.

The server keeps answering queries on the layers it already built; requests that need the
store get a typed error naming the store; nothing acknowledged is lost (Redis reloads its
append-only file) and the same server works again once Redis is back, without a restart.
A Redis that dies between the last bytes of a blob and its digest check is not reported as
the client's fault (``digest_mismatch``): the partial stays and is completed afterwards.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from tests.helpers.redis_server import RedisServer
from tests.integration.hardening.tenant import IN, Tenant, call

from ionn_net.aio import connect
from ionn_net.planner.costmodel import ServerCostModel
from ionn_net.server import EdgeServer
from ionn_net.store_redis import RedisStore

pytestmark = pytest.mark.timeout(120)


async def test_built_layers_are_served_through_a_redis_outage(own_redis: RedisServer) -> None:
    store = RedisStore(own_redis.url(), retries=1)
    async with EdgeServer(store=store, cost_model=ServerCostModel()) as srv:
        async with connect("127.0.0.1", srv.port) as conn:
            tenant = Tenant(conn)
            await tenant.setup()
            await tenant.check_works()
            own_redis.kill()
            await tenant.check_works()  # built layers need no store
            have, _ = await call(conn, {"m": "have", "model": tenant.digest})
            assert have["m"] == "error", have
            assert own_redis.url() in str(have["message"]), have
            x = np.zeros((1, IN), np.float32)
            assert (await tenant.query(x))["m"] == "result"
            own_redis.start()
            have, _ = await call(conn, {"m": "have", "model": tenant.digest})
            assert sorted(have["blobs_held"]) == sorted(tenant.builder.blobs), have
        async with connect("127.0.0.1", srv.port) as conn:
            again = Tenant(conn, session=tenant.session)
            await again.hello()
            held = await again.manifest()
            assert sorted(held["blobs_held"]) == sorted(tenant.builder.blobs)
            assert (await again.load())["m"] == "load_ok"
            await again.check_works()


async def test_redis_dying_at_the_digest_check_is_not_a_digest_mismatch(
    own_redis: RedisServer,
) -> None:
    armed = threading.Event()

    def hook(point: str) -> None:
        if point == "appended" and armed.is_set():
            armed.clear()
            own_redis.kill()  # the bytes are in; the digest check will find Redis gone

    store = RedisStore(own_redis.url(), retries=1, fault_hook=hook)
    async with (
        EdgeServer(store=store, cost_model=ServerCostModel()) as srv,
        connect("127.0.0.1", srv.port) as conn,
    ):
        tenant = Tenant(conn)
        await tenant.hello()
        await tenant.manifest()
        sha, blob = next(iter(tenant.builder.blobs.items()))
        armed.set()
        reply = await tenant.blob(sha, 0, blob)
        assert reply["m"] == "error", reply
        assert reply["code"] == "internal", reply
        assert own_redis.url() in str(reply["message"])
        own_redis.start()
        held = await tenant.manifest()
        assert held["partial"] == {sha: len(blob)}, held  # the bytes stayed: finish it
        reply = await tenant.blob(sha, len(blob), b"")
        assert reply == {"m": "blob_ok", "sha256": sha, "offset": len(blob), "complete": True}
        assert sha in (await tenant.manifest())["blobs_held"]


async def test_every_request_needing_the_store_is_answered_internal(
    own_redis: RedisServer,
) -> None:
    """Redis down is the server's trouble, not a bad request: ``internal``, naming the store,
    on every request path that needs it; requests that do not (queries on built layers)
    keep working."""
    store = RedisStore(own_redis.url(), retries=1)
    async with EdgeServer(store=store, cost_model=ServerCostModel()) as srv:
        async with connect("127.0.0.1", srv.port) as conn:
            tenant = Tenant(conn)
            await tenant.setup()
            own_redis.kill()
            sha, blob = next(iter(tenant.builder.blobs.items()))
            replies = {
                "manifest": await tenant.manifest(),
                "have": (await call(conn, {"m": "have", "model": tenant.digest}))[0],
                "blob": await tenant.blob(sha, 0, blob),
                "load": await tenant.load(),
            }
            for kind, reply in replies.items():
                assert reply["m"] == "error" and reply["code"] == "internal", (kind, reply)
                assert own_redis.url() in str(reply["message"]), (kind, reply)
            await tenant.check_works()
        async with connect("127.0.0.1", srv.port) as conn:
            fresh = Tenant(conn)
            assert (await fresh.hello())["m"] == "welcome"
            reply = await fresh.manifest()
            assert reply["m"] == "error" and reply["code"] == "internal", reply
