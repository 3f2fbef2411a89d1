"""A catalog: models an operator serves publicly, as manifests and blobs on disk.

An operator exports Keras models they own into a catalog directory once
(``ionn-catalog add model.keras DIR``); a server opens the directory and never reads a
framework file at serve time: only manifests (validated exactly as a client's, protocol.md
§10.3.2) and weight blobs (verified against their SHA-256). Layout::

    DIR/index.json               {"format": "ionn-catalog/1", "models": [{"digest", "name",
                                 "source", "added"}, ...]}: the models the catalog serves
    DIR/manifests/<digest>.json  the canonical manifest bytes (§10.3.1); <digest> is their
                                 SHA-256, the model's id on the wire
    DIR/blobs/<sha256>           a layer's weight blob (§10.3.1), named by its SHA-256

Every file is written as git writes objects (temporary file, fsync, rename, fsync of the
directory), blobs first, then the manifest, the index last: the index is the commit point,
so an interrupted ``add`` leaves files that no index entry names, which :meth:`Catalog.open`
ignores and ``ionn-catalog verify`` reports.

**Bad entries.** :meth:`Catalog.open` validates every listed manifest (its SHA-256 against
its name, the canonical encoding, the allowlist and schemas through ``loads_manifest`` and
``graph_from_manifest``, the server's own validator) and every blob a valid manifest names
(present, the size the manifest declares, the SHA-256 of its name, and each weight's SHA-256
and finiteness through ``split_blob``). An entry that fails is refused with a message naming
its file (:attr:`Catalog.refused`, logged as a warning) and **the catalog opens with the
rest**: a refused blob is simply not held, so a client uploads that layer as it would
without a catalog, and nothing else changes. A model with a refused blob keeps its other
blobs public and is marked incomplete. ``strict=True`` (used by ``ionn-catalog verify``)
raises :class:`CatalogError` listing every refusal instead. A directory that is not a
catalog at all (no or unreadable ``index.json``) raises :class:`CatalogError` either way: a
server asked to serve it should not start.

**What it answers.** Blobs are content-addressed, so :meth:`Catalog.match` tells which
layers of *any* client manifest it holds publicly: those whose blob digest (and size) is a
catalog blob. A client's fine-tuned head on a catalog backbone shares the backbone's blob
digests and not the head's.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ionn_net.errors import IonnError, SpecError
from ionn_net.model.graph import LayerGraph
from ionn_net.model.limits import DEFAULT_LIMITS, SpecLimits
from ionn_net.model.spec import (
    LOCAL_ONLY,
    ModelManifest,
    graph_from_manifest,
    loads_manifest,
    split_blob,
)

__all__ = [
    "FORMAT",
    "Catalog",
    "CatalogError",
    "CatalogMatch",
    "CatalogModel",
    "Refusal",
    "WarmModel",
    "add_manifest",
    "build_catalog",
    "build_catalog_model",
]

logger = logging.getLogger(__name__)

#: Value of ``index.json``'s ``format`` member.
FORMAT = "ionn-catalog/1"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAX_INDEX_BYTES = 16 << 20


class CatalogError(IonnError):
    """A catalog directory is unusable, or (``strict``) holds refused entries."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A catalog file that is not served, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True, slots=True)
class CatalogModel:
    """A validated catalog model. ``complete``: every blob it names is held."""

    digest: str
    name: str
    source: str
    added: str
    manifest: ModelManifest
    graph: LayerGraph
    complete: bool

    @property
    def blob_digests(self) -> frozenset[str]:
        return frozenset(s.blob_sha256 for s in self.manifest.layers if s.blob_sha256)

    @property
    def blob_bytes(self) -> int:
        sizes = {s.blob_sha256: s.blob_size for s in self.manifest.layers if s.blob_sha256}
        return sum(sizes.values())


@dataclass(frozen=True, slots=True)
class CatalogMatch:
    """What a catalog holds of one client manifest: the blob digests, the layers whose
    blob they are (manifest order) and the bytes the client need not upload."""

    blobs: frozenset[str]
    layers: tuple[str, ...]
    nbytes: int


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: str
    name: str
    source: str
    added: str


