"""Fidelity of precision-first upload: how far a model built from base stages is from the
exact one.

For each model and precision (``16bit-first``, ``8bit-first``) every layer's blob is cut
into stages by :mod:`ionn_net.model.stages`, its base decoded and set into a copy of the
model, and the copy's outputs compared with the exact model's on the same inputs. One line
each::

    fidelity <model> <precision>: top1 <pct>% max_rel_err <x> mean_rel_err <y> over <n> inputs (...)

``top1`` is the share of inputs whose arg-max output is the same as the exact model's (how
many distinct classes the exact model's arg-max takes over the inputs is printed too: a
random-weight model often gives one class to every input, which makes top-1 agreement easy);
``max_rel_err`` the largest, over the inputs, of ``max|y_base - y_exact| / max|y_exact|``
(the error relative to the output's own scale, so that a near-zero output element does not
divide by zero); ``mean_rel_err`` its mean. It also checks that the blob rebuilt from all
stages is bit-exact for every layer (the end state of the upload).

Models:

* ``digits-cnn``: a small CNN (Conv2D, BatchNormalization, DepthwiseConv2D, Dense) trained
  here on scikit-learn's bundled digits (no download), upscaled bilinearly from 8x8 to
  64x64, fixed seeds, 20 epochs in 30-50 s here. Inputs: the held-out test split (``test``) and
  the same images shifted by up to 6 pixels with noise added (``test-augmented``, 8 per
  image), which puts many more inputs near a decision boundary.
* ``MobileNetV2``, ``ResNet50``, ``InceptionV3``, ``VGG16`` (``keras.applications``,
  ``weights=None``, seed 0, ``classifier_activation=None``: the logits, since the softmax of
  a random-weight model is flat to float32 precision): random weights, which are not
  representative of a trained model (near-ties flip easily); inputs are the digits
  test images upscaled to the model's input size, in 3 channels, scaled to [-1, 1]
  (``digits-derived``).

Usage: ``python bench/fidelity.py [--models ...] [--inputs N] [--epochs E]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from ionn_net.model.stages import STAGED_PRECISIONS, decode_base, encode_layer, reconstruct

APPS = ("MobileNetV2", "ResNet50", "InceptionV3", "VGG16")
MODELS = ("digits-cnn", *APPS)
DIGITS_SIZE = 64


# -- data and the trained model --------------------------------------------------------------


def digits(size: int = DIGITS_SIZE, seed: int = 0) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test): scikit-learn's digits, 8x8 upscaled bilinearly
    to ``size`` x ``size``, values in [0, 1], one channel; a fixed 80/20 split."""
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    data = load_digits()
    images = data.images.astype(np.float32) / 16.0
    big = zoom(images, (1, size / 8, size / 8), order=1, grid_mode=True, mode="nearest")
    x = np.clip(big, 0.0, 1.0)[..., None].astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    train, test = order[:cut], order[cut:]
    return x[train], y[train], x[test], y[test]


def augment(x: np.ndarray, copies: int, seed: int = 1) -> np.ndarray:
    """``copies`` versions of each image, shifted by up to 6 pixels and with noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(copies):
        dy, dx = rng.integers(-6, 7, size=2)
        shifted = np.roll(x, (int(dy), int(dx)), axis=(1, 2))
        noisy = shifted + rng.normal(0.0, 0.05, size=x.shape).astype(np.float32)
        out.append(np.clip(noisy, 0.0, 1.0))
    return np.concatenate(out).astype(np.float32)


def digits_cnn(size: int = DIGITS_SIZE) -> Any:
    import keras

    L = keras.layers
    return keras.Sequential(
        [
            keras.Input((size, size, 1)),
            L.Conv2D(16, 3, strides=2, padding="same", use_bias=False),
            L.BatchNormalization(),
            L.ReLU(),
            L.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
            L.DepthwiseConv2D(3, padding="same"),
            L.Conv2D(64, 1, activation="relu"),
            L.MaxPooling2D(),
            L.Conv2D(64, 3, padding="same", activation="relu"),
            L.GlobalAveragePooling2D(),
            L.Dense(64, activation="relu"),
            L.Dense(10),
        ],
        name="digits_cnn",
    )


@dataclass(frozen=True)
class Trained:
    model: Any
    accuracy: float
    seconds: float
    data: tuple[np.ndarray, ...]


def train_digits(
    epochs: int = 12, size: int = DIGITS_SIZE, seed: int = 0, copies: int = 1
) -> Trained:
    """The digits CNN trained from a fixed seed (Adam with a cosine decay, cross-entropy)
    on the training split plus ``copies`` shifted, noisy versions of it."""
    import keras

    keras.utils.set_random_seed(seed)
    x_train, y_train, x_test, y_test = data = digits(size, seed)
    if copies:
        x_train = np.concatenate([x_train, augment(x_train, copies, seed=seed + 2)])
        y_train = np.concatenate([y_train] * (copies + 1))
    model = digits_cnn(size)
    steps = epochs * -(-len(x_train) // 32)
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    t0 = time.perf_counter()
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    seconds = time.perf_counter() - t0
    pred = np.argmax(model.predict(x_test, batch_size=64, verbose=0), axis=-1)
    return Trained(model, float(np.mean(pred == y_test)), seconds, data)


def app_model(name: str, seed: int = 0) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    return getattr(keras.applications, name)(weights=None, classifier_activation=None)


def app_inputs(model: Any, x_test: np.ndarray, n: int) -> np.ndarray:
    """Digit images resized to the model's input, 3 channels, in [-1, 1]."""
    from scipy.ndimage import zoom

    h, w, c = (int(d) for d in model.input_shape[1:])
    imgs = x_test[:n, :, :, 0]
    factors = (1, h / imgs.shape[1], w / imgs.shape[2])
    big = zoom(imgs, factors, order=1, grid_mode=True, mode="nearest")
    big = np.clip(big, 0.0, 1.0)
    return (np.repeat(big[..., None], c, axis=-1) * 2.0 - 1.0).astype(np.float32)


