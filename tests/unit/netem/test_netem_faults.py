"""FaultProxy: each toxic does what it says, over real loopback connections."""

from __future__ import annotations

import asyncio
import time

import pytest
from netem_targets import Target

from ionn_net.errors import ConfigError
from ionn_net.netem.faults import (
    Bandwidth,
    FaultProxy,
    Latency,
    LimitData,
    ResetPeer,
    Slicer,
    Timeout,
)


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)


async def _wait_for(predicate: object, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def test_plain_forwarding_and_counters(echo_target: Target) -> None:
    async with FaultProxy("127.0.0.1", echo_target.port) as fp:
        reader, writer = await _connect(fp.port)
        payload = bytes(range(256)) * 400
        writer.write(payload)
        got = await asyncio.wait_for(reader.readexactly(len(payload)), 5)
        assert got == payload
        stats = fp.stats()
        assert (stats.bytes_up, stats.bytes_down, stats.active) == (len(payload), len(payload), 1)
        writer.close()


async def test_reset_peer_gives_connection_reset(echo_target: Target) -> None:
    async with FaultProxy("127.0.0.1", echo_target.port) as fp:
        reader, writer = await _connect(fp.port)
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
        fp.set_toxics(ResetPeer())  # applied to an open connection at run time
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), 5)
        await _wait_for(lambda: echo_target.ended[0] is not None)
        assert echo_target.ended[0] == "reset"


async def test_reset_peer_after_delay(echo_target: Target) -> None:
    async with FaultProxy("127.0.0.1", echo_target.port, toxics=(ResetPeer(after_ms=150),)) as fp:
        reader, _ = await _connect(fp.port)
        t0 = time.monotonic()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), 5)
        assert time.monotonic() - t0 >= 0.12


async def test_slicer_delivers_one_byte_reads(echo_target: Target) -> None:
    async with FaultProxy(
        "127.0.0.1", echo_target.port, toxics=(Slicer(size=1, delay_ms=3, direction="down"),)
    ) as fp:
        reader, writer = await _connect(fp.port)
        writer.write(b"0123456789abcdef")
        reads = []
        for _ in range(16):
            reads.append(await asyncio.wait_for(reader.read(4096), 5))
            if sum(map(len, reads)) == 16:
                break
        assert b"".join(reads) == b"0123456789abcdef"
        assert [len(r) for r in reads] == [1] * 16
        # The up direction was not sliced: the target got the message in one read.
        assert bytes(echo_target.received[0]) == b"0123456789abcdef"
        writer.close()


@pytest.mark.parametrize("mode", ["eof", "rst"])
async def test_limit_data_forwards_exactly_n_then_closes(sink_target: Target, mode: str) -> None:
    async with FaultProxy(
        "127.0.0.1", sink_target.port, toxics=(LimitData(1000, direction="up", mode=mode),)
    ) as fp:
        reader, writer = await _connect(fp.port)
        writer.write(bytes(5000))
        await _wait_for(lambda: bool(sink_target.ended) and sink_target.ended[0] is not None)
        assert len(sink_target.received[0]) == 1000
        assert sink_target.ended[0] == ("eof" if mode == "eof" else "reset")
        assert fp.stats().bytes_up == 1000
        # The client side is closed too: EOF or a reset, never more data.
        try:
            assert await asyncio.wait_for(reader.read(100), 5) == b""
        except ConnectionResetError:
            assert mode == "rst"


async def test_limit_data_down_direction(echo_target: Target) -> None:
    async with FaultProxy(
        "127.0.0.1", echo_target.port, toxics=(LimitData(300, direction="down"),)
    ) as fp:
        reader, writer = await _connect(fp.port)
        writer.write(bytes(1000))
        got = await asyncio.wait_for(reader.read(-1), 5)  # reads until EOF
        assert len(got) == 300


async def test_timeout_is_half_open_then_resumes(sink_target: Target) -> None:
    async with FaultProxy("127.0.0.1", sink_target.port, toxics=(Timeout(),)) as fp:
        reader, writer = await _connect(fp.port)
        writer.write(b"x" * 100)
        await writer.drain()
        with pytest.raises(TimeoutError):  # no bytes and no close
            await asyncio.wait_for(reader.read(1), 0.3)
        await _wait_for(lambda: bool(sink_target.received))
        assert bytes(sink_target.received[0]) == b""
        assert sink_target.ended[0] is None
        assert fp.stats().active == 1
        fp.clear_toxics()
        await _wait_for(lambda: len(sink_target.received[0]) == 100)


async def test_timeout_with_ms_closes(echo_target: Target) -> None:
    async with FaultProxy("127.0.0.1", echo_target.port, toxics=(Timeout(ms=100),)) as fp:
        reader, writer = await _connect(fp.port)
        writer.write(b"lost")
        t0 = time.monotonic()
        assert await asyncio.wait_for(reader.read(100), 5) == b""
        assert 0.08 <= time.monotonic() - t0 < 2


async def test_latency_is_a_delay_line(echo_target: Target) -> None:
    async with FaultProxy(
        "127.0.0.1", echo_target.port, toxics=(Latency(40, direction="up"),)
    ) as fp:
        reader, writer = await _connect(fp.port)
        t0 = time.monotonic()
        writer.write(b"p")
        await asyncio.wait_for(reader.readexactly(1), 5)
        rtt = time.monotonic() - t0
        assert 0.039 <= rtt < 0.1
        # 4 MiB in 64 KiB chunks: one chunk per 40 ms would take over 2.5 s.
        t0 = time.monotonic()
        payload = bytes(4 << 20)
        writer.write(payload)
        await asyncio.wait_for(reader.readexactly(len(payload)), 10)
        assert time.monotonic() - t0 < 1.0


async def test_bandwidth_paces(sink_target: Target) -> None:
    async with FaultProxy(
        "127.0.0.1", sink_target.port, toxics=(Bandwidth(8e6, direction="up"),)
    ) as fp:
        _, writer = await _connect(fp.port)
        t0 = time.monotonic()
        writer.write(bytes(200_000))  # 1.6 Mbit at 8 Mbit/s: 0.2 s
        await _wait_for(
            lambda: bool(sink_target.received) and len(sink_target.received[0]) == 200_000
        )
        elapsed = time.monotonic() - t0
        assert 0.15 <= elapsed < 0.6
        assert fp.stats().bytes_up == 200_000


async def test_cut_all_closes_open_connections(echo_target: Target) -> None:
    async with FaultProxy("127.0.0.1", echo_target.port) as fp:
        conns = [await _connect(fp.port) for _ in range(3)]
        await _wait_for(lambda: fp.stats().active == 3)
        assert fp.cut_all() == 3
        for reader, _ in conns:
            assert await asyncio.wait_for(reader.read(10), 5) == b""
        await _wait_for(lambda: fp.stats().active == 0)
        assert fp.stats().connections == 3


def test_toxic_validation() -> None:
    with pytest.raises(ConfigError, match=r"Slicer\.size"):
        Slicer(size=0)
    with pytest.raises(ConfigError, match=r"LimitData\.direction"):
        LimitData(10, direction="both")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"Bandwidth\.rate_bps"):
        Bandwidth(0)
    with pytest.raises(ConfigError, match=r"Latency\.ms"):
        Latency(-1)
    with pytest.raises(ConfigError, match="target_port"):
        FaultProxy("127.0.0.1", 0)
    with pytest.raises(ConfigError, match="toxic values"):
        FaultProxy("127.0.0.1", 1, toxics=("latency",))  # type: ignore[arg-type]
