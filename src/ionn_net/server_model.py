"""One client model on the server (:class:`ServerModel`), and how the server runs work in
threads (:func:`to_thread_to_the_end`, :func:`lower_priority`, :func:`warm_up`).

:class:`ServerModel` is a validated manifest of one session, assembled incrementally: its
graph, layer specs, blob sizes and the layers it refuses, which layers are built and which
load built each (run sets are chained from per-load pieces, then one slice once the model
is complete, protocol.md §10.6), the compiled runners, and the server's timing of its
layers (§10.11). :class:`~ionn_net.server.EdgeServer` owns one per (session, model digest).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ionn_net.model.graph import LayerGraph
from ionn_net.model.schema import LOCAL_ONLY
from ionn_net.model.spec import ModelManifest
from ionn_net.offthread import lower_priority, to_thread_to_the_end
from ionn_net.server_stages import ModelStages
from ionn_net.shared_slices import SharedSlices

__all__ = ["ServerModel", "lower_priority", "to_thread_to_the_end", "warm_up"]

logger = logging.getLogger("ionn_net.server")


class ServerModel:
    """One validated model of one session, assembled incrementally."""

    def __init__(
        self,
        manifest: ModelManifest,
        graph: LayerGraph,
        jit: bool | None,
        predicted: Mapping[str, float],
        shared: SharedSlices | None = None,
    ) -> None:
        self.manifest = manifest
        self.graph = graph
        self.digest = manifest.manifest_digest()
        self.specs = {s.name: s for s in manifest.layers}
        self.blob_sizes = {
            s.blob_sha256: s.blob_size for s in manifest.layers if s.blob_sha256 is not None
        }
        #: declared weight stages (§10.12), None without: their digests are blobs too
        self.stages = ModelStages.of(manifest)
        self.blob_sizes.update(self.stages.sizes if self.stages else {})
        self.refused = {
            s.name: "this layer's class is kept on the client"
            for s in manifest.layers
            if s.cls == LOCAL_ONLY
        }
        self.ready: set[str] = set()
        self.lock = asyncio.Lock()
        self._jit = jit
        #: compiled slices shared by content with other sessions (catalog layers)
        self._shared = shared
        self._executor: Any = None
        #: which load built each layer: run sets are chained from per-load pieces
        self.batch_of: dict[str, int] = {}
        self.loads = 0
        self._runners: dict[frozenset[str], Any] = {}
        self.consolidating: set[frozenset[str]] = set()
        self._complete = False
        #: the prior's times of the layers the server may run, and their timing (§10.11)
        self.predicted = predicted
        self.timing: Any = None
        #: Blobs the session's latest manifest request marks public (§10.3.4).
        self.public_marked: frozenset[str] = frozenset()

    def share_executor(self, executor: Any) -> None:
        """Run on a warm catalog model's executor (same manifest digest, so the same graph
        and layers): its compiled slices serve this session at once."""
        self._executor = executor

    @property
    def complete(self) -> bool:
        """Every layer the client may upload is built: no more partitions will come."""
        if not self._complete:  # once true it stays true: layers are never unloaded
            self._complete = all(
                n in self.ready or n in self.refused or spec.cls == "InputLayer"
                for n, spec in self.specs.items()
            )
        return self._complete

    def runner(self, run: Sequence[str]) -> Any:
        """What runs ``run`` (worker thread): its whole compiled slice once built,
        otherwise the chain of per-load pieces (§10.6), of which only pieces never
        seen before are compiled, so a partition costs a compile of its own layers
        and not of every layer of the run sets it extends."""
        key = frozenset(run)
        executor = self.executor()
        whole = executor.cached(key)
        if whole is not None:
            return whole
        chain = self._runners.get(key)
        if chain is None:
            chain = executor.prepare_chain(self.graph.pieces(key, self.batch_of))
            self._runners[key] = chain
        return chain

    def consolidate(self, run: Sequence[str]) -> bool:
        """Compile ``run`` as one slice (worker thread) so that it stops paying one
        dispatch per piece; True if it was a chain."""
        key = frozenset(run)
        chain = self._runners.get(key)
        if chain is None or len(getattr(chain, "pieces", ())) < 2:
            return False
        self.executor().prepare(key)
        self._runners.pop(key, None)
        return True

    def executor(self) -> Any:
        if self._executor is None:
            from ionn_net.executor import Executor  # keras stays out of import time

            self._executor = Executor(self.graph, {}, jit=self._jit, shared=self._shared)
        return self._executor


def warm_up() -> None:
    """Import TensorFlow/Keras and run one tiny compiled slice before accepting clients:
    otherwise the first ``load`` pays the import and runtime start-up (5-7 s here)."""
    import keras

    from ionn_net.executor import Executor
    from ionn_net.model import layers as _layers  # noqa: F401  (imports the spec builder)

    x = keras.Input((4,))
    model = keras.Model(x, keras.layers.Dense(2)(x), name="warm_up")
    executor = Executor.from_model(model)
    executor.prepare(executor.graph.order)
