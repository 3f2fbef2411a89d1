"""protocol.md §13.4: a server that drains and restarts on the same store keeps what the
session sent: bytes received before the drain's deadline are its resume offset, and blobs
acknowledged complete are held. The client is the reference peer; the servers are real
EdgeServers over one directory store, the second started after the first drained."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.conformance.test_s10_messages import Model, blob, dense_model, manifest
from tests.helpers.edge_server import call, running_server
from tests.refpeer import RefPeer, SocketChannel
from tests.refpeer.session import hello

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DONE_KEY, CUT_KEY = "a1" * 16, "b2" * 16
HALF = 640 << 10  # below the server's 1 MiB write batch: held in memory when the drain cuts


@dataclass
class Restart:
    done: Model  # uploaded whole before the drain
    cut: Model  # its blob cut half-way by the drain's deadline
    aborted: int  # connections the drain aborted
    after_done: dict[str, Any]  # manifest_ok of each session on the restarted server
    after_cut: dict[str, Any]
    resumed: dict[str, Any]  # blob_ok of the rest of the cut blob, sent to the new server


def _session(srv: Any, key: str) -> RefPeer:
    peer = RefPeer(SocketChannel.connect("127.0.0.1", srv.port), client=True, timeout=10.0)
    peer.handshake()
    (welcome,) = hello(peer, session=key)
    assert welcome.head["m"] == "welcome"
    return peer


@pytest.fixture(scope="module")
def restart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restart]:
    store: Path = tmp_path_factory.mktemp("store")
    done, cut = dense_model(seed=1), dense_model(seed=2, inputs=4096, units=96)
    assert len(cut.blob) > 2 * HALF
    with running_server(timeout=120.0, store=store) as first:
        peer = _session(first, DONE_KEY)
        assert manifest(peer, done).head["m"] == "manifest_ok"
        assert blob(peer, done, done.blob).head["complete"] is True
        uploader = _session(first, CUT_KEY)
        assert manifest(uploader, cut).head["m"] == "manifest_ok"
        head = {
            "m": "blob",
            "model": cut.digest,
            "sha256": cut.blob_sha,
            "size": len(cut.blob),
            "offset": 0,
            "body_len": len(cut.blob),
        }
        sid = uploader.open_stream(head, urgency=5, incremental=True)
        uploader.send_body(sid, cut.blob[:HALF], end=False)  # and then nothing more
        time.sleep(0.5)  # loopback: every byte sent has arrived
        aborted = call(first, lambda: first.drain(1.0))
    with running_server(timeout=120.0, store=store) as second:
        peer = _session(second, DONE_KEY)
        after_done = manifest(peer, done).head
        uploader = _session(second, CUT_KEY)
        after_cut = manifest(uploader, cut).head
        offset = int(after_cut["partial"].get(cut.blob_sha, 0))
        resumed = blob(uploader, cut, cut.blob[offset:], offset=offset).head
    yield Restart(done, cut, aborted, after_done, after_cut, resumed)


@pytest.mark.spec("13.4")
def test_bytes_received_before_the_drain_deadline_are_the_resume_offset(
    restart: Restart,
) -> None:
    assert restart.aborted == 1  # the upload was still open at the deadline
    assert restart.after_cut["partial"] == {restart.cut.blob_sha: HALF}
    assert restart.resumed["complete"] is True  # and the rest completes it


@pytest.mark.spec("13.4")
def test_blobs_acknowledged_before_the_drain_are_held_after_a_restart(restart: Restart) -> None:
    assert restart.after_done["blobs_held"] == [restart.done.blob_sha]
    assert restart.after_done["partial"] == {}
    assert restart.after_cut["blobs_held"] == []  # tenant scoping still holds (§14.5)