class Catalog:
    """An opened, validated catalog directory (see the module docstring). Safe to share
    between threads; its only change after opening is forgetting a blob that stopped
    verifying (:meth:`blob`)."""

    def __init__(
        self,
        root: Path,
        models: Mapping[str, CatalogModel],
        blob_sizes: Mapping[str, int],
        refused: Iterable[Refusal],
        unlisted: Iterable[Path],
    ) -> None:
        self.root = root
        #: Valid models by manifest digest.
        self.models: Mapping[str, CatalogModel] = dict(models)
        self._sizes = dict(blob_sizes)
        #: Files refused when the catalog was opened (or a blob later, on read).
        self.refused: tuple[Refusal, ...] = tuple(refused)
        #: Files present but named by no index entry (an interrupted ``add``; not served).
        self.unlisted: tuple[Path, ...] = tuple(unlisted)

    # -- opening ------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str],
        *,
        limits: SpecLimits = DEFAULT_LIMITS,
        strict: bool = False,
    ) -> Catalog:
        """Open and validate the catalog at ``root`` (see the module docstring for what is
        refused). Blobs are read once to be verified; nothing is kept in memory."""
        root = Path(root)
        entries = _read_index(root)
        refused: list[Refusal] = []
        manifests: dict[str, tuple[_Entry, ModelManifest, LayerGraph]] = {}
        for entry in entries:
            path = root / "manifests" / f"{entry.digest}.json"
            try:
                manifest, graph = _load_manifest(path, entry.digest, limits)
            except (OSError, SpecError) as exc:
                refused.append(Refusal(path, _reason(exc)))
                continue
            manifests[entry.digest] = (entry, manifest, graph)
        sizes, bad = _verify_blobs(root, [m for _, m, _ in manifests.values()], limits)
        refused.extend(bad)
        models = {}
        for digest, (e, m, g) in manifests.items():
            complete = all(s.blob_sha256 in sizes for s in m.layers if s.blob_sha256)
            models[digest] = CatalogModel(digest, e.name, e.source, e.added, m, g, complete)
        listed = {f"{e.digest}.json" for e in entries}
        unlisted = sorted(p for p in _files(root / "manifests") if p.name not in listed)
        unlisted += sorted(p for p in _files(root / "blobs") if p.name not in sizes)
        unlisted = [p for p in unlisted if p not in {r.path for r in refused}]
        for refusal in refused:
            logger.warning("catalog: refusing %s", refusal)
        if strict and refused:
            raise CatalogError(
                f"catalog {root}: {len(refused)} refused entries:\n"
                + "\n".join(f"  {r}" for r in refused)
            )
        return cls(root, models, sizes, refused, unlisted)

    # -- questions ----------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        return digest in self._sizes

    def blob_size(self, digest: str) -> int:
        try:
            return self._sizes[digest]
        except KeyError:
            raise CatalogError(f"catalog {self.root}: blob {digest} is not held") from None

    def blob_digests(self) -> frozenset[str]:
        return frozenset(self._sizes)

    def blob_path(self, digest: str) -> Path:
        if not _HEX64.match(digest):
            raise CatalogError(f"blob digest: expected 64 lowercase hex digits, got {digest!r}")
        return self.root / "blobs" / digest

    def blob(self, digest: str) -> bytes:
        """The blob's bytes, verified again on read (the files stay the operator's: a blob
        that no longer verifies is refused and no longer held, never deleted)."""
        size = self.blob_size(digest)
        path = self.blob_path(digest)
        problem: str | None
        try:
            data = path.read_bytes()
        except OSError as exc:
            data, problem = b"", _reason(exc)
        else:
            problem = _blob_problem(data, digest, size)
        if problem is None:
            return data
        self._sizes.pop(digest, None)
        self.refused = (*self.refused, Refusal(path, problem))
        logger.warning("catalog: refusing %s: %s", path, problem)
        raise CatalogError(f"catalog blob {path}: {problem}; no longer served")

    def match(self, manifest: ModelManifest) -> CatalogMatch:
        """The layers of a (validated) client manifest whose blob the catalog holds with
        the size the manifest declares; a layer without weights is never listed."""
        layers, blobs, nbytes = [], set(), 0
        for spec in manifest.layers:
            digest = spec.blob_sha256
            if digest is None or self._sizes.get(digest) != spec.blob_size:
                continue
            layers.append(spec.name)
            if digest not in blobs:
                blobs.add(digest)
                nbytes += spec.blob_size
        return CatalogMatch(frozenset(blobs), tuple(layers), nbytes)

    def blobs_for(self, digest: str) -> dict[str, bytes]:
        """Every held blob of catalog model ``digest``, keyed by SHA-256 (verified)."""
        model = self.models.get(digest)
        if model is None:
            raise CatalogError(f"catalog {self.root}: no model {digest}")
        return {d: self.blob(d) for d in sorted(model.blob_digests) if d in self._sizes}


