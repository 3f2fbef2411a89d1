"""Model manifests (§10.3.1, Appendix B) and cost-model checks (§10.10) for the reference peer.

Written from protocol.md alone: a manifest is canonical JSON (sorted keys, no whitespace) whose
`model` digest is the SHA-256 of its bytes; input layers are `InputLayer` entries whose config
holds the shape without the batch dimension; a layer's weights are listed in the order of
Appendix B.2, each with the SHA-256 of exactly its own little-endian C-order bytes, and its blob
is their concatenation. Imports nothing from ``ionn_net``.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

#: §10.10: the members of a cost model and of a fit, and the layer types.
COST_MEMBERS = {"format", "exec", "load", "exec_fallback", "load_fallback", "partition_overhead_ms"}
FIT_MEMBERS = {"feature", "slope", "intercept", "samples"}
LAYER_TYPES = {"conv", "depthwise", "dense", "bn", "elementwise", "pool", "other"}
FEATURES = {"macs", "out_elems", "weight_bytes"}
MAX_COEFFICIENT = 1e9

_FORMATS = {"float32": "<f", "int64": "<q"}


def canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def weight_bytes(values: list[float] | list[int], dtype: str = "float32") -> bytes:
    """A weight's bytes: its values in C order, little-endian (§10.3.1, B.1)."""
    return struct.pack(f"<{len(values)}{_FORMATS[dtype][1]}", *values)


@dataclass
class Weight:
    shape: list[int]
    data: bytes
    dtype: str = "float32"

    def entry(self) -> dict[str, object]:
        return {
            "dtype": self.dtype,
            "shape": self.shape,
            "sha256": hashlib.sha256(self.data).hexdigest(),
        }


@dataclass
class Manifest:
    """Builds a manifest layer by layer, in topological order."""

    name: str
    layers: list[dict[str, Any]] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)

    def input(self, name: str, shape: list[int]) -> str:
        """A model input: an InputLayer in `layers` and the same shape in `inputs`."""
        self.inputs.append({"layer": name, "shape": list(shape), "dtype": "float32"})
        self.layers.append(
            {"name": name, "class": "InputLayer", "config": {"shape": list(shape)},
             "inbound": [], "weights": []}
        )  # fmt: skip
        return f"{name}:0"

    def layer(
        self,
        name: str,
        cls: str,
        config: dict[str, Any],
        inbound: list[str],
        weights: list[Weight] | None = None,
    ) -> str:
        spec: dict[str, Any] = {
            "name": name,
            "class": cls,
            "config": config,
            "inbound": inbound,
            "weights": [w.entry() for w in weights or []],
        }
        if weights:
            blob = b"".join(w.data for w in weights)
            digest = hashlib.sha256(blob).hexdigest()
            spec["blob"] = {"sha256": digest, "size": len(blob)}
            self.blobs[digest] = blob
        self.layers.append(spec)
        return f"{name}:0"

    def body(self, outputs: list[str]) -> bytes:
        return canonical(
            {
                "format": "ionn-manifest/1",
                "name": self.name,
                "inputs": self.inputs,
                "outputs": outputs,
                "layers": self.layers,
            }
        )

    def blob_of(self, layer: str) -> tuple[str, bytes]:
        spec = next(s for s in self.layers if s["name"] == layer)
        digest = spec["blob"]["sha256"]
        return digest, self.blobs[digest]


def _number(v: object, lo: float, hi: float) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and lo <= v <= hi


def _fit_problems(fit: object, where: str) -> list[str]:
    if not isinstance(fit, dict) or set(fit) != FIT_MEMBERS:
        return [f"{where}: a fit has exactly the members {sorted(FIT_MEMBERS)}"]
    problems = []
    if fit["feature"] not in FEATURES:
        problems.append(f"{where}.feature: one of {sorted(FEATURES)}")
    for member in ("slope", "intercept"):
        v = fit[member]
        if not _number(v, 0.0, MAX_COEFFICIENT) or not math.isfinite(v):
            problems.append(f"{where}.{member}: a finite number in [0, 1e9]")
    samples = fit["samples"]
    if not isinstance(samples, int) or isinstance(samples, bool) or not 0 <= samples <= 10**9:
        problems.append(f"{where}.samples: an integer in [0, 1e9]")
    return problems


def cost_model_problems(doc: object) -> list[str]:
    """Every way ``doc`` breaks §10.10 (empty: a valid cost model)."""
    if not isinstance(doc, dict) or set(doc) != COST_MEMBERS:
        return [f"exactly the members {sorted(COST_MEMBERS)}"]
    problems = []
    if doc["format"] != "ionn-costmodel/1":
        problems.append("format: 'ionn-costmodel/1'")
    for part in ("exec", "load"):
        table = doc[part]
        if not isinstance(table, dict) or not set(table) <= LAYER_TYPES:
            problems.append(f"{part}: an object keyed by layer types {sorted(LAYER_TYPES)}")
            continue
        for kind, fit in table.items():
            problems += _fit_problems(fit, f"{part}.{kind}")
    for member in ("exec_fallback", "load_fallback"):
        problems += _fit_problems(doc[member], member)
    po = doc["partition_overhead_ms"]
    if not _number(po, 0.0, MAX_COEFFICIENT) or not math.isfinite(po):
        problems.append("partition_overhead_ms: a finite number in [0, 1e9]")
    try:
        if len(json.dumps(doc, allow_nan=False).encode()) > 65536:
            problems.append("at most 65536 bytes of JSON")
    except ValueError:
        problems.append("JSON numbers only (no NaN or infinity)")
    return problems


#: §10.11: the largest time a server may announce for one layer or for ``call_ms``.
MAX_LAYER_MS = 1e5


def timings_problems(head: object, body: bytes, manifest: dict[str, Any]) -> list[str]:
    """Every way a ``timings_ok`` (head and decoded body) about ``manifest`` (its JSON
    object) breaks §10.11 (empty: valid)."""
    if not isinstance(head, dict) or head.get("m") != "timings_ok":
        return ["a timings_ok message"]
    problems = []
    if not isinstance(head.get("done"), bool):
        problems.append("done: a boolean")
    call = head.get("call_ms")
    if not _number(call, 0.0, MAX_LAYER_MS) or not math.isfinite(call):
        problems.append("call_ms: a finite number in [0, 1e5]")
    try:
        doc = json.loads(body)
    except ValueError:
        return [*problems, "body: JSON"]
    if not isinstance(doc, dict) or set(doc) != {"measured", "predicted"}:
        return [*problems, "body: exactly 'measured' and 'predicted'"]
    runnable = {
        s["name"] for s in manifest["layers"] if s["class"] not in ("InputLayer", "LocalOnly")
    }
    for part in ("measured", "predicted"):
        table = doc[part]
        if not isinstance(table, dict):
            problems.append(f"{part}: an object")
            continue
        for name, ms in table.items():
            if name not in runnable:
                problems.append(f"{part}.{name}: a layer of the manifest the server may run")
            if not _number(ms, 0.0, MAX_LAYER_MS) or not math.isfinite(ms):
                problems.append(f"{part}.{name}: a finite number in [0, 1e5]")
    if isinstance(doc["measured"], dict) and isinstance(doc["predicted"], dict):
        both = set(doc["measured"]) & set(doc["predicted"])
        if both:
            problems.append(f"a layer in at most one of the two: {sorted(both)[:3]}")
    return problems
