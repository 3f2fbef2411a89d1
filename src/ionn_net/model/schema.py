"""The layer allowlist: per-class kwarg schemas and pure shape inference.

This module owns the meaning of one layer spec (protocol.md §10.3): which classes
exist, which kwargs each accepts (types and bounds), and, from the input shapes
alone, the output shapes, the exact weight tensors the layer must carry, and its
multiply-accumulate count. Everything is Python ints; nothing is allocated and
keras is never imported, so a hostile spec is refused before any object exists.

Two pseudo-classes are not Keras layers:

- ``LocalOnly``: a node the client keeps (its class is outside the allowlist). It
  declares its output shapes and dtype so later layers can be checked; the server
  never builds it.
- ``InputLayer`` carries its own ``shape``.

Axes in configs follow Keras (batch dim is axis 0, which is refused); shapes here
exclude the batch dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from ionn_net.errors import SpecError, UnsupportedLayerError
from ionn_net.model.graph import DTYPE_SIZES
from ionn_net.model.limits import SpecLimits

__all__ = [
    "ACTIVATIONS",
    "BUILDABLE_CLASSES",
    "LOCAL_ONLY",
    "SCHEMAS",
    "WEIGHT_DTYPES",
    "ExpectedWeight",
    "LayerInfo",
    "infer_layer",
]

Shape = tuple[int, ...]

#: Pseudo-class of a node the client keeps local (never built by a server).
LOCAL_ONLY = "LocalOnly"

#: Activation names accepted as strings (each one resolves to a built-in Keras 3
#: activation; ``swish``/``hard_swish`` are Keras aliases of ``silu``/``hard_silu``).
ACTIVATIONS = frozenset(
    {
        "linear", "relu", "relu6", "sigmoid", "tanh", "softmax", "swish", "silu",
        "gelu", "hard_sigmoid", "hard_swish", "hard_silu", "elu", "selu", "softplus",
        "softsign", "leaky_relu", "exponential", "mish",
    }
)  # fmt: skip

#: Weight dtypes a layer may declare (Normalization's ``count`` is int64).
WEIGHT_DTYPES: Mapping[str, int] = {"float32": 4, "int64": 8}

#: Dtypes a LocalOnly node may declare for its outputs.
_TENSOR_DTYPES = frozenset(DTYPE_SIZES)
_PADDINGS = ("valid", "same")
_F32 = "float32"


@dataclass(frozen=True, slots=True)
class ExpectedWeight:
    """One weight tensor a layer must carry, in ``layer.get_weights()`` order."""

    role: str
    shape: Shape
    dtype: str = _F32

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.elements * WEIGHT_DTYPES[self.dtype]


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerInfo:
    """What the validator computed for one layer from its spec and input shapes.

    ``kwargs`` are the checked constructor kwargs (tuples, not lists; activation
    as a name; no ``name``/``dtype``), complete so no Keras global default is read.
    """

    cls: str
    output_shapes: tuple[Shape, ...]
    output_dtype: str
    weights: tuple[ExpectedWeight, ...]
    macs: int
    kwargs: Mapping[str, object] = field(compare=False)

    @property
    def params(self) -> int:
        return sum(w.elements for w in self.weights)

    @property
    def weight_bytes(self) -> int:
        return sum(w.nbytes for w in self.weights)

    @property
    def activation_bytes(self) -> int:
        """Output bytes at batch 1."""
        size = DTYPE_SIZES[self.output_dtype]
        return sum(math.prod(s) for s in self.output_shapes) * size


def _show(value: object) -> str:
    """A short, safe rendering of an untrusted value for error messages."""
    if isinstance(value, Mapping):
        keys = list(value)[:6]
        return f"a dict with keys {keys!r}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Cfg:
    """Checked access to one layer's config; remembers which keys were consumed."""

    def __init__(self, name: str, cls: str, config: Mapping[str, object], lim: SpecLimits):
        self.name, self.cls, self.lim = name, cls, lim
        self.raw = config
        self.used: set[str] = set()
        self.kwargs: dict[str, object] = {}

    # -- errors ------------------------------------------------------------------

    def fail(self, key: str, expected: str, got: object) -> NoReturn:
        raise SpecError(
            f"layer {self.name!r} ({self.cls}): config key {key!r}: "
            f"expected {expected}, got {_show(got)}"
        )

    def fail_shape(self, message: str) -> NoReturn:
        raise SpecError(f"layer {self.name!r} ({self.cls}): {message}")

    def get(self, key: str, default: object = None, *, required: bool = False) -> object:
        self.used.add(key)
        if key in self.raw:
            return self.raw[key]
        if required:
            self.fail(key, "a value (the key is required)", "nothing")
        return default

    def done(self) -> None:
        """Refuse every key no checker consumed (``dtype`` is checked here)."""
        if "dtype" in self.raw and self.raw["dtype"] != _F32:
            self.fail("dtype", "'float32' (computation is always float32)", self.raw["dtype"])
        extra = sorted(set(self.raw) - self.used - {"dtype"})
        if extra:
            self.fail(extra[0], f"one of {sorted(self.used)} (unknown key)", self.raw[extra[0]])

    # -- typed getters (each stores the checked value as a Keras kwarg) -----------

    def get_int(self, key: str, lo: int, hi: int, default: int | None = None) -> int:
        v = self.get(key, default, required=default is None)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            self.fail(key, f"an integer in [{lo}, {hi}]", v)
        self.kwargs[key] = v
        return v

    def get_float(
        self, key: str, lo: float, hi: float, default: float, *, lo_open: bool = False
    ) -> float:
        v = self.get(key, default)
        x = _number(v)
        if x is None or not lo <= x <= hi or (lo_open and x == lo):
            self.fail(key, f"a finite number in {'(' if lo_open else '['}{lo}, {hi}]", v)
        self.kwargs[key] = x
        return x

    def get_rate(self, key: str) -> float:
        v = self.get(key, required=True)
        x = _number(v)
        if x is None or not 0.0 <= x < 1.0:
            self.fail(key, "a number in [0, 1)", v)
        self.kwargs[key] = x
        return x

    def get_bool(self, key: str, default: bool) -> bool:
        v = self.get(key, default)
        if not isinstance(v, bool):
            self.fail(key, "true or false", v)
        self.kwargs[key] = v
        return v

    def get_choice(self, key: str, options: Sequence[str], default: str | None) -> str:
        v = self.get(key, default, required=default is None)
        if not isinstance(v, str) or v not in options:
            self.fail(key, f"one of {list(options)}", v)
        self.kwargs[key] = v
        return v

    def get_pair(
        self, key: str, lo: int, hi: int, default: tuple[int, int] | None
    ) -> tuple[int, int]:
        v = self.get(key, default, required=default is None)
        xs = _ints(v, 2)
        if xs is None or not all(lo <= x <= hi for x in xs):
            self.fail(key, f"a list of 2 integers in [{lo}, {hi}]", v)
        out = (xs[0], xs[1])
        self.kwargs[key] = out
        return out

    def get_pad_pairs(self, key: str, default: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
        v = self.get(key, default)
        hi = self.lim.max_padding
        rows = [_ints(p, 2) for p in v] if isinstance(v, list | tuple) and len(v) == 2 else []
        flat = [x for r in rows if r is not None for x in r]
        if len(flat) != 4 or not all(0 <= x <= hi for x in flat):
            self.fail(key, f"[[top, bottom], [left, right]] of integers in [0, {hi}]", v)
        self.kwargs[key] = ((flat[0], flat[1]), (flat[2], flat[3]))
        return tuple(flat)

    def get_activation(self) -> str:
        v = self.get("activation", "linear")
        if isinstance(v, Mapping):
            self.fail("activation", "an activation name (a dict-valued activation is refused)", v)
        if not isinstance(v, str) or v not in ACTIVATIONS:
            self.fail("activation", f"one of {sorted(ACTIVATIONS)}", v)
        self.kwargs["activation"] = v
        return v

    def data_format(self) -> None:
        self.get_choice("data_format", ("channels_last",), "channels_last")

    def get_axis(self, key: str, rank: int, default: int) -> int:
        """A Keras axis (batch is 0) normalized to an index into the batch-less shape."""
        v = self.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or not (-rank <= v <= rank and v != 0):
            self.fail(key, f"an axis in [{-rank}, -1] or [1, {rank}] (input rank {rank})", v)
        self.kwargs[key] = v
        return (v if v > 0 else rank + 1 + v) - 1

    def get_axes(
        self, key: str, rank: int, *, allow_none: bool
    ) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """An int or a list of distinct axes. Returns (indices in the given order,
        sorted indices) into the batch-less shape, or None when null is allowed."""
        v = self.get(key, -1)
        if v is None and allow_none:
            self.kwargs[key] = None
            return None
        xs = (v,) if isinstance(v, int) and not isinstance(v, bool) else _ints(v, None)
        norm = [(a if a > 0 else rank + 1 + a) - 1 for a in xs or ()]
        if not xs or not all(0 <= a < rank for a in norm) or len(set(norm)) != len(norm):
            self.fail(key, f"an axis or a list of distinct axes in [1, {rank}] or [-{rank}, -1]", v)
        self.kwargs[key] = v if isinstance(v, int) else xs
        return tuple(norm), tuple(sorted(norm))

    def get_scalar_or_list(self, key: str, default: float | None) -> int:
        """A finite float, or a list of them; returns the list length (0 for a scalar)."""
        v = self.get(key, default, required=default is None)
        bound, n_max = self.lim.max_abs_scalar, self.lim.max_scalar_list
        x = _number(v)
        if x is not None and abs(x) <= bound:
            self.kwargs[key] = x
            return 0
        if isinstance(v, list | tuple) and 1 <= len(v) <= n_max:
            xs = [_number(e) for e in v]
            vals = [e for e in xs if e is not None and abs(e) <= bound]
            if len(vals) == len(v):
                self.kwargs[key] = tuple(vals)
                return len(vals)
        self.fail(key, f"a finite number (|x| <= {bound:g}) or a list of 1..{n_max} of them", v)

    def get_int_list(self, key: str, lo: int, hi: int, max_len: int) -> tuple[int, ...]:
        v = self.get(key, required=True)
        xs = _ints(v, None)
        if xs is None or not 1 <= len(xs) <= max_len or not all(lo <= x <= hi for x in xs):
            self.fail(key, f"a list of 1..{max_len} integers in [{lo}, {hi}]", v)
        self.kwargs[key] = xs
        return xs


def _number(v: object) -> float | None:
    """``v`` as a float if it is a finite JSON number (not a bool), else None."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        x = float(v) if not isinstance(v, int) or abs(v) < 1 << 1000 else math.inf
        return x if math.isfinite(x) else None
    return None


def _ints(v: object, length: int | None) -> tuple[int, ...] | None:
    """``v`` as a tuple of ints if it is a list of ints (optionally of ``length``)."""
    if not isinstance(v, list | tuple) or (length is not None and len(v) != length):
        return None
    out: list[int] = []
    for x in v:
        if not isinstance(x, int) or isinstance(x, bool):
            return None
        out.append(x)
    return tuple(out)


# -- shape helpers --------------------------------------------------------------------


def _need_rank(c: _Cfg, shape: Shape, rank: int) -> None:
    if len(shape) != rank:
        c.fail_shape(f"expected an input of rank {rank} (H, W, C), got shape {list(shape)}")


_Pair = tuple[int, int]
_Window = tuple[_Pair, _Pair, _Pair, str]  # kernel, strides, dilation, padding


def _spatial(c: _Cfg, shape: Shape, win: _Window) -> _Pair:
    """Keras's conv/pool output size (operation_utils.compute_conv_output_shape)."""
    k, s, d, padding = win
    out = []
    for i in (0, 1):
        n, span = shape[i], d[i] * (k[i] - 1) + 1
        size = -(-n // s[i]) if padding == "same" else (n - span) // s[i] + 1
        if size < 1:
            c.fail_shape(f"input size {n} is smaller than the (dilated) window {span}")
        out.append(size)
    return out[0], out[1]


def _window(c: _Cfg) -> _Window:
    """kernel_size, strides, dilation_rate and padding of a convolution."""
    lim = c.lim
    k = c.get_pair("kernel_size", 1, lim.max_kernel, None)
    s = c.get_pair("strides", 1, lim.max_stride, (1, 1))
    d = c.get_pair("dilation_rate", 1, lim.max_dilation, (1, 1))
    pad = c.get_choice("padding", _PADDINGS, "valid")
    if max(s) > 1 and max(d) > 1:
        c.fail("dilation_rate", "[1, 1] when a stride is > 1 (Keras refuses both)", list(d))
    c.data_format()
    return k, s, d, pad


def _bias(use_bias: bool, n: int) -> tuple[ExpectedWeight, ...]:
    return (ExpectedWeight("bias", (n,)),) if use_bias else ()


def _elementwise(ins: tuple[Shape, ...]) -> _Result:
    return (ins[0],), (), math.prod(ins[0])


_Result = tuple[tuple[Shape, ...], tuple[ExpectedWeight, ...], int]
_Infer = Callable[[_Cfg, tuple[Shape, ...]], _Result]


# -- per-class inference: (config, input shapes) -> (outputs, weights, macs) --------------
# MACs follow the project-wide formulas (also used by keras_graph): convolutions count
# multiply-accumulates, Dense in*units, pooling output elements * window area, layers
# that only move data (Reshape, Flatten, Dropout, Identity, InputLayer) zero, and
# every other layer one per output element.


def _input_layer(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    shape = c.get_int_list("shape", 1, c.lim.max_dim, c.lim.max_dims)
    return (shape,), (), 0


def _local_only(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    v = c.get("output_shapes", required=True)
    lim = c.lim
    shapes = [_ints(s, None) for s in v] if isinstance(v, list | tuple) else []
    good = [s for s in shapes if s and len(s) <= lim.max_dims and all(d >= 1 for d in s)]
    if not 1 <= len(good) == len(shapes) <= lim.max_layer_outputs:
        c.fail("output_shapes", f"1..{lim.max_layer_outputs} shapes of 1..{lim.max_dims} dims", v)
    c.get_choice("output_dtype", sorted(_TENSOR_DTYPES), _F32)
    return tuple(good), (), 0


def _conv2d(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    _need_rank(c, shape, 3)
    filters = c.get_int("filters", 1, c.lim.max_units)
    win = _window(c)
    k = win[0]
    groups = c.get_int("groups", 1, c.lim.max_units, 1)
    c.get_activation()
    use_bias = c.get_bool("use_bias", True)
    in_c = shape[2]
    if in_c % groups or filters % groups:
        c.fail("groups", f"a divisor of input channels {in_c} and filters {filters}", groups)
    oh, ow = _spatial(c, shape, win)
    kernel = ExpectedWeight("kernel", (k[0], k[1], in_c // groups, filters))
    macs = oh * ow * filters * k[0] * k[1] * (in_c // groups)
    return ((oh, ow, filters),), (kernel, *_bias(use_bias, filters)), macs


def _conv2d_transpose(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    _need_rank(c, shape, 3)
    filters = c.get_int("filters", 1, c.lim.max_units)
    k = c.get_pair("kernel_size", 1, c.lim.max_kernel, None)
    s = c.get_pair("strides", 1, c.lim.max_stride, (1, 1))
    pad = c.get_choice("padding", _PADDINGS, "valid")
    c.get_pair("dilation_rate", 1, 1, (1, 1))  # only undilated transposed convolutions
    out_pad = c.get("output_padding")
    if out_pad is not None:
        c.fail("output_padding", "null (explicit output padding is not supported)", out_pad)
    c.kwargs["output_padding"] = None
    c.data_format()
    c.get_activation()
    use_bias = c.get_bool("use_bias", True)
    h, w, in_c = shape
    # Keras deconv_output_length without output_padding.
    grow = (0, 0) if pad == "same" else (max(k[0] - s[0], 0), max(k[1] - s[1], 0))
    oh, ow = h * s[0] + grow[0], w * s[1] + grow[1]
    kernel = ExpectedWeight("kernel", (k[0], k[1], filters, in_c))
    macs = h * w * in_c * k[0] * k[1] * filters
    return ((oh, ow, filters),), (kernel, *_bias(use_bias, filters)), macs


def _depthwise(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    _need_rank(c, shape, 3)
    win = _window(c)
    k = win[0]
    mult = c.get_int("depth_multiplier", 1, c.lim.max_depth_multiplier, 1)
    c.get_activation()
    use_bias = c.get_bool("use_bias", True)
    in_c = shape[2]
    oh, ow = _spatial(c, shape, win)
    kernel = ExpectedWeight("kernel", (k[0], k[1], in_c, mult))
    macs = oh * ow * in_c * mult * k[0] * k[1]
    return ((oh, ow, in_c * mult),), (kernel, *_bias(use_bias, in_c * mult)), macs


def _separable(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    _need_rank(c, shape, 3)
    filters = c.get_int("filters", 1, c.lim.max_units)
    win = _window(c)
    k = win[0]
    mult = c.get_int("depth_multiplier", 1, c.lim.max_depth_multiplier, 1)
    c.get_activation()
    use_bias = c.get_bool("use_bias", True)
    in_c = shape[2]
    oh, ow = _spatial(c, shape, win)
    dw = ExpectedWeight("depthwise_kernel", (k[0], k[1], in_c, mult))
    pw = ExpectedWeight("pointwise_kernel", (1, 1, in_c * mult, filters))
    macs = oh * ow * in_c * mult * k[0] * k[1] + oh * ow * in_c * mult * filters
    return ((oh, ow, filters),), (dw, pw, *_bias(use_bias, filters)), macs


def _dense(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    units = c.get_int("units", 1, c.lim.max_units)
    c.get_activation()
    use_bias = c.get_bool("use_bias", True)
    n_in = shape[-1]
    kernel = ExpectedWeight("kernel", (n_in, units))
    macs = math.prod(shape[:-1]) * n_in * units
    return ((*shape[:-1], units),), (kernel, *_bias(use_bias, units)), macs


def _epsilon(c: _Cfg) -> None:
    c.get_float("epsilon", 0.0, 1.0, 1e-3, lo_open=True)


def _batch_norm(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    ax = c.get_axis("axis", len(shape), -1)
    _epsilon(c)
    c.get_float("momentum", 0.0, 1.0, 0.99)
    center = c.get_bool("center", True)
    scale = c.get_bool("scale", True)
    ch = (shape[ax],)
    weights = [ExpectedWeight("gamma", ch)] if scale else []
    weights += [ExpectedWeight("beta", ch)] if center else []
    weights += [ExpectedWeight("moving_mean", ch), ExpectedWeight("moving_variance", ch)]
    return (shape,), tuple(weights), math.prod(shape)


def _layer_norm(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    axes = c.get_axes("axis", len(shape), allow_none=False)
    given = axes[0] if axes else ()
    _epsilon(c)
    center = c.get_bool("center", True)
    scale = c.get_bool("scale", True)
    # Keras shapes gamma/beta from the axes in the order given.
    param = tuple(shape[a] for a in given)
    weights = [ExpectedWeight("gamma", param)] if scale else []
    weights += [ExpectedWeight("beta", param)] if center else []
    return (shape,), tuple(weights), math.prod(shape)


def _normalization(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    axes = c.get_axes("axis", len(shape), allow_none=True)
    c.get_bool("invert", False)
    # Keras sorts the kept axes (Normalization._keep_axis); axis=None keeps none.
    param = tuple(shape[a] for a in axes[1]) if axes else ()
    weights = (
        ExpectedWeight("mean", param),
        ExpectedWeight("variance", param),
        ExpectedWeight("count", (), "int64"),
    )
    return (shape,), weights, math.prod(shape)


def _relu(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    bound = c.lim.max_abs_scalar
    mv = c.get("max_value")
    x = _number(mv)
    if mv is not None and (x is None or not 0.0 <= x <= bound):
        c.fail("max_value", f"null or a finite number in [0, {bound:g}]", mv)
    c.kwargs["max_value"] = x
    c.get_float("negative_slope", 0.0, bound, 0.0)
    c.get_float("threshold", -bound, bound, 0.0)
    return _elementwise(ins)


def _activation(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    c.get("activation", required=True)
    c.get_activation()
    return _elementwise(ins)


def _softmax(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    c.get_axis("axis", len(ins[0]), -1)
    return _elementwise(ins)


def _leaky_relu(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    c.get_float("negative_slope", 0.0, c.lim.max_abs_scalar, 0.3)
    return _elementwise(ins)


def _elu(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    c.get_float("alpha", -c.lim.max_abs_scalar, c.lim.max_abs_scalar, 1.0)
    return _elementwise(ins)


def _no_config(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    return _free(ins[0])


def _free(shape: Shape) -> _Result:
    """Layers that only move or pass data (Identity, Dropout, Reshape, Flatten)."""
    return (shape,), (), 0


def _dropout(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    c.get_rate("rate")  # inference ignores it; noise_shape/seed are training-only
    return _free(ins[0])


def _merge(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    """Elementwise merge with broadcasting over equal-rank inputs (dims equal or 1)."""
    rank = len(ins[0])
    if any(len(s) != rank for s in ins):
        c.fail_shape(f"expected inputs of equal rank, got shapes {[list(s) for s in ins]}")
    out = []
    for dims in zip(*ins, strict=True):
        if len(set(dims) - {1}) > 1:
            c.fail_shape(f"cannot broadcast shapes {[list(s) for s in ins]}")
        out.append(max(dims))
    return _elementwise((tuple(out),))


def _concatenate(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    rank = len(ins[0])
    ax = c.get_axis("axis", rank, -1)
    for s in ins:
        if len(s) != rank or any(s[i] != ins[0][i] for i in range(rank) if i != ax):
            c.fail_shape(f"shapes {[list(x) for x in ins]} differ outside axis {ax + 1}")
    shape = tuple(sum(s[ax] for s in ins) if i == ax else ins[0][i] for i in range(rank))
    return _elementwise((shape,))


def _pooling(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    _need_rank(c, shape, 3)
    default = (2, 2) if c.cls == "MaxPooling2D" else None
    p = c.get_pair("pool_size", 1, c.lim.max_pool, default)
    if c.get("strides") is None:  # Keras: strides default to the pool size
        s = p
        c.kwargs["strides"] = p
    else:
        s = c.get_pair("strides", 1, c.lim.max_stride, None)
    pad = c.get_choice("padding", _PADDINGS, "valid")
    c.data_format()
    oh, ow = _spatial(c, shape, (p, s, (1, 1), pad))
    out = (oh, ow, shape[2])
    return (out,), (), math.prod(out) * p[0] * p[1]


def _global_pooling(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    _need_rank(c, shape, 3)
    keep = c.get_bool("keepdims", False)
    c.data_format()
    h, w, ch = shape
    return (((1, 1, ch) if keep else (ch,)),), (), ch * h * w


def _zero_padding(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    _need_rank(c, shape, 3)
    t, b, left, right = c.get_pad_pairs("padding", ((1, 1), (1, 1)))
    c.data_format()
    return _elementwise(((shape[0] + t + b, shape[1] + left + right, shape[2]),))


def _cropping(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    _need_rank(c, shape, 3)
    t, b, left, right = c.get_pad_pairs("cropping", ((0, 0), (0, 0)))
    c.data_format()
    out = (shape[0] - t - b, shape[1] - left - right, shape[2])
    if min(out[:2]) < 1:
        c.fail_shape(f"cropping {[[t, b], [left, right]]} empties input {list(shape)}")
    return _elementwise((out,))


def _reshape(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    target = c.get_int_list("target_shape", -1, c.lim.max_dim, c.lim.max_dims)
    total = math.prod(shape)
    if 0 in target or target.count(-1) > 1:
        c.fail("target_shape", "positive sizes and at most one -1", list(target))
    known = math.prod(t for t in target if t != -1)
    if (-1 in target and total % known) or (-1 not in target and known != total):
        c.fail("target_shape", f"a shape with {total} elements", list(target))
    return _free(tuple(total // known if t == -1 else t for t in target))


def _flatten(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    c.data_format()
    return _free((math.prod(ins[0]),))


def _rescaling(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    for key, default in (("scale", None), ("offset", 0.0)):
        n = c.get_scalar_or_list(key, default)
        if n not in (0, 1, shape[-1]):
            c.fail(key, f"a scalar or {shape[-1]} values (one per channel)", f"{n} values")
    return _elementwise(ins)


def _permute(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    rank = len(shape)
    dims = c.get_int_list("dims", 1, rank, rank)
    if sorted(dims) != list(range(1, rank + 1)):
        c.fail("dims", f"a permutation of 1..{rank}", list(dims))
    return _elementwise((tuple(shape[d - 1] for d in dims),))


def _upsampling(c: _Cfg, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    _need_rank(c, shape, 3)
    sh, sw = c.get_pair("size", 1, c.lim.max_upsample, (2, 2))
    c.get_choice("interpolation", ("nearest", "bilinear"), "nearest")
    c.data_format()
    return _elementwise(((shape[0] * sh, shape[1] * sw, shape[2]),))


@dataclass(frozen=True, slots=True)
class ClassSchema:
    """How to check one allowlisted class: inference function and input arity."""

    infer: _Infer
    min_inputs: int = 1
    max_inputs: int = 1


_MANY = 1 << 30  # any number of inputs up to SpecLimits.max_inbound

#: The allowlist: class name -> schema. Nothing outside this table is ever built.
SCHEMAS: Mapping[str, ClassSchema] = {
    "InputLayer": ClassSchema(_input_layer, 0, 0),
    LOCAL_ONLY: ClassSchema(_local_only, 1, _MANY),
    "Conv2D": ClassSchema(_conv2d),
    "Conv2DTranspose": ClassSchema(_conv2d_transpose),
    "DepthwiseConv2D": ClassSchema(_depthwise),
    "SeparableConv2D": ClassSchema(_separable),
    "Dense": ClassSchema(_dense),
    "BatchNormalization": ClassSchema(_batch_norm),
    "LayerNormalization": ClassSchema(_layer_norm),
    "Normalization": ClassSchema(_normalization),
    "ReLU": ClassSchema(_relu),
    "Activation": ClassSchema(_activation),
    "Softmax": ClassSchema(_softmax),
    "LeakyReLU": ClassSchema(_leaky_relu),
    "ELU": ClassSchema(_elu),
    "Add": ClassSchema(_merge, 2, _MANY),
    "Subtract": ClassSchema(_merge, 2, 2),
    "Multiply": ClassSchema(_merge, 2, _MANY),
    "Average": ClassSchema(_merge, 2, _MANY),
    "Maximum": ClassSchema(_merge, 2, _MANY),
    "Minimum": ClassSchema(_merge, 2, _MANY),
    "Concatenate": ClassSchema(_concatenate, 2, _MANY),
    "MaxPooling2D": ClassSchema(_pooling),
    "AveragePooling2D": ClassSchema(_pooling),
    "GlobalAveragePooling2D": ClassSchema(_global_pooling),
    "GlobalMaxPooling2D": ClassSchema(_global_pooling),
    "ZeroPadding2D": ClassSchema(_zero_padding),
    "Cropping2D": ClassSchema(_cropping),
    "Reshape": ClassSchema(_reshape),
    "Flatten": ClassSchema(_flatten),
    "Dropout": ClassSchema(_dropout),
    "Rescaling": ClassSchema(_rescaling),
    "Permute": ClassSchema(_permute),
    "Identity": ClassSchema(_no_config),
    "UpSampling2D": ClassSchema(_upsampling),
}

#: Classes a server may turn into Keras objects (everything but ``LocalOnly``).
BUILDABLE_CLASSES = frozenset(SCHEMAS) - {LOCAL_ONLY}


def infer_layer(
    name: str,
    cls: str,
    config: Mapping[str, object],
    input_shapes: Sequence[Shape],
    limits: SpecLimits,
) -> LayerInfo:
    """Check ``config`` against the schema of ``cls`` and compute the layer's outputs,
    expected weights and MACs from ``input_shapes``; enforce the per-layer caps.

    Raises :class:`UnsupportedLayerError` for a class outside the allowlist and
    :class:`SpecError` naming the layer, key, expectation and value otherwise.
    """
    schema = SCHEMAS.get(cls) if isinstance(cls, str) else None
    if schema is None:
        raise UnsupportedLayerError(
            f"layer {name!r}: class {_show(cls)} is not in the allowlist "
            f"(expected one of {sorted(SCHEMAS)})"
        )
    n_in = len(input_shapes)
    hi = min(schema.max_inputs, limits.max_inbound)
    if not schema.min_inputs <= n_in <= hi:
        raise SpecError(
            f"layer {name!r} ({cls}): expected {schema.min_inputs}..{hi} inputs, got {n_in}"
        )
    if len(config) > limits.max_config_keys:
        raise SpecError(
            f"layer {name!r} ({cls}): expected at most {limits.max_config_keys} config keys, "
            f"got {len(config)}"
        )
    c = _Cfg(name, cls, config, limits)
    outputs, weights, macs = schema.infer(c, tuple(input_shapes))
    c.done()
    out_dtype = str(c.kwargs.pop("output_dtype", _F32)) if cls == LOCAL_ONLY else _F32
    info = LayerInfo(
        cls=cls, output_shapes=outputs, output_dtype=out_dtype, weights=weights, macs=macs,
        kwargs=dict(c.kwargs),
    )  # fmt: skip
    _check_caps(name, cls, info, limits)
    return info


def _check_caps(name: str, cls: str, info: LayerInfo, lim: SpecLimits) -> None:
    def refuse(what: str, cap: int, got: int) -> NoReturn:
        raise SpecError(f"layer {name!r} ({cls}): {what}: expected at most {cap}, got {got}")

    for shape in info.output_shapes:
        if not 1 <= len(shape) <= lim.max_dims:
            refuse("output rank", lim.max_dims, len(shape))
        for d in shape:
            if d < 1:
                raise SpecError(f"layer {name!r} ({cls}): output shape {list(shape)} is empty")
            if d > lim.max_dim:
                refuse(f"output dimension in {list(shape)}", lim.max_dim, d)
    if info.activation_bytes > lim.max_layer_activation_bytes:
        refuse("activation bytes at batch 1", lim.max_layer_activation_bytes, info.activation_bytes)
    if len(info.weights) > lim.max_weights_per_layer:
        refuse("weight tensors", lim.max_weights_per_layer, len(info.weights))
    for w in info.weights:
        if w.elements > lim.max_tensor_elements:
            refuse(
                f"elements of weight {w.role!r} {list(w.shape)}",
                lim.max_tensor_elements,
                w.elements,
            )
    if info.params > lim.max_layer_params:
        refuse("parameters", lim.max_layer_params, info.params)
    if info.macs > lim.max_layer_macs:
        refuse("multiply-accumulates at batch 1", lim.max_layer_macs, info.macs)
