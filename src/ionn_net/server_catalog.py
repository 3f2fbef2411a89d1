"""What an edge server holds publicly: its catalog and the blobs sessions published.

This module owns the server side of protocol.md §10.3.4 (the public marking), the
``blobs_public`` answer of §10.3.3 / §10.4 and what §14.5.1 allows a server to reveal, for
:class:`~ionn_net.server.EdgeServer`, which calls it through a few hooks:

* **Public blobs** are the operator's catalog blobs (:class:`~ionn_net.catalog.Catalog`,
  verified when it opened and again on every read) and the blobs a session *published*:
  uploaded under a public marking and verified within that session. Public records live
  in the store (:meth:`~ionn_net.store.BlobStore.record_public`), so the servers sharing a
  Redis store share them. Nothing here ever records a session as the owner of a public
  blob: catalog blobs never enter the store, and a session's ownership records only ever
  name its own uploads (§14.5).
* **Reading** a blob for a build takes the catalog's copy when it has one, else the
  store's; both verify on read. Whether the session may use the blob at all (its own
  upload, or public) is the caller's check (§10.6).
* **Catalog layers built ahead** ("warm"): :meth:`PublicHoldings.warm` builds catalog
  models through the server's safe path (``build_catalog_model``) and compiles their
  full-offload run set and its trunks (:func:`warm_sets`), in a thread of its own at the
  lowest priority, after the server listens: a client never waits for it, neither on a
  query (queries run on their own threads) nor on a load (a load never waits for a
  warm-up: what is not built yet is built by the load itself). A session's layer reuses a
  prebuilt Keras layer only when class, config, declared weights, blob digest and input
  shapes are equal (a key; never by name), and a session whose manifest *is* a warm
  catalog model (same digest) shares that model's executor, compiled whole-model slice
  included, so its first query after the ``load`` runs at once.
* **Compiled slices are shared by content** (:attr:`PublicHoldings.slices`,
  :class:`~ionn_net.shared_slices.SharedSlices`): a slice over prebuilt layers, compiled
  by the warm-up or by any session's load, serves every later session whose run set is
  the same layers wired the same way, whatever its manifest and layer names. So a
  fine-tuned head on a catalog backbone, whose first load asks for the backbone's trunk,
  runs on the slice the warm-up compiled for that trunk; and a run set no warm-up
  foresaw is compiled once for all the sessions that ask for it, not once per session.
  Sharing by content rather than by model is what an operator expects from a cache of
  public layers: what is paid for once is paid for once, whoever the tenant is. Only
  slices made entirely of public layers are shared, so no blob nor anything private is
  ever revealed (§14.5.1); what a load's time can tell is that some session ran the same
  public layers as one run set before.

Prebuilt layers are shared between sessions and must never be changed in place (their
weights are the catalog's verified bytes).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ionn_net.catalog import Catalog, CatalogError, build_catalog_model
from ionn_net.errors import ConfigError, IonnError
from ionn_net.messages import bad_member
from ionn_net.model.graph import LayerGraph
from ionn_net.model.limits import DEFAULT_LIMITS, SpecLimits
from ionn_net.model.schema import LOCAL_ONLY
from ionn_net.model.spec import LayerSpec, ModelManifest, canonical_json
from ionn_net.shared_slices import SharedSlices
from ionn_net.store import BlobCorruptError, BlobStore

__all__ = [
    "DEFAULT_TRUNKS",
    "PublicHoldings",
    "WarmResult",
    "check_trunks",
    "check_warm_spec",
    "select_warm",
    "warm_sets",
]

logger = logging.getLogger("ionn_net.server")

#: Trunks of each catalog model compiled ahead besides its full offload (:func:`warm_sets`).
DEFAULT_TRUNKS = 2
#: At most this many: each costs about one more compile of the model, and memory.
MAX_TRUNKS = 8

_WARM_SPEC = re.compile(r"^(all|none|[0-9]{1,6}|[A-Za-z0-9_.,\-]{1,4096})$")


def check_warm_spec(spec: object) -> str:
    """``spec`` if it says which catalog models to build ahead: ``all``, ``none``, a
    number N (the first N of the index) or names / digests separated by commas."""
    if not isinstance(spec, str) or not _WARM_SPEC.match(spec):
        raise ConfigError(
            f"catalog_warm: expected 'all', 'none', a number or comma-separated model names "
            f"or digests, got {spec!r}"
        )
    return spec


def check_trunks(trunks: object) -> int:
    """``trunks`` if it is a number of trunks to compile ahead (0..:data:`MAX_TRUNKS`)."""
    if type(trunks) is not int or not 0 <= trunks <= MAX_TRUNKS:
        raise ConfigError(f"catalog_trunks: expected an integer 0..{MAX_TRUNKS}, got {trunks!r}")
    return trunks


def select_warm(catalog: Catalog, spec: str) -> list[str]:
    """The digests of the catalog models ``spec`` (:func:`check_warm_spec`) names, in
    index order; a name or digest the catalog does not serve is a :class:`ConfigError`."""
    digests = list(catalog.models)
    if spec == "all":
        return digests
    if spec == "none":
        return []
    if spec.isdigit():
        return digests[: int(spec)]
    chosen: list[str] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        found = [d for d, m in catalog.models.items() if item in (m.name, d)]
        if not found:
            raise ConfigError(f"catalog_warm: {item!r} names no model of catalog {catalog.root}")
        chosen += [d for d in found if d not in chosen]
    return [d for d in digests if d in chosen]


@dataclass(frozen=True, slots=True)
class WarmResult:
    """One catalog model built ahead: how long its build and compile took (seconds), or
    why it could not be built."""

    digest: str
    name: str
    build_s: float
    compile_s: float
    compiled: bool
    error: str | None = None
    #: slices compiled ahead: the full offload and its trunks (:func:`warm_sets`)
    slices: int = 0


@dataclass(frozen=True, slots=True)
class _Warm:
    executor: Any
    layers: Mapping[str, Any]


def layer_key(spec: LayerSpec, input_shapes: Sequence[Sequence[int]]) -> bytes:
    """What determines a built layer: class, config, declared weights, blob digest and
    input shapes; not its name nor where its inputs come from."""
    obj = spec.to_json_obj()
    del obj["name"], obj["inbound"]
    obj["input_shapes"] = [list(s) for s in input_shapes]
    return canonical_json(obj)


def full_offload_set(manifest: ModelManifest) -> list[str]:
    """The run set of a client that offloads everything: every layer but the inputs
    (the client feeds the model input, §10.7)."""
    return [s.name for s in manifest.layers if s.cls != "InputLayer"]


def warm_sets(manifest: ModelManifest, graph: LayerGraph, trunks: int) -> list[list[str]]:
    """The run sets a warm-up compiles for a complete catalog model: its full offload
    (:func:`full_offload_set`), then its ``trunks`` longest *trunks*: the full offload cut
    after each of the last cut points before the model's last layer (a single tensor
    leaves there, :meth:`~ionn_net.model.graph.LayerGraph.cut_points`). A fine-tuned
    head replaces the layers after such a point (a new classifier after the pooling, or
    new pooling and classifier after the last feature map), and a client of one asks the
    server to run the trunk first, on the catalog's layers, while its head uploads."""
    full = full_offload_set(manifest)
    sets = [full]
    points = [p for p in graph.cut_points() if graph[p].cls != "InputLayer"][:-1]
    for point in reversed(points[-trunks:] if trunks else []):
        cut = graph.position(point)
        sets.append([n for n in full if graph.position(n) <= cut])
    return sets


