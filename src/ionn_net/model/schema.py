"""The layer allowlist: per-class config keys, weights and pure shape inference.

This module owns the meaning of one layer spec (protocol.md §10.3, Appendix B): which
classes exist (:data:`SCHEMAS`), which config keys each accepts (its :class:`Key` table:
kinds, bounds and defaults, read through :class:`ConfigReader`), which weights it carries in
which order, and, from the input shapes alone, the output shapes, the exact weight tensors
and the multiply-accumulate count. Everything is Python ints; nothing is allocated and keras
is never imported, so a hostile spec is refused before any object exists. The tables here are
also the source of protocol.md's generated Appendix B (:mod:`ionn_net.model.appendix`).

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
from ionn_net.model.configkeys import ACTIVATIONS, REQUIRED, ConfigReader, Key, Kind, show_value
from ionn_net.model.graph import DTYPE_SIZES
from ionn_net.model.limits import SpecLimits

__all__ = [
    "ACTIVATIONS",
    "BUILDABLE_CLASSES",
    "LOCAL_ONLY",
    "SCHEMAS",
    "WEIGHT_DTYPES",
    "ClassSchema",
    "ExpectedWeight",
    "LayerInfo",
    "WeightDoc",
    "infer_layer",
]

Shape = tuple[int, ...]

#: Pseudo-class of a node the client keeps local (never built by a server).
LOCAL_ONLY = "LocalOnly"

#: Weight dtypes a layer may declare (Normalization's ``count`` is int64), with their sizes.
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


# -- config keys (Appendix B) ----------------------------------------------------------------
# Bounds name SpecLimits fields where a cap applies; "-field" is its negation.

_INT, _FLOAT, _BOOL, _CHOICE, _PAIR = Kind.INT, Kind.FLOAT, Kind.BOOL, Kind.CHOICE, Kind.PAIR
_SCALAR = "max_abs_scalar"

FILTERS = Key("filters", _INT, 1, "max_units")
UNITS = Key("units", _INT, 1, "max_units")
KERNEL = Key("kernel_size", _PAIR, 1, "max_kernel")
STRIDES = Key("strides", _PAIR, 1, "max_stride", default=(1, 1))
DILATION = Key(
    "dilation_rate", _PAIR, 1, "max_dilation", default=(1, 1), note="[1, 1] if a stride is > 1"
)
PADDING = Key("padding", _CHOICE, default="valid", choices=_PADDINGS)
DATA_FORMAT = Key("data_format", _CHOICE, default="channels_last", choices=("channels_last",))
GROUPS = Key("groups", _INT, 1, "max_units", default=1, note="divides input channels and filters")
DEPTH_MULTIPLIER = Key("depth_multiplier", _INT, 1, "max_depth_multiplier", default=1)
ACTIVATION = Key("activation", Kind.ACTIVATION, default="linear")
USE_BIAS = Key("use_bias", _BOOL, default=True)
AXIS = Key("axis", Kind.AXIS, default=-1)
EPSILON = Key("epsilon", _FLOAT, 0.0, 1.0, default=1e-3, lo_open=True)
CENTER = Key("center", _BOOL, default=True)
SCALE = Key("scale", _BOOL, default=True)
_WINDOW = (KERNEL, STRIDES, DILATION, PADDING, DATA_FORMAT)
_CONV_TAIL = (ACTIVATION, USE_BIAS)


def _pool_keys(pool_default: object) -> tuple[Key, ...]:
    return (
        Key("pool_size", _PAIR, 1, "max_pool", default=pool_default),
        Key(
            "strides",
            _PAIR,
            1,
            "max_stride",
            default=None,
            nullable=True,
            note="null: the pool size",
        ),
        PADDING,
        DATA_FORMAT,
    )


@dataclass(frozen=True, slots=True)
class WeightDoc:
    """One weight of a class, in blob order: its role, its shape in terms of the input
    (c: input channels, kh/kw: kernel size, ...) and the bool key that must be true for
    it to exist (empty: always present)."""

    role: str
    shape: str
    present_if: str = ""
    dtype: str = _F32


def _bias_doc(n: str) -> WeightDoc:
    return WeightDoc("bias", f"[{n}]", "use_bias")


# -- shape helpers --------------------------------------------------------------------


def _need_rank(c: ConfigReader, shape: Shape, rank: int) -> None:
    if len(shape) != rank:
        c.fail_shape(f"expected an input of rank {rank} (H, W, C), got shape {list(shape)}")


_Pair = tuple[int, int]
_Window = tuple[_Pair, _Pair, _Pair, str]  # kernel, strides, dilation, padding


def _spatial(c: ConfigReader, shape: Shape, win: _Window) -> _Pair:
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


def _window(c: ConfigReader) -> _Window:
    """kernel_size, strides, dilation_rate and padding of a convolution."""
    k = c.pair("kernel_size")
    s = c.pair("strides")
    d = c.pair("dilation_rate")
    pad = c.choice("padding")
    if max(s) > 1 and max(d) > 1:
        c.fail("dilation_rate", "[1, 1] when a stride is > 1 (Keras refuses both)", list(d))
    c.choice("data_format")
    return k, s, d, pad


def _bias(use_bias: bool, n: int) -> tuple[ExpectedWeight, ...]:
    return (ExpectedWeight("bias", (n,)),) if use_bias else ()


def _elementwise(ins: tuple[Shape, ...]) -> _Result:
    return (ins[0],), (), math.prod(ins[0])


_Result = tuple[tuple[Shape, ...], tuple[ExpectedWeight, ...], int]
_Infer = Callable[[ConfigReader, tuple[Shape, ...]], _Result]


# -- per-class inference: (config, input shapes) -> (outputs, weights, macs) --------------
# MACs follow the project-wide formulas (also used by keras_graph): convolutions count
# multiply-accumulates, Dense in*units, pooling output elements * window area, layers
# that only move data (Reshape, Flatten, Dropout, Identity, InputLayer) zero, and
# every other layer one per output element.


def _input_layer(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    shape = c.int_list("shape")
    return (shape,), (), 0


def _local_only(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    shapes = c.shapes("output_shapes")
    c.choice("output_dtype")
    return shapes, (), 0


def _conv2d(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    _need_rank(c, shape, 3)
    filters = c.integer("filters")
    win = _window(c)
    k = win[0]
    groups = c.integer("groups")
    c.activation()
    use_bias = c.flag("use_bias")
    in_c = shape[2]
    if in_c % groups or filters % groups:
        c.fail("groups", f"a divisor of input channels {in_c} and filters {filters}", groups)
    oh, ow = _spatial(c, shape, win)
    kernel = ExpectedWeight("kernel", (k[0], k[1], in_c // groups, filters))
    macs = oh * ow * filters * k[0] * k[1] * (in_c // groups)
    return ((oh, ow, filters),), (kernel, *_bias(use_bias, filters)), macs


def _conv2d_transpose(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    _need_rank(c, shape, 3)
    filters = c.integer("filters")
    k = c.pair("kernel_size")
    s = c.pair("strides")
    pad = c.choice("padding")
    c.pair("dilation_rate")  # only undilated transposed convolutions
    c.null("output_padding")
    c.choice("data_format")
    c.activation()
    use_bias = c.flag("use_bias")
    h, w, in_c = shape
    # Keras deconv_output_length without output_padding.
    grow = (0, 0) if pad == "same" else (max(k[0] - s[0], 0), max(k[1] - s[1], 0))
    oh, ow = h * s[0] + grow[0], w * s[1] + grow[1]
    kernel = ExpectedWeight("kernel", (k[0], k[1], filters, in_c))
    macs = h * w * in_c * k[0] * k[1] * filters
    return ((oh, ow, filters),), (kernel, *_bias(use_bias, filters)), macs


def _depthwise(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    _need_rank(c, shape, 3)
    win = _window(c)
    k = win[0]
    mult = c.integer("depth_multiplier")
    c.activation()
    use_bias = c.flag("use_bias")
    in_c = shape[2]
    oh, ow = _spatial(c, shape, win)
    kernel = ExpectedWeight("kernel", (k[0], k[1], in_c, mult))
    macs = oh * ow * in_c * mult * k[0] * k[1]
    return ((oh, ow, in_c * mult),), (kernel, *_bias(use_bias, in_c * mult)), macs


def _separable(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    _need_rank(c, shape, 3)
    filters = c.integer("filters")
    win = _window(c)
    k = win[0]
    mult = c.integer("depth_multiplier")
    c.activation()
    use_bias = c.flag("use_bias")
    in_c = shape[2]
    oh, ow = _spatial(c, shape, win)
    dw = ExpectedWeight("depthwise_kernel", (k[0], k[1], in_c, mult))
    pw = ExpectedWeight("pointwise_kernel", (1, 1, in_c * mult, filters))
    macs = oh * ow * in_c * mult * k[0] * k[1] + oh * ow * in_c * mult * filters
    return ((oh, ow, filters),), (dw, pw, *_bias(use_bias, filters)), macs


def _dense(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    units = c.integer("units")
    c.activation()
    use_bias = c.flag("use_bias")
    n_in = shape[-1]
    kernel = ExpectedWeight("kernel", (n_in, units))
    macs = math.prod(shape[:-1]) * n_in * units
    return ((*shape[:-1], units),), (kernel, *_bias(use_bias, units)), macs


def _batch_norm(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    ax = c.axis("axis", len(shape))
    c.real("epsilon")
    c.real("momentum")
    center = c.flag("center")
    scale = c.flag("scale")
    ch = (shape[ax],)
    weights = [ExpectedWeight("gamma", ch)] if scale else []
    weights += [ExpectedWeight("beta", ch)] if center else []
    weights += [ExpectedWeight("moving_mean", ch), ExpectedWeight("moving_variance", ch)]
    return (shape,), tuple(weights), math.prod(shape)


def _layer_norm(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    axes = c.axes("axis", len(shape))
    given = axes[0] if axes else ()
    c.real("epsilon")
    center = c.flag("center")
    scale = c.flag("scale")
    # Keras shapes gamma/beta from the axes in the order given.
    param = tuple(shape[a] for a in given)
    weights = [ExpectedWeight("gamma", param)] if scale else []
    weights += [ExpectedWeight("beta", param)] if center else []
    return (shape,), tuple(weights), math.prod(shape)


def _normalization(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    axes = c.axes("axis", len(shape))
    c.flag("invert")
    # Keras sorts the kept axes (Normalization._keep_axis); axis=None keeps none.
    param = tuple(shape[a] for a in axes[1]) if axes else ()
    weights = (
        ExpectedWeight("mean", param),
        ExpectedWeight("variance", param),
        ExpectedWeight("count", (), "int64"),
    )
    return (shape,), weights, math.prod(shape)


def _relu(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    c.real("max_value")
    c.real("negative_slope")
    c.real("threshold")
    return _elementwise(ins)


def _activation(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    c.activation()
    return _elementwise(ins)


def _softmax(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    c.axis("axis", len(ins[0]))
    return _elementwise(ins)


def _leaky_relu(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    c.real("negative_slope")
    return _elementwise(ins)


def _elu(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    c.real("alpha")
    return _elementwise(ins)


def _no_config(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    return _free(ins[0])


def _free(shape: Shape) -> _Result:
    """Layers that only move or pass data (Identity, Dropout, Reshape, Flatten)."""
    return (shape,), (), 0


def _dropout(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    c.rate("rate")  # inference ignores it; noise_shape/seed are training-only
    return _free(ins[0])


def _merge(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
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


def _concatenate(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    rank = len(ins[0])
    ax = c.axis("axis", rank)
    for s in ins:
        if len(s) != rank or any(s[i] != ins[0][i] for i in range(rank) if i != ax):
            c.fail_shape(f"shapes {[list(x) for x in ins]} differ outside axis {ax + 1}")
    shape = tuple(sum(s[ax] for s in ins) if i == ax else ins[0][i] for i in range(rank))
    return _elementwise((shape,))


def _pooling(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    _need_rank(c, shape, 3)
    p = c.pair("pool_size")
    s = c.optional_pair("strides")
    if s is None:  # Keras: strides default to the pool size
        s = p
        c.kwargs["strides"] = p
    pad = c.choice("padding")
    c.choice("data_format")
    oh, ow = _spatial(c, shape, (p, s, (1, 1), pad))
    out = (oh, ow, shape[2])
    return (out,), (), math.prod(out) * p[0] * p[1]


def _global_pooling(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    _need_rank(c, shape, 3)
    keep = c.flag("keepdims")
    c.choice("data_format")
    h, w, ch = shape
    return (((1, 1, ch) if keep else (ch,)),), (), ch * h * w


def _zero_padding(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    _need_rank(c, shape, 3)
    t, b, left, right = c.pad_pairs("padding")
    c.choice("data_format")
    return _elementwise(((shape[0] + t + b, shape[1] + left + right, shape[2]),))


def _cropping(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    _need_rank(c, shape, 3)
    t, b, left, right = c.pad_pairs("cropping")
    c.choice("data_format")
    out = (shape[0] - t - b, shape[1] - left - right, shape[2])
    if min(out[:2]) < 1:
        c.fail_shape(f"cropping {[[t, b], [left, right]]} empties input {list(shape)}")
    return _elementwise((out,))


def _reshape(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    target = c.int_list("target_shape")
    total = math.prod(shape)
    if 0 in target or target.count(-1) > 1:
        c.fail("target_shape", "positive sizes and at most one -1", list(target))
    known = math.prod(t for t in target if t != -1)
    if (-1 in target and total % known) or (-1 not in target and known != total):
        c.fail("target_shape", f"a shape with {total} elements", list(target))
    return _free(tuple(total // known if t == -1 else t for t in target))


def _flatten(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    c.choice("data_format")
    return _free((math.prod(ins[0]),))


def _rescaling(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    for key in ("scale", "offset"):
        n = c.scalar_or_list(key)
        if n not in (0, 1, shape[-1]):
            c.fail(key, f"a scalar or {shape[-1]} values (one per channel)", f"{n} values")
    return _elementwise(ins)


def _permute(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    dims = c.permutation("dims", len(shape))
    return _elementwise((tuple(shape[d - 1] for d in dims),))


def _upsampling(c: ConfigReader, ins: tuple[Shape, ...]) -> _Result:
    (shape,) = ins
    _need_rank(c, shape, 3)
    sh, sw = c.pair("size")
    c.choice("interpolation")
    c.choice("data_format")
    return _elementwise(((shape[0] * sh, shape[1] * sw, shape[2]),))


@dataclass(frozen=True, slots=True, kw_only=True)
class ClassSchema:
    """One allowlisted class: its inference function, its input count, its config keys,
    its weights in blob order and how its MACs are counted (``macs``: "out" for one per
    output element, "0" for layers that only move data, else a formula)."""

    infer: _Infer
    keys: tuple[Key, ...] = ()
    min_inputs: int = 1
    max_inputs: int = 1
    weights: tuple[WeightDoc, ...] = ()
    macs: str = "out"


_MANY = 1 << 30  # any number of inputs up to SpecLimits.max_inbound


def _merge_schema(min_inputs: int = 2, max_inputs: int = _MANY) -> ClassSchema:
    return ClassSchema(infer=_merge, min_inputs=min_inputs, max_inputs=max_inputs)


_CONV2D = ClassSchema(
    infer=_conv2d,
    keys=(FILTERS, *_WINDOW, GROUPS, *_CONV_TAIL),
    weights=(WeightDoc("kernel", "[kh, kw, c / groups, filters]"), _bias_doc("filters")),
    macs="oh * ow * filters * kh * kw * c / groups",
)
_CONV2D_TRANSPOSE = ClassSchema(
    infer=_conv2d_transpose,
    keys=(
        FILTERS,
        KERNEL,
        STRIDES,
        PADDING,
        Key("dilation_rate", _PAIR, 1, 1, default=(1, 1)),
        Key(
            "output_padding",
            Kind.NULL,
            default=None,
            note="explicit output padding is not supported",
        ),
        DATA_FORMAT,
        *_CONV_TAIL,
    ),
    weights=(WeightDoc("kernel", "[kh, kw, filters, c]"), _bias_doc("filters")),
    macs="h * w * c * kh * kw * filters",
)
_DEPTHWISE = ClassSchema(
    infer=_depthwise,
    keys=(*_WINDOW, DEPTH_MULTIPLIER, *_CONV_TAIL),
    weights=(
        WeightDoc("kernel", "[kh, kw, c, depth_multiplier]"),
        _bias_doc("c * depth_multiplier"),
    ),
    macs="oh * ow * c * depth_multiplier * kh * kw",
)
_SEPARABLE = ClassSchema(
    infer=_separable,
    keys=(FILTERS, *_WINDOW, DEPTH_MULTIPLIER, *_CONV_TAIL),
    weights=(
        WeightDoc("depthwise_kernel", "[kh, kw, c, depth_multiplier]"),
        WeightDoc("pointwise_kernel", "[1, 1, c * depth_multiplier, filters]"),
        _bias_doc("filters"),
    ),
    macs="oh * ow * c * depth_multiplier * (kh * kw + filters)",
)
_DENSE = ClassSchema(
    infer=_dense,
    keys=(UNITS, *_CONV_TAIL),
    weights=(WeightDoc("kernel", "[n, units]"), _bias_doc("units")),
    macs="(input elements / n) * n * units, n = the input's last dimension",
)
_BATCH_NORM = ClassSchema(
    infer=_batch_norm,
    keys=(AXIS, EPSILON, Key("momentum", _FLOAT, 0.0, 1.0, default=0.99), CENTER, SCALE),
    weights=(
        WeightDoc("gamma", "[n]", "scale"),
        WeightDoc("beta", "[n]", "center"),
        WeightDoc("moving_mean", "[n]"),
        WeightDoc("moving_variance", "[n]"),
    ),
)
_LAYER_NORM = ClassSchema(
    infer=_layer_norm,
    keys=(Key("axis", Kind.AXES, default=-1), EPSILON, CENTER, SCALE),
    weights=(WeightDoc("gamma", "[d...]", "scale"), WeightDoc("beta", "[d...]", "center")),
)
_NORMALIZATION = ClassSchema(
    infer=_normalization,
    keys=(
        Key("axis", Kind.AXES, default=-1, nullable=True, note="null: no axis kept"),
        Key("invert", _BOOL, default=False),
    ),
    weights=(
        WeightDoc("mean", "[k...]"),
        WeightDoc("variance", "[k...]"),
        WeightDoc("count", "[]", dtype="int64"),
    ),
)
_MAX_POOL = ClassSchema(infer=_pooling, keys=_pool_keys((2, 2)), macs="output elements * ph * pw")
_AVG_POOL = ClassSchema(infer=_pooling, keys=_pool_keys(REQUIRED), macs="output elements * ph * pw")
_GLOBAL_POOL = ClassSchema(
    infer=_global_pooling,
    keys=(Key("keepdims", _BOOL, default=False), DATA_FORMAT),
    macs="h * w * c",
)

#: The allowlist: class name -> schema. Nothing outside this table is ever built.
SCHEMAS: Mapping[str, ClassSchema] = {
    "InputLayer": ClassSchema(
        infer=_input_layer,
        keys=(Key("shape", Kind.INT_LIST, 1, "max_dim", max_len="max_dims"),),
        min_inputs=0,
        max_inputs=0,
        macs="0",
    ),
    LOCAL_ONLY: ClassSchema(
        infer=_local_only,
        keys=(
            Key("output_shapes", Kind.SHAPES),
            Key("output_dtype", _CHOICE, default=_F32, choices=tuple(sorted(_TENSOR_DTYPES))),
        ),
        max_inputs=_MANY,
        macs="0",
    ),
    "Conv2D": _CONV2D,
    "Conv2DTranspose": _CONV2D_TRANSPOSE,
    "DepthwiseConv2D": _DEPTHWISE,
    "SeparableConv2D": _SEPARABLE,
    "Dense": _DENSE,
    "BatchNormalization": _BATCH_NORM,
    "LayerNormalization": _LAYER_NORM,
    "Normalization": _NORMALIZATION,
    "ReLU": ClassSchema(
        infer=_relu,
        keys=(
            Key(
                "max_value",
                _FLOAT,
                0.0,
                _SCALAR,
                default=None,
                nullable=True,
                note="null: no upper bound",
            ),
            Key("negative_slope", _FLOAT, 0.0, _SCALAR, default=0.0),
            Key("threshold", _FLOAT, "-" + _SCALAR, _SCALAR, default=0.0),
        ),
    ),
    "Activation": ClassSchema(infer=_activation, keys=(Key("activation", Kind.ACTIVATION),)),
    "Softmax": ClassSchema(infer=_softmax, keys=(AXIS,)),
    "LeakyReLU": ClassSchema(
        infer=_leaky_relu, keys=(Key("negative_slope", _FLOAT, 0.0, _SCALAR, default=0.3),)
    ),
    "ELU": ClassSchema(
        infer=_elu, keys=(Key("alpha", _FLOAT, "-" + _SCALAR, _SCALAR, default=1.0),)
    ),
    "Add": _merge_schema(),
    "Subtract": _merge_schema(2, 2),
    "Multiply": _merge_schema(),
    "Average": _merge_schema(),
    "Maximum": _merge_schema(),
    "Minimum": _merge_schema(),
    "Concatenate": ClassSchema(infer=_concatenate, keys=(AXIS,), min_inputs=2, max_inputs=_MANY),
    "MaxPooling2D": _MAX_POOL,
    "AveragePooling2D": _AVG_POOL,
    "GlobalAveragePooling2D": _GLOBAL_POOL,
    "GlobalMaxPooling2D": _GLOBAL_POOL,
    "ZeroPadding2D": ClassSchema(
        infer=_zero_padding,
        keys=(
            Key("padding", Kind.PAD_PAIRS, 0, "max_padding", default=((1, 1), (1, 1))),
            DATA_FORMAT,
        ),
    ),
    "Cropping2D": ClassSchema(
        infer=_cropping,
        keys=(
            Key("cropping", Kind.PAD_PAIRS, 0, "max_padding", default=((0, 0), (0, 0))),
            DATA_FORMAT,
        ),
    ),
    "Reshape": ClassSchema(
        infer=_reshape,
        keys=(
            Key(
                "target_shape",
                Kind.INT_LIST,
                -1,
                "max_dim",
                max_len="max_dims",
                note="no 0, at most one -1; the same element count as the input",
            ),
        ),
        macs="0",
    ),
    "Flatten": ClassSchema(infer=_flatten, keys=(DATA_FORMAT,), macs="0"),
    "Dropout": ClassSchema(infer=_dropout, keys=(Key("rate", Kind.RATE),), macs="0"),
    "Rescaling": ClassSchema(
        infer=_rescaling,
        keys=(
            Key("scale", Kind.SCALAR_OR_LIST, note="a list has 1 or c values"),
            Key("offset", Kind.SCALAR_OR_LIST, default=0.0, note="a list has 1 or c values"),
        ),
    ),
    "Permute": ClassSchema(infer=_permute, keys=(Key("dims", Kind.PERMUTATION),)),
    "Identity": ClassSchema(infer=_no_config, macs="0"),
    "UpSampling2D": ClassSchema(
        infer=_upsampling,
        keys=(
            Key("size", _PAIR, 1, "max_upsample", default=(2, 2)),
            Key("interpolation", _CHOICE, default="nearest", choices=("nearest", "bilinear")),
            DATA_FORMAT,
        ),
    ),
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
            f"layer {name!r}: class {show_value(cls)} is not in the allowlist "
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
    c = ConfigReader(name, cls, config, schema.keys, limits)
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
