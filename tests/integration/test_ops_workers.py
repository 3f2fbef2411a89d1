"""``ionn-server --workers 2``: one port, two worker processes, one shared store.

A session uploads one blob whole and another half-way on one worker, then reconnects and
lands on the other (the supervisor hands connections out round-robin): it is told both,
resumes the half blob there, loads and queries. A worker killed with SIGKILL is started
again; the metrics port adds up every worker's counters; SIGTERM drains all and exits 0.
The same session handover runs with the workers on a real redis-server instead of a
directory (each worker opens its own connection to it).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.conformance.test_s10_messages import Model, blob, dense_model, manifest, query
from tests.helpers.server_proc import metrics, start
from tests.refpeer import RefPeer, SocketChannel
from tests.refpeer.session import hello

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

KEY = "d4" * 16


def _session(port: int) -> RefPeer:
    peer = RefPeer(SocketChannel.connect("127.0.0.1", port), client=True, timeout=30.0)
    peer.handshake()
    (welcome,) = hello(peer, session=KEY)
    assert welcome.head["m"] == "welcome"
    return peer


def _value(port: int, name: str, **labels: str) -> float:
    return metrics(port).get((name, frozenset(labels.items())), 0.0)


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def _upload_one_and_cut_one(port: int, whole: Model, cut: Model) -> None:
    first = _session(port)
    assert manifest(first, whole).head["m"] == "manifest_ok"
    assert blob(first, whole, whole.blob).head["complete"] is True
    assert manifest(first, cut).head["m"] == "manifest_ok"
    head = {"m": "blob", "model": cut.digest, "sha256": cut.blob_sha}
    head |= {"size": len(cut.blob), "offset": 0, "body_len": len(cut.blob)}
    sid = first.open_stream(head, urgency=5, incremental=True)
    first.send_body(sid, cut.blob[:1000], end=False)
    time.sleep(0.5)
    first.channel.close()  # the client vanishes mid-blob: the worker keeps what arrived


def _resume_load_and_query(port: int, whole: Model, cut: Model) -> None:
    second = _session(port)
    again = manifest(second, whole).head
    assert again["blobs_held"] == [whole.blob_sha] and again["layers_ready"] == []
    _wait(
        lambda: manifest(second, cut).head["partial"] == {cut.blob_sha: 1000},
        10,
        "the other worker never saw the partial upload",
    )
    assert blob(second, cut, cut.blob[1000:], offset=1000).head["complete"] is True
    loaded = second.request({"m": "load", "model": whole.digest, "layers": ["d"]}).head
    assert loaded["m"] == "load_ok" and loaded["layers_ready"] == ["d"]
    x = np.random.default_rng(0).normal(0, 1, (1, 6)).astype("<f4")
    result = query(second, whole, x, ["d"])
    assert result.head["m"] == "result", result.head
    got = np.frombuffer(result.body, "<f4").reshape(1, 3)
    np.testing.assert_allclose(got, x @ whole.kernel + whole.bias, rtol=1e-5, atol=1e-5)


def test_two_workers_share_the_store_and_the_port(cost_model: Any, tmp_path: Path) -> None:
    cost = tmp_path / "cost.json"
    cost.write_text(cost_model.to_json())
    args = ["--port", "0", "--workers", "2", "--store", str(tmp_path / "store")]
    args += ["--metrics-port", "0", "--cost-model", str(cost), "--drain-timeout", "10"]
    srv = start(args, tmp_path / "server.log")
    whole, cut = dense_model(seed=4), dense_model(seed=5, inputs=512, units=32)
    try:
        port = srv.wait_listening(600)
        mport = srv.metrics_port
        assert mport is not None
        assert _value(mport, "ionn_workers") == 2
        _upload_one_and_cut_one(port, whole, cut)
        _resume_load_and_query(port, whole, cut)
        welcomes = [e["worker"] for e in srv.events("welcome")]
        assert welcomes == [0, 1], welcomes  # two connections, two workers
        # counters add up across workers: one blob completed on each
        assert _value(mport, "ionn_blobs_completed_total") == 2
        assert _value(mport, "ionn_requests_total", message="query", outcome="ok") == 1

        (started,) = [e for e in srv.events("worker_started") if e["index"] == 1]
        os.kill(started["child"], signal.SIGKILL)
        _wait(lambda: _value(mport, "ionn_worker_restarts_total") == 1, 30, "no restart")
        third = _session(port)  # served by the worker that lives meanwhile
        assert manifest(third, whole).head["blobs_held"] == [whole.blob_sha]
        _wait(lambda: _value(mport, "ionn_workers") == 2, 600, "the worker did not come back")
        assert _value(mport, "ionn_blobs_completed_total") == 2  # the dead one's count stays

        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(120) == 0, srv.tail()
    finally:
        srv.stop()
    children = {e["child"] for e in srv.events("worker_started")}
    assert len(children) == 3
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_two_workers_share_a_redis_store(cost_model: Any, tmp_path: Path, redis_url: str) -> None:
    cost = tmp_path / "cost.json"
    cost.write_text(cost_model.to_json())
    args = ["--port", "0", "--workers", "2", "--store", redis_url]
    args += ["--metrics-port", "0", "--cost-model", str(cost), "--drain-timeout", "10"]
    srv = start(args, tmp_path / "server.log")
    whole, cut = dense_model(seed=6), dense_model(seed=7, inputs=512, units=32)
    try:
        port = srv.wait_listening(600)
        mport = srv.metrics_port
        assert mport is not None
        _upload_one_and_cut_one(port, whole, cut)
        _resume_load_and_query(port, whole, cut)
        welcomes = [e["worker"] for e in srv.events("welcome")]
        assert welcomes == [0, 1], welcomes  # the reconnect was served by the other worker
        assert _value(mport, "ionn_blobs_completed_total") == 2
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(120) == 0, srv.tail()
    finally:
        srv.stop()