class PublicHoldings:
    """The catalog and the published blobs of one server (see the module docstring).
    Thread-safe."""

    def __init__(
        self,
        store: BlobStore,
        catalog: Catalog | None = None,
        *,
        limits: SpecLimits = DEFAULT_LIMITS,
        jit: bool | None = None,
        trunks: int = DEFAULT_TRUNKS,
    ) -> None:
        self._store = store
        self.catalog = catalog
        self._limits = limits
        self._jit = jit
        self._trunks = trunks
        #: Compiled slices over the layers built ahead, shared by every session whose
        #: layers they are (by content, not by the session's model).
        self.slices = SharedSlices()
        self._lock = threading.Lock()
        self._prebuilt: dict[bytes, Any] = {}
        self._shared: dict[str, _Warm] = {}
        #: The catalog models built ahead so far, in the order they finished.
        self.warmed: list[WarmResult] = []
        #: Set once the warm-up has ended (whatever it built), or when there is none.
        self.warm_done = threading.Event()
        self._to_warm: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the catalog ----------------------------------------------------------------------

    def open_catalog(self, catalog: Catalog | str | os.PathLike[str] | None, warm: str) -> None:
        """Open ``catalog`` (a directory is validated, :class:`CatalogError` when it is
        not a catalog; refused entries are logged and the rest is served) and choose the
        models to build ahead (``warm``, :func:`select_warm`). Blocking: a worker thread."""
        if catalog is not None and not isinstance(catalog, Catalog):
            catalog = Catalog.open(catalog, limits=self._limits)
        self.catalog = catalog
        self._to_warm = [] if catalog is None else select_warm(catalog, warm)
        if catalog is not None:
            held = catalog.blob_digests()
            logger.info(
                "catalog %s: %d models, %d blobs (%.1f MB), %d refused; building %d ahead",
                catalog.root,
                len(catalog.models),
                len(held),
                sum(catalog.blob_size(d) for d in held) / 1e6,
                len(catalog.refused),
                len(self._to_warm),
            )

    # -- what is public (§14.5.1) ---------------------------------------------------------

    def held(self, sizes: Mapping[str, int]) -> tuple[str, ...]:
        """The digests of ``sizes`` (a manifest's blob digests and declared sizes) that
        this server holds publicly: catalog blobs of that size, and published blobs still
        held in the store. Sorted."""
        catalog = self.catalog
        public = {
            d
            for d, n in sizes.items()
            if catalog is not None and catalog.has_blob(d) and catalog.blob_size(d) == n
        }
        public |= self._store.public_held(d for d in sizes if d not in public)
        return tuple(sorted(public))

    def holds(self, digest: str, size: int) -> bool:
        return bool(self.held({digest: size}))

    def read(self, digest: str) -> bytes:
        """The verified bytes of ``digest``: the catalog's copy when it holds one (a copy
        that stopped verifying is dropped from the catalog), else the store's
        (:class:`~ionn_net.store.StoreError` if absent,
        :class:`~ionn_net.store.BlobCorruptError` if it failed verification)."""
        catalog = self.catalog
        if catalog is not None and catalog.has_blob(digest):
            try:
                return catalog.blob(digest)
            except CatalogError as exc:
                if not self._store.has(digest):  # no longer held anywhere: not served
                    raise BlobCorruptError(str(exc)) from None
        return self._store.get(digest)

    # -- the public marking (§10.3.4) -----------------------------------------------------

    @staticmethod
    def marking(manifest: ModelManifest, public: bool | tuple[str, ...]) -> frozenset[str]:
        """The blob digests a ``manifest`` request's ``public`` member marks; a layer
        name that is not in the manifest is ``bad_request`` (nothing is acted on)."""
        if public is False:
            return frozenset()
        if public is True:
            return frozenset(s.blob_sha256 for s in manifest.layers if s.blob_sha256)
        specs = {s.name: s for s in manifest.layers}
        unknown = [n for n in public if n not in specs]
        if unknown:
            raise bad_member("public", "names of layers of this manifest", unknown[:8])
        return frozenset(d for d in (specs[n].blob_sha256 for n in public) if d is not None)

    def publish(self, digests: Iterable[str]) -> None:
        """Record ``digests`` as published: the caller checked that each is held from the
        publishing session's own verified upload (§10.3.4)."""
        for digest in sorted(set(digests)):
            self._store.record_public(digest)

    # -- layers built ahead ---------------------------------------------------------------

    def reuse(
        self, model_digest: str, spec: LayerSpec, input_shapes: Sequence[Sequence[int]]
    ) -> Any | None:
        """A prebuilt layer for ``spec`` of model ``model_digest``, or None: by name when
        the model is a warm catalog model, else by :func:`layer_key`."""
        with self._lock:
            warm = self._shared.get(model_digest)
            if warm is not None:
                return warm.layers.get(spec.name)
            return self._prebuilt.get(layer_key(spec, input_shapes))

    def shared_executor(self, model_digest: str) -> Any | None:
        """The executor of warm catalog model ``model_digest`` (every buildable layer
        built, its full-offload set compiled), or None."""
        with self._lock:
            warm = self._shared.get(model_digest)
        return None if warm is None else warm.executor

    def start_warm(self) -> None:
        """Build the chosen catalog models ahead in a thread of their own at the lowest
        priority (:meth:`warm`); returns at once."""
        if not self._to_warm:
            self.warm_done.set()
            return
        self._thread = threading.Thread(
            target=self.warm, args=(self._to_warm,), name="ionn-catalog-warm", daemon=True
        )
        self._thread.start()

    def stop_warm(self) -> None:
        """Build no further model ahead; wait for the one being built (blocking)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def warm(self, digests: Sequence[str]) -> list[WarmResult]:
        """Build (and compile) catalog models ``digests`` one after another (imports
        Keras). A model that fails is logged and skipped."""
        _lowest_priority()
        try:
            for digest in digests:
                if self._stop.is_set():
                    break
                result = self._warm_one(digest)
                with self._lock:
                    self.warmed.append(result)
            return list(self.warmed)
        except Exception:  # nothing must escape a background thread unseen
            logger.exception("catalog: building models ahead failed")
            return list(self.warmed)
        finally:
            self.warm_done.set()

    def _warm_one(self, digest: str) -> WarmResult:
        catalog = self.catalog
        assert catalog is not None
        model = catalog.models[digest]
        try:
            built = build_catalog_model(
                catalog, digest, compile=False, jit=self._jit, limits=self._limits
            )
            executor, keys = self._shared_executor(model.manifest, model.graph, built.layers)
            started = time.perf_counter()
            whole = model.complete and all(s.cls != LOCAL_ONLY for s in model.manifest.layers)
            sets = warm_sets(model.manifest, model.graph, self._trunks) if whole else []
            for layers in sets:
                with self.slices.in_background():  # a load never waits for it: it compiles
                    executor.prepare(layers)
                self.slices.pin(executor, layers)
            compile_s = time.perf_counter() - started
        except (IonnError, OSError) as exc:
            logger.warning("catalog: building %s (%s) ahead failed: %s", model.name, digest, exc)
            return WarmResult(digest, model.name, 0.0, 0.0, False, str(exc))
        layers = executor.layers()
        with self._lock:
            for name, key in keys.items():
                self._prebuilt.setdefault(key, layers[name])
            if whole:
                self._shared[digest] = _Warm(executor, layers)
        logger.info(
            "catalog: %s built ahead in %.2f s, %d slices compiled in %.2f s",
            model.name,
            built.build_s,
            len(sets),
            compile_s,
        )
        return WarmResult(digest, model.name, built.build_s, compile_s, whole, slices=len(sets))

    def _shared_executor(
        self, manifest: ModelManifest, graph: LayerGraph, built: Mapping[str, Any]
    ) -> tuple[Any, dict[str, bytes]]:
        """An executor of ``graph`` on the layer objects sessions will reuse: for each
        layer, the first object built ahead with its :func:`layer_key` (this model's or an
        earlier one's), registered with :attr:`slices`, so that what it compiles is what a
        session's slice over the same layers is (one object per key: equal weightless
        layers of a model, e.g. its activations, share one); and each layer's key."""
        from ionn_net.executor import Executor  # keras stays out of import time

        keys = {
            s.name: layer_key(s, [graph[r.layer].output_shapes[r.index] for r in s.inbound])
            for s in manifest.layers
            if s.name in built
        }
        with self._lock:
            known = dict(self._prebuilt)
        layers = {n: known.setdefault(k, built[n]) for n, k in keys.items()}
        self.slices.register(layers.values())
        return Executor(graph, layers, jit=self._jit, shared=self.slices), keys


def _lowest_priority() -> None:
    """Niceness 19 for the calling thread (Linux: per thread), so that queries and loads
    run first; best effort."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, 19)
    except (OSError, AttributeError) as exc:
        logger.debug("the catalog warm-up keeps its priority: %s", exc)
