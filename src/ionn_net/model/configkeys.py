"""Config keys of allowlisted layer classes: their declarations and the checked reader.

This module owns *what a config key accepts*: :class:`Key` declares one key of one class
(kind, bounds, default), with bounds either literal or named after a :class:`SpecLimits`
field; :meth:`Key.expectation` renders what it accepts, and that one text is used both in
the error a server answers and in protocol.md's generated appendix (Appendix B), so the two
cannot say different things. :class:`ConfigReader` reads one layer's untrusted config through
the keys of its class: every value is checked against its key (a key the class does not
declare is a programming error), and :meth:`ConfigReader.done` refuses keys nobody read.

The per-class tables and shape inference are in :mod:`ionn_net.model.schema`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

from ionn_net.errors import SpecError
from ionn_net.model.limits import SpecLimits

__all__ = ["REQUIRED", "ConfigReader", "Key", "Kind", "show_value"]

F32 = "float32"

#: Activation names accepted as strings (each one resolves to a built-in Keras 3
#: activation; ``swish``/``hard_swish`` are Keras aliases of ``silu``/``hard_silu``).
ACTIVATIONS = frozenset(
    {
        "linear", "relu", "relu6", "sigmoid", "tanh", "softmax", "swish", "silu",
        "gelu", "hard_sigmoid", "hard_swish", "hard_silu", "elu", "selu", "softplus",
        "softsign", "leaky_relu", "exponential", "mish",
    }
)  # fmt: skip


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: Default of a key that must be present.
REQUIRED: object = _Required()

#: A bound: a number, or the name of a SpecLimits field (resolved against the limits in
#: force), or "rank" (the input's rank).
Bound = int | float | str


class Kind(enum.Enum):
    """What a key holds (each kind has one reader method and one expectation text)."""

    INT = "int"
    FLOAT = "float"  # a finite number; with ``nullable`` also null
    RATE = "rate"  # a number in [0, 1)
    BOOL = "bool"
    CHOICE = "choice"
    PAIR = "pair"  # a list of 2 integers; with ``nullable`` also null
    PAD_PAIRS = "pad_pairs"  # [[top, bottom], [left, right]]
    ACTIVATION = "activation"
    AXIS = "axis"
    AXES = "axes"  # an axis or a list of distinct axes; with ``nullable`` also null
    SCALAR_OR_LIST = "scalar_or_list"
    INT_LIST = "int_list"
    PERMUTATION = "permutation"
    SHAPES = "shapes"  # a list of shapes (LocalOnly's outputs)
    NULL = "null"  # only null is accepted


@dataclass(frozen=True, slots=True)
class Key:
    """One config key of one class. Bounds are literal or a :class:`SpecLimits` field name.

    ``note`` says what a default or null means where that is not obvious (Appendix B).
    """

    name: str
    kind: Kind
    lo: Bound | None = None
    hi: Bound | None = None
    default: object = REQUIRED
    choices: tuple[str, ...] = ()
    lo_open: bool = False
    max_len: Bound | None = None
    nullable: bool = False
    note: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def bound(self, which: Bound | None, lim: SpecLimits, rank: int | None = None) -> Bound:
        """``which`` resolved: a number, a SpecLimits field's value (``"-field"``: negated),
        or the input rank (``"rank"``; ``"r"`` when unknown)."""
        if which is None:
            raise SpecError(f"config key {self.name!r}: no such bound")
        if which == "rank":
            return "r" if rank is None else rank
        if isinstance(which, str):
            value: int | float = getattr(lim, which.lstrip("-"))
            return -value if which.startswith("-") else value
        return which

    def expectation(self, lim: SpecLimits, rank: int | None = None) -> str:
        """What this key accepts, in words (``rank`` None: in terms of the input rank r)."""
        kind = self.kind
        if kind is Kind.INT:
            return f"an integer in [{self._lo(lim)}, {self._hi(lim)}]"
        if kind is Kind.FLOAT:
            lo, hi = self._lo(lim), self._hi(lim)
            lo_text, hi_text = _num(lo), _num(hi)
            text = f"a finite number in {'(' if self.lo_open else '['}{lo_text}, {hi_text}]"
            return f"null or {text}" if self.nullable else text
        if kind is Kind.RATE:
            return "a number in [0, 1)"
        if kind is Kind.BOOL:
            return "true or false"
        if kind is Kind.CHOICE:
            return f"one of {list(self.choices)}"
        if kind is Kind.PAIR:
            text = f"a list of 2 integers in [{self._lo(lim)}, {self._hi(lim)}]"
            return f"null or {text}" if self.nullable else text
        if kind is Kind.PAD_PAIRS:
            return f"[[top, bottom], [left, right]] of integers in [0, {self._hi(lim)}]"
        if kind is Kind.ACTIVATION:
            return f"one of {sorted(ACTIVATIONS)}"
        if kind is Kind.AXIS:
            r = "r" if rank is None else rank
            where = "" if rank is None else f" (input rank {rank})"
            return f"an axis in [-{r}, -1] or [1, {r}]{where}"
        if kind is Kind.AXES:
            r = "r" if rank is None else rank
            text = f"an axis or a list of distinct axes in [1, {r}] or [-{r}, -1]"
            return f"null or {text}" if self.nullable else text
        if kind is Kind.SCALAR_OR_LIST:
            bound, n_max = lim.max_abs_scalar, lim.max_scalar_list
            return f"a finite number (|x| <= {bound:g}) or a list of 1..{n_max} of them"
        if kind is Kind.INT_LIST:
            n = self.bound(self.max_len, lim, rank)
            return f"a list of 1..{n} integers in [{self._lo(lim)}, {self._hi(lim)}]"
        if kind is Kind.PERMUTATION:
            r = "r" if rank is None else rank
            return f"a permutation of 1..{r}"
        if kind is Kind.SHAPES:
            return f"1..{lim.max_layer_outputs} shapes of 1..{lim.max_dims} dims"
        return "null"

    def _lo(self, lim: SpecLimits) -> Bound:
        return self.bound(self.lo, lim)

    def _hi(self, lim: SpecLimits) -> Bound:
        return self.bound(self.hi, lim)

    def limits_range(self, lim: SpecLimits) -> tuple[int | float, int | float]:
        """(lo, hi) as numbers (for keys whose bounds do not depend on the input)."""
        lo, hi = self.bound(self.lo, lim), self.bound(self.hi, lim)
        assert not isinstance(lo, str) and not isinstance(hi, str)
        return lo, hi


def _num(value: Bound) -> str:
    """A float bound as Python prints it (1.0, 1e+09), an int as is."""
    return f"{float(value)!r}" if isinstance(value, float) else str(value)


def show_value(value: object) -> str:
    """A short, safe rendering of an untrusted value for error messages."""
    if isinstance(value, Mapping):
        keys = list(value)[:6]
        return f"a dict with keys {keys!r}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def number(v: object) -> float | None:
    """``v`` as a float if it is a finite JSON number (not a bool), else None."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        x = float(v) if not isinstance(v, int) or abs(v) < 1 << 1000 else math.inf
        return x if math.isfinite(x) else None
    return None


