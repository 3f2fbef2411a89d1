"""The benchmark's model catalogue: names -> Keras applications with random weights.

Owns the names a scenario may list and how each model is built (never downloading
anything: ``weights=None`` and a fixed seed, so every process builds the same
weights and the same manifest digest) and the query input each run feeds it.
Importing this module does not import Keras; :func:`build_model` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ionn_net.errors import ConfigError

__all__ = ["MODELS", "ModelInfo", "build_model", "check_model", "query_input"]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A catalogue entry: a Keras application (or ``"custom"``) and its arguments."""

    app: str
    kwargs: tuple[tuple[str, object], ...]
    note: str


MODELS: dict[str, ModelInfo] = {
    "mobilenetv2": ModelInfo("MobileNetV2", (), "224x224, 3.5 M parameters, 14 MB"),
    "resnet50": ModelInfo("ResNet50", (), "224x224, 25.6 M parameters, 102 MB"),
    "inceptionv3": ModelInfo("InceptionV3", (), "299x299, 23.9 M parameters, 95 MB"),
    "vgg16": ModelInfo("VGG16", (), "224x224, 138 M parameters, 553 MB"),
    # The --quick model: few layers (fast to trace, build and load), 2.3 MB of
    # weights, and enough compute on a small input that offloading pays.
    "cnn_small": ModelInfo("custom", (), "32x32, 11 layers, 0.6 M parameters, 2.3 MB"),
}


def _cnn_small() -> Any:
    import keras

    layers = keras.layers
    x = keras.Input((32, 32, 3))
    h = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    h = layers.Conv2D(128, 3, padding="same", activation="relu")(h)
    h = layers.MaxPooling2D()(h)
    h = layers.Conv2D(128, 3, padding="same", activation="relu")(h)
    h = layers.MaxPooling2D()(h)
    h = layers.Conv2D(256, 3, padding="same", activation="relu")(h)
    h = layers.GlobalAveragePooling2D()(h)
    h = layers.Dense(256, activation="relu")(h)
    out = layers.Dense(10, activation="softmax")(h)
    return keras.Model(x, out, name="cnn_small")


def check_model(name: object) -> str:
    """``name`` if it is in the catalogue, else :class:`ConfigError` listing them."""
    if not isinstance(name, str) or name not in MODELS:
        raise ConfigError(f"model: expected one of {', '.join(MODELS)}, got {name!r}")
    return name


def build_model(name: str, *, seed: int = 0) -> Any:
    """The catalogue model ``name`` with seeded random weights."""
    import keras

    info = MODELS[check_model(name)]
    keras.utils.set_random_seed(seed)
    if info.app == "custom":
        return _cnn_small()
    factory = getattr(keras.applications, info.app)
    return factory(weights=None, **dict(info.kwargs))


def query_input(model: Any, *, seed: int = 0) -> np.ndarray:
    """One batch-1 float32 input in [-1, 1] for ``model`` (the same every query)."""
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, (1, *shape)).astype(np.float32)
