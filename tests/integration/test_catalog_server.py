"""An edge server with a catalog, and the library's own client, over real sockets.

A client whose model is a catalog model uploads nothing and offloads from its first load; a
fine-tuned head on a catalog backbone uploads only the head; layers built ahead are reused only
when class, config, weights, blob digest and input shapes match, never by name; catalog blobs
never enter the store nor any session's ownership records (protocol.md §10.3.3, §14.5.1).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.helpers.small_models import export, model_pair, small_model

from ionn_net.catalog import Catalog, CatalogError
from ionn_net.client import ClientConfig, OffloadClient
from ionn_net.errors import ConfigError
from ionn_net.model.layers import extract_manifest
from ionn_net.planner.costmodel import ServerCostModel
from ionn_net.server import EdgeServer, ServerConfig
from ionn_net.store import MemoryStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def models() -> tuple[Any, Any]:
    return model_pair()


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)


def client_config(tmp_path: Path) -> ClientConfig:
    # 50x slower than the server: offloading everything pays from the first query.
    return ClientConfig(slowdown=50.0, profile_cache=str(tmp_path / "profiles"))


async def offload(server: EdgeServer, model: Any, tmp_path: Path) -> tuple[Any, list[Any]]:
    """Start a client, wait until its upload is done, run three queries; the client stays
    open (returned) so the caller can read what it uploaded."""
    client = OffloadClient("127.0.0.1", server.port, model, config=client_config(tmp_path))
    await client.start()
    await client.wait_uploaded(timeout=120)
    results = [await client.infer_detailed(image(i)) for i in range(3)]
    for i, result in enumerate(results):
        want = model(image(i), training=False).numpy()
        np.testing.assert_allclose(result.output, want, rtol=1e-4, atol=1e-5)
    return client, results


async def warm_server(
    root: Path, store: Any = None, warm: str = "all", **config: Any
) -> EdgeServer:
    server = EdgeServer(
        store=store or MemoryStore(),
        catalog=root,
        cost_model=ServerCostModel(),
        config=ServerConfig(catalog_warm=warm, **config),
    )
    await server.start()
    assert await asyncio.to_thread(server.public.warm_done.wait, 120)
    return server


async def test_a_catalog_model_is_offloaded_without_uploading_a_byte(
    models: tuple[Any, Any], tmp_path: Path
) -> None:
    base, _ = models
    digest = export(base, tmp_path / "catalog")
    store = MemoryStore()
    server = await warm_server(tmp_path / "catalog", store)
    try:
        [warmed] = server.public.warmed
        assert warmed.compiled and warmed.digest == digest
        assert server.public.shared_executor(digest) is not None
        client, results = await offload(server, base, tmp_path)
        try:
            assert client.uploaded == frozenset() and client.stats["sent_bytes"] == 0
            assert all(r.offloaded for r in results)
            assert client.plan_state.public_blobs == frozenset(
                d for d, _ in client.layer_blob.values() if d is not None
            )
        finally:
            await client.close()
        # catalog blobs never enter the store nor any session's ownership records
        assert list(store.digests()) == []
    finally:
        await server.close()


async def test_a_fine_tuned_head_uploads_only_the_head(
    models: tuple[Any, Any], tmp_path: Path
) -> None:
    base, tuned = models
    export(base, tmp_path / "catalog")
    manifest, blobs, _ = extract_manifest(tuned)
    head = manifest.layer("head").blob_sha256
    store = MemoryStore()
    server = await warm_server(tmp_path / "catalog", store)
    try:
        client, results = await offload(server, tuned, tmp_path)
        try:
            assert client.uploaded == {head}
            assert client.stats["sent_bytes"] == len(blobs[str(head)])
            assert results[-1].offloaded
        finally:
            await client.close()
        assert set(store.digests()) == {head}  # only the session's own upload is stored
    finally:
        await server.close()


async def test_prebuilt_layers_are_never_reused_by_name(
    models: tuple[Any, Any], tmp_path: Path
) -> None:
    """A model with the catalog model's layer names (and classes and shapes) but other
    weights computes with its own weights: a prebuilt layer matched by name would give the
    catalog model's answer."""
    base, _ = models
    export(base, tmp_path / "catalog")
    other = small_model(7)  # same names, other weights everywhere
    server = await warm_server(tmp_path / "catalog")
    try:
        client, results = await offload(server, other, tmp_path)  # checks the outputs
        await client.close()
        assert results[-1].offloaded
        assert not np.allclose(results[-1].output, base(image(2), training=False).numpy())
    finally:
        await server.close()


