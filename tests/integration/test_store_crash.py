"""Crash test: SIGKILL the store's process at each step of a durable write.

A child process stores blobs one by one and prints ``ACK <digest>`` after each ``put``
returns (the moment the server would acknowledge the upload). It is killed with SIGKILL
at a chosen step of a chosen write: for the directory store written, fsynced, renamed,
dir_fsynced; for the Redis store the second chunk staged (mid-blob) and committed. After
each crash a fresh store on the same directory or database must hold every acknowledged
blob intact and must never serve a corrupt one.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ionn_net.errors import StoreError
from ionn_net.store import BlobStore, DirectoryStore

CHILD = textwrap.dedent(
    """
    import hashlib, os, signal, sys
    from ionn_net.store import DirectoryStore

    target, point, victim = sys.argv[1], sys.argv[2], int(sys.argv[3])
    state = {"blob": 1, "step": 0}

    def hook(name):
        # The directory store writes a blob at "written"; the Redis store stages it in
        # four chunks ("staged" each) and commits it ("committed").
        state["step"] += 1
        if name == point and state["blob"] == victim and (name != "staged" or state["step"] == 2):
            os.kill(os.getpid(), signal.SIGKILL)
        if name in ("dir_fsynced", "committed"):
            state["blob"] += 1
            state["step"] = 0

    if target.startswith("redis://"):
        from ionn_net.store_redis import RedisStore
        store = RedisStore(target, chunk_size=16384, fault_hook=hook)
    else:
        store = DirectoryStore(target, fault_hook=hook)
    for i in range(6):
        blob = hashlib.sha256(str(i).encode()).digest() * 2000
        digest = hashlib.sha256(blob).hexdigest()
        store.put(digest, blob)
        print("ACK", digest, flush=True)
    """
)

POINTS = [("directory", p) for p in ("written", "fsynced", "renamed", "dir_fsynced")] + [
    ("redis", p) for p in ("staged", "committed")
]


def _crash(target: str, point: str, victim: int) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, target, point, str(victim)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr  # it really died by SIGKILL mid-write
    acked = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("ACK")]
    assert len(acked) == victim - 1
    return acked


def _check(store: BlobStore, acked: list[str]) -> None:
    for digest in acked:
        assert store.get(digest)  # verified on read
    for digest in store.digests():
        try:
            store.get(digest)
        except StoreError:
            pytest.fail(f"the store indexed a blob that does not verify: {digest}")


@pytest.mark.parametrize(("backend", "point"), POINTS)
@pytest.mark.parametrize("victim", [1, 4])
def test_acknowledged_blobs_survive_sigkill(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, point: str, victim: int
) -> None:
    if backend == "directory":
        acked = _crash(str(tmp_path), point, victim)
        _check(DirectoryStore(tmp_path), acked)
        assert list((tmp_path / "tmp").iterdir()) == []
        return
    import redis

    from ionn_net.store_redis import RedisStore

    url: str = request.getfixturevalue("redis_url")
    acked = _crash(url, point, victim)
    store = RedisStore(url)
    _check(store, acked)
    held = set(store.digests())
    assert set(acked) <= held
    # The blob being written is held once committed, and not at all before.
    assert len(held) == len(acked) + (point == "committed")
    client = redis.Redis.from_url(url)
    staged = client.keys("ionn:stage:*")
    assert all(0 < client.pttl(k) <= 3_600_000 for k in staged)  # leftovers expire
    assert len(staged) == (2 if point == "staged" else 0)
