"""The Redis store beyond the behaviour every backend shares (tests/unit/test_store.py):
two stores on one database as two servers of a site, chunking, verification on read,
racing appends, typed errors when Redis is gone, and its restart from the AOF.

Every test runs against a real redis-server process (tests/helpers/redis_server.py)."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tests.helpers.redis_server import RedisServer

from ionn_net import store as store_module
from ionn_net.errors import StoreError
from ionn_net.extras import Extra
from ionn_net.store import (
    BlobCorruptError,
    DirectoryStore,
    MemoryStore,
    StoreUnavailableError,
    open_store,
    partial_key,
    sha256_hex,
)
from ionn_net.store_redis import RedisStore

CHUNK = 4096
BLOB = os.urandom(3 * CHUNK + 123)  # four chunks, the last one short
DIGEST = sha256_hex(BLOB)
SESSION = "ab" * 16


def _client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_stores_on_one_redis_see_each_others_blobs_and_owners(redis_url: str) -> None:
    a = RedisStore(redis_url, chunk_size=CHUNK)
    b = RedisStore(redis_url, chunk_size=CHUNK)
    key = partial_key(SESSION, DIGEST)
    a.append_partial(key, 0, BLOB[:5000])
    assert b.partial_offset(key) == 5000  # a resume on the other server continues here
    b.append_partial(key, 5000, BLOB[5000:])
    b.complete_partial(DIGEST, key=key)
    b.record_owner(SESSION, DIGEST)
    assert a.has(DIGEST)
    assert a.get(DIGEST) == BLOB
    assert a.owned_by(SESSION) == {DIGEST}
    assert a.bytes_owned_by(SESSION) == len(BLOB)
    assert a.owned_by("cd" * 16) == frozenset()  # §14.5: scoped to the session
    assert list(a.digests()) == [DIGEST]


def test_blobs_are_stored_in_chunks_no_larger_than_the_chunk_size(redis_url: str) -> None:
    store = RedisStore(redis_url, chunk_size=CHUNK)
    store.put(DIGEST, BLOB)
    client = _client(redis_url)
    chunks = sorted(k for k in client.keys(f"ionn:blob:{DIGEST}:*"))
    assert len(chunks) == 4
    assert [client.strlen(k) for k in chunks] == [CHUNK, CHUNK, CHUNK, 123]
    assert [client.pttl(k) for k in chunks] == [-1] * 4  # staged with a TTL, kept for good
    assert max(client.memory_usage(k) or 0 for k in client.keys("*")) < 2 * CHUNK
    assert client.keys("ionn:stage:*") == []  # staged chunks were renamed into place


def test_the_first_store_fixes_the_chunk_size_for_the_database(redis_url: str) -> None:
    RedisStore(redis_url, chunk_size=CHUNK).put(DIGEST, BLOB)
    later = RedisStore(redis_url, chunk_size=8 * CHUNK)
    assert later.chunk_size == CHUNK
    assert later.get(DIGEST) == BLOB


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "record"])
def test_a_corrupted_chunk_is_caught_on_read_never_served_and_deleted(
    redis_url: str, damage: str
) -> None:
    store = RedisStore(redis_url, chunk_size=CHUNK)
    store.put(DIGEST, BLOB)
    store.record_owner(SESSION, DIGEST)
    client = _client(redis_url)
    chunk = f"ionn:blob:{DIGEST}:2"
    if damage == "flip":
        client.setrange(chunk, 17, bytes([BLOB[2 * CHUNK + 17] ^ 1]))
    elif damage == "truncate":
        client.set(chunk, BLOB[2 * CHUNK : 3 * CHUNK - 1])
    elif damage == "delete":
        client.delete(chunk)
    else:
        client.hdel(f"ionn:blob:{DIGEST}", "size")
    with pytest.raises(BlobCorruptError, match="failed verification on read"):
        store.get(DIGEST)
    assert not store.has(DIGEST)
    assert store.owned_by(SESSION) == frozenset()  # the owner uploads it again
    assert DIGEST not in store.digests()
    assert client.keys(f"ionn:blob:{DIGEST}*") == []
    with pytest.raises(StoreError, match="not held"):
        store.get(DIGEST)
    store.put(DIGEST, BLOB)  # and a fresh upload is accepted
    assert store.get(DIGEST) == BLOB


def test_racing_appends_never_interleave(redis_url: str) -> None:
    """Two stores (two servers) append the same partial upload at the same time, each at
    the offset it last read and with pieces of its own size: every piece lands exactly at
    its offset or is refused, so the result still hashes to the digest."""
    blob = os.urandom(200_000)
    digest = sha256_hex(blob)
    key = partial_key(SESSION, digest)
    stores = [RedisStore(redis_url, chunk_size=CHUNK) for _ in range(2)]
    conflicts = [0, 0]

    def writer(i: int, piece: int) -> None:
        store = stores[i]
        for _ in range(10_000):
            offset = store.partial_offset(key)
            if offset >= len(blob):
                return
            try:
                store.append_partial(key, offset, blob[offset : offset + piece])
            except StoreError:
                conflicts[i] += 1

    threads = [threading.Thread(target=writer, args=(i, n)) for i, n in enumerate((997, 1531))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert stores[0].partial_offset(key) == len(blob)
    stores[1].complete_partial(digest, key=key)
    assert stores[0].get(digest) == blob
    assert sum(conflicts) > 0, "the writers never raced: the test proved nothing"


def test_an_offset_conflict_changes_nothing(redis_url: str) -> None:
    a, b = (RedisStore(redis_url, chunk_size=CHUNK) for _ in range(2))
    key = partial_key(SESSION, DIGEST)
    a.append_partial(key, 0, BLOB[:100])
    with pytest.raises(StoreError, match=r"offset conflict .* expected 100, got 0"):
        b.append_partial(key, 0, b"x" * 100)
    assert a.partial_bytes(key) == BLOB[:100]


def test_two_servers_completing_the_same_blob_is_idempotent(redis_url: str) -> None:
    a, b = (RedisStore(redis_url, chunk_size=CHUNK) for _ in range(2))
    mine, theirs = partial_key(SESSION, DIGEST), partial_key("cd" * 16, DIGEST)
    a.append_partial(mine, 0, BLOB)
    b.append_partial(theirs, 0, BLOB)
    a.complete_partial(DIGEST, key=mine)
    b.complete_partial(DIGEST, key=theirs)  # finds it held: keeps it, drops its own copy
    b.put(DIGEST, BLOB)
    assert a.get(DIGEST) == BLOB
    client = _client(redis_url)
    assert client.keys("ionn:part*") == []
    assert a.partial_offset(mine) == b.partial_offset(theirs) == 0


def test_stale_partial_uploads_are_swept(redis_url: str) -> None:
    store = RedisStore(redis_url, chunk_size=CHUNK, partial_ttl_s=3600.0)
    key = partial_key(SESSION, DIGEST)
    store.append_partial(key, 0, BLOB[: 2 * CHUNK + 5])
    assert store.sweep_partials() == 0
    assert store.sweep_partials(now=time.time() + 7200) == 1
    assert store.partial_offset(key) == 0
    assert _client(redis_url).keys("ionn:part*") == []
    kept = RedisStore(redis_url, chunk_size=CHUNK, partial_ttl_s=None)
    kept.append_partial(key, 0, BLOB[:5])
    assert kept.sweep_partials(now=time.time() + 1e9) == 0


def test_prefixes_separate_stores_in_one_database(redis_url: str) -> None:
    a = RedisStore(redis_url, prefix="site-a:")
    b = RedisStore(redis_url, prefix="site-b:")
    a.put(DIGEST, BLOB)
    assert not b.has(DIGEST)


def test_unreachable_redis_is_a_typed_error_naming_the_url_and_the_cause() -> None:
    url = f"redis://:hunter2@127.0.0.1:{_closed_port()}/0"
    with pytest.raises(StoreUnavailableError) as info:
        RedisStore(url, retries=0)
    message = str(info.value)
    assert "redis://:***@127.0.0.1" in message
    assert "hunter2" not in message
    assert "ConnectionError" in message


def test_redis_killed_mid_run_then_restarted_from_its_aof(own_redis: RedisServer) -> None:
    """Writes Redis acknowledged before it was SIGKILLed survive in its AOF (Redis writes
    the AOF before it replies); while it is down every call is a typed error; after its
    restart the same store object works again without being reopened."""
    store = RedisStore(own_redis.url(), chunk_size=CHUNK, retries=1)
    store.put(DIGEST, BLOB)
    store.record_owner(SESSION, DIGEST)
    other = os.urandom(CHUNK + 1)
    other_key = partial_key(SESSION, sha256_hex(other))
    store.append_partial(other_key, 0, other[:1000])
    own_redis.kill()
    for call in (
        lambda: store.get(DIGEST),
        lambda: store.has(DIGEST),
        lambda: store.owned_by(SESSION),
        lambda: store.append_partial(other_key, 1000, other[1000:]),
        lambda: store.put(sha256_hex(other), other),
    ):
        with pytest.raises(StoreUnavailableError, match=r"redis://127\.0\.0\.1:\d+/0"):
            call()
    own_redis.start()
    assert store.get(DIGEST) == BLOB
    assert store.owned_by(SESSION) == {DIGEST}
    assert store.partial_offset(other_key) == 1000
    store.append_partial(other_key, 1000, other[1000:])
    store.complete_partial(sha256_hex(other), key=other_key)
    assert store.get(sha256_hex(other)) == other


def test_open_store_picks_the_backend_from_the_spec(redis_url: str, tmp_path: Path) -> None:
    memory = MemoryStore()
    assert open_store(memory) is memory
    assert isinstance(open_store(None), MemoryStore)
    assert isinstance(open_store(str(tmp_path / "d")), DirectoryStore)
    assert isinstance(open_store(tmp_path / "e"), DirectoryStore)
    assert isinstance(open_store(redis_url), RedisStore)
    with pytest.raises(StoreError, match="expected None, a directory, a redis:// URL"):
        open_store(42)  # type: ignore[arg-type]


def test_a_redis_url_without_the_redis_package_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    absent = Extra("redis", ("ionn_net_test_no_such_module",))
    monkeypatch.setattr(store_module, "REDIS_EXTRA", absent)
    with pytest.raises(StoreError) as info:
        open_store("redis://:pw@127.0.0.1:1/0")
    assert str(info.value) == (
        "store redis://:***@127.0.0.1:1/0: a Redis store needs ionn_net_test_no_such_module, "
        "not installed; install it with: pip install 'ionn_net[redis]'"
    )


def test_bad_settings_are_refused(redis_url: str) -> None:
    with pytest.raises(StoreError, match="chunk_size"):
        RedisStore(redis_url, chunk_size=10)
    with pytest.raises(StoreError, match="partial_ttl_s"):
        RedisStore(redis_url, partial_ttl_s=0)
    with pytest.raises(StoreError, match="not a usable Redis URL"):
        RedisStore("redis://127.0.0.1:notaport/0")


def test_the_server_does_not_start_on_an_unreachable_redis(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ionn_net import cli

    url = f"redis://127.0.0.1:{_closed_port()}/0"
    with pytest.raises(SystemExit) as info:
        cli.server_main(["--store", url])
    message = str(info.value.code)
    assert message.startswith(f"ionn-server: store {url}: open failed: ConnectionError"), message
    assert capsys.readouterr().out == ""  # it never said it was listening


def test_public_records_are_shared_by_the_servers_of_a_site(redis_url: str) -> None:
    a, b = (RedisStore(redis_url, chunk_size=CHUNK) for _ in range(2))
    key = partial_key(SESSION, DIGEST)
    a.append_partial(key, 0, BLOB)
    a.complete_partial(DIGEST, key=key, owner=SESSION, public=True)
    assert b.public_held([DIGEST]) == {DIGEST}
    assert b.owned_by(SESSION) == {DIGEST}


def test_a_corrupt_blob_loses_its_public_record_in_the_same_script(redis_url: str) -> None:
    store = RedisStore(redis_url, chunk_size=CHUNK)
    store.put(DIGEST, BLOB)
    store.record_public(DIGEST)
    _client(redis_url).setrange(f"ionn:blob:{DIGEST}:1", 3, b"\x00\x01")
    with pytest.raises(BlobCorruptError):
        store.get(DIGEST)
    assert not _client(redis_url).sismember("ionn:public", DIGEST)
    store.put(DIGEST, BLOB)  # stored again, by a private upload
    assert store.public_held([DIGEST]) == frozenset()


def test_notes_are_kept_in_the_store(redis_url: str) -> None:
    a, b = (RedisStore(redis_url) for _ in range(2))
    assert a.read_note("costmodel-x.json") is None
    assert a.write_note("costmodel-x.json", '{"format": 1}')
    assert b.read_note("costmodel-x.json") == '{"format": 1}'
    assert not MemoryStore().write_note("n", "t") and MemoryStore().read_note("n") is None


def test_a_redis_server_caches_its_cost_model_in_the_store(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ionn_net import calibrate
    from ionn_net.planner.costmodel import LinearFit, ServerCostModel
    from ionn_net.planner.prior import LayerPrior

    fitted = ServerCostModel(exec_fits={"conv": LinearFit("macs", 0.0, 3.0)})
    calls: list[int] = []
    found = calibrate.Calibration(cost_model=fitted, prior=LayerPrior())
    monkeypatch.setattr(calibrate, "calibrate", lambda: calls.append(1) or found)
    monkeypatch.setenv("HOME", str(tmp_path))  # no cache file anywhere else
    for _ in range(2):  # two starts, two servers of the site
        assert calibrate.load_or_calibrate(None, notes=RedisStore(redis_url)) == fitted
    assert calls == [1]
    assert not list(tmp_path.rglob("costmodel-*"))  # kept in the store, not in a home dir
