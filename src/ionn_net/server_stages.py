"""Weight stages on the server (protocol.md §10.12): uploads, builds and swaps.

This module owns what the server does with a model whose manifest declares stages
(:class:`ModelStages`, one per session model): which digests are stages and of which
blob, the order of their upload (a refinement only after its base, §10.12.3), what a
finished refinement becomes (the exact blob, rebuilt and checked against the blob's
SHA-256 before anything is stored), building a layer from its base stage (§10.12.4),
and swapping the exact weights into a built layer while queries run.

The swap assigns the layer's variables: compiled slices read them, so no slice is
rebuilt or traced again. A query holds :class:`WeightLock` for reading while its slice
runs, and reads which of its layers are at base precision under the same lock; a swap
holds it for writing while it assigns one layer's variables. A query therefore runs
entirely on the weights it started with and reports them (§10.12.5); a swap waits for
the queries running at that moment and delays the next ones by at most one layer's
assignment (about 0.3 ms plus 0.1-0.3 ms per MB, BENCHMARKS.md). Decoding, rebuilding
and checking the exact blob happen before, outside the lock.

Without declared stages none of this exists (``ModelStages.of`` returns None) and the
server behaves exactly as §10.5-§10.8 say.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ionn_net.errors import SpecError, StageError, StoreError
from ionn_net.messages import RequestError
from ionn_net.model.graph import LayerGraph
from ionn_net.model.limits import DEFAULT_LIMITS, SpecLimits
from ionn_net.model.spec import LayerSpec, ModelManifest, split_blob
from ionn_net.model.stages import (
    StageSpec,
    decode_base,
    output_channel_axes,
    precision_of,
    reconstruct,
)
from ionn_net.store import BlobCorruptError, BlobStore

__all__ = ["ModelStages", "WeightLock", "build_for_load"]


class WeightLock:
    """Many readers (running queries) or one writer (a swap); a waiting writer goes
    before readers that arrive after it, so that swaps are not starved by queries."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._waiting = 0

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._writing or self._readers:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class ModelStages:
    """The declared stages of one session model and its layers' precision (see the
    module docstring). Thread-safe where it says so; the rest runs on the event loop
    or in the loader, serialised by the model's load lock."""

    def __init__(self, layers: Sequence[LayerSpec]) -> None:
        staged = [s for s in layers if s.stages and s.blob_sha256 is not None]
        #: layer -> its declared stages (base first) and their precision
        self.stages_of: dict[str, tuple[StageSpec, ...]] = {s.name: s.stages for s in staged}
        self.precision: dict[str, str] = {s.name: str(precision_of(s.stages)) for s in staged}
        #: refinement digest -> (the blob it completes, a layer whose stages name it)
        self._refines: dict[str, tuple[str, LayerSpec]] = {}
        #: every stage digest -> its size (the blob table of §10.5 extended, §10.12.3)
        self.sizes: dict[str, int] = {}
        for spec in staged:
            assert spec.blob_sha256 is not None
            for i, stage in enumerate(spec.stages):
                self.sizes[stage.sha256] = stage.size
                if i:
                    self._refines[stage.sha256] = (spec.blob_sha256, spec)
        self.lock = WeightLock()
        self._base: frozenset[str] = frozenset()

    @classmethod
    def of(cls, manifest: ModelManifest) -> ModelStages | None:
        """The stages of ``manifest`` (already validated), or None when it declares none."""
        return cls(manifest.layers) if any(s.stages for s in manifest.layers) else None

    # -- precision of the built layers ----------------------------------------------

    @property
    def base(self) -> frozenset[str]:
        """Built layers that run on base-stage weights (replaced, never mutated, so a
        reader holding :meth:`WeightLock.reading` sees one consistent set)."""
        return self._base

    def listed(self, layers: Collection[str], position: Callable[[str], int]) -> tuple[str, ...]:
        """The layers of ``layers`` at base precision now, in ``position`` order (§10.12.4,
        §10.12.5). A snapshot: a query takes it under the read lock, with its run, and
        reports that, never a later reading (a swap may land in between)."""
        return tuple(sorted(self._base.intersection(layers), key=position))

    # -- §10.12.3 upload -------------------------------------------------------------

    def completes(self, digest: str, owned: Collection[str]) -> bool:
        """``digest`` is a refinement whose exact blob the session holds already: there
        is nothing left to send (answered ``blob_ok`` complete)."""
        found = self._refines.get(digest)
        return found is not None and found[0] in owned

    def check_order(self, digest: str, owned: Collection[str]) -> None:
        """A refinement is accepted only once the session holds its layer's base stage
        (``stage_order`` otherwise, nothing changed)."""
        found = self._refines.get(digest)
        if found is None:
            return
        spec = found[1]
        stages = spec.stages
        index = next(i for i, s in enumerate(stages) if s.sha256 == digest)
        if stages[index - 1].sha256 not in owned:
            raise RequestError(
                "stage_order",
                f"stage {index} of layer {spec.name!r}: send stage {index - 1} "
                f"({stages[index - 1].sha256}) first",
            )

    def reserve(self, digest: str, size: int, blob_sizes: Mapping[str, int]) -> int:
        """Bytes an unfinished upload of ``digest`` reserves: a refinement becomes its
        exact blob, so it reserves the larger of the two (§14.5)."""
        found = self._refines.get(digest)
        return size if found is None else max(size, blob_sizes.get(found[0], 0))

    def complete(
        self,
        store: BlobStore,
        digest: str,
        key: str,
        *,
        owner: str,
        public: Collection[str] = (),
    ) -> str:
        """Verify the finished upload ``key`` of ``digest`` and store what it makes
        (worker thread), recording ``owner`` as its owner (and it as published when its
        digest is in ``public``, §10.3.4); returns the digest the session now owns. A
        refinement is checked against its own SHA-256, then the exact blob is rebuilt
        from the base and checked against the blob's SHA-256; only then is it stored, and
        the refinement itself is not kept. Any mismatch raises :class:`StoreError` (the
        server answers ``digest_mismatch``) and stores nothing; the partial upload is
        dropped either way."""
        found = self._refines.get(digest)
        if found is None:
            store.complete_partial(digest, key=key, owner=owner, public=digest in public)
            return digest
        blob, spec = found
        try:
            data = store.partial_bytes(key)
            if hashlib.sha256(data).hexdigest() != digest:
                raise StoreError(f"refinement {digest}: the bytes do not match its SHA-256")
            base = store.get(spec.stages[0].sha256)
            try:
                exact = reconstruct(spec, self.precision[spec.name], [base, data])
            except SpecError as exc:  # the rebuilt blob does not match, or cannot be made
                raise StoreError(f"refinement {digest}: {exc}") from None
            store.put(blob, exact)
            store.record_owner(owner, blob)
            if blob in public:
                store.record_public(blob)
        finally:
            store.drop_partial(key)
        return blob

    # -- §10.12.4 load ------------------------------------------------------------------

    def buildable(self, name: str, ready: Collection[str], owned: Collection[str]) -> bool:
        """``name`` can be made ready at base precision: it is, or its base is held."""
        stages = self.stages_of.get(name)
        return name in ready or (stages is not None and stages[0].sha256 in owned)

    def base_weights(self, spec: LayerSpec, store: BlobStore) -> list[np.ndarray]:
        """The weights of ``spec`` decoded from its base stage (loader thread), checked
        as far as a base can be (§10.12.4): the stage's SHA-256 (the store verifies it on
        read), its values finite, and the SHA-256 of each weight that travels whole in
        it against the manifest. :class:`~ionn_net.errors.SpecError` otherwise."""
        stages = self.stages_of[spec.name]
        try:
            data = store.get(stages[0].sha256)
        except StoreError as exc:
            raise StageError(f"layer {spec.name!r}: base stage: {exc}") from None
        arrays = decode_base(spec, self.precision[spec.name], data)
        for i, (w, a) in enumerate(zip(spec.weights, arrays, strict=True)):
            whole = w.dtype == "int64" or output_channel_axes(spec.cls, i, w.shape) is None
            raw = a.astype("<i8" if w.dtype == "int64" else "<f4").tobytes()
            if whole and hashlib.sha256(raw).hexdigest() != w.sha256:
                raise StageError(
                    f"layer {spec.name!r}: weight {i} (whole in the base stage): SHA-256 "
                    f"does not match {w.sha256}"
                )
        return arrays

    def mark_base(self, names: Collection[str]) -> None:
        """Layers just built from their base stages (before they are ready)."""
        if names:
            self._base = self._base | frozenset(names)

    def swap(self, executor: Any, exact: Mapping[str, Sequence[np.ndarray]]) -> None:
        """Assign the exact weights of each layer to its built layer's variables (loader
        thread), one layer per write lock: a query sees each layer wholly at one precision
        and never a change while it runs. No slice is rebuilt or traced again."""
        for name, arrays in exact.items():
            variables = executor.layer(name).weights
            if len(variables) != len(arrays):  # the layer was built from this spec
                raise StageError(f"layer {name!r}: {len(arrays)} weights for {len(variables)}")
            with self.lock.writing():
                for var, value in zip(variables, arrays, strict=True):
                    var.assign(value)
                self._base = self._base - {name}


