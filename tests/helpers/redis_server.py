"""A real ``redis-server`` (Debian's package) as a process of the test's own, never a fake.

:class:`RedisServer` starts one on a free loopback port with a temporary directory and the
append-only file on (``--save "" --appendonly yes``), waits until it answers PING, and can
be killed with SIGKILL and restarted on the same port and directory (it then reloads its AOF).
The fixtures: ``redis_server`` (one per test session), ``redis_url`` (a flushed database of
it for one test) and ``own_redis`` (a server for one test alone, for tests that kill it).
Without a ``redis-server`` binary every test using them skips, saying how to install it
(``make test`` and ``.ci/run`` install it as root).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

INSTALL_HINT = "install Debian's redis-server package (as root: apt-get install -y redis-server)"


def redis_server_binary() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)),
        None,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1; ``url(db)`` names a database of it."""

    def __init__(self, directory: Path, *, binary: str, appendfsync: str = "everysec") -> None:
        self.directory = directory
        self.binary = binary
        self.appendfsync = appendfsync
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        for _attempt in range(5):  # a free port can be taken between probe and bind
            port = self.port or _free_port()
            self.proc = subprocess.Popen(
                [self.binary, *self._options(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_ready(port, timeout_s):
                self.port = port
                return self
            self.stop()
        log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"redis-server did not start; its log ends with:\n{log}")

    def _options(self, port: int) -> list[str]:
        options = {
            "port": str(port),
            "bind": "127.0.0.1",
            "dir": str(self.directory),
            "save": "",
            "appendonly": "yes",
            "appendfsync": self.appendfsync,
            "daemonize": "no",
            "logfile": str(self.directory / "redis.log"),
        }
        return [arg for name, value in options.items() for arg in (f"--{name}", value)]

    def _options(self, port: int) -> list[str]:
        options = {
            "port": str(port),
            "bind": "127.0.0.1",
            "dir": str(self.directory),
            "save": "",
            "appendonly": "yes",
            "appendfsync": self.appendfsync,
            "daemonize": "no",
            "logfile": str(self.directory / "redis.log"),
        }
        return [arg for name, value in options.items() for arg in (f"--{name}", value)]

    def _wait_ready(self, port: int, timeout_s: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):  # not -LOADING
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync (a crash of Redis itself)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        """Kill it and start it again on the same port and directory (reloads the AOF)."""
        self.kill()
        self.start()


def _binary_or_skip() -> str:
    binary = redis_server_binary()
    if binary is None:
        pytest.skip(f"redis-server not found: {INSTALL_HINT}")
    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.skip("the redis package is not installed: pip install 'ionn_net[redis]'")
    return binary


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole test session."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), binary=_binary_or_skip()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of database 0 of the session's redis-server, flushed for this test."""
    import redis

    with redis.Redis.from_url(redis_server.url()) as client:
        client.flushdb()
    return redis_server.url()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for this test alone (it may kill and restart it)."""
    server = RedisServer(tmp_path / "redis", binary=_binary_or_skip()).start()
    try:
        yield server
    finally:
        server.stop()
