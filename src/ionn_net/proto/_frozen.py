"""Fast positional construction of frozen slotted dataclasses for the per-frame hot path.

A frozen dataclass's generated ``__init__`` sets each field through
``object.__setattr__`` (to get past the frozen guard), which costs about 3x a plain
slotted class per object. The receive path builds one frame and one event per DATA frame,
so it uses :func:`positional_factory` instead: it writes the slots through their member
descriptors, producing an instance equal in every way to one built by ``__init__``
(same class, same fields, still frozen). Only for classes without ``__post_init__`` logic
the caller relies on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["positional_factory"]

T = TypeVar("T")


def positional_factory(cls: type[T]) -> Callable[..., T]:
    """A function ``(*field values in declaration order) -> cls instance``."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    setters = [getattr(cls, name).__set__ for name in names]
    new = object.__new__
    count = len(names)

    def make(*values: Any) -> T:
        if len(values) != count:
            raise TypeError(f"{cls.__name__}: expected {count} values, got {len(values)}")
        obj = new(cls)
        for setter, value in zip(setters, values, strict=True):
            setter(obj, value)
        return obj

    if count == 4:  # DataReceived: unrolled, this is the hottest constructor

        def make4(a: Any, b: Any, c: Any, d: Any) -> T:
            obj = new(cls)
            s0(obj, a)
            s1(obj, b)
            s2(obj, c)
            s3(obj, d)
            return obj

        s0, s1, s2, s3 = setters
        return make4
    if count == 5:  # DataFrame

        def make5(a: Any, b: Any, c: Any, d: Any, e: Any) -> T:
            obj = new(cls)
            s0(obj, a)
            s1(obj, b)
            s2(obj, c)
            s3(obj, d)
            s4(obj, e)
            return obj

        s0, s1, s2, s3, s4 = setters
        return make5
    return make