def build_for_load(
    stages: ModelStages | None,
    names: Sequence[str],
    *,
    specs: Mapping[str, LayerSpec],
    graph: LayerGraph,
    ready: Collection[str],
    owned: Collection[str],
    store: BlobStore,
    limits: SpecLimits = DEFAULT_LIMITS,
    read: Callable[[str], bytes] | None = None,
    reuse: Callable[[LayerSpec, list[Any]], Any | None] | None = None,
) -> tuple[dict[str, Any], dict[str, list[np.ndarray]]]:
    """What a ``load`` of ``names`` changes (loader thread), decoded and checked before
    anything changes: the layers to build (not ready yet; from their verified blob, or
    with declared ``stages`` from their base stage when the blob is not held, §10.12.4)
    and the exact weights of layers ready at base whose blob is now held (to
    :meth:`ModelStages.swap` in). Layers built from a base are marked so first. A
    :class:`~ionn_net.errors.SpecError` leaves everything as it was (§10.6.1). Whole
    blobs are read with ``read`` (default ``store.get``; the server passes its public
    holdings' reader, §14.5.1), and ``reuse`` may give an exact layer built ahead."""
    from ionn_net.model.layers import build_layer

    built: dict[str, Any] = {}
    refined: dict[str, list[np.ndarray]] = {}
    at_base: set[str] = set()
    for name in names:
        spec = specs[name]
        upgrade = stages is not None and name in stages.base and spec.blob_sha256 in owned
        if name in ready and not upgrade:
            continue
        shapes = [graph[r.layer].output_shapes[r.index] for r in spec.inbound]
        prebuilt = None if upgrade or reuse is None else reuse(spec, shapes)
        if prebuilt is not None:  # exact weights built ahead (catalog layers only)
            built[name] = prebuilt
            continue
        weights: list[np.ndarray] = []
        if spec.blob_sha256 in owned or (spec.blob_sha256 is not None and stages is None):
            try:
                blob = (read or store.get)(str(spec.blob_sha256))  # verified on read
            except BlobCorruptError:  # discarded by the store: the owner uploads it again
                raise RequestError(
                    "missing_blobs", f"blob of {name!r} failed verification", layers=[name]
                ) from None
            weights = split_blob(spec, blob, limits)
        elif stages is not None and spec.blob_sha256 is not None:
            weights = stages.base_weights(spec, store)
            at_base.add(name)
        if upgrade:
            refined[name] = weights
            continue
        digests = name not in at_base  # a base's kernels cannot match the manifest's SHA-256
        built[name] = build_layer(spec, shapes, weights, limits=limits, digests=digests)
    if stages is not None:
        stages.mark_base(at_base)
    return built, refined
