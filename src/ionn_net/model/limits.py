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

from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["DEFAULT_LIMITS", "SpecLimits", "cap_docs"]

_MIB = 1 << 20


def _cap(default: int | float, doc: str) -> Any:
    """A field of SpecLimits with its meaning (rendered in protocol.md Appendix B)."""
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True, slots=True, kw_only=True)
class SpecLimits:
    """Bounds on a model manifest; all sizes are at batch 1 and exclude the batch dim.

    Each field's meaning is in its ``metadata["doc"]`` (see :func:`cap_docs`): the JSON
    shape of the manifest itself, the graph's counts, tensor sizes, and per-kwarg bounds.
    """

    # JSON shape of the manifest itself.
    max_json_bytes: int = _cap(8 * _MIB, "bytes of the manifest's JSON text")
    max_json_depth: int = _cap(10, "nesting of lists and objects (a real manifest needs 6)")
    max_json_nodes: int = _cap(500_000, "JSON values in the whole manifest")
    max_string_chars: int = _cap(256, "characters of any one string")

    # Graph.
    max_layers: int = _cap(2048, "layers in one manifest")
    max_inputs: int = _cap(16, "model inputs")
    max_outputs: int = _cap(64, "model outputs")
    max_inbound: int = _cap(64, "inputs of one layer")
    max_layer_outputs: int = _cap(16, "outputs of one LocalOnly node")
    max_config_keys: int = _cap(16, "keys in one layer config")
    max_weights_per_layer: int = _cap(8, "weight tensors of one layer")

    # Tensors.
    max_dims: int = _cap(8, "rank of any activation or weight tensor (batch excluded)")
    max_dim: int = _cap(1 << 24, "any one dimension of a shape")
    max_tensor_elements: int = _cap(1 << 27, "elements of one weight tensor")
    max_layer_params: int = _cap(150_000_000, "weight elements of one layer")
    max_model_params: int = _cap(200_000_000, "weight elements of the whole model")
    max_layer_activation_bytes: int = _cap(256 * _MIB, "float32 output bytes of one layer")
    max_model_activation_bytes: int = _cap(
        4096 * _MIB, "float32 output bytes summed over all layers"
    )
    max_layer_macs: int = _cap(1 << 34, "multiply-accumulates of one layer")
    max_model_macs: int = _cap(1 << 37, "multiply-accumulates of the whole model")

    # Per-kwarg bounds.
    max_units: int = _cap(65536, "filters, units and groups")
    max_kernel: int = _cap(31, "side of a convolution kernel")
    max_pool: int = _cap(64, "side of a pooling window")
    max_stride: int = _cap(8, "stride")
    max_dilation: int = _cap(16, "dilation rate")
    max_depth_multiplier: int = _cap(64, "depth multiplier")
    max_upsample: int = _cap(16, "UpSampling2D factor")
    max_padding: int = _cap(256, "ZeroPadding2D / Cropping2D amount per side")
    max_abs_scalar: float = _cap(1e9, "magnitude of any float kwarg (keeps float32 casts finite)")
    max_scalar_list: int = _cap(4096, "length of a per-channel list of floats (Rescaling)")


def cap_docs() -> dict[str, str]:
    """Field name -> what it bounds, in declaration order."""
    return {f.name: str(f.metadata["doc"]) for f in fields(SpecLimits)}


#: The limits used when none are given.
DEFAULT_LIMITS = SpecLimits()
