"""The client's local side: the model described, profiled and compiled on this device.

Owns :class:`PreparedModel` (what :func:`prepare_model` computed once, immutable after)
and :func:`compile_client_side` (compile a plan's client segments, returning their chunk
table). Both are plain functions the event loop runs in worker threads
(``asyncio.to_thread``): they return values, which the loop then stores; they change no
shared state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ionn_net.client.staged import StagedLayer, declare_stages, stage_costs
from ionn_net.client.types import ClientConfig
from ionn_net.errors import ConfigError
from ionn_net.model.graph import LayerGraph
from ionn_net.planner.execution import ExecutionPlan
from ionn_net.planner.midquery import chunk_segment, split_at
from ionn_net.planner.profiles import ClientProfile, ProfileCache
from ionn_net.planner.workload import StageCosts

__all__ = ["ChunkTable", "PreparedModel", "compile_client_side", "prepare_model"]

#: Client segment (its layers) -> the chunks it is compiled as, in order.
ChunkTable = Mapping[tuple[str, ...], tuple[tuple[str, ...], ...]]


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedModel:
    """The model as the client uploads and runs it.

    ``executor`` runs any set of its layers here; ``manifest_body`` (canonical JSON, its
    SHA-256 is ``model_digest``) and ``blobs`` (digest -> bytes) are what goes to the
    server, ``layer_blob`` maps each layer to its blob's (digest, size); ``local_only``
    are the layers no server may run (and why); ``client_ms`` the per-layer milliseconds
    of this (emulated) device; ``grid_ends`` the last layers of the chunks of the whole
    model's chunk grid (empty when nothing will be uploaded, so nothing is chunked).
    A precision-first upload (``precision`` not ``"exact"``, protocol.md §10.12) also has
    ``staged``, the layers whose blobs go up as stages (declared in the manifest), and
    ``stage_costs``, what the planner charges for them.
    """

    executor: Any
    graph: LayerGraph
    manifest_body: bytes
    model_digest: str
    blobs: Mapping[str, bytes]
    layer_blob: Mapping[str, tuple[str | None, int]]
    local_only: Mapping[str, str]
    client_ms: Mapping[str, float]
    grid_ends: frozenset[str]
    precision: str = "exact"
    staged: Mapping[str, StagedLayer] = field(default_factory=lambda: MappingProxyType({}))
    stage_costs: StageCosts | None = None

    def upload_unit(self, name: str, stage: int) -> tuple[str, bytes, str | None] | None:
        """What goes up for stage ``stage`` of layer ``name``: (digest, bytes, encoding),
        the encoding None for a whole blob (a layer without stages, at stage 0); None
        when nothing does (no blob, or no such stage)."""
        layer = self.staged.get(name)
        if layer is not None:
            if stage >= len(layer.digests):
                return None
            return layer.digests[stage], layer.data[stage], layer.encodings[stage]
        digest = self.layer_blob[name][0]
        return None if digest is None or stage else (digest, self.blobs[digest], None)


def prepare_model(model: Any, config: ClientConfig, *, chunked: bool) -> PreparedModel:
    """Graph, manifest, blobs, profile and the whole-model slice (worker thread). With
    ``chunked`` (layers will be uploaded) the whole model's chunk grid: client segments
    are cut on it, so that the plans activated during the upload reuse the chunks
    compiled for earlier ones."""
    from ionn_net.executor import Executor
    from ionn_net.model.layers import extract_manifest

    executor = Executor.from_model(model)
    graph: LayerGraph = executor.graph
    manifest, blobs, local_only = extract_manifest(model)
    staged: dict[str, StagedLayer] = {}
    if config.precision != "exact":
        manifest, staged = declare_stages(manifest, blobs, config.precision)
    digest = manifest.manifest_digest()
    whole = executor.prepare(graph.order)
    fixed = config.device_ms
    if fixed is not None:
        if set(fixed) != set(graph.order):
            raise ConfigError("device_ms: expected one entry per layer of this model")
        client_ms = dict(fixed)
    else:
        client_ms = _profile(executor, whole, digest, config)
    grid_ends: frozenset[str] = frozenset()
    if chunked:
        grid = chunk_segment(graph, graph.order, client_ms, cut_points=graph.cut_points())
        grid_ends = frozenset(chunk[-1] for chunk in grid)
    layer_blob = {s.name: (s.blob_sha256, s.blob_size) for s in manifest.layers}
    costs = None
    if staged:
        costs = stage_costs(config.precision, staged, layer_blob, blobs)
    return PreparedModel(
        executor=executor,
        graph=graph,
        manifest_body=manifest.to_json_bytes(),
        model_digest=digest,
        blobs=blobs,
        layer_blob=layer_blob,
        local_only=local_only,
        client_ms=client_ms,
        grid_ends=grid_ends,
        precision=config.precision if staged else "exact",
        staged=MappingProxyType(staged),
        stage_costs=costs,
    )


def _profile(executor: Any, whole: Any, digest: str, config: ClientConfig) -> dict[str, float]:
    """Per-layer client milliseconds: the cached (or freshly measured) profile, rescaled
    so that it sums to the whole model's latency measured now: a profile taken while the
    device was busy must not make offloading look better than it is."""
    from ionn_net.measure import profile_layers, time_slice

    cache = ProfileCache(config.profile_cache) if config.profile_cache else None
    device = config.device_id
    profile = cache.load(digest, device) if cache else None
    if profile is None:
        ms = profile_layers(executor, runs=5)
        profile = ClientProfile(model_digest=digest, device_id=device, layer_ms=ms)
        if cache:
            cache.store(profile)
    now_ms = time_slice(whole, whole.zero_feeds(), runs=5)
    scale = now_ms / max(profile.total_ms, 1e-6)
    return {n: v * scale * config.slowdown for n, v in profile.layer_ms.items()}


def compile_client_side(
    executor: Any, plan: ExecutionPlan, grid_ends: frozenset[str] | None
) -> dict[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """Compile the client segments of ``plan`` (worker thread); returns the chunk table
    of its segments. With ``grid_ends`` (layers are still to come) segments are compiled
    as chunks of the model's chunk grid, so that a running query can change course
    between them (planner.midquery) and a new plan mostly reuses chunks compiled for
    earlier ones; without, each segment is one slice (and has no entry)."""
    table: dict[tuple[str, ...], tuple[tuple[str, ...], ...]] = {}
    for seg in plan.segments:
        if seg.location != "client":
            continue
        chunks: tuple[tuple[str, ...], ...] = (seg.layers,)
        if grid_ends is not None:
            chunks = split_at(seg.layers, grid_ends)
            table[seg.layers] = chunks
        for chunk in chunks:
            executor.prepare(chunk)
    return table
