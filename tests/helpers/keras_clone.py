"""Test-only stand-in for the server's layer rebuild: fresh Keras layers with copied weights.

The production server rebuilds layers from validated specs (``ionn_net.model.layers``);
tests that only need *independent* layer objects (not sharing variables with the client
model) clone each layer through Keras's own config round trip here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import keras


def clone_layer(layer: Any) -> Any:
    """A new layer of the same class and config, built like ``layer``, with a copy of
    its weights (no variable is shared with ``layer``)."""
    clone = layer.__class__.from_config(layer.get_config())
    build_config = layer.get_build_config()
    if build_config is not None:
        clone.build_from_config(build_config)
    if layer.weights:
        clone.set_weights(layer.get_weights())
    return clone


def clone_layers(model: keras.Model, names: Iterable[str] | None = None) -> dict[str, Any]:
    """``name -> clone`` for the model's layers (all but input layers by default)."""
    from ionn_net.model.keras_graph import model_operations

    ops = model_operations(model)
    wanted = list(names) if names is not None else list(ops)
    return {
        n: clone_layer(ops[n]) for n in wanted if not isinstance(ops[n], keras.layers.InputLayer)
    }
