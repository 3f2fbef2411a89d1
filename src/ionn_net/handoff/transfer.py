"""The outcome of one fetch or push (protocol.md §15.4, §15.5).

Owns :class:`Transfer`: the blobs asked for, in order, which of them moved, why each other
did not, and why the other server could not be used at all, if so. Every blob asked for
ends in exactly one of ``done`` and ``failed``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["Transfer"]


class Transfer:
    """See the module docstring."""

    def __init__(self, blobs: Sequence[str]) -> None:
        self.order = list(dict.fromkeys(blobs))
        self.done: list[str] = []
        self.failed: dict[str, str] = {}
        self.peer_error: str | None = None

    def ok(self, digest: str) -> None:
        if digest not in self.failed and digest not in self.done:
            self.done.append(digest)

    def fail(self, digest: str, code: str) -> None:
        if digest not in self.done:
            self.failed.setdefault(digest, code)

    def fail_rest(self, code: str) -> None:
        """Every blob not settled yet failed with ``code``."""
        for digest in self.order:
            self.fail(digest, code)

    def give_up(self, code: str) -> None:
        """The other server could not be used (``code``): the rest failed with it."""
        if self.peer_error is None:
            self.peer_error = code
        self.fail_rest(code)
