"""Hostile weight stages (protocol.md §10.12) against a real EdgeServer on loopback.

Each test sends one kind of bad stage traffic from a session of its own and asserts the
defense: the typed refusal, and that nothing changed for that session (``have`` answers the
same before and after; a layer at base keeps serving at base). Then a second, well-behaved
tenant, set up before the attack on the same server, must still get correct answers.
Stages are built with the library's codec (:mod:`ionn_net.model.stages`): what is hostile
is how they are declared and sent.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import struct
from collections.abc import AsyncIterator, Mapping
from typing import Any

import numpy as np
import pytest
from tests.integration.hardening.tenant import IN, Tenant, call, mlp, mlp_reference

from ionn_net.aio import AioConnection, connect
from ionn_net.model.spec import canonical_json, parse_manifest
from ionn_net.model.stages import encode_layer
from ionn_net.planner.costmodel import ServerCostModel
from ionn_net.server import EdgeServer, ServerConfig

pytestmark = pytest.mark.timeout(120)

X = np.random.default_rng(5).standard_normal((1, IN)).astype(np.float32)


class StagedTenant(Tenant):
    """:func:`mlp` with both Dense layers declared as stages at ``precision``."""

    def __init__(self, conn: AioConnection, precision: str = "8bit-first", seed: int = 3) -> None:
        obj, builder = mlp(seed=seed, name=f"staged{seed}")
        manifest = parse_manifest(obj)
        self.stages: dict[str, tuple[list[str], list[bytes]]] = {}
        for layer in obj["layers"]:
            if "blob" not in layer:
                continue
            spec = manifest.layer(layer["name"])
            enc = encode_layer(spec, builder.blobs[str(spec.blob_sha256)], precision)
            layer["blob"]["stages"] = [s.to_json_obj() for s in enc.specs]
            self.stages[spec.name] = ([s.sha256 for s in enc.specs], list(enc.stages))
        super().__init__(conn, built=(obj, builder))

    def redeclare(self, change: Any) -> None:
        """Edit the manifest object (``change(layers by name)``) and take its new digest."""
        self.obj = copy.deepcopy(self.obj)
        change({layer["name"]: layer for layer in self.obj["layers"]})
        self.body = canonical_json(self.obj)
        self.digest = hashlib.sha256(self.body).hexdigest()

    async def stage(self, layer: str, index: int, data: bytes | None = None, **head: Any) -> Any:
        digests, stages = self.stages[layer]
        body = stages[index] if data is None else data
        request = {"m": "blob", "model": self.digest, "sha256": digests[index],
                   "size": len(stages[index]), "offset": 0, **head}  # fmt: skip
        reply, _ = await call(self.conn, request, body)
        return reply

    async def load_at(
        self, precision: str | None = "base", layers: list[str] | None = None
    ) -> Mapping[str, Any]:
        names = self.names if layers is None else layers
        head: dict[str, Any] = {"m": "load", "model": self.digest, "layers": names}
        if precision is not None:
            head["precision"] = precision
        reply, _ = await call(self.conn, head)
        return reply

    async def have(self) -> Mapping[str, Any]:
        reply, _ = await call(self.conn, {"m": "have", "model": self.digest})
        return reply

    async def at_base(self) -> None:
        assert (await self.hello())["m"] == "welcome"
        assert (await self.manifest())["m"] == "manifest_ok"
        for layer in self.stages:
            assert (await self.stage(layer, 0)).get("complete")
        done = await self.load_at("base")
        assert done["layers_base"] == self.names, done


@pytest.fixture
async def server() -> AsyncIterator[EdgeServer]:
    config = ServerConfig(max_bytes_per_session=1 << 20)
    async with EdgeServer(config=config, cost_model=ServerCostModel()) as srv:
        yield srv


@pytest.fixture
async def good(server: EdgeServer) -> AsyncIterator[Tenant]:
    """A well-behaved tenant with its model loaded, connected before the attack."""
    async with connect("127.0.0.1", server.port) as conn:
        tenant = Tenant(conn)
        await tenant.setup()
        await tenant.check_works()
        yield tenant


@pytest.fixture
async def attacker(server: EdgeServer) -> AsyncIterator[StagedTenant]:
    async with connect("127.0.0.1", server.port) as conn:
        yield StagedTenant(conn)


def _close_to(values: np.ndarray, want: np.ndarray, tolerance: float) -> bool:
    return bool(np.allclose(values, want, rtol=0, atol=tolerance))


async def test_a_refinement_that_does_not_rebuild_the_blob_changes_nothing(
    good: Tenant, attacker: StagedTenant
) -> None:
    base, refinement = attacker.stages["d1"][1]
    wrong = bytearray(refinement)
    wrong[-1] ^= 0x01  # the last residual: the rebuilt blob differs in one value
    digest = hashlib.sha256(wrong).hexdigest()

    def declare_wrong(layers: dict[str, Any]) -> None:
        layers["d1"]["blob"]["stages"][1]["sha256"] = digest

    attacker.redeclare(declare_wrong)
    attacker.stages["d1"] = ([attacker.stages["d1"][0][0], digest], [base, bytes(wrong)])
    await attacker.at_base()
    before = await attacker.have()
    at_base = await attacker.query(X)
    for _ in range(3):  # the client re-sends; the server refuses each time, changing nothing
        assert (await attacker.stage("d1", 1))["code"] == "digest_mismatch"
        assert await attacker.have() == before
    again = await attacker.query(X)
    assert again["ran_base"] == ["d1", "d2"]
    np.testing.assert_array_equal(again["values"]["d2:0"], at_base["values"]["d2:0"])
    await good.check_works()


async def test_a_refinement_corrupted_on_the_way_is_refused_then_accepted_again(
    good: Tenant, attacker: StagedTenant
) -> None:
    await attacker.at_base()
    before = await attacker.have()
    data = bytearray(attacker.stages["d2"][1][1])
    data[0] ^= 0xFF
    assert (await attacker.stage("d2", 1, bytes(data)))["code"] == "digest_mismatch"
    assert await attacker.have() == before
    assert (await attacker.stage("d2", 1)).get("complete")  # re-sent from offset 0
    assert (await attacker.load_at(None, ["d2"]))["layers_base"] == ["d1"]
    await good.check_works()


async def test_stages_out_of_order_change_nothing(good: Tenant, attacker: StagedTenant) -> None:
    assert (await attacker.hello())["m"] == "welcome"
    assert (await attacker.manifest())["m"] == "manifest_ok"
    before = await attacker.have()
    for layer in ("d1", "d2"):
        reply = await attacker.stage(layer, 1)
        assert reply["code"] == "stage_order", reply
    load = await attacker.load_at("base")  # no base either: nothing can be built
    assert load["code"] == "missing_blobs"
    assert await attacker.have() == before
    await good.check_works()


@pytest.mark.parametrize(
    "kind", ["unknown_encoding", "size_not_computed", "stage_on_a_layer_without_kernel"]
)
async def test_declarations_the_server_cannot_check_are_bad_manifest(
    good: Tenant, attacker: StagedTenant, kind: str
) -> None:
    def tamper(layers: dict[str, Any]) -> None:
        stages = layers["d1"]["blob"]["stages"]
        if kind == "unknown_encoding":
            stages[1]["encoding"] = "int4-residual"
        elif kind == "size_not_computed":
            stages[0]["size"] -= 1
        else:  # an InputLayer has no blob at all
            layers["x"]["blob"] = {"sha256": "c" * 64, "size": 4, "stages": stages}

    attacker.redeclare(tamper)
    assert (await attacker.hello())["m"] == "welcome"
    reply = await attacker.manifest()
    assert reply["code"] == "bad_manifest", reply
    assert (await attacker.have())["code"] == "unknown_model"  # nothing was kept
    await good.check_works()


async def test_a_base_with_non_finite_values_is_not_built(
    good: Tenant, attacker: StagedTenant
) -> None:
    digests, (base, refinement) = attacker.stages["d1"]
    bad = bytearray(base)
    channels = 24  # d1 is Dense(16 -> 24): its base starts with 24 float32 scales
    bad[0:4] = struct.pack("<f", float("inf"))
    assert len(bad) == 4 * channels + 16 * channels + 4 * channels  # scales, q, bias
    digest = hashlib.sha256(bad).hexdigest()

    def declare(layers: dict[str, Any]) -> None:
        layers["d1"]["blob"]["stages"][0]["sha256"] = digest

    attacker.redeclare(declare)
    attacker.stages["d1"] = ([digest, digests[1]], [bytes(bad), refinement])
    assert (await attacker.hello())["m"] == "welcome"
    assert (await attacker.manifest())["m"] == "manifest_ok"
    for layer in ("d1", "d2"):
        assert (await attacker.stage(layer, 0)).get("complete")
    before = await attacker.have()
    reply = await attacker.load_at("base")
    assert reply["code"] == "bad_request" and "d1" in reply["message"], reply
    assert await attacker.have() == before and before["layers_ready"] == []
    await good.check_works()


@pytest.mark.parametrize("kind", ["size", "longer_body", "shorter_body"])
async def test_stage_uploads_that_do_not_match_the_manifest_change_nothing(
    good: Tenant, attacker: StagedTenant, kind: str
) -> None:
    assert (await attacker.hello())["m"] == "welcome"
    assert (await attacker.manifest())["m"] == "manifest_ok"
    before = await attacker.have()
    base = attacker.stages["d1"][1][0]
    if kind == "size":
        reply = await attacker.stage("d1", 0, base + b"\0\0\0\0", size=len(base) + 4)
        assert reply["code"] == "unknown_blob", reply
    elif kind == "longer_body":
        reply = await attacker.stage("d1", 0, base + b"\0" * 8)
        assert reply["m"] == "error", reply
    else:  # all of a short body arrives, but it is not the whole stage: nothing completes
        reply = await attacker.stage("d1", 0, base[:-8])
        assert reply["m"] == "blob_ok" and not reply["complete"]
        assert (await attacker.stage("d1", 0, base[-8:], offset=0))["code"] == "offset_conflict"
        return await good.check_works()
    assert await attacker.have() == before
    await good.check_works()


async def test_a_refinement_beyond_the_byte_budget_is_refused(good: Tenant) -> None:
    """An unfinished refinement reserves its exact blob's size (§10.12.3), not only its own:
    d2's refinement is 576 bytes and rebuilds a 600-byte blob, which the room left after the
    bases (590 bytes) cannot hold."""
    budget = 768 + 590
    config = ServerConfig(max_bytes_per_session=budget)
    async with (
        EdgeServer(config=config, cost_model=ServerCostModel()) as srv,
        connect("127.0.0.1", srv.port) as conn,
    ):
        tenant = StagedTenant(conn)
        bases = sum(len(stages[0]) for _, stages in tenant.stages.values())
        assert bases == 768 and len(tenant.stages["d2"][1][1]) == 576
        await tenant.at_base()
        before = await tenant.have()
        reply = await tenant.stage("d2", 1)
        assert reply["code"] == "limit_exceeded", reply
        assert await tenant.have() == before
        served = await tenant.query(X)
        assert served["ran_base"] == ["d1", "d2"]
        want = mlp_reference(tenant.builder, X)
        assert _close_to(served["values"]["d2:0"], want, 0.05)
    await good.check_works()


async def test_exact_queries_on_layers_at_base_are_refused_while_others_go_on(
    good: Tenant, attacker: StagedTenant
) -> None:
    await attacker.at_base()
    head, body = attacker.query_head(X)
    replies = await asyncio.gather(
        *(call(attacker.conn, {**head, "exact": True, "qid": f"e{i}"}, body) for i in range(8)),
        good.query(X, "g"),
    )
    for reply, _ in replies[:-1]:
        assert reply["code"] == "layer_not_ready", reply
    assert replies[-1]["m"] == "result"
    await good.check_works()
