"""A three-layer dense chain (x -> d1 -> d2 -> out), prepared as the client prepares a model,
with fixed device times (40 ms per hidden layer: worth offloading to any server): the plan
state and mobility unit tests share it."""

from __future__ import annotations

from typing import Any

from ionn_net.client import ClientConfig
from ionn_net.client.prepare import prepare_model

DEVICE_MS = {"x": 0.01, "d1": 40.0, "d2": 40.0, "out": 5.0}


def dense_chain_prepared(seed: int) -> Any:
    """The chain with weights from ``seed``, prepared unchunked at ``DEVICE_MS``."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16,), name="x")
    hidden = keras.layers.Dense(64, activation="relu", name="d1")(inputs)
    hidden = keras.layers.Dense(64, activation="relu", name="d2")(hidden)
    outputs = keras.layers.Dense(4, name="out")(hidden)
    model = keras.Model(inputs, outputs)
    config = ClientConfig(slowdown=1.0, device_ms=DEVICE_MS)
    return prepare_model(model, config, chunked=False)
