"""Packet-level delay line between two interfaces, for kernels without ``netem``.

Owns the process that :mod:`ionn_net.netem.netns` runs in the middle namespace of
a link (one process per direction): it reads every Ethernet frame arriving on one
veth with an ``AF_PACKET`` socket, holds it for ``delay`` (+ jitter, never
reordered), and writes it out of the other veth. Loss drops frames for real, so
TCP end to end is the kernel's own, with real retransmissions and congestion
control; this is what a userspace *TCP proxy* cannot give.

Why ``AF_PACKET`` rather than NFQUEUE: NFQUEUE needs an ``iptables``/``nft``
binary to install the rule (neither is installed here, and the kernel lacks
``nft_queue``) plus a netlink client; a packet socket needs nothing but the
standard library and root. Frames are read and written with ``PACKET_VNET_HDR``
so checksum-offloaded and GSO frames pass unchanged (the header tells the kernel
to finish the checksum / segment on the way out).

Run: ``python -m ionn_net.netem.pktdelay --src IF --dst IF --delay-ms D``. It
prints ``ready`` once both sockets are bound, runs until its stdin closes (the
parent died or stopped it) or SIGTERM, then prints one JSON line of counters.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import select
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

from ionn_net.errors import ConfigError
from ionn_net.netem.base import check_fraction, check_nonneg

__all__ = ["DelayLineStats", "main", "run_delay_line"]

_ETH_P_ALL = 0x0003
_SOL_PACKET = 263  # not exported by the socket module on every build
_PACKET_VNET_HDR = 15
_PACKET_OUTGOING = 4
_MAX_FRAME = 65536 + 64
_BATCH = 512  # frames read per wake-up: bounds one loop turn
_IDLE_WAIT_S = 0.5


@dataclass(frozen=True, slots=True)
class DelayLineStats:
    """Counters of one delay-line process."""

    frames_in: int
    frames_out: int
    dropped_loss: int
    dropped_full: int
    dropped_send: int
    #: frames sent more than 5 ms after they were due, and the worst lateness (us): a
    #: delay line that did not run in time delays the link beyond what was configured
    late_5ms: int = 0
    late_max_us: int = 0


def _open(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    sock.setsockopt(_SOL_PACKET, _PACKET_VNET_HDR, 1)
    sock.bind((ifname, 0))
    return sock


class _Line:
    """The queue of held frames and its counters."""

    def __init__(self, delay_s: float, jitter_s: float, loss: float, seed: int | None) -> None:
        self.delay_s = delay_s
        self.jitter_s = jitter_s
        self.loss = loss
        self.rng = random.Random(seed)
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.held = 0
        self.last_due = 0.0
        self.counts = dict.fromkeys((f.name for f in fields(DelayLineStats)), 0)

    def admit(self, frame: bytes, now: float, max_bytes: int) -> None:
        self.counts["frames_in"] += 1
        if self.loss and self.rng.random() < self.loss:
            self.counts["dropped_loss"] += 1
            return
        if self.held + len(frame) > max_bytes:
            self.counts["dropped_full"] += 1  # tail drop, as a full queue does
            return
        delay = self.delay_s
        if self.jitter_s:
            delay = max(0.0, delay + self.rng.uniform(-self.jitter_s, self.jitter_s))
        self.last_due = max(now + delay, self.last_due)
        self.queue.append((self.last_due, frame))
        self.held += len(frame)

    def release(self, out: socket.socket, now: float) -> None:
        for _ in range(len(self.queue)):
            if self.queue[0][0] > now:
                return
            due, frame = self.queue.popleft()
            late_us = int((now - due) * 1e6)
            self.counts["late_5ms"] += late_us > 5000
            self.counts["late_max_us"] = max(self.counts["late_max_us"], late_us)
            self.held -= len(frame)
            try:
                out.send(frame)
                self.counts["frames_out"] += 1
            except OSError:
                self.counts["dropped_send"] += 1  # e.g. ENOBUFS from a full qdisc


def _drain(src: socket.socket, line: _Line, max_bytes: int) -> None:
    now = time.monotonic()
    for _ in range(_BATCH):
        try:
            frame, addr = src.recvfrom(_MAX_FRAME)
        except BlockingIOError:
            return
        if addr[2] != _PACKET_OUTGOING:  # our own sends on this interface are echoed
            line.admit(frame, now, max_bytes)


def run_delay_line(
    src_if: str,
    dst_if: str,
    *,
    delay_ms: float,
    jitter_ms: float = 0.0,
    loss: float = 0.0,
    seed: int | None = None,
    max_bytes: int = 32 << 20,
    duration_s: float | None = None,
    control_fd: int | None = None,
) -> DelayLineStats:
    """Forward frames from ``src_if`` to ``dst_if`` until ``control_fd`` closes or time is up."""
    check_nonneg("delay_ms", delay_ms, upper=60_000)
    check_nonneg("jitter_ms", jitter_ms, upper=60_000)
    check_fraction("loss", loss)
    src, dst = _open(src_if), _open(dst_if)
    src.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    src.setblocking(False)
    line = _Line(delay_ms / 1000, jitter_ms / 1000, loss, seed)
    end = None if duration_s is None else time.monotonic() + duration_s
    watch = [src] + ([control_fd] if control_fd is not None else [])
    print("ready", flush=True)
    try:
        while end is None or time.monotonic() < end:
            now = time.monotonic()
            wait = line.queue[0][0] - now if line.queue else _IDLE_WAIT_S
            readable, _, _ = select.select(watch, [], [], max(0.0, wait))
            if control_fd in readable and control_fd is not None and not os.read(control_fd, 64):
                break  # the parent closed our stdin: stop
            if src in readable:
                _drain(src, line, max_bytes)
            line.release(dst, time.monotonic())
    finally:
        src.close()
        dst.close()
    return DelayLineStats(**line.counts)


def _raise_priority() -> None:
    """Run ahead of ordinary processes: the emulated wire must not wait for a CPU.

    SCHED_RR at the lowest real-time priority; the loop blocks in ``select`` and
    does bounded work per wake-up, and the kernel's real-time throttling still
    leaves 5% of each second to everything else. Silently skipped when refused.
    """
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (runs inside a network namespace, as root)."""
    p = argparse.ArgumentParser(prog="python -m ionn_net.netem.pktdelay")
    p.add_argument("--src", required=True, help="interface frames arrive on")
    p.add_argument("--dst", required=True, help="interface frames leave by")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--loss", type=float, default=0.0, help="probability a frame is dropped")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-bytes", type=int, default=32 << 20, help="bytes held at most")
    p.add_argument("--duration-s", type=float, default=None)
    p.add_argument(
        "--realtime",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run under SCHED_RR priority 1 when allowed (default: on)",
    )
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.realtime:
        _raise_priority()
    try:
        stats = run_delay_line(
            args.src,
            args.dst,
            delay_ms=args.delay_ms,
            jitter_ms=args.jitter_ms,
            loss=args.loss,
            seed=args.seed,
            max_bytes=args.max_bytes,
            duration_s=args.duration_s,
            control_fd=sys.stdin.fileno(),
        )
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    print(json.dumps(asdict(stats)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
