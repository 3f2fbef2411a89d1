"""argparse value types shared by the command-line tools (``ionn-server``,
``ionn-demo``, ``ionn-bench``): each rejects a bad value with a message naming what
was expected and what arrived."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["port", "positive"]


def positive(kind: type[float] | type[int], what: str = "") -> Callable[[str], float | int]:
    """A parser of numbers of ``kind`` that must be > 0 (``what`` prefixes errors)."""
    prefix = f"{what}: " if what else ""

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{prefix}expected a number, got {text!r}") from None
        if not value > 0:  # also rejects nan
            raise argparse.ArgumentTypeError(f"{prefix}expected a value > 0, got {text!r}")
        return value

    return parse


def port(text: str) -> int:
    """A TCP port, 0 (pick one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port: expected an integer, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port: expected 0..65535, got {value}")
    return value
