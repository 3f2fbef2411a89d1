"""The client's side of a precision-first upload (protocol.md §10.12): which layers travel
as stages, what each stage costs on the wire, and in which order the refinements go.

Owns :class:`StagedLayer` and :func:`declare_stages` (run once by :mod:`.prepare`: each
layer's blob encoded at the configured precision and its stages declared in the
manifest), :func:`stage_costs` (what the planner charges: the stages' wire bytes measured
here on samples, the server's decoding and swap from measured priors) and
:func:`refinement_units` (what still needs refining, in the order the planner chose, across
re-plans and reconnects). Pure functions of their arguments; the upload session
(:mod:`.session`) sends and loads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from ionn_net.errors import StageError
from ionn_net.model.spec import LayerSpec, ModelManifest
from ionn_net.model.stages import STAGE_SHUFFLE, StageSpec, encode_layer
from ionn_net.planner.workload import Refinement, StageCosts
from ionn_net.proto import Codec, encode

__all__ = [
    "PRECISION_LABEL",
    "StagedLayer",
    "declare_stages",
    "refinement_units",
    "stage_codec",
    "stage_costs",
]

#: The server's check-and-decode time per MB of float32 of each stage, and the swap of
#: exact weights: priors measured by ``bench/stages.py`` on this project's machines
#: (ResNet50, BENCHMARKS.md "Precision-first upload"); the server does not announce them.
_DECODE_MS_PER_MB: Mapping[str, tuple[float, float]] = MappingProxyType(
    {"16bit-first": (0.56, 2.88), "8bit-first": (0.45, 4.95)}
)
_SWAP_MS_PER_MB = 0.12
_SWAP_MS_PER_LAYER = 0.34
#: The transport's DATA frames (each compressed alone, §12) and how many of them of each
#: stage of each layer are compressed to estimate its wire bytes.
_FRAME = 32 * 1024
_SAMPLE_FRAMES = 4
#: What an approximate result reports as its lowest precision, per upload precision.
PRECISION_LABEL: Mapping[str, str] = MappingProxyType(
    {"16bit-first": "16bit", "8bit-first": "8bit"}
)


@dataclass(frozen=True, slots=True)
class StagedLayer:
    """One layer's blob as stages: digests and bytes, base first, and its blob's digest."""

    blob: str
    digests: tuple[str, ...]
    data: tuple[bytes, ...]
    encodings: tuple[str, ...]


def stage_codec(encoding: str) -> tuple[Codec, int]:
    """The codec a stage compresses best with (§12: byte-shuffled by its element width)."""
    width = STAGE_SHUFFLE.get(encoding, 4)
    codec = {0: Codec.ZSTD, 2: Codec.ZSTD_SHUFFLE2, 4: Codec.ZSTD_SHUFFLE4}[width]
    return codec, max(width, 1)


def declare_stages(
    manifest: ModelManifest, blobs: Mapping[str, bytes], precision: str
) -> tuple[ModelManifest, dict[str, StagedLayer]]:
    """``manifest`` with the stages of every layer whose blob holds a kernel declared
    (§10.12.1), and those stages by layer name. A layer whose stage digests would name
    something else in the manifest (identical weights elsewhere make it so, rarely) keeps
    its blob whole: a digest names one thing."""
    roles: dict[str, tuple[str, object]] = {
        s.blob_sha256: ("blob", s.blob_size) for s in manifest.layers if s.blob_sha256
    }
    staged: dict[str, StagedLayer] = {}
    layers: list[LayerSpec] = []
    by_blob: dict[str, StagedLayer] = {}
    for spec in manifest.layers:
        found = _stages_of(spec, blobs, precision, roles, by_blob)
        if found is None:
            layers.append(spec)
            continue
        encoded, layer = found
        staged[spec.name] = by_blob[layer.blob] = layer
        layers.append(dataclasses.replace(spec, stages=encoded))
    return dataclasses.replace(manifest, layers=tuple(layers)), staged


def _stages_of(
    spec: LayerSpec,
    blobs: Mapping[str, bytes],
    precision: str,
    roles: dict[str, tuple[str, object]],
    by_blob: Mapping[str, StagedLayer],
) -> tuple[tuple[StageSpec, ...], StagedLayer] | None:
    if spec.blob_sha256 is None:
        return None
    try:
        enc = encode_layer(spec, blobs[spec.blob_sha256], precision)
    except StageError:
        return None
    if len(enc.stages) < 2:  # no kernel: the blob travels whole
        return None
    same = by_blob.get(spec.blob_sha256)
    if same is not None and same.digests != tuple(s.sha256 for s in enc.specs):
        return None
    claims: list[tuple[str, tuple[str, object]]] = [
        (enc.specs[0].sha256, ("base", enc.specs[0].size))
    ]
    claims += [(s.sha256, ("refinement", spec.blob_sha256)) for s in enc.specs[1:]]
    distinct = len({d for d, _ in claims}) == len(claims)
    if not distinct or any(roles.get(d, role) != role for d, role in claims):
        return None
    roles.update(claims)
    layer = StagedLayer(
        blob=spec.blob_sha256,
        digests=tuple(s.sha256 for s in enc.specs),
        data=enc.stages,
        encodings=tuple(s.encoding for s in enc.specs),
    )
    return enc.specs, layer


def _wire(data: bytes, codec: Codec) -> float:
    """Wire bytes of ``data`` sent compressed, estimated from up to a few frames."""
    if not data:
        return 0.0
    step = max(_FRAME, len(data) // _SAMPLE_FRAMES // _FRAME * _FRAME)
    sample = [data[i : i + _FRAME] for i in range(0, len(data), step)][:_SAMPLE_FRAMES]
    raw = sum(len(s) for s in sample)
    wire = sum(min(len(encode(s, codec)), len(s)) for s in sample)
    return len(data) * wire / raw


def stage_costs(
    precision: str,
    staged: Mapping[str, StagedLayer],
    layer_blob: Mapping[str, tuple[str | None, int]],
    blobs: Mapping[str, bytes],
) -> StageCosts:
    """What the planner charges for this model's stages (:class:`StageCosts`): per raw
    byte of all the model's blobs, each stage's wire bytes (a blob without stages goes
    whole with the bases), and the server's decode and swap times (priors)."""
    raw = sum(size for _, size in layer_blob.values()) or 1
    wire = [0.0, 0.0]
    for name, (digest, _) in layer_blob.items():
        layer = staged.get(name)
        if layer is not None:
            for k, (data, encoding) in enumerate(zip(layer.data, layer.encodings, strict=True)):
                wire[k] += _wire(data, stage_codec(encoding)[0])
        elif digest is not None:
            wire[0] += _wire(blobs[digest], Codec.ZSTD_SHUFFLE4)  # float32, as sent whole
    return StageCosts(
        precision=precision,
        wire_fraction=(max(wire[0] / raw, 1e-3), wire[1] / raw),
        decode_ms_per_mb=_DECODE_MS_PER_MB[precision],
        swap_ms_per_mb=_SWAP_MS_PER_MB,
        swap_ms_per_layer=_SWAP_MS_PER_LAYER,
    )


def refinement_units(
    planned: Sequence[Refinement],
    pending: Collection[str],
    *,
    first: Collection[str],
    order: Sequence[str],
) -> list[frozenset[str]]:
    """The refinements still to send, for the ``pending`` layers (at base precision, or
    with their base sent): the ``planned`` units first, in the plan's order; then any
    other pending layer (a re-plan or a reconnect made the plan forget it), those in
    ``first`` (the active plan's server layers) before the rest, in ``order``."""
    left = set(pending)
    units: list[frozenset[str]] = []
    for ref in planned:
        unit = frozenset(ref.layers) & left
        if unit:
            units.append(unit)
            left -= unit
    used = [n for n in order if n in left and n in first]
    rest = [n for n in order if n in left and n not in first]
    return units + [frozenset(u) for u in (used, rest) if u]
