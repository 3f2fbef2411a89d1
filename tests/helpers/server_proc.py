"""Start the real ``ionn-server`` console script in its own process, for operations tests.

:func:`start` runs it with the given flags and ``--log-format json`` (stderr to a file),
reads its stdout announcements (``ionn-server metrics on HOST:PORT`` when a metrics port is
asked for, ``ionn-server listening on HOST:PORT``) and returns a :class:`ServerProc`;
:func:`http_get` is a tiny blocking HTTP client for the metrics and health port.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["ServerProc", "free_port", "http_get", "metrics", "start"]


@dataclass
class ServerProc:
    proc: subprocess.Popen[str]
    log: Path
    metrics_port: int | None = None
    port: int | None = None
    _lines: list[str] = field(default_factory=list)

    def wait_listening(self, timeout: float) -> int:
        """Wait for the ``listening on`` line (the server is ready); its port."""
        deadline = time.monotonic() + timeout
        while self.port is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise TimeoutError(f"ionn-server did not start: {self.tail()}")
            time.sleep(0.05)
        return self.port

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        """The JSON log records written so far (those of ``event`` only, if given)."""
        out = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                doc = json.loads(line)
                if event is None or doc.get("event") == event:
                    out.append(doc)
        return out

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(args: list[str], log: Path) -> ServerProc:
    exe = Path(sys.executable).parent / "ionn-server"
    errors = open(log, "w")  # noqa: SIM115  (the child writes it; closed below)
    proc = subprocess.Popen(
        [str(exe), *args, "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    errors.close()
    server = ServerProc(proc, log)
    announced = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            port = int(line.rsplit(":", 1)[1]) if ":" in line else None
            if "metrics on" in line:
                server.metrics_port = port
                announced.set()
            elif "listening on" in line:
                server.port = port
                announced.set()

    threading.Thread(target=read, daemon=True).start()
    announced.wait(300)
    return server


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def metrics(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    _, body = http_get(port, "/metrics")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
