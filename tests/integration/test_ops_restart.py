"""Graceful drain and restart of the real ``ionn-server`` process (protocol.md §13.3, §13.4).

* Readiness turns 503 as soon as SIGTERM arrives, liveness stays 200, a blob piece in
  flight finishes after the GOAWAY, then the process exits 0.
* SIGTERM while a real OffloadClient uploads and queries, then a new server on the same
  port and store: every query gets exactly one correct answer, no query or blob piece the
  first server accepted is dropped, no blob is completed twice nor sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.conformance.test_s10_messages import dense_model, manifest
from tests.helpers.server_proc import ServerProc, free_port, http_get, metrics, start
from tests.refpeer import RefPeer, SocketChannel
from tests.refpeer.session import hello

from ionn_net.client import ClientConfig, OffloadClient
from ionn_net.netem.proxy import LinkSpec, ShapingProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture
def cost_file(cost_model: Any, tmp_path: Path) -> Path:
    path = tmp_path / "cost.json"
    path.write_text(cost_model.to_json())
    return path


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_readiness_flips_during_a_drain_and_the_piece_in_flight_finishes(
    tmp_path: Path, cost_file: Path
) -> None:
    args = ["--port", "0", "--metrics-port", "0", "--store", str(tmp_path / "store")]
    args += ["--cost-model", str(cost_file), "--drain-timeout", "60"]
    srv = start(args, tmp_path / "server.log")
    try:
        assert srv.metrics_port is not None, srv.tail()
        seen = []
        while srv.port is None:  # the metrics port answers while TensorFlow warms up
            seen.append(http_get(srv.metrics_port, "/v2/health/ready")[0])
            assert srv.proc.poll() is None, srv.tail()
            time.sleep(0.1)
        assert seen and set(seen) <= {503, 200} and seen[0] == 503
        assert http_get(srv.metrics_port, "/v2/health/ready") == (200, b"ready\n")

        model = dense_model(seed=3, inputs=2048, units=64)
        peer = RefPeer(SocketChannel.connect("127.0.0.1", srv.port), client=True, timeout=30.0)
        peer.handshake()
        hello(peer, session="c3" * 16)
        assert manifest(peer, model).head["m"] == "manifest_ok"
        head = {
            "m": "blob",
            "model": model.digest,
            "sha256": model.blob_sha,
            "size": len(model.blob),
            "offset": 0,
            "body_len": len(model.blob),
        }
        sid = peer.open_stream(head, urgency=5, incremental=True)
        half = len(model.blob) // 2
        peer.send_body(sid, model.blob[:half], end=False)

        srv.proc.send_signal(signal.SIGTERM)
        ready = lambda: http_get(srv.metrics_port, "/v2/health/ready")  # noqa: E731
        _wait(lambda: ready()[0] == 503, 10, "readiness did not turn 503 on SIGTERM")
        assert ready() == (503, b"not ready: draining\n")
        assert http_get(srv.metrics_port, "/v2/health/live")[0] == 200
        assert srv.proc.poll() is None  # still draining: our blob piece is open

        peer.send_body(sid, model.blob[half:], end=True)
        reply = peer.read_message(sid).head
        assert reply["m"] == "blob_ok" and reply["complete"] is True
        assert peer.goaway_received is not None
        assert srv.proc.wait(60) == 0
    finally:
        srv.stop()
    (drained,) = srv.events("drained")
    assert drained["aborted"] == 0
    assert [e["blob"] for e in srv.events("blob_complete")] == [model.blob_sha]


@pytest.fixture(scope="module")
def mobilenet() -> Any:
    import keras

    keras.utils.set_random_seed(2)
    return keras.applications.MobileNetV2(weights=None, input_shape=(128, 128, 3), alpha=0.5)


async def _until(predicate: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.05)


@dataclass
class Run:
    answers: list[tuple[int, Any]]  # (input index, InferenceResult)
    held: set[str]  # blobs the client was told the server holds, at the end
    sizes: dict[str, int]  # every blob of the model and its size
    sent: int  # blob bytes the client had acknowledged
    reconnects: int
    late: dict[Any, float]  # the second server's metrics at the end


async def _queries(client: OffloadClient, xs: list[Any], out: list[Any], stop: Any) -> None:
    i = 0
    while not stop.is_set():
        out.append((i % len(xs), await client.infer_detailed(xs[i % len(xs)])))
        i += 1


async def _restart_during_upload(
    model: Any, xs: list[Any], tmp_path: Path, args: list[str], procs: list[ServerProc]
) -> Run:
    """Upload and query through an 8 Mbit/s link; SIGTERM the first server while the upload
    runs; start a second one on the same port and store; query until the upload is done."""
    first = procs[0]
    await asyncio.to_thread(first.wait_listening, 300)
    answers: list[tuple[int, Any]] = []
    link = LinkSpec(rate_bps=8e6, delay_ms=1.0)
    config = ClientConfig(
        slowdown=40.0, profile_cache=str(tmp_path / "profiles"), backoff_max_s=1.0
    )
    async with (
        ShapingProxy("127.0.0.1", int(args[1]), up=link, down=link) as proxy,
        OffloadClient("127.0.0.1", proxy.port, model, config=config) as client,
    ):
        stop = asyncio.Event()
        task = asyncio.create_task(_queries(client, xs, answers, stop))
        await _until(lambda: client.plan_state.active.plan.offloads, 300, "no plan offloaded")
        progress = client.last_progress
        assert progress is not None and not progress.done, "the upload ended too soon"
        first.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(first.proc.wait, 120) == 0, first.tail()
        second = start(args, tmp_path / "second.log")
        procs.append(second)
        await asyncio.to_thread(second.wait_listening, 300)
        await client.wait_uploaded(timeout=600)
        served = len(answers)
        await _until(lambda: len(answers) >= served + 4, 120, "no queries after the upload")
        stop.set()
        await task
        run = Run(
            answers=answers,
            held=set(client.plan_state.held_blobs),
            sizes={d: n for d, n in client.layer_blob.values() if d is not None},
            sent=client.stats["sent_bytes"],
            reconnects=client.stats["reconnects"],
            late={},
        )
    assert second.metrics_port is not None
    run.late = metrics(second.metrics_port)
    return run


# Timing-sensitive on a shared 2-core machine (RELIABILITY.md, "Tests given one rerun"):
# a broken guarantee fails both runs.
@pytest.mark.flaky(reruns=1, reruns_delay=2)
async def test_sigterm_during_upload_and_queries_loses_nothing(
    mobilenet: Any, tmp_path: Path, cost_file: Path
) -> None:
    port = free_port()
    args = ["--port", str(port), "--store", str(tmp_path / "store"), "--metrics-port", "0"]
    args += ["--cost-model", str(cost_file), "--drain-timeout", "30"]
    rng = np.random.default_rng(5)
    xs = [rng.uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32) for _ in range(4)]
    expected = [mobilenet(x, training=False).numpy() for x in xs]
    procs = [start(args, tmp_path / "first.log")]
    try:
        run = await _restart_during_upload(mobilenet, xs, tmp_path, args, procs)
    finally:
        for proc in procs[1:]:
            with contextlib.suppress(Exception):
                proc.proc.send_signal(signal.SIGTERM)
                proc.proc.wait(60)
        for proc in procs:
            proc.stop()
    first, second = procs
    # every query: exactly one answer, and the right one
    for index, result in run.answers:
        np.testing.assert_allclose(result.output, expected[index], rtol=1e-4, atol=1e-5)
    assert run.reconnects >= 1
    # the first server finished what it had accepted
    (drained,) = first.events("drained")
    assert drained["aborted"] == 0, first.tail()
    failed = [e for e in first.events("request_failed") if e["message_kind"] in ("query", "blob")]
    assert failed == [], failed
    # no blob completed twice, none sent again: each byte of them sent once
    done = [e["blob"] for e in first.events("blob_complete") + second.events("blob_complete")]
    assert len(done) == len(set(done)) and set(done) == run.held, (done, run.held)
    assert first.events("blob_complete") and second.events("blob_complete")  # both got some
    assert first.events("blob_resent") == second.events("blob_resent") == []
    assert run.late[("ionn_blobs_resent_total", frozenset())] == 0
    assert run.sent == sum(run.sizes[d] for d in run.held)
    ok = frozenset({("message", "query"), ("outcome", "ok")})
    assert run.late[("ionn_requests_total", ok)] > 0  # queries offloaded to the new server
