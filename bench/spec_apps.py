"""Safe layer specs over keras.applications: coverage and cost of the safe path.

For each model (default: the eleven supported ``keras.applications``, ``weights=None``)
prints
  * whether it converts fully (nodes left ``LocalOnly`` and why),
  * manifest size (canonical JSON) and weight bytes,
  * ``extract``: seconds of :func:`extract_manifest` (config copy, weight hashing and
    the server-side validation of its own output),
  * ``parse``: milliseconds of :func:`loads_manifest` (the server's complete check of
    an untrusted manifest, with no Keras involved),
  * ``build``: seconds of :func:`build_layers` (split blobs, verify digests, rebuild
    every layer through the allowlist and set its weights), against ``keras``: the
    unsafe baseline measured in the same run, ``Model.from_config(get_config())``
    plus ``set_weights`` (what a server would do with Keras's own deserializer),
  * ``equal``: whether the model assembled from the rebuilt layers gives bit-identical
    outputs to the original on a random batch of 2.

Usage: ``python bench/spec_apps.py [--models MobileNetV2 ...] [--no-build]``.
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

import keras
import numpy as np

from ionn_net.model.graph import LayerGraph, TensorRef
from ionn_net.model.keras_graph import CALL_KEY, fill_call
from ionn_net.model.layers import build_layers, extract_manifest
from ionn_net.model.spec import graph_from_manifest, loads_manifest

APPS = [
    "MobileNet", "MobileNetV2", "MobileNetV3Small", "ResNet50", "ResNet50V2", "InceptionV3",
    "Xception", "DenseNet121", "EfficientNetB0", "VGG16", "NASNetMobile",
]  # fmt: skip


def _assemble(graph: LayerGraph, built: dict[str, Any]) -> keras.Model:
    tensors: dict[TensorRef, Any] = {}
    inputs = []
    for node in graph:
        if node.cls == "InputLayer":
            x = keras.Input(shape=node.output_shapes[0])
            inputs.append(x)
            tensors[TensorRef(node.name, 0)] = x
            continue
        args, kwargs = fill_call(node.params[CALL_KEY], [tensors[r] for r in node.inbound])
        tensors[TensorRef(node.name, 0)] = built[node.name](*args, **kwargs)
    return keras.Model(inputs[0], tensors[graph.outputs[0]])


def _keras_rebuild(model: keras.Model) -> float:
    start = time.perf_counter()
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    return time.perf_counter() - start


def run(app: str, build: bool) -> None:
    kwargs = {"input_shape": (224, 224, 3)} if app.startswith("MobileNetV3") else {}
    model = getattr(keras.applications, app)(weights=None, **kwargs)
    start = time.perf_counter()
    manifest, blobs, local_only = extract_manifest(model)
    extract_s = time.perf_counter() - start
    data = manifest.to_json_bytes()
    start = time.perf_counter()
    server = loads_manifest(data, canonical=True)
    parse_ms = (time.perf_counter() - start) * 1000
    weight_mib = sum(s.blob_size for s in server.layers) / 2**20
    line = (
        f"{app:17s} nodes={len(server.layers):4d} local_only={len(local_only)} "
        f"json={len(data) / 1024:6.0f} KiB weights={weight_mib:6.1f} MiB "
        f"extract={extract_s:5.2f} s parse={parse_ms:6.1f} ms"
    )
    if build:
        start = time.perf_counter()
        built = build_layers(server, blobs)
        build_s = time.perf_counter() - start
        keras_s = _keras_rebuild(model)
        rebuilt = _assemble(graph_from_manifest(server), built)
        x = np.random.default_rng(0).random((2, *model.input_shape[1:]), dtype=np.float32)
        equal = np.array_equal(np.asarray(rebuilt(x)), np.asarray(model(x)))
        line += (
            f" build={build_s:5.2f} s keras={keras_s:5.2f} s "
            f"(ratio {build_s / keras_s:4.2f}x) equal={equal}"
        )
    print(line, flush=True)
    for name, reason in local_only.items():
        print(f"    local_only {name}: {reason}")
    keras.backend.clear_session()
    gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=APPS)
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    for app in args.models:
        run(app, not args.no_build)


if __name__ == "__main__":
    main()
