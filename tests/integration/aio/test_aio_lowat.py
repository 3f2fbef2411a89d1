"""The adaptive TCP_NOTSENT_LOWAT follows the delivery rate (a budget of link time)."""

from __future__ import annotations

import socket

from ionn_net.aio import ServerStream, TransportOptions, connect, serve
from ionn_net.aio.sockopts import TCP_NOTSENT_LOWAT
from ionn_net.netem.proxy import LinkSpec, ShapingProxy

KIB = 1024


async def _sink(stream: ServerStream) -> None:
    async for _ in stream:
        pass
    await stream.respond({"m": "ok"})


def _kernel_lowat(conn: object) -> int:
    sock = conn.protocol.socket  # type: ignore[attr-defined]
    return int(sock.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT))


async def test_lowat_grows_on_a_fast_path() -> None:
    async with (
        serve(_sink, "127.0.0.1", 0) as srv,
        connect("127.0.0.1", srv.port, options=TransportOptions(hol_budget_s=0.002)) as conn,
    ):
        for _ in range(4):
            await conn.request({"m": "up"}, bytes(32 << 20), urgency=5)
            if conn.protocol.applied.notsent_lowat != 128 * KIB:
                break
        applied = conn.protocol.applied.notsent_lowat
        assert applied is not None
        # Loopback moves far more than 64 MB/s, i.e. 128 KiB per 2 ms.
        assert applied > 128 * KIB
        assert _kernel_lowat(conn) == applied


async def test_lowat_shrinks_on_a_slow_link() -> None:
    spec = LinkSpec(rate_bps=8e6)  # 1 MB/s: 2 ms of link time is 2 kB -> the 16 KiB floor
    async with (
        serve(_sink, "127.0.0.1", 0) as srv,
        ShapingProxy("127.0.0.1", srv.port, up=spec, down=LinkSpec()) as proxy,
        connect("127.0.0.1", proxy.port, options=TransportOptions(hol_budget_s=0.002)) as conn,
    ):
        await conn.request({"m": "up"}, bytes(1_500_000), urgency=5)
        assert conn.protocol.applied.notsent_lowat == 16 * KIB
        assert _kernel_lowat(conn) == 16 * KIB
