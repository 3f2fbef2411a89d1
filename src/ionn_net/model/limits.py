"""Resource limits applied to every model manifest a server accepts (protocol.md §10.3).

This module owns :class:`SpecLimits`, the single place where the bounds on an
untrusted model description are written down. Every bound is checked with Python
integers *before* anything is allocated or built, so a hostile manifest costs the
server a few milliseconds of pure-Python arithmetic, never memory or a Keras call.

The defaults admit every model in ``keras.applications`` that this project supports
(VGG16, the largest, has 138 M parameters and a 102.8 M-element ``fc1`` kernel) with
some headroom, and refuse anything an edge server shared by many tenants should not
be asked to hold.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "SpecLimits"]

_MIB = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class SpecLimits:
    """Bounds on a model manifest; all sizes are at batch 1 and exclude the batch dim.

    JSON shape of the manifest itself:

    - ``max_json_bytes``: encoded manifest size accepted by :func:`loads_manifest`.
    - ``max_json_depth``: nesting of lists/objects (a real manifest needs 6).
    - ``max_json_nodes``: total JSON values (guards against wide documents).
    - ``max_string_chars``: any single string (names are further limited by the
      name pattern, digests are exactly 64 characters).

    Graph:

    - ``max_layers``, ``max_inputs``, ``max_outputs``: counts in one manifest.
    - ``max_inbound``: inputs of one layer (NASNet concatenates up to 6).
    - ``max_layer_outputs``: outputs of one client-only (``LocalOnly``) node.
    - ``max_config_keys``: kwargs in one layer config.
    - ``max_weights_per_layer``: weight tensors of one layer (BatchNormalization has 4).

    Tensors:

    - ``max_dims``: rank of any activation or weight tensor (batch excluded).
    - ``max_dim``: any single dimension.
    - ``max_tensor_elements``: elements of one weight tensor.
    - ``max_layer_params`` / ``max_model_params``: weight elements per layer / model.
    - ``max_layer_activation_bytes`` / ``max_model_activation_bytes``: float32 output
      bytes of one layer / summed over all layers, at batch 1.
    - ``max_layer_macs`` / ``max_model_macs``: multiply-accumulates at batch 1, so a
      tiny manifest cannot ask for hours of compute.

    Per-kwarg bounds:

    - ``max_units``: ``filters``/``units``/``groups``.
    - ``max_kernel``: convolution kernel side; ``max_pool``: pooling window side.
    - ``max_stride``, ``max_dilation``, ``max_depth_multiplier``, ``max_upsample``.
    - ``max_padding``: ZeroPadding2D/Cropping2D amount per side.
    - ``max_abs_scalar``: magnitude of any float kwarg (Rescaling scale, ReLU
      max_value, ...); keeps float32 casts finite.
    - ``max_scalar_list``: length of a per-channel float list (Rescaling).
    """

    max_json_bytes: int = 8 * _MIB
    max_json_depth: int = 10
    max_json_nodes: int = 500_000
    max_string_chars: int = 256

    max_layers: int = 2048
    max_inputs: int = 16
    max_outputs: int = 64
    max_inbound: int = 64
    max_layer_outputs: int = 16
    max_config_keys: int = 16
    max_weights_per_layer: int = 8

    max_dims: int = 8
    max_dim: int = 1 << 24
    max_tensor_elements: int = 1 << 27
    max_layer_params: int = 150_000_000
    max_model_params: int = 200_000_000
    max_layer_activation_bytes: int = 256 * _MIB
    max_model_activation_bytes: int = 4096 * _MIB
    max_layer_macs: int = 1 << 34
    max_model_macs: int = 1 << 37

    max_units: int = 65536
    max_kernel: int = 31
    max_pool: int = 64
    max_stride: int = 8
    max_dilation: int = 16
    max_depth_multiplier: int = 64
    max_upsample: int = 16
    max_padding: int = 256
    max_abs_scalar: float = 1e9
    max_scalar_list: int = 4096


#: The limits used when none are given.
DEFAULT_LIMITS = SpecLimits()
