"""The packet delay line's queue: order kept under jitter, loss rate, tail drop."""

from __future__ import annotations

import socket

import pytest

from ionn_net.errors import ConfigError
from ionn_net.netem.pktdelay import _Line, run_delay_line


def test_jitter_never_reorders_and_delay_is_held() -> None:
    line = _Line(delay_s=0.010, jitter_s=0.008, loss=0.0, seed=1)
    for i in range(200):
        line.admit(i.to_bytes(2, "big"), now=i * 0.001, max_bytes=1 << 20)
    dues = [due for due, _ in line.queue]
    assert dues == sorted(dues)
    assert all(due >= i * 0.001 + 0.002 for i, due in enumerate(dues))  # >= delay - jitter
    assert len({round(due - i * 0.001, 4) for i, due in enumerate(dues)}) > 50  # jittered
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        line.release(a, now=0.1)
        b.setblocking(False)
        got = []
        for _ in range(200):
            try:
                got.append(int.from_bytes(b.recv(10), "big"))
            except BlockingIOError:
                break
    assert got == list(range(len(got))) and 0 < len(got) < 200  # only what is due, in order
    assert line.counts["frames_out"] == len(got)
    # All released at 0.1 s, whenever they were due: lateness counted against the due time.
    assert line.counts["late_5ms"] == sum(1 for due in dues if due < 0.095)
    assert line.counts["late_max_us"] == pytest.approx((0.1 - dues[0]) * 1e6, abs=2)


def test_loss_drops_about_the_configured_share() -> None:
    line = _Line(delay_s=0.0, jitter_s=0.0, loss=0.1, seed=4)
    for i in range(5000):
        line.admit(b"x" * 100, now=i * 1e-4, max_bytes=1 << 30)
    assert 400 <= line.counts["dropped_loss"] <= 600
    assert len(line.queue) == 5000 - line.counts["dropped_loss"]


def test_full_queue_tail_drops() -> None:
    line = _Line(delay_s=1.0, jitter_s=0.0, loss=0.0, seed=None)
    for i in range(20):
        line.admit(b"y" * 1000, now=i * 1e-3, max_bytes=10_000)
    assert len(line.queue) == 10 and line.counts["dropped_full"] == 10
    assert line.held == 10_000


def test_run_delay_line_validates_before_opening_sockets() -> None:
    with pytest.raises(ConfigError, match="loss"):
        run_delay_line("lo", "lo", delay_ms=1, loss=1.5)
    with pytest.raises(ConfigError, match="delay_ms"):
        run_delay_line("lo", "lo", delay_ms=-1)
