"""Crash test: SIGKILL the store's process at each step of a durable write.

A child process stores blobs one by one and prints ``ACK <digest>`` after each ``put``
returns (the moment the server would acknowledge the upload). It is killed with SIGKILL
at a chosen step (written, fsynced, renamed, dir_fsynced) of a chosen write. After each
crash a fresh store on the same directory must hold every acknowledged blob intact and
must never serve a corrupt one.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ionn_net.errors import StoreError
from ionn_net.store import DirectoryStore

CHILD = textwrap.dedent(
    """
    import hashlib, os, signal, sys
    from ionn_net.store import DirectoryStore

    root, point, victim = sys.argv[1], sys.argv[2], int(sys.argv[3])
    writes = {"n": 0}

    def hook(name):
        if name == "written":
            writes["n"] += 1
        if name == point and writes["n"] == victim:
            os.kill(os.getpid(), signal.SIGKILL)

    store = DirectoryStore(root, fault_hook=hook)
    for i in range(6):
        blob = hashlib.sha256(str(i).encode()).digest() * 2000
        digest = hashlib.sha256(blob).hexdigest()
        store.put(digest, blob)
        print("ACK", digest, flush=True)
    """
)


@pytest.mark.parametrize("point", ["written", "fsynced", "renamed", "dir_fsynced"])
@pytest.mark.parametrize("victim", [1, 4])
def test_acknowledged_blobs_survive_sigkill(tmp_path: Path, point: str, victim: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), point, str(victim)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr  # it really died by SIGKILL mid-write
    acked = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("ACK")]
    assert len(acked) == victim - 1
    store = DirectoryStore(tmp_path)
    for digest in acked:
        assert store.get(digest)  # verified on read
    for digest in store.digests():
        try:
            store.get(digest)
        except StoreError:
            pytest.fail(f"the store indexed a blob that does not verify: {digest}")
    assert list((tmp_path / "tmp").iterdir()) == []
