"""Layer-blob store: verification, durability, resume and tenant scoping.

The behavioural tests run on every backend: memory, directory, and Redis (a real
redis-server started by the test session; they skip without one)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ionn_net.errors import StoreError
from ionn_net.store import (
    BlobCorruptError,
    BlobStore,
    DirectoryStore,
    MemoryStore,
    partial_key,
    sha256_hex,
)

BLOB = os.urandom(10_000)
DIGEST = sha256_hex(BLOB)
SESSION = "ab" * 16


@pytest.fixture(params=["memory", "directory", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "memory":
        return MemoryStore()
    if request.param == "redis":
        from ionn_net.store_redis import RedisStore

        # Small chunks, so that a 10 kB blob spans three of them.
        return RedisStore(request.getfixturevalue("redis_url"), chunk_size=4096)
    return DirectoryStore(tmp_path / "store")


def test_put_then_get_returns_the_same_bytes(store: BlobStore) -> None:
    store.put(DIGEST, BLOB)
    assert store.has(DIGEST)
    assert store.get(DIGEST) == BLOB


def test_put_refuses_bytes_that_do_not_match_the_digest(store: BlobStore) -> None:
    with pytest.raises(StoreError, match="mismatch"):
        store.put(DIGEST, BLOB + b"x")
    assert not store.has(DIGEST)


def test_get_of_a_missing_blob_is_a_typed_error(store: BlobStore) -> None:
    with pytest.raises(StoreError, match="not held"):
        store.get(DIGEST)


@pytest.mark.parametrize("bad", ["", "ABC", "g" * 64, "a" * 63, "../" + "a" * 61])
def test_malformed_digests_are_refused(store: BlobStore, bad: str) -> None:
    with pytest.raises(StoreError, match="64 lowercase hex"):
        store.put(bad, b"")


def test_partial_upload_resumes_at_the_authoritative_offset(store: BlobStore) -> None:
    assert store.partial_offset(DIGEST) == 0
    assert store.append_partial(DIGEST, 0, BLOB[:4000]) == 4000
    with pytest.raises(StoreError, match="offset conflict"):
        store.append_partial(DIGEST, 3000, BLOB[3000:5000])
    assert store.partial_offset(DIGEST) == 4000  # the conflict changed nothing
    store.append_partial(DIGEST, 4000, BLOB[4000:])
    store.complete_partial(DIGEST)
    assert store.get(DIGEST) == BLOB
    assert store.partial_offset(DIGEST) == 0


def test_a_corrupt_partial_is_discarded_on_completion(store: BlobStore) -> None:
    store.append_partial(DIGEST, 0, BLOB[:-1] + b"\x00")
    with pytest.raises(StoreError, match="mismatch"):
        store.complete_partial(DIGEST)
    assert not store.has(DIGEST)
    assert store.partial_offset(DIGEST) == 0


def test_other_bytes_for_a_held_digest_are_still_a_mismatch(store: BlobStore) -> None:
    """A session completing a digest another session stored is verified like any other:
    otherwise "complete" for wrong bytes would reveal that someone holds it (§14.5)."""
    from ionn_net.store import partial_key

    store.put(DIGEST, BLOB)
    theirs = partial_key("cd" * 16, DIGEST)
    store.append_partial(theirs, 0, bytes(len(BLOB)))
    with pytest.raises(StoreError, match="mismatch"):
        store.complete_partial(DIGEST, key=theirs)
    assert store.get(DIGEST) == BLOB
    assert store.partial_offset(theirs) == 0


def test_sessions_see_only_their_own_blobs(store: BlobStore) -> None:
    store.put(DIGEST, BLOB)
    store.record_owner(SESSION, DIGEST)
    assert store.owned_by(SESSION) == {DIGEST}
    assert store.owned_by("cd" * 16) == frozenset()
    assert store.bytes_owned_by(SESSION) == len(BLOB)


def test_directory_store_survives_a_restart(tmp_path: Path) -> None:
    first = DirectoryStore(tmp_path)
    first.put(DIGEST, BLOB)
    first.record_owner(SESSION, DIGEST)
    first.append_partial("0" * 64, 0, b"half")
    second = DirectoryStore(tmp_path)
    assert second.get(DIGEST) == BLOB
    assert second.owned_by(SESSION) == {DIGEST}
    assert second.partial_offset("0" * 64) == 4


def test_bit_rot_on_disk_is_detected_and_never_served(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    store.put(DIGEST, BLOB)
    path = next((tmp_path / "blobs").glob(f"*/{DIGEST}"))
    path.write_bytes(bytes([BLOB[0] ^ 1]) + BLOB[1:])
    with pytest.raises(StoreError, match="failed verification"):
        store.get(DIGEST)
    assert not store.has(DIGEST)
    assert not path.exists()


def test_leftover_temp_files_from_a_crash_are_removed(tmp_path: Path) -> None:
    DirectoryStore(tmp_path)
    leftover = tmp_path / "tmp" / f"{DIGEST}.123.456"
    leftover.write_bytes(BLOB[:10])
    store = DirectoryStore(tmp_path)
    assert not leftover.exists()
    assert not store.has(DIGEST)


def test_partials_keyed_per_session_complete_under_the_real_digest(store: BlobStore) -> None:
    from ionn_net.store import partial_key

    mine, theirs = partial_key(SESSION, DIGEST), partial_key("cd" * 16, DIGEST)
    assert mine not in (theirs, DIGEST)
    store.append_partial(mine, 0, BLOB)
    assert store.partial_offset(theirs) == 0  # another tenant sees no progress
    store.complete_partial(DIGEST, key=mine)
    assert store.get(DIGEST) == BLOB
    assert store.partial_offset(mine) == 0


def test_stale_partial_uploads_are_swept_and_fresh_ones_kept(tmp_path: Path) -> None:
    data_a, data_b = b"a" * 100, b"b" * 100
    a, b = sha256_hex(data_a), sha256_hex(data_b)
    store = DirectoryStore(tmp_path, fsync=False, partial_ttl_s=3600.0)
    store.append_partial(a, 0, data_a[:10])
    store.append_partial(b, 0, data_b[:10])
    old = time.time() - 7200
    os.utime(tmp_path / "partial" / a, (old, old))
    reopened = DirectoryStore(tmp_path, fsync=False, partial_ttl_s=3600.0)  # sweeps on open
    assert reopened.partial_offset(a) == 0
    assert reopened.partial_offset(b) == 10
    assert reopened.sweep_partials(now=time.time() + 7200) == 1
    assert reopened.partial_offset(b) == 0
    kept = DirectoryStore(tmp_path, fsync=False, partial_ttl_s=None)
    kept.append_partial(a, 0, data_a[:5])
    assert kept.sweep_partials(now=time.time() + 1e9) == 0


def test_partial_ttl_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="partial_ttl_s"):
        DirectoryStore(tmp_path, partial_ttl_s=0)


# -- several processes on one directory (ionn-server --workers) ------------------------------


def test_a_second_store_on_the_same_directory_sees_what_the_first_stored_later(
    tmp_path: Path,
) -> None:
    first = DirectoryStore(tmp_path / "store")
    second = DirectoryStore(tmp_path / "store")  # opened before anything was stored
    first.put(DIGEST, BLOB)
    first.record_owner(SESSION, DIGEST)
    assert second.has(DIGEST)
    assert second.owned_by(SESSION) == {DIGEST}
    assert second.bytes_owned_by(SESSION) == len(BLOB)
    assert second.usage() == (1, len(BLOB))
    other = sha256_hex(b"other")
    second.put(other, b"other")
    second.record_owner(SESSION, other)
    assert first.owned_by(SESSION) == {DIGEST, other}  # and the other way round


def test_a_second_store_on_the_same_directory_sees_what_the_first_published_later(
    tmp_path: Path,
) -> None:
    first = DirectoryStore(tmp_path / "store")
    second = DirectoryStore(tmp_path / "store")  # opened before the blob was published
    key = partial_key(SESSION, DIGEST)
    first.append_partial(key, 0, BLOB)
    first.complete_partial(DIGEST, key=key, owner=SESSION, public=True)
    assert second.public_held([DIGEST]) == {DIGEST}
    (tmp_path / "store" / "blobs" / DIGEST[:2] / DIGEST).write_bytes(BLOB[::-1])
    with pytest.raises(BlobCorruptError):
        first.get(DIGEST)  # discarded by the first: the second no longer reveals it
    second.put(DIGEST, BLOB)  # a later private upload of the same bytes
    assert second.public_held([DIGEST]) == frozenset()


def test_owner_records_are_read_incrementally_and_only_whole_lines(tmp_path: Path) -> None:
    first = DirectoryStore(tmp_path / "store")
    second = DirectoryStore(tmp_path / "store")
    first.put(DIGEST, BLOB)
    path = tmp_path / "store" / "sessions" / SESSION
    with open(path, "a") as fh:
        fh.write(DIGEST[:40])  # a line another process is writing right now
    assert second.owned_by(SESSION) == frozenset()
    with open(path, "a") as fh:
        fh.write(DIGEST[40:] + "\n")
    assert second.owned_by(SESSION) == {DIGEST}


def test_a_partial_is_appended_by_whichever_store_holds_the_right_offset(tmp_path: Path) -> None:
    first = DirectoryStore(tmp_path / "store")
    second = DirectoryStore(tmp_path / "store")
    first.append_partial(DIGEST, 0, BLOB[:4000])
    with pytest.raises(StoreError, match="expected 4000, got 0"):
        second.append_partial(DIGEST, 0, BLOB[:4000])
    assert second.append_partial(DIGEST, 4000, BLOB[4000:]) == len(BLOB)
    first.complete_partial(DIGEST)
    assert second.get(DIGEST) == BLOB


def test_opening_the_store_keeps_the_temporary_files_of_live_writers(tmp_path: Path) -> None:
    DirectoryStore(tmp_path / "store")
    tmp = tmp_path / "store" / "tmp"
    live = tmp / f"{DIGEST}.{os.getppid()}.1"  # the test runner's parent is alive
    dead = tmp / f"{DIGEST}.{2**22 + 12345}.1"  # above pid_max's default: no such process
    stray = tmp / "garbage"
    for path in (live, dead, stray):
        path.write_bytes(b"x")
    DirectoryStore(tmp_path / "store")
    assert live.exists()
    assert not dead.exists() and not stray.exists()


_RACER = """
import json, sys
from ionn_net.errors import StoreError
from ionn_net.store import DirectoryStore
store, key, won = DirectoryStore(sys.argv[1]), sys.argv[2], []
for _ in range(int(sys.argv[3])):
    try:
        won.append(store.append_partial(key, store.partial_offset(key), b"x" * 100))
    except StoreError:
        pass  # another process appended in between: the offset check refused it
