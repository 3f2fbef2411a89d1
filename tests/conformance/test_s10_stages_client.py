"""protocol.md §10.12.5's client-side MUST: a client that promised exact results never uses a
result computed on base-stage weights, with the reference peer playing the edge server.

The fake server (:class:`~tests.conformance.test_s10_client.FakeServer`, a blocking RefPeer in
a thread) declares the loaded layers ready and, here, says some of them run at base precision
(``layers_base``), or answers a query with a result whose ``ran_base`` is not empty and whose
values are wrong. The ionn_net OffloadClient in its default, exact mode must not send a query
to a layer at base, and must finish locally a segment answered at base: either way its output
is the model's own.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from tests.conformance.test_s10_client import FakeServer, fake, model  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow


@dataclass
class StagedFake(FakeServer):
    """Says every loaded layer is at base (``layers_base``), or answers queries with a result
    at base whose values are zeros (``answer_at_base``)."""

    report_base: bool = True
    answer_at_base: bool = False
    answered: list[list[str]] = field(default_factory=list)

    def answer(self, head: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        kind = head["m"]
        if kind == "load":
            self.ready.update(head["layers"])
            reply: dict[str, Any] = {
                "m": "load_ok",
                "layers_ready": sorted(self.ready),
                "prepared": [],
                "load_ms": 1.0,
            }
            if self.report_base:
                reply["layers_base"] = sorted(self.ready)
            return reply, b""
        if kind == "query" and self.answer_at_base:
            run = list(head["run"])
            self.queries.append(run)
            self.answered.append(run)
            last = run[-1]
            units = 4 if last == "d3" else 16
            body = bytes(4 * units)  # zeros: not what the layers compute
            return {
                "m": "result",
                "qid": head["qid"],
                "ran": run,
                "last": last,
                "tensors": [
                    {
                        "ref": f"{last}:0",
                        "dtype": "float32",
                        "shape": [1, units],
                        "nbytes": len(body),
                    }
                ],
                "server_ms": 0.1,
                "body_len": len(body),
                "ran_base": run,
            }, body
        return super().answer(head)


async def _queries(keras_model: Any, port: int, n: int = 5) -> list[Any]:
    from ionn_net.client import ClientConfig, OffloadClient

    cfg = ClientConfig(reconnect=False, slowdown=300.0)  # offloading looks worth it
    client = OffloadClient("127.0.0.1", port, keras_model, config=cfg)
    x = np.linspace(-1, 1, 8, dtype="float32").reshape(1, 8)
    want = np.asarray(keras_model(x))
    await client.start()
    results = []
    try:
        await client.wait_uploaded(timeout=30)
        await client.replan()
        for _ in range(n):
            result = await client.infer_detailed(x)
            np.testing.assert_allclose(np.asarray(result.output), want, rtol=1e-5, atol=1e-5)
            assert result.exact and result.precision == "exact"
            results.append(result)
    finally:
        await client.close()
    return results


@pytest.mark.spec("10.12.5")
def test_an_exact_client_sends_no_query_to_layers_at_base(
    fake: tuple[FakeServer, int],  # noqa: F811
    model: Any,  # noqa: F811
) -> None:
    server, port = fake
    staged = StagedFake()
    server.answer = staged.answer  # type: ignore[method-assign]
    results = asyncio.run(_queries(model, port))
    assert staged.ready, "the client never loaded anything"
    assert staged.queries == [], f"queries sent to layers at base: {staged.queries}"
    assert all(not r.offloaded for r in results)


@pytest.mark.spec("10.12.5")
def test_an_exact_client_does_not_use_a_result_computed_at_base(
    fake: tuple[FakeServer, int],  # noqa: F811
    model: Any,  # noqa: F811
) -> None:
    server, port = fake
    staged = StagedFake(report_base=False, answer_at_base=True)
    server.answer = staged.answer  # type: ignore[method-assign]
    results = asyncio.run(_queries(model, port))
    assert staged.answered, "with a free server the client should have tried to offload"
    assert any(r.fallback for r in results)  # the zeros were never used: finished locally
    # after the first such answer the client stops sending exact queries there
    assert len(staged.answered) <= 2, staged.answered
