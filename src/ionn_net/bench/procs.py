"""Child processes of the benchmark (server and client) and their event lines.

Owns :class:`Child`: an asyncio subprocess in its own session (so a Ctrl-C at the
terminal reaches only the runner, which then stops its children in order), whose
stdout carries event lines prefixed with :data:`~ionn_net.bench.worker.PREFIX`; any
other output goes to the child's log file. Every wait has a deadline; :meth:`Child.close`
closes stdin, waits, then terminates and finally kills the child's process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from ionn_net.bench.worker import PREFIX
from ionn_net.errors import IonnError

__all__ = ["BenchError", "Child"]

_LINE_LIMIT = 1 << 26


class BenchError(IonnError):
    """A benchmark child failed, timed out or broke the event protocol."""


class Child:
    """One child process speaking the event-line protocol (see module)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.preexec = preexec  # run in the child before exec (CPU affinity)
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[str] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BenchError(f"{self.name}: not started")
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("a", encoding="utf-8")
        self._log.write(f"$ {' '.join(self.argv)}\n")
        self._log.flush()
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
            limit=_LINE_LIMIT,
            preexec_fn=self.preexec,
        )
        return self

    async def event(self, timeout: float) -> dict[str, Any] | None:
        """The next event, or None once the child has closed its stdout."""
        proc = self._proc
        if proc is None or proc.stdout is None:
            raise BenchError(f"{self.name}: not started")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BenchError(f"{self.name}: no event within {timeout:.0f} s")
            try:
                raw = await asyncio.wait_for(proc.stdout.readline(), remaining)
            except TimeoutError:
                raise BenchError(f"{self.name}: no event within {timeout:.0f} s") from None
            if not raw:
                return None
            line = raw.decode("utf-8", "replace")
            if not line.startswith(PREFIX):
                if self._log is not None:
                    self._log.write(line)
                continue
            try:
                doc = json.loads(line[len(PREFIX) :])
            except ValueError as exc:
                raise BenchError(f"{self.name}: malformed event line ({exc})") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("ev"), str):
                raise BenchError(f"{self.name}: expected an event object, got {line[:200]!r}")
            return doc

    async def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        """Skip events until one of ``kind``; a fatal ``error`` or exit raises."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            ev = await self.event(deadline - loop.time())
            if ev is None:
                raise BenchError(
                    f"{self.name} exited before '{kind}' (see {self.log_path}): {self.tail()}"
                )
            if ev["ev"] == kind:
                return ev
            if ev["ev"] == "error":
                raise BenchError(f"{self.name}: {ev.get('what')}")

    def send(self, doc: dict[str, Any]) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise BenchError(f"{self.name}: cannot send {doc.get('cmd')!r}, not running")
        proc.stdin.write((json.dumps(doc) + "\n").encode())

    def close_stdin(self) -> None:
        """Tell the child to finish (it exits once its stdin closes)."""
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                proc.stdin.close()

    def tail(self, n: int = 400) -> str:
        """The end of the child's log (for error messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " ".join(text[-n:].split())

    async def close(self, timeout: float = 15.0) -> int | None:
        """Close stdin, wait up to ``timeout``, then SIGTERM, then SIGKILL the group."""
        proc, self._proc = self._proc, None
        try:
            if proc is None:
                return None
            if proc.stdin is not None:
                with contextlib.suppress(OSError, RuntimeError):
                    proc.stdin.close()
            for sig, wait in ((None, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                if sig is not None and proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, sig)  # the group of our own child only
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._drain_and_wait(proc), wait)
                if proc.returncode is not None:
                    break
            return proc.returncode
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    async def _drain_and_wait(self, proc: asyncio.subprocess.Process) -> None:
        if proc.stdout is not None:
            while await proc.stdout.read(1 << 16):
                pass
        await proc.wait()