def ints(v: object, length: int | None) -> tuple[int, ...] | None:
    """``v`` as a tuple of ints if it is a list of ints (optionally of ``length``)."""
    if not isinstance(v, list | tuple) or (length is not None and len(v) != length):
        return None
    out: list[int] = []
    for x in v:
        if not isinstance(x, int) or isinstance(x, bool):
            return None
        out.append(x)
    return tuple(out)


class ConfigReader:
    """Checked access to one layer's config through the keys of its class.

    Each reader method returns the checked value and stores it as a Keras kwarg in
    :attr:`kwargs`; :meth:`done` refuses every key no method read (``dtype`` aside).
    """

    def __init__(
        self,
        name: str,
        cls: str,
        config: Mapping[str, object],
        keys: Sequence[Key],
        lim: SpecLimits,
    ) -> None:
        self.name, self.cls, self.lim = name, cls, lim
        self.raw = config
        self.keys = {k.name: k for k in keys}
        self.used: set[str] = set()
        self.kwargs: dict[str, object] = {}

    # -- errors ------------------------------------------------------------------

    def fail(self, key: str, expected: str, got: object) -> NoReturn:
        raise SpecError(
            f"layer {self.name!r} ({self.cls}): config key {key!r}: "
            f"expected {expected}, got {show_value(got)}"
        )

    def fail_shape(self, message: str) -> NoReturn:
        raise SpecError(f"layer {self.name!r} ({self.cls}): {message}")

    def _take(self, name: str, kind: Kind) -> tuple[Key, object]:
        """The declared key ``name`` (of ``kind``) and the config's value or its default."""
        key = self.keys.get(name)
        if key is None or key.kind is not kind:
            # The class's table and its inference function disagree: a bug, not bad input.
            raise SpecError(f"layer {self.name!r} ({self.cls}): no {kind.value} key {name!r}")
        self.used.add(name)
        if name in self.raw:
            return key, self.raw[name]
        if key.required:
            self.fail(name, "a value (the key is required)", "nothing")
        return key, key.default

    def _refuse(self, key: Key, value: object, rank: int | None = None) -> NoReturn:
        self.fail(key.name, key.expectation(self.lim, rank), value)

    def done(self) -> None:
        """Refuse every key no checker consumed (``dtype`` is checked here)."""
        if "dtype" in self.raw and self.raw["dtype"] != F32:
            self.fail("dtype", "'float32' (computation is always float32)", self.raw["dtype"])
        extra = sorted(set(self.raw) - self.used - {"dtype"})
        if extra:
            self.fail(extra[0], f"one of {sorted(self.used)} (unknown key)", self.raw[extra[0]])

    # -- typed readers -------------------------------------------------------------

    def integer(self, name: str) -> int:
        key, v = self._take(name, Kind.INT)
        lo, hi = key.limits_range(self.lim)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            self._refuse(key, v)
        self.kwargs[name] = v
        return v

    def real(self, name: str) -> float | None:
        key, v = self._take(name, Kind.FLOAT)
        if v is None and key.nullable:
            self.kwargs[name] = None
            return None
        x = number(v)
        lo, hi = key.limits_range(self.lim)
        if x is None or not lo <= x <= hi or (key.lo_open and x == lo):
            self._refuse(key, v)
        self.kwargs[name] = x
        return x

    def rate(self, name: str) -> float:
        key, v = self._take(name, Kind.RATE)
        x = number(v)
        if x is None or not 0.0 <= x < 1.0:
            self._refuse(key, v)
        self.kwargs[name] = x
        return x

    def flag(self, name: str) -> bool:
        key, v = self._take(name, Kind.BOOL)
        if not isinstance(v, bool):
            self._refuse(key, v)
        self.kwargs[name] = v
        return v

    def choice(self, name: str) -> str:
        key, v = self._take(name, Kind.CHOICE)
        if not isinstance(v, str) or v not in key.choices:
            self._refuse(key, v)
        self.kwargs[name] = v
        return v

    def pair(self, name: str) -> tuple[int, int]:
        key, v = self._take(name, Kind.PAIR)
        return self._pair(key, v)

    def optional_pair(self, name: str) -> tuple[int, int] | None:
        """A pair, or None for null (the caller decides what null stands for)."""
        key, v = self._take(name, Kind.PAIR)
        return None if v is None and key.nullable else self._pair(key, v)

    def _pair(self, key: Key, v: object) -> tuple[int, int]:
        xs = ints(v, 2)
        lo, hi = key.limits_range(self.lim)
        if xs is None or not all(lo <= x <= hi for x in xs):
            self._refuse(key, v)
        out = (xs[0], xs[1])
        self.kwargs[key.name] = out
        return out

    def pad_pairs(self, name: str) -> tuple[int, ...]:
        key, v = self._take(name, Kind.PAD_PAIRS)
        _, hi = key.limits_range(self.lim)
        rows = [ints(p, 2) for p in v] if isinstance(v, list | tuple) and len(v) == 2 else []
        flat = [x for r in rows if r is not None for x in r]
        if len(flat) != 4 or not all(0 <= x <= hi for x in flat):
            self._refuse(key, v)
        self.kwargs[name] = ((flat[0], flat[1]), (flat[2], flat[3]))
        return tuple(flat)

    def activation(self, name: str = "activation") -> str:
        key, v = self._take(name, Kind.ACTIVATION)
        if isinstance(v, Mapping):
            self.fail(name, "an activation name (a dict-valued activation is refused)", v)
        if not isinstance(v, str) or v not in ACTIVATIONS:
            self._refuse(key, v)
        self.kwargs[name] = v
        return v

    def axis(self, name: str, rank: int) -> int:
        """A Keras axis (batch is 0) normalized to an index into the batch-less shape."""
        key, v = self._take(name, Kind.AXIS)
        if not isinstance(v, int) or isinstance(v, bool) or not (-rank <= v <= rank and v != 0):
            self._refuse(key, v, rank)
        self.kwargs[name] = v
        return (v if v > 0 else rank + 1 + v) - 1

    def axes(self, name: str, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """An int or a list of distinct axes. Returns (indices in the given order,
        sorted indices) into the batch-less shape, or None for null (where allowed)."""
        key, v = self._take(name, Kind.AXES)
        if v is None and key.nullable:
            self.kwargs[name] = None
            return None
        xs = (v,) if isinstance(v, int) and not isinstance(v, bool) else ints(v, None)
        norm = [(a if a > 0 else rank + 1 + a) - 1 for a in xs or ()]
        if not xs or not all(0 <= a < rank for a in norm) or len(set(norm)) != len(norm):
            self._refuse(key, v, rank)
        self.kwargs[name] = v if isinstance(v, int) else xs
        return tuple(norm), tuple(sorted(norm))

    def scalar_or_list(self, name: str) -> int:
        """A finite float, or a list of them; returns the list length (0 for a scalar)."""
        key, v = self._take(name, Kind.SCALAR_OR_LIST)
        bound, n_max = self.lim.max_abs_scalar, self.lim.max_scalar_list
        x = number(v)
        if x is not None and abs(x) <= bound:
            self.kwargs[name] = x
            return 0
        if isinstance(v, list | tuple) and 1 <= len(v) <= n_max:
            xs = [number(e) for e in v]
            vals = [e for e in xs if e is not None and abs(e) <= bound]
            if len(vals) == len(v):
                self.kwargs[name] = tuple(vals)
                return len(vals)
        self._refuse(key, v)

    def int_list(self, name: str) -> tuple[int, ...]:
        key, v = self._take(name, Kind.INT_LIST)
        xs = ints(v, None)
        lo, hi = key.limits_range(self.lim)
        n = key.bound(key.max_len, self.lim)
        assert not isinstance(n, str)
        if xs is None or not 1 <= len(xs) <= n or not all(lo <= x <= hi for x in xs):
            self._refuse(key, v)
        self.kwargs[name] = xs
        return xs

    def permutation(self, name: str, rank: int) -> tuple[int, ...]:
        key, v = self._take(name, Kind.PERMUTATION)
        xs = ints(v, rank)
        if xs is None or sorted(xs) != list(range(1, rank + 1)):
            self._refuse(key, v, rank)
        self.kwargs[name] = xs
        return xs

    def shapes(self, name: str) -> tuple[tuple[int, ...], ...]:
        key, v = self._take(name, Kind.SHAPES)
        lim = self.lim
        shapes = [ints(s, None) for s in v] if isinstance(v, list | tuple) else []
        good = [s for s in shapes if s and len(s) <= lim.max_dims and all(d >= 1 for d in s)]
        if not 1 <= len(good) == len(shapes) <= lim.max_layer_outputs:
            self._refuse(key, v)
        return tuple(good)

    def null(self, name: str) -> None:
        key, v = self._take(name, Kind.NULL)
        if v is not None:
            self.fail(name, f"null ({key.note})" if key.note else "null", v)
        self.kwargs[name] = None