# -- reading ------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"cannot be read: {exc.strerror or exc}"
    return str(exc)


def _files(directory: Path) -> list[Path]:
    try:
        return [p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")]
    except FileNotFoundError:
        return []


def _read_index(root: Path) -> list[_Entry]:
    path = root / "index.json"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"catalog {root}: {path} {_reason(exc)}: not a catalog") from None
    if len(raw) > _MAX_INDEX_BYTES:
        raise CatalogError(f"catalog index {path}: expected at most {_MAX_INDEX_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise CatalogError(f"catalog index {path}: expected JSON, got: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CatalogError(f"catalog index {path}: expected format {FORMAT!r}")
    models = doc.get("models")
    if not isinstance(models, list):
        raise CatalogError(f"catalog index {path}: expected a list under 'models'")
    entries: dict[str, _Entry] = {}
    for i, item in enumerate(models):
        entry = _entry(item)
        if entry is None:
            raise CatalogError(
                f"catalog index {path}: models[{i}]: expected {{digest: 64 hex digits, name, "
                f"source, added: strings}}, got {str(item)[:200]}"
            )
        entries[entry.digest] = entry
    return list(entries.values())


def _entry(item: object) -> _Entry | None:
    if not isinstance(item, dict):
        return None
    fields = [item.get(k) for k in ("digest", "name", "source", "added")]
    if not all(isinstance(f, str) for f in fields) or not _HEX64.match(str(fields[0])):
        return None
    return _Entry(*(str(f) for f in fields))


def _load_manifest(path: Path, digest: str, limits: SpecLimits) -> tuple[ModelManifest, LayerGraph]:
    with path.open("rb") as fh:  # bounded read: the validator refuses larger ones anyway
        body = fh.read(limits.max_json_bytes + 1)
    actual = hashlib.sha256(body).hexdigest()
    if actual != digest:
        raise SpecError(f"its bytes hash to {actual}, not to the digest in its name")
    manifest = loads_manifest(body, limits, canonical=True)
    return manifest, graph_from_manifest(manifest, limits)


def _blob_problem(data: bytes, digest: str, size: int) -> str | None:
    if len(data) != size:
        return f"holds {len(data)} bytes, its manifest declares {size} (truncated or padded)"
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        return f"its bytes hash to {actual}, not to the digest in its name"
    return None


def _verify_blobs(
    root: Path, manifests: Iterable[ModelManifest], limits: SpecLimits
) -> tuple[dict[str, int], list[Refusal]]:
    """The blobs the manifests name that verify (digest -> size) and the refused ones."""
    users: dict[str, list[Any]] = {}
    for manifest in manifests:
        for spec in manifest.layers:
            if spec.blob_sha256 is not None:
                users.setdefault(spec.blob_sha256, []).append(spec)
    sizes: dict[str, int] = {}
    refused: list[Refusal] = []
    for digest, specs in sorted(users.items()):
        path = root / "blobs" / digest
        declared = {s.blob_size for s in specs}
        try:
            data = path.read_bytes()
        except OSError as exc:
            refused.append(Refusal(path, f"{_reason(exc)} (layer {specs[0].name!r} needs it)"))
            continue
        problem = (
            f"manifests declare different sizes {sorted(declared)}"
            if len(declared) > 1
            else _blob_problem(data, digest, specs[0].blob_size)
        )
        if problem is None:
            for spec in specs:  # each weight's SHA-256 and finiteness, as a load would
                try:
                    split_blob(spec, data, limits)
                except SpecError as exc:
                    problem = str(exc)
                    break
        if problem is not None:
            refused.append(Refusal(path, problem))
            continue
        sizes[digest] = len(data)
    return sizes, refused


# -- writing ------------------------------------------------------------------------------


def _write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` as git writes an object: temp file, fsync, rename, fsync
    of the directory; a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def add_manifest(
    root: str | os.PathLike[str],
    manifest: ModelManifest,
    blobs: Mapping[str, bytes],
    *,
    name: str | None = None,
    source: str = "",
) -> tuple[str, int]:
    """Put a manifest and its blobs into the catalog at ``root`` (created if needed) and
    list it in the index; returns ``(model digest, bytes of blobs written)``. Blobs already
    present and intact are not rewritten; adding a model again updates its index entry."""
    root = Path(root)
    body = manifest.to_json_bytes()
    digest = hashlib.sha256(body).hexdigest()
    entries = _read_index(root) if (root / "index.json").exists() else []
    written = 0
    for spec in manifest.layers:
        sha = spec.blob_sha256
        if sha is None:
            continue
        data = blobs.get(sha)
        if data is None or _blob_problem(data, sha, spec.blob_size) is not None:
            raise CatalogError(f"layer {spec.name!r}: blob {sha} missing or not matching")
        path = root / "blobs" / sha
        with contextlib.suppress(OSError):
            if _blob_problem(path.read_bytes(), sha, spec.blob_size) is None:
                continue
        _write_durably(path, data)
        written += len(data)
    _write_durably(root / "manifests" / f"{digest}.json", body)
    added = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    entry = _Entry(digest, name or manifest.name, source, added)
    entries = [e for e in entries if e.digest != digest] + [entry]
    index = {
        "format": FORMAT,
        "models": [
            {"digest": e.digest, "name": e.name, "source": e.source, "added": e.added}
            for e in entries
        ],
    }
    _write_durably(root / "index.json", json.dumps(index, indent=1, sort_keys=True).encode())
    return digest, written


# -- building ahead of clients ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WarmModel:
    """A catalog model's Keras layers built through the server's safe path, in an
    :class:`~ionn_net.executor.Executor` over the server's own graph of the manifest.
    ``compiled``: the whole model was compiled as one slice (every layer buildable)."""

    digest: str
    executor: Any
    layers: Mapping[str, Any]
    build_s: float
    compile_s: float
    compiled: bool


def build_catalog_model(
    catalog: Catalog,
    digest: str,
    *,
    compile: bool = True,
    jit: bool | None = None,
    limits: SpecLimits = DEFAULT_LIMITS,
) -> WarmModel:
    """Build the layers of catalog model ``digest`` whose blobs are held, each through
    ``model.layers.build_layers`` (allowlist, schemas, weight checks: the path a client's
    upload takes), and with ``compile`` compile the whole model as one slice when every
    layer was built. Never reads a framework file. Imports Keras (call it from a worker
    thread of a server)."""
    from ionn_net.executor import Executor
    from ionn_net.model.layers import build_layers

    model = catalog.models.get(digest)
    if model is None:
        raise CatalogError(f"catalog {catalog.root}: no model {digest}")
    blobs = catalog.blobs_for(digest)
    names = [
        s.name
        for s in model.manifest.layers
        if s.cls != LOCAL_ONLY and (s.blob_sha256 is None or s.blob_sha256 in blobs)
    ]
    started = time.perf_counter()
    layers = build_layers(model.manifest, blobs, names=names, limits=limits)
    executor = Executor(model.graph, layers, jit=jit)
    built = time.perf_counter()
    whole = len(names) == len(model.manifest.layers)
    if compile and whole:
        executor.prepare(model.graph.order)
    return WarmModel(
        digest,
        executor,
        layers,
        build_s=built - started,
        compile_s=time.perf_counter() - built,
        compiled=compile and whole,
    )


def build_catalog(
    catalog: Catalog,
    *,
    compile: bool = True,
    jit: bool | None = None,
    limits: SpecLimits = DEFAULT_LIMITS,
) -> dict[str, WarmModel]:
    """:func:`build_catalog_model` for every model of the catalog, by digest."""
    return {
        digest: build_catalog_model(catalog, digest, compile=compile, jit=jit, limits=limits)
        for digest in catalog.models
    }
