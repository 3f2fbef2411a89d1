"""Throughput of the sans-I/O core: frame decoder, encoder, codecs and a full Connection.

Prints MiB/s and frames/s for
  * the FrameDecoder on 64 KiB DATA frames (fed in 256 KiB reads, as asyncio delivers them)
    and on small frames (16-byte DATA payloads and CREDIT frames),
  * frame encoding (serialize) for the same frames,
  * the same traffic through a full Connection (events, credit, acknowledgements),
  * the zstd codecs on float32 data,
each with its ratios to two baselines measured in the same run: "copy" is copying the same
bytes with ``bytes(memoryview[a:b])`` (the one copy the decoder is allowed to make), "floor"
is the least Python work per frame (one ``unpack_from`` and one ``bytes()`` per frame).

Issue targets: decoder >= 1 GiB/s on 64 KiB DATA frames and >= 200,000 small frames/s.
Usage: ``python bench/codec.py [--mib 64] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import os
import struct
import time
from collections.abc import Callable

import numpy as np

from ionn_net.config import Limits
from ionn_net.messages import ProbeUpload
from ionn_net.proto import (
    Codec,
    Connection,
    CreditFrame,
    DataFrame,
    DataReceived,
    FrameDecoder,
    decode,
    encode,
    serialize,
)

MIB = 1024 * 1024
BIG = 65536
READ = 256 * 1024
SMALL_PAYLOAD = 16
BIG_LIMITS = Limits(
    initial_stream_credit=2**31 - 1,
    initial_connection_credit=2**31 - 1,
    max_chunk=BIG,
    max_message_size=2**32 - 1,
)


def clock() -> float:
    """CPU time of this process: the work is single-threaded and CPU-bound, and CPU time
    is far less disturbed than wall time by other jobs on a shared 2-core machine."""
    return time.process_time()


def best_of(repeat: int, fn: Callable[[], None]) -> float:
    """Least CPU time of ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def chunks(blob: bytes, size: int) -> list[memoryview]:
    mv = memoryview(blob)
    return [mv[i : i + size] for i in range(0, len(blob), size)]


FLOOR = [0.0]  # frames/s of the minimal per-frame Python work, measured in main()


def report(name: str, nbytes: int, nframes: int, seconds: float, base: float) -> None:
    """One line: throughput, frame rate, and ratios to the copy and per-frame baselines."""
    mibs = nbytes / MIB / seconds
    rate = nframes / seconds
    # Large frames are bounded by copying, small ones by per-frame Python work.
    ratio = (
        f"{mibs / base:5.2f}x copy" if nbytes > 1024 * nframes else f"{rate / FLOOR[0]:5.2f}x floor"
    )
    print(f"{name:<52} {mibs:8.0f} MiB/s {rate:10,.0f} frames/s  {ratio}")


def bench_decoder(repeat: int, big_blob: bytes, small_blob: bytes, base: float) -> None:
    reads = chunks(big_blob, READ)
    n_big = len(big_blob) // (BIG + 16)

    def run_big() -> None:
        dec = FrameDecoder(BIG_LIMITS)
        count = 0
        for r in reads:
            count += len(dec.feed(r))
        assert count == n_big

    report(
        "decoder: 64 KiB DATA, 256 KiB reads", len(big_blob), n_big, best_of(repeat, run_big), base
    )
    small_reads = chunks(small_blob, READ)
    n_small = len(small_blob) // (16 + SMALL_PAYLOAD)

    def run_small() -> None:
        dec = FrameDecoder(BIG_LIMITS)
        count = 0
        for r in small_reads:
            count += len(dec.feed(r))
        assert count == n_small

    t = best_of(repeat, run_small)
    report("decoder: 16-byte DATA, 256 KiB reads", len(small_blob), n_small, t, base)
    credit_blob = b"".join(serialize(CreditFrame(stream_id=1, limit=i)) for i in range(n_small))

    def run_credit() -> None:
        assert len(FrameDecoder(BIG_LIMITS).feed(credit_blob)) == n_small

    t = best_of(repeat, run_credit)
    report("decoder: CREDIT frames, one feed", len(credit_blob), n_small, t, base)


def bench_encoder(repeat: int, payload: bytes, n_big: int, n_small: int, base: float) -> None:
    def run_big() -> None:
        for _ in range(n_big):
            serialize(DataFrame(stream_id=1, data=payload))

    report(
        "encode: 64 KiB DATA (serialize)", n_big * (BIG + 16), n_big, best_of(repeat, run_big), base
    )
    small = payload[:SMALL_PAYLOAD]

    def run_small() -> None:
        for _ in range(n_small):
            serialize(DataFrame(stream_id=1, data=small))

    t = best_of(repeat, run_small)
    report("encode: 16-byte DATA (serialize)", n_small * 32, n_small, t, base)


def handshake(limits: Limits) -> tuple[Connection, Connection]:
    client = Connection(client=True, limits=limits)
    server = Connection(client=False, limits=limits)
    client.initiate()
    for _ in range(4):
        server.receive_data(client.data_to_send(), 0.0)
        client.receive_data(server.data_to_send(), 0.0)
    return client, server


