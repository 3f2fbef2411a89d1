"""Terminal output of ``ionn-bench``: status lines and one progress bar per run.

Owns :class:`Console` and :class:`RunBar`. On a terminal the bar redraws in place
(at most 10 times a second); otherwise (CI logs) it prints a line every few seconds,
so a log stays readable. The bar shows the upload (bytes and percent), the queries
completed, the last query's latency and the run's time against its bound.
"""

from __future__ import annotations

import time
from typing import TextIO

__all__ = ["Console", "RunBar"]

_WIDTH = 24


class Console:
    """Where ``ionn-bench`` writes progress (usually stderr)."""

    def __init__(self, stream: TextIO, *, quiet: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet
        isatty = getattr(stream, "isatty", None)
        self.tty = bool(isatty and isatty())

    def line(self, text: str) -> None:
        if self.quiet:
            return
        prefix = "\r\x1b[K" if self.tty else ""
        self.stream.write(prefix + text + "\n")
        self.stream.flush()

    def bar(self, label: str, limit_s: float) -> RunBar:
        return RunBar(self, label, limit_s)


class RunBar:
    """The progress bar of one run."""

    def __init__(self, console: Console, label: str, limit_s: float) -> None:
        self.console = console
        self.label = label
        self.limit_s = limit_s
        self.phase = "preparing"
        self.t = 0.0
        self.sent = 0
        self.total = 0
        self.queries = 0
        self.last_ms: float | None = None
        self.offloaded = 0
        self.done = False
        self._started = time.monotonic()
        self._drawn = 0.0
        self.lines = 0

    def progress(self, t: float, sent: int, total: int, done: bool) -> None:
        self.phase = "running"
        self.t, self.sent, self.total = t, sent, total
        self.done = self.done or done
        self.draw()

    def query(self, t: float, ms: float, offloaded: bool) -> None:
        self.phase = "running"
        self.t = max(self.t, t)
        self.queries += 1
        self.last_ms = ms
        self.offloaded += int(offloaded)
        self.draw()

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.draw(force=True)

    def render(self) -> str:
        frac = 1.0 if self.done or not self.total else min(1.0, self.sent / self.total)
        if self.phase == "preparing" and not self.total:
            frac = 0.0
        filled = round(_WIDTH * frac)
        bar = "#" * filled + "." * (_WIDTH - filled)
        last = "-" if self.last_ms is None else f"{self.last_ms:.0f} ms"
        wall = time.monotonic() - self._started
        return (
            f"{self.label} [{bar}] {frac * 100:5.1f}% {self.sent / 1e6:6.1f}/"
            f"{self.total / 1e6:.1f} MB | {self.queries} queries ({self.offloaded} offloaded), "
            f"last {last} | t={self.t:5.1f}/{self.limit_s:g} s | {self.phase} ({wall:.0f} s)"
        )

    def draw(self, *, force: bool = False) -> None:
        c = self.console
        if c.quiet:
            return
        now = time.monotonic()
        if not force and now - self._drawn < (0.1 if c.tty else 5.0):
            return
        self._drawn = now
        self.lines += 1
        if c.tty:
            c.stream.write("\r\x1b[K" + self.render())
        else:
            c.stream.write(self.render() + "\n")
        c.stream.flush()

    def finish(self, summary: str) -> None:
        self.phase = summary
        if self.console.quiet:
            return
        self.draw(force=True)
        if self.console.tty:
            self.console.stream.write("\n")
            self.console.stream.flush()
