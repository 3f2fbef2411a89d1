"""TLS through a standard ssl.SSLContext on both sides (protocol.md §14.6)."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from ionn_net.aio import ConnectionClosedError, ServerStream, connect, serve

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


async def _echo(stream: ServerStream) -> None:
    await stream.respond({"m": "echo"}, await stream.read_body())


async def test_request_over_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    body = os.urandom(3 << 20)
    async with (
        serve(_echo, "127.0.0.1", 0, ssl=server_ctx) as srv,
        connect("127.0.0.1", srv.port, ssl=client_ctx, server_hostname="localhost") as conn,
    ):
        assert conn.protocol.extra("ssl_object") is not None
        # Batches are joined before TLS, or each 16-byte frame header is a record of its own.
        assert not conn.protocol.writes_vectored
        assert all(not c.protocol.writes_vectored for c in srv.connections)
        assert (await conn.request({"m": "echo"}, body))[1] == body
        assert conn.protocol.applied.nodelay  # options reach the TCP socket below TLS


async def test_untrusted_certificate_is_refused(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    async with serve(_echo, "127.0.0.1", 0, ssl=server_ctx) as srv:
        with pytest.raises(ConnectionClosedError, match="cannot connect"):
            await connect(
                "127.0.0.1", srv.port, ssl=ssl.create_default_context(), server_hostname="localhost"
            )
