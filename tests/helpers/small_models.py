"""A small Keras model with a backbone and a head, and its export into a catalog: the
catalog tests, the server's catalog tests and the conformance tests of §10.3.4 / §14.5.1
share it (a fine-tuned head shares the backbone's blobs and not the head's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ionn_net.catalog import add_manifest

BACKBONE = ("conv1", "bn1", "conv2")


def small_model(head_seed: int, backbone_from: Any = None) -> Any:
    """input(16,16,3) -> conv -> bn -> relu -> conv -> gap -> dense(5): a backbone and a
    head; ``backbone_from`` copies another model's backbone weights (a fine-tuned head)."""
    import keras

    keras.utils.set_random_seed(head_seed)
    x = keras.Input((16, 16, 3), name="image")
    y = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(x)
    y = keras.layers.BatchNormalization(name="bn1")(y)
    y = keras.layers.ReLU(name="relu1")(y)
    y = keras.layers.Conv2D(12, 3, strides=2, name="conv2")(y)
    y = keras.layers.GlobalAveragePooling2D(name="gap")(y)
    out = keras.layers.Dense(5, activation="softmax", name="head")(y)
    model = keras.Model(x, out, name="small")
    rng = np.random.default_rng(head_seed)
    for layer in model.layers:  # random non-trivial BN statistics too
        layer.set_weights(
            [rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()]
        )
    if backbone_from is not None:
        for name in BACKBONE:
            model.get_layer(name).set_weights(backbone_from.get_layer(name).get_weights())
    return model


def model_pair() -> tuple[Any, Any]:
    """A base model and a fine-tuned head on its backbone."""
    base = small_model(1)
    return base, small_model(2, backbone_from=base)


def export(model: Any, root: Path, name: str | None = None) -> str:
    from ionn_net.model.layers import extract_manifest

    manifest, blobs, local_only = extract_manifest(model)
    assert local_only == {}
    digest, _ = add_manifest(root, manifest, blobs, name=name, source="test")
    return digest
