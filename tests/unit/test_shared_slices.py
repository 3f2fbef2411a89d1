"""Compiled slices shared by content between executors (ionn_net.shared_slices).

Real Keras layers built from manifests as a server builds them, real compiled slices: a set of
registered layer objects is compiled once for every graph that runs it, whatever the graph's
model or layer names, and computes there what the graph's own layers compute; a set with any
other layer object, or wired otherwise, is never served a shared slice.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from tests.helpers.small_models import model_pair, small_model

from ionn_net.errors import ConfigError
from ionn_net.executor import Executor
from ionn_net.model.graph import TensorRef
from ionn_net.model.layers import build_layers, extract_manifest
from ionn_net.model.spec import graph_from_manifest
from ionn_net.server_catalog import warm_sets
from ionn_net.server_config import ServerConfig
from ionn_net.shared_slices import SharedSlices

TRUNK = ("conv1", "bn1", "relu1", "conv2", "gap")


@pytest.fixture(scope="module")
def models() -> tuple[Any, Any]:
    return model_pair()


def server_side(model: Any) -> tuple[Any, dict[str, Any]]:
    """The server's graph of ``model``'s manifest and its layers built from the blobs."""
    manifest, blobs, _ = extract_manifest(model)
    return graph_from_manifest(manifest), build_layers(manifest, blobs)


def renamed(model: Any) -> Any:
    """The same model (architecture and weights) under other layer names."""
    import keras

    x = keras.Input((16, 16, 3), name="pixels")
    y = x
    for layer in model.layers[1:]:
        clone = layer.__class__.from_config({**layer.get_config(), "name": "x_" + layer.name})
        y = clone(y)
        clone.set_weights(layer.get_weights())
    return keras.Model(x, y, name="renamed")


def feed(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)


def test_a_trunk_of_shared_layers_is_compiled_once_for_every_graph_naming_it(
    models: tuple[Any, Any],
) -> None:
    base, tuned = models
    shared = SharedSlices()
    graph_a, layers_a = server_side(base)
    shared.register(layers_a[n] for n in TRUNK)  # the catalog's backbone, built ahead
    a = Executor(graph_a, layers_a, shared=shared)
    want = a.prepare(TRUNK)({TensorRef("image"): feed()})
    assert (shared.compiled, shared.reused, len(shared)) == (1, 0, 1)

    # a fine-tuned head: another manifest, the same backbone objects, its own head
    graph_b, layers_b = server_side(tuned)
    b = Executor(graph_b, {**layers_b, **{n: layers_a[n] for n in TRUNK}}, shared=shared)
    got = b.prepare(TRUNK)({TensorRef("image"): feed()})
    assert (shared.compiled, shared.reused) == (1, 1)
    np.testing.assert_array_equal(got[TensorRef("gap")], want[TensorRef("gap")])
    whole = b.prepare_chain([TRUNK, ["head"]])({TensorRef("image"): feed(1)})
    np.testing.assert_allclose(
        whole[TensorRef("head")], tuned(feed(1), training=False).numpy(), rtol=1e-5, atol=1e-6
    )

    # the same layers under other names: served as a view in this graph's names
    graph_c, layers_c = server_side(renamed(base))
    mapped = {"x_" + n: layers_a[n] for n in TRUNK}
    c = Executor(graph_c, {**layers_c, **mapped}, shared=shared)
    view = c.prepare(mapped)
    assert (shared.compiled, shared.reused) == (1, 2)
    assert view.inputs == (TensorRef("pixels"),) and view.outputs == (TensorRef("x_gap"),)
    np.testing.assert_array_equal(
        view({TensorRef("pixels"): feed()})[TensorRef("x_gap")], want[TensorRef("gap")]
    )


def test_a_set_with_a_layer_of_its_own_is_never_shared(models: tuple[Any, Any]) -> None:
    base, _ = models
    shared = SharedSlices()
    graph_a, layers_a = server_side(base)
    shared.register(layers_a[n] for n in TRUNK)
    a = Executor(graph_a, layers_a, shared=shared)
    a.prepare(graph_a.order)  # the base's own head is not registered
    assert (shared.compiled, len(shared)) == (0, 0)
    # equal weights but other objects (a session's own build): not the shared slice
    graph_b, layers_b = server_side(small_model(5, backbone_from=base))
    a.prepare(TRUNK)
    Executor(graph_b, layers_b, shared=shared).prepare(TRUNK)
    assert (shared.compiled, shared.reused, len(shared)) == (1, 0, 1)


def with_a_skip(model: Any) -> Any:
    """``model``'s backbone (same names and weights) whose conv1 output is also read
    outside it: the same set of layers has one more output there."""
    import keras

    x = keras.Input((16, 16, 3), name="image")
    c1 = model.get_layer("conv1").__class__.from_config(model.get_layer("conv1").get_config())
    y = x1 = c1(x)
    c1.set_weights(model.get_layer("conv1").get_weights())
    for name in TRUNK[1:]:
        layer = model.get_layer(name)
        clone = layer.__class__.from_config(layer.get_config())
        y = clone(y)
        clone.set_weights(layer.get_weights())
    side = keras.layers.GlobalAveragePooling2D(name="side")(x1)
    out = keras.layers.Concatenate(name="cat")([y, side])
    return keras.Model(x, out, name="skip")


def test_another_set_or_other_outputs_is_another_slice(models: tuple[Any, Any]) -> None:
    base, _ = models
    shared = SharedSlices()
    graph, layers = server_side(base)
    shared.register(layers.values())
    a = Executor(graph, layers, shared=shared)
    a.prepare(TRUNK)
    a.prepare(TRUNK[1:])  # reads conv1's output instead of the image
    a.prepare(TRUNK[:-1])  # leaves conv2's output instead of gap's
    b = Executor(graph, layers, shared=shared, max_batch=4)
    b.prepare(TRUNK)  # another batch signature
    assert (shared.compiled, shared.reused, len(shared)) == (4, 0, 4)
    # the same objects wired the same way, but conv1's output also leaves the set
    graph_s, layers_s = server_side(with_a_skip(base))
    s = Executor(graph_s, {**layers_s, **{n: layers[n] for n in TRUNK}}, shared=shared)
    got = s.prepare(TRUNK)
    assert (shared.compiled, shared.reused) == (5, 0)
    assert got.outputs == (TensorRef("conv1"), TensorRef("gap"))


def test_pinned_slices_stay_and_the_others_are_bounded(models: tuple[Any, Any]) -> None:
    base, _ = models
    shared = SharedSlices(capacity=1)
    graph, layers = server_side(base)
    shared.register(layers.values())
    a = Executor(graph, layers, shared=shared)
    a.prepare(TRUNK)
    assert shared.pin(a, TRUNK)
    a.prepare(TRUNK[1:])
    a.prepare(TRUNK[2:])  # evicts TRUNK[1:], the oldest unpinned
    assert len(shared) == 2
    b = Executor(graph, layers, shared=shared)
    b.prepare(TRUNK)
    b.prepare(TRUNK[2:])
    assert (shared.compiled, shared.reused) == (3, 2)
    b.prepare(TRUNK[1:])  # evicted: compiled again
    assert shared.compiled == 4
    assert not shared.pin(Executor(*server_side(small_model(6)), shared=shared), TRUNK)


def test_concurrent_requests_for_one_content_wait_for_one_compile(
    models: tuple[Any, Any],
) -> None:
    base, _ = models
    shared = SharedSlices()
    graph, layers = server_side(base)
    shared.register(layers.values())
    executors = [Executor(graph, layers, shared=shared) for _ in range(3)]
    start = threading.Barrier(len(executors))

    def run(executor: Executor) -> None:
        start.wait()
        executor.prepare(TRUNK)

    threads = [threading.Thread(target=run, args=(e,)) for e in executors]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert (shared.compiled, shared.reused) == (1, 2)


def test_a_load_never_waits_for_a_compile_in_the_background(models: tuple[Any, Any]) -> None:
    """A warm-up compiles at the lowest priority: a load asking for the same content while
    it runs compiles the slice itself instead of waiting for it."""
    base, _ = models
    shared = SharedSlices()
    graph, layers = server_side(base)
    shared.register(layers.values())
    started, release = threading.Event(), threading.Event()

    def slow_build(key: frozenset[str]) -> Any:
        started.set()
        release.wait(120)
        return Executor(graph, layers).prepare(key)

    def warm() -> None:
        with shared.in_background():
            shared.prepare(Executor(graph, layers, shared=shared), frozenset(TRUNK), slow_build)

    warming = threading.Thread(target=warm)
    warming.start()
    assert started.wait(60)  # the warm-up's compile is under way
    loading = threading.Thread(target=Executor(graph, layers, shared=shared).prepare, args=[TRUNK])
    loading.start()
    loading.join(30)
    done_before_the_warm_up = not loading.is_alive()
    release.set()
    warming.join(60)
    assert done_before_the_warm_up
    assert (shared.compiled, shared.reused, len(shared)) == (2, 0, 1)
    Executor(graph, layers, shared=shared).prepare(TRUNK)  # now one slice serves all
    assert (shared.compiled, shared.reused) == (2, 1)


def test_the_warm_up_compiles_the_full_offload_and_the_trunks_asked_for(
    models: tuple[Any, Any],
) -> None:
    base, _ = models
    manifest, _, _ = extract_manifest(base)
    graph = graph_from_manifest(manifest)
    full = ["conv1", "bn1", "relu1", "conv2", "gap", "head"]
    assert warm_sets(manifest, graph, 0) == [full]
    assert warm_sets(manifest, graph, 2) == [full, full[:5], full[:4]]
    assert len(warm_sets(manifest, graph, 8)) == 6  # one per cut point before the top
    with pytest.raises(ConfigError, match="catalog_trunks"):
        ServerConfig(catalog_trunks=9)


def test_a_compile_that_fails_after_building_leaves_no_request_waiting(
    models: tuple[Any, Any],
) -> None:
    """However a compile fails (here its slice names a tensor outside its content, which
    sharing refuses after the build), the next request for the same content compiles
    instead of waiting for a compile that will never end."""
    import dataclasses

    base, _ = models
    shared = SharedSlices()
    graph, layers = server_side(base)
    shared.register(layers.values())
    executor = Executor(graph, layers, shared=shared)

    def broken(key: frozenset[str]) -> Any:
        good = Executor(graph, layers).prepare(key)
        return dataclasses.replace(good, inputs=(TensorRef("nowhere"),))

    with pytest.raises(ValueError):
        shared.prepare(executor, frozenset(TRUNK), broken)
    done: list[Any] = []
    again = threading.Thread(target=lambda: done.append(executor.prepare(TRUNK)), daemon=True)
    again.start()
    again.join(60)
    assert done, "the next request for the same content still waits for the failed compile"
    assert shared.compiled == 1