async def test_a_cold_catalog_serves_too_and_warm_up_can_be_chosen(
    models: tuple[Any, Any], tmp_path: Path
) -> None:
    base, tuned = models
    digest = export(base, tmp_path / "catalog", name="small-base")
    export(tuned, tmp_path / "catalog", name="small-tuned")
    server = await warm_server(tmp_path / "catalog", warm="small-tuned")
    try:
        assert [w.name for w in server.public.warmed] == ["small-tuned"]
        assert server.public.shared_executor(digest) is None  # not built ahead
        client, results = await offload(server, base, tmp_path)
        await client.close()
        assert client.uploaded == frozenset() and results[-1].offloaded
    finally:
        await server.close()
    with pytest.raises(ConfigError, match="names no model"):
        await warm_server(tmp_path / "catalog", warm="nonesuch")


async def test_a_directory_that_is_not_a_catalog_stops_the_start(tmp_path: Path) -> None:
    server = EdgeServer(catalog=tmp_path, cost_model=ServerCostModel())
    with pytest.raises(CatalogError, match=r"index\.json"):
        await server.start()
    await server.close()


async def test_a_server_starts_with_the_good_entries_of_a_catalog(
    models: tuple[Any, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base, tuned = models
    root = tmp_path / "catalog"
    export(base, root)
    manifest, _, _ = extract_manifest(tuned)
    head = root / "blobs" / str(manifest.layer("head").blob_sha256)
    export(tuned, root)
    head.write_bytes(head.read_bytes()[:-4])  # truncated: refused, naming the file
    server = await warm_server(root, warm="none")
    try:
        catalog = server.public.catalog
        assert isinstance(catalog, Catalog)
        assert [r.path for r in catalog.refused] == [head]
        assert str(head) in caplog.text
        client, _ = await offload(server, tuned, tmp_path)  # the head is uploaded instead
        await client.close()
        assert client.uploaded == {head.name}
    finally:
        await server.close()


def twin_activations(head_seed: int, backbone_from: Any = None) -> Any:
    """A model whose backbone has two equal activations (same class, config and input
    shapes: one layer object built ahead serves both, as ResNet's do) and a Dense head;
    ``backbone_from`` copies another's backbone weights."""
    import keras

    keras.utils.set_random_seed(head_seed)
    x = keras.Input((16, 16, 3), name="image")
    y = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(x)
    y = keras.layers.ReLU(name="relu1")(y)
    y = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(y)
    y = keras.layers.ReLU(name="relu2")(y)
    y = keras.layers.GlobalAveragePooling2D(name="gap")(y)
    model = keras.Model(x, keras.layers.Dense(4, name="head")(y), name="twins")
    if backbone_from is not None:
        for name in ("conv1", "conv2"):
            model.get_layer(name).set_weights(backbone_from.get_layer(name).get_weights())
    return model


async def test_a_head_on_a_warm_backbone_is_loaded_without_compiling(tmp_path: Path) -> None:
    """The warm-up compiles the catalog model's trunks: a fine-tuned head's first load (the
    backbone's layers, under another manifest) runs on them and compiles nothing."""
    base = twin_activations(1)
    tuned = twin_activations(2, backbone_from=base)
    export(base, tmp_path / "catalog")
    server = await warm_server(tmp_path / "catalog")
    try:
        slices = server.public.slices
        [warmed] = server.public.warmed
        assert warmed.slices == 3 == slices.compiled  # full offload and two trunks
        client, results = await offload(server, tuned, tmp_path)
        await client.close()
        assert results[-1].offloaded
        assert slices.compiled == 3 and slices.reused >= 1
    finally:
        await server.close()


async def test_a_run_set_of_catalog_layers_is_compiled_once_for_every_head(
    models: tuple[Any, Any], tmp_path: Path
) -> None:
    """Without trunks compiled ahead, the first head's load compiles the backbone's run set
    once; a second session naming the same catalog layers under a different head (another
    manifest) gets its load done on that slice, without compiling again."""
    base, tuned = models
    export(base, tmp_path / "catalog")
    server = await warm_server(tmp_path / "catalog", catalog_trunks=0)
    try:
        slices = server.public.slices
        assert slices.compiled == 1  # the full offload only
        first, _ = await offload(server, tuned, tmp_path)
        await first.close()
        assert slices.compiled == 2
        reused = slices.reused
        other = small_model(3, backbone_from=base)
        second, results = await offload(server, other, tmp_path)
        await second.close()
        assert results[-1].offloaded
        assert slices.compiled == 2 and slices.reused > reused
    finally:
        await server.close()
