"""The client's side of a precision-first upload (ionn_net.client.staged, protocol.md
§10.12): which layers declare stages, what the planner is told they cost, the order of the
refinements across re-plans, and how the upload's progress counts stages."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from tests.helpers.manifests import ManifestBuilder

from ionn_net.client.progress import upload_progress
from ionn_net.client.staged import declare_stages, refinement_units, stage_costs
from ionn_net.model.spec import parse_manifest
from ionn_net.planner.workload import Refinement


def _model(rng: np.random.Generator, *, twin: bool = False, zero: bool = False) -> Any:
    b = ManifestBuilder()
    x = b.input("x", [16])
    kernel = rng.standard_normal((16, 32)).astype(np.float32)
    h = b.add(
        "d1", "Dense", {"units": 32}, [x], [kernel, rng.standard_normal(32).astype(np.float32)]
    )
    bn = [rng.standard_normal(32).astype(np.float32) for _ in range(3)]
    bn.append((np.abs(rng.standard_normal(32)) + 0.5).astype(np.float32))
    h = b.add("bn", "BatchNormalization", {}, [h], bn)
    second = kernel[:, :32] if twin else rng.standard_normal((32, 32)).astype(np.float32)
    if twin:
        second = np.concatenate([kernel, kernel], axis=0)
    if zero:
        second = np.zeros((32, 32), np.float32)
    out = b.add("d2", "Dense", {"units": 32, "use_bias": False}, [h], [second])
    if twin:
        out = b.add("d3", "Dense", {"units": 32, "use_bias": False}, [out], [second])
    manifest = parse_manifest(b.obj([out]))
    return manifest, b.blobs


@pytest.mark.parametrize("precision", ["16bit-first", "8bit-first"])
def test_layers_with_kernels_declare_stages_and_the_manifest_stays_valid(precision: str) -> None:
    manifest, blobs = _model(np.random.default_rng(0))
    staged_manifest, staged = declare_stages(manifest, blobs, precision)
    assert set(staged) == {"d1", "d2"}  # BatchNormalization has no kernel: it goes whole
    parsed = parse_manifest(staged_manifest.to_json_obj())  # the server's validation
    assert [s.encoding for s in parsed.layer("d1").stages] == list(staged["d1"].encodings)
    assert staged_manifest.manifest_digest() != manifest.manifest_digest()


def test_identical_layers_share_their_stages() -> None:
    manifest, blobs = _model(np.random.default_rng(1), twin=True)
    staged_manifest, staged = declare_stages(manifest, blobs, "8bit-first")
    assert staged["d2"] == staged["d3"]
    parse_manifest(staged_manifest.to_json_obj())


def test_a_layer_whose_stages_would_collide_goes_whole() -> None:
    """An all-zero kernel without bias: at 16 bits its base and refinement are the same
    bytes, so one digest would name two stages (§10.12.1 forbids it)."""
    manifest, blobs = _model(np.random.default_rng(2), zero=True)
    staged_manifest, staged = declare_stages(manifest, blobs, "16bit-first")
    assert "d2" not in staged and "d1" in staged
    parse_manifest(staged_manifest.to_json_obj())


def test_stage_costs_are_per_raw_byte_of_the_model() -> None:
    manifest, blobs = _model(np.random.default_rng(3))
    _, staged = declare_stages(manifest, blobs, "8bit-first")
    layer_blob = {s.name: (s.blob_sha256, s.blob_size) for s in manifest.layers}
    costs = stage_costs("8bit-first", staged, layer_blob, blobs)
    # int8 values do not compress much: the base is about a quarter of the float32 bytes
    assert 0.2 < costs.wire_fraction[0] < 0.45, costs
    assert 0.3 < costs.wire_fraction[1] < 1.05, costs
    assert costs.decode_ms_per_mb[1] > costs.decode_ms_per_mb[0]


def test_refinements_follow_the_plan_then_whatever_else_is_at_base() -> None:
    planned = (Refinement(frozenset({"c"})), Refinement(frozenset({"a", "b"})))
    # "e" went up at base before a re-plan; "b" is exact already
    units = refinement_units(planned, {"a", "c", "e", "d"}, first={"d"}, order="abcde")
    assert units == [frozenset({"c"}), frozenset({"a"}), frozenset({"d"}), frozenset({"e"})]
    assert refinement_units((), {"e", "a"}, first=(), order="abcde") == [frozenset({"a", "e"})]
    assert refinement_units(planned, set(), first={"a"}, order="abcde") == []


def test_progress_counts_each_stage_and_a_refinement_left_from_before() -> None:
    manifest, blobs = _model(np.random.default_rng(4))
    _, staged = declare_stages(manifest, blobs, "16bit-first")
    layer_blob = {s.name: (s.blob_sha256, s.blob_size) for s in manifest.layers}
    d1, d2 = staged["d1"], staged["d2"]
    sizes = {n: [len(b) for b in staged[n].data] for n in staged}
    common: dict[str, Any] = {"partitions_done": 0, "layers_ready": 0, "elapsed_s": 0.0}
    common.update(bandwidth_mbit=1.0, pacing_mbit=None)
    held = {d1.digests[0], d2.blob}  # d1's base; d2 exact already (its refinement rebuilt it)
    p = upload_progress(
        [["d1", "bn"], ["d2"]], layer_blob, held, {d1.digests[1]: 10}, done=False,
        staged=staged, **common,
    )  # fmt: skip
    bn_size = layer_blob["bn"][1]
    assert p.total_bytes == sum(sizes["d1"]) + bn_size + sum(sizes["d2"])
    assert p.sent_bytes == sizes["d1"][0] + 10 + sum(sizes["d2"])
    # after a reconnect no partition names d1, still at base: its refinement is counted
    p = upload_progress(
        [], layer_blob, held, {}, done=False, staged=staged, layers_base={"d1"}, **common
    )
    assert (p.total_bytes, p.sent_bytes, p.layers_base) == (sizes["d1"][1], 0, 1)