print(json.dumps(won))
"""


def test_processes_racing_on_one_partial_never_both_win_the_same_offset(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    root = tmp_path / "store"
    DirectoryStore(root)
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(root), DIGEST, "2000"], stdout=subprocess.PIPE
        )
        for _ in range(3)
    ]
    won = [o for r in racers for o in json.loads(r.communicate(timeout=120)[0])]
    assert len(won) == len(set(won))  # each accepted append got an offset of its own
    assert (root / "partial" / DIGEST).stat().st_size == 100 * len(won)


# -- public records and owners recorded with the commit (protocol.md §10.3.4, §14.5.1) ------


def test_complete_partial_records_owner_and_public_with_the_blob(store: BlobStore) -> None:
    key = partial_key(SESSION, DIGEST)
    store.append_partial(key, 0, BLOB)
    store.complete_partial(DIGEST, key=key, owner=SESSION, public=True)
    assert store.owned_by(SESSION) == {DIGEST}
    assert store.public_held([DIGEST, "cd" * 32]) == {DIGEST}


def test_a_private_completion_records_no_public_record(store: BlobStore) -> None:
    key = partial_key(SESSION, DIGEST)
    store.append_partial(key, 0, BLOB)
    store.complete_partial(DIGEST, key=key, owner=SESSION)
    assert store.owned_by(SESSION) == {DIGEST}
    assert store.public_held([DIGEST]) == frozenset()


def test_bytes_that_do_not_verify_record_neither_owner_nor_public(store: BlobStore) -> None:
    key = partial_key(SESSION, DIGEST)
    store.append_partial(key, 0, BLOB[:-1] + bytes([BLOB[-1] ^ 1]))
    with pytest.raises(StoreError, match="mismatch"):
        store.complete_partial(DIGEST, key=key, owner=SESSION, public=True)
    assert store.owned_by(SESSION) == frozenset()
    assert store.public_held([DIGEST]) == frozenset()


def test_a_second_uploader_of_a_held_blob_is_recorded_too(store: BlobStore) -> None:
    """The blob was committed by a first session; the second's own bytes verified, so it
    owns the blob too and its public marking publishes it."""
    other = "cd" * 16
    first = partial_key(other, DIGEST)
    store.append_partial(first, 0, BLOB)
    store.complete_partial(DIGEST, key=first, owner=other)
    assert store.public_held([DIGEST]) == frozenset()  # a private copy publishes nothing
    second = partial_key(SESSION, DIGEST)
    store.append_partial(second, 0, BLOB)
    store.complete_partial(DIGEST, key=second, owner=SESSION, public=True)
    assert store.owned_by(SESSION) == {DIGEST} and store.owned_by(other) == {DIGEST}
    assert store.public_held([DIGEST]) == {DIGEST}


def test_a_public_record_of_a_blob_not_held_reveals_nothing(store: BlobStore) -> None:
    store.record_public(DIGEST)
    assert store.public_held([DIGEST]) == frozenset()
    store.put(DIGEST, BLOB)
    assert store.public_held([DIGEST]) == {DIGEST}


def test_public_records_survive_a_restart_of_the_directory_store(tmp_path: Path) -> None:
    first = DirectoryStore(tmp_path / "store")
    first.put(DIGEST, BLOB)
    first.record_public(DIGEST)
    assert DirectoryStore(tmp_path / "store").public_held([DIGEST]) == {DIGEST}


def test_a_corrupt_blob_loses_its_public_record_in_the_directory_store(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    store.put(DIGEST, BLOB)
    store.record_public(DIGEST)
    path = tmp_path / "store" / "blobs" / DIGEST[:2] / DIGEST
    path.write_bytes(BLOB[::-1])
    with pytest.raises(BlobCorruptError):
        store.get(DIGEST)
    store.put(DIGEST, BLOB)  # stored again, by a private upload
    assert store.public_held([DIGEST]) == frozenset()
    assert DirectoryStore(tmp_path / "store").public_held([DIGEST]) == frozenset()