def bench_connection(repeat: int, mib: int, base: float) -> None:
    body = os.urandom(mib * MIB)
    frames = len(body) // BIG

    def produce() -> tuple[Connection, list[memoryview]]:
        client, server = handshake(BIG_LIMITS)
        sid = client.open_stream(ProbeUpload(body_len=len(body)).to_head(), urgency=5)
        client.send_data(sid, body, end_stream=True)
        return server, chunks(client.data_to_send(), READ)

    def run_send() -> None:
        client, _server = handshake(BIG_LIMITS)
        sid = client.open_stream(ProbeUpload(body_len=len(body)).to_head(), urgency=5)
        client.send_data(sid, body, end_stream=True)
        while client.next_frame_parts() is not None:
            pass

    t = best_of(repeat, run_send)
    report("Connection send: 64 KiB frames (parts)", len(body), frames, t, base)
    wire = sum(len(r) for r in produce()[1])

    def run_recv() -> None:
        srv, rds = produce()
        got = 0
        t0 = clock()
        for r in rds:
            for ev in srv.receive_data(r, 1.0):
                if isinstance(ev, DataReceived):
                    got += len(ev.data)
                    srv.acknowledge_received_data(ev.stream_id, ev.wire_length)
            srv.data_to_send()
        assert got == len(body)
        timings.append(clock() - t0)

    timings: list[float] = []
    for _ in range(repeat):
        run_recv()
    report("Connection receive: 64 KiB DATA + events + ack", wire, frames, min(timings), base)
    bench_connection_small(repeat, base)


def bench_connection_small(repeat: int, base: float) -> None:
    n = 200_000
    piece = b"x" * SMALL_PAYLOAD
    limits = Limits(
        max_chunk=SMALL_PAYLOAD,
        initial_stream_credit=2**31 - 1,
        initial_connection_credit=2**31 - 1,
    )
    client, _server = handshake(limits)
    sid = client.open_stream(ProbeUpload(body_len=n * SMALL_PAYLOAD).to_head(), urgency=5)
    client.send_data(sid, piece * n, end_stream=True)
    blob = client.data_to_send()
    timings: list[float] = []
    for _ in range(repeat):
        _c, srv = handshake(limits)
        reads = chunks(blob, READ)
        count = 0
        t0 = clock()
        for r in reads:
            for ev in srv.receive_data(r, 1.0):
                if isinstance(ev, DataReceived):
                    count += 1
                    srv.acknowledge_received_data(ev.stream_id, ev.wire_length)
        timings.append(clock() - t0)
        assert count == n, count
    report("Connection receive: 16-byte DATA + events + ack", len(blob), n, min(timings), base)


def bench_codecs(repeat: int, base: float) -> None:
    rng = np.random.default_rng(0)
    weights = rng.normal(0.0, 0.02, size=BIG // 4 * 64).astype(np.float32).tobytes()
    relu = np.maximum(rng.normal(size=BIG // 4 * 64), 0).astype(np.float32).tobytes()
    for name, data in (("weights N(0,0.02)", weights), ("ReLU features", relu)):
        for codec in (Codec.ZSTD, Codec.ZSTD_SHUFFLE4):
            pieces = [data[i : i + BIG] for i in range(0, len(data), BIG)]
            encoded: list[bytes] = []

            def enc(
                pieces: list[bytes] = pieces, out: list[bytes] = encoded, c: Codec = codec
            ) -> None:
                out.clear()
                out.extend(encode(p, c, 1) for p in pieces)

            t_enc = best_of(repeat, enc)
            ratio = len(data) / sum(len(e) for e in encoded)

            def dec(out: list[bytes] = encoded, c: Codec = codec) -> None:
                for e in out:
                    decode(e, c, BIG, MIB)

            t_dec = best_of(repeat, dec)
            label = f"{codec.name} {name} (ratio {ratio:.2f})"
            report(f"encode {label}", len(data), len(pieces), t_enc, base)
            report(f"decode {label}", len(data), len(pieces), t_dec, base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=64, help="MiB of 64 KiB frames per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (best kept)")
    args = parser.parse_args()
    payload = os.urandom(BIG)
    n_big = args.mib * MIB // BIG
    big_blob = serialize(DataFrame(stream_id=1, data=payload)) * n_big
    n_small = 400_000
    small_blob = serialize(DataFrame(stream_id=1, data=payload[:SMALL_PAYLOAD])) * n_small
    src = memoryview(big_blob)

    def copy() -> None:
        for i in range(0, len(big_blob) - BIG, BIG + 16):
            bytes(src[i : i + BIG])

    base = len(big_blob) / MIB / best_of(args.repeat, copy)
    small_src = memoryview(small_blob)
    unpack = struct.Struct(">BBBBIII").unpack_from

    def floor() -> None:
        for i in range(0, len(small_blob), 32):
            unpack(small_src, i)
            bytes(small_src[i + 16 : i + 32])

    FLOOR[0] = n_small / best_of(args.repeat, floor)
    print(f"process CPU time, best of {args.repeat} runs; {args.mib} MiB of 64 KiB frames")
    print(f"baseline copy: bytes(memoryview) of 64 KiB slices {base:8.0f} MiB/s")
    print(f"baseline floor: unpack_from + bytes() per 32-byte frame {FLOOR[0]:10,.0f} frames/s")
    bench_decoder(args.repeat, big_blob, small_blob, base)
    bench_encoder(args.repeat, payload, n_big, n_small, base)
    bench_connection(args.repeat, args.mib, base)
    bench_codecs(args.repeat, base)


if __name__ == "__main__":
    main()