# -- stages applied to a model -------------------------------------------------------------


def staged_copy(model: Any, precision: str, *, check_exact: bool = True) -> Any:
    """A copy of ``model`` whose weights are the base stages' at ``precision`` (through the
    manifest, as a server would build them). With ``check_exact``, also rebuild every blob
    from all its stages and check it is the original, bit for bit."""
    import keras

    from ionn_net.model.layers import extract_manifest

    manifest, blobs, _ = extract_manifest(model)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for spec in manifest.layers:
        if not spec.weights:
            continue
        blob = blobs[str(spec.blob_sha256)]
        enc = encode_layer(spec, blob, precision)
        if check_exact and reconstruct(spec, precision, enc.stages) != blob:
            raise AssertionError(f"{spec.name}: stages do not rebuild the blob")
        copy.get_layer(spec.name).set_weights(decode_base(spec, precision, enc.stages[0]))
    return copy


@dataclass(frozen=True)
class Fidelity:
    top1: float
    max_rel_err: float
    mean_rel_err: float
    n: int
    classes: int = 0


def compare(exact: Any, approx: Any, x: np.ndarray, batch: int = 32) -> Fidelity:
    """Top-1 agreement and output errors of ``approx`` against ``exact`` on ``x``."""
    ye = np.asarray(exact.predict(x, batch_size=batch, verbose=0), dtype=np.float64)
    ya = np.asarray(approx.predict(x, batch_size=batch, verbose=0), dtype=np.float64)
    ye, ya = ye.reshape(len(x), -1), ya.reshape(len(x), -1)
    scale = np.maximum(np.abs(ye).max(axis=1), np.finfo(np.float64).tiny)
    rel = np.abs(ya - ye).max(axis=1) / scale
    top = np.argmax(ye, axis=1)
    same = np.argmax(ya, axis=1) == top
    classes = len(np.unique(top))
    return Fidelity(float(same.mean()), float(rel.max()), float(rel.mean()), len(x), classes)


def line(model: str, precision: str, f: Fidelity, which: str) -> str:
    return (
        f"fidelity {model} {precision}: top1 {100 * f.top1:.2f}% max_rel_err {f.max_rel_err:.2e} "
        f"mean_rel_err {f.mean_rel_err:.2e} over {f.n} inputs ({which}; the exact top-1 "
        f"takes {f.classes} distinct classes)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--inputs", type=int, default=64, help="inputs per random-weight model")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--augment", type=int, default=8, help="augmented copies per test image")
    ap.add_argument("--train-copies", type=int, default=1, help="augmented copies to train on")
    args = ap.parse_args(argv)

    trained = train_digits(args.epochs, copies=args.train_copies)
    x_test = trained.data[2]
    print(
        f"digits-cnn: trained {args.epochs} epochs in {trained.seconds:.1f} s, "
        f"test accuracy {100 * trained.accuracy:.2f}% on {len(x_test)} images "
        f"({DIGITS_SIZE}x{DIGITS_SIZE}), {trained.model.count_params()} parameters"
    )
    for name in args.models:
        if name == "digits-cnn":
            model = trained.model
            sets = [("test", x_test), ("test-augmented", augment(x_test, args.augment))]
        else:
            model = app_model(name)
            sets = [("digits-derived", app_inputs(model, x_test, args.inputs))]
        for precision in STAGED_PRECISIONS:
            approx = staged_copy(model, precision)
            for which, x in sets:
                print(line(name, precision, compare(model, approx, x), which), flush=True)
        print(f"  {name}: every layer's blob rebuilt bit-exactly from its stages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
