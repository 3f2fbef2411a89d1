"""Socket options of the asyncio layer: latency-friendly TCP settings and ``TCP_INFO``.

Owns the per-socket tuning that keeps unsent bytes below the scheduler small (protocol.md §8,
head-of-line blocking): ``TCP_NODELAY`` so small query frames leave at once, and
``TCP_NOTSENT_LOWAT`` so the kernel accepts only a bounded amount of not-yet-sent data (a
non-blocking ``send`` returns short once that much is queued, and the transport then buffers
in userspace where the next frame is still chosen by priority). Also reads Linux ``TCP_INFO``
(delivery rate, bytes acknowledged, smoothed RTT) for the pacing estimator.

Everything here is a no-op, reported as not applied, on platforms without the option.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Protocol

from ionn_net.errors import ConfigError

__all__ = [
    "SO_MAX_PACING_RATE",
    "TCP_NOTSENT_LOWAT",
    "AppliedOptions",
    "SocketLike",
    "TcpInfo",
    "configure_socket",
    "read_tcp_info",
    "set_max_pacing_rate",
]

# Linux values, used when the socket module lacks the names (CPython exposes
# TCP_NOTSENT_LOWAT only from 3.12 on some builds).
TCP_NOTSENT_LOWAT: int = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
SO_MAX_PACING_RATE: int = getattr(socket, "SO_MAX_PACING_RATE", 47)
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", 11 if sys.platform == "linux" else None)

# struct tcp_info (include/uapi/linux/tcp.h): offsets of the fields we read. Checked against
# a live socket: bytes_acked == bytes sent + 1 (the SYN) after a transfer.
_TI_FLAGS_OFFSET = 7  # bit 0: tcpi_delivery_rate_app_limited
_TI_RTT = struct.Struct("=II")  # tcpi_rtt, tcpi_rttvar (microseconds) at offset 68
_TI_RTT_OFFSET = 68
_TI_SND_MSS_OFFSET = 16
_TI_UNACKED_OFFSET = 24
_TI_CWND_OFFSET = 80
_TI_TOTAL_RETRANS_OFFSET = 100
_TI_BYTES_ACKED_OFFSET = 120
_TI_NOTSENT_OFFSET = 144
_TI_MIN_RTT_OFFSET = 148
_TI_DELIVERY_RATE_OFFSET = 160
_TI_MIN_SIZE = 168
# tcpi_rwnd_limited (microseconds the peer's receive window held sending back, Linux 4.10+;
# checked live: a receiver that stops reading for 0.5 s adds ~0.5 s here)
_TI_RWND_LIMITED_OFFSET = 176
# tcpi_bytes_sent (bytes the kernel has sent, retransmissions included; Linux 4.19+)
_TI_BYTES_SENT_OFFSET = 200
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")


class SocketLike(Protocol):
    """What asyncio's ``transport.get_extra_info("socket")`` returns (a TransportSocket)."""

    @property
    def family(self) -> int: ...

    def setsockopt(self, level: int, optname: int, value: int | bytes, /) -> None: ...

    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class AppliedOptions:
    """Which options :func:`configure_socket` managed to set (False: unsupported here)."""

    nodelay: bool
    notsent_lowat: int | None
    congestion: str | None = None  # the congestion control in use (read back), if known


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpInfo:
    """The ``TCP_INFO`` fields the pacer uses (Linux only).

    ``delivery_rate`` is the kernel's most recent delivery-rate sample in bytes/s and
    ``app_limited`` says the sample was taken while the sender had nothing queued (so it is a
    lower bound of the path rate, not an estimate of it). ``rtt_s`` is the smoothed round
    trip and ``min_rtt_s`` the smallest seen: their difference is the queueing delay.
    """

    rtt_s: float
    rttvar_s: float
    min_rtt_s: float
    cwnd_segments: int
    bytes_acked: int
    notsent_bytes: int
    delivery_rate: float
    app_limited: bool
    #: Seconds so far that the peer's receive window held sending back (0.0 if unknown):
    #: unsent bytes piling up in the socket then mean a slow reader, not a full path.
    rwnd_limited_s: float = 0.0
    #: Segments retransmitted over the connection's life (tcpi_total_retrans).
    total_retrans: int = 0
    #: The sender's maximum segment size in bytes (tcpi_snd_mss; 0 if unknown): with
    #: ``cwnd_segments`` the window in bytes.
    mss: int = 0
    #: Segments sent and not yet acknowledged (tcpi_unacked): in flight or queued on the path.
    unacked_segments: int = 0
    #: Bytes the kernel has sent so far, retransmissions included (tcpi_bytes_sent; 0 if
    #: unknown): unlike what the application wrote, not what waits in the socket.
    bytes_sent: int = 0


def _is_tcp(sock: SocketLike) -> bool:
    return sock.family in (socket.AF_INET, socket.AF_INET6)


def configure_socket(
    sock: SocketLike, *, notsent_lowat: int | None, congestion: str | None = None
) -> AppliedOptions:
    """Set ``TCP_NODELAY``, ``TCP_NOTSENT_LOWAT`` (unless None) and the congestion control
    (``TCP_CONGESTION``, unless None) on a connected TCP socket.

    Non-TCP sockets (e.g. Unix sockets in tests) are left alone. Raises ConfigError for a
    non-positive low-water mark; an option the platform refuses (an algorithm the kernel
    lacks or does not allow) is reported in the result, not raised.
    """
    if notsent_lowat is not None and notsent_lowat <= 0:
        raise ConfigError(
            f"notsent_lowat: expected a positive byte count or None, got {notsent_lowat}"
        )
    if not _is_tcp(sock):
        return AppliedOptions(nodelay=False, notsent_lowat=None)
    nodelay = True
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        nodelay = False
    applied_lowat: int | None = None
    if notsent_lowat is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, notsent_lowat)
            applied_lowat = notsent_lowat
        except OSError:
            applied_lowat = None
    return AppliedOptions(
        nodelay=nodelay, notsent_lowat=applied_lowat, congestion=_congestion(sock, congestion)
    )


def _congestion(sock: SocketLike, wanted: str | None) -> str | None:
    option: int | None = getattr(socket, "TCP_CONGESTION", None)
    if option is None:
        return None
    if wanted is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, wanted.encode("ascii"))
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, option, 16)
    except OSError:
        return None
    return raw.split(b"\0", 1)[0].decode("ascii", "replace") or None


def set_max_pacing_rate(sock: SocketLike, bytes_per_s: int | None) -> bool:
    """Ask the kernel to pace this socket at most at ``bytes_per_s`` (None: unlimited).

    Linux TCP paces internally (no ``fq`` qdisc needed since 4.13). Returns whether it was set.
    """
    if bytes_per_s is not None and bytes_per_s <= 0:
        raise ConfigError(f"pacing rate: expected a positive bytes/s or None, got {bytes_per_s}")
    value = 0xFFFFFFFF if bytes_per_s is None else min(int(bytes_per_s), 0xFFFFFFFE)
    if not _is_tcp(sock):
        return False
    try:
        # Unsigned 32-bit (larger than a C int, so pass bytes); ~0U means unlimited.
        sock.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, _U32.pack(value))
    except OSError:
        return False
    return True


def read_tcp_info(sock: SocketLike) -> TcpInfo | None:
    """Read ``TCP_INFO`` from a TCP socket, or None where unavailable (non-Linux, old kernel)."""
    if _TCP_INFO is None or not _is_tcp(sock):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256)
    except OSError:
        return None
    if len(raw) < _TI_MIN_SIZE:
        return None
    rtt_us, rttvar_us = _TI_RTT.unpack_from(raw, _TI_RTT_OFFSET)
    return TcpInfo(
        rtt_s=rtt_us / 1e6,
        rttvar_s=rttvar_us / 1e6,
        min_rtt_s=_U32.unpack_from(raw, _TI_MIN_RTT_OFFSET)[0] / 1e6,
        cwnd_segments=_U32.unpack_from(raw, _TI_CWND_OFFSET)[0],
        bytes_acked=_U64.unpack_from(raw, _TI_BYTES_ACKED_OFFSET)[0],
        notsent_bytes=_U32.unpack_from(raw, _TI_NOTSENT_OFFSET)[0],
        delivery_rate=float(_U64.unpack_from(raw, _TI_DELIVERY_RATE_OFFSET)[0]),
        app_limited=bool(raw[_TI_FLAGS_OFFSET] & 1),
        rwnd_limited_s=(
            _U64.unpack_from(raw, _TI_RWND_LIMITED_OFFSET)[0] / 1e6
            if len(raw) >= _TI_RWND_LIMITED_OFFSET + 8
            else 0.0
        ),
        total_retrans=_U32.unpack_from(raw, _TI_TOTAL_RETRANS_OFFSET)[0],
        mss=_U32.unpack_from(raw, _TI_SND_MSS_OFFSET)[0],
        unacked_segments=_U32.unpack_from(raw, _TI_UNACKED_OFFSET)[0],
        bytes_sent=(
            _U64.unpack_from(raw, _TI_BYTES_SENT_OFFSET)[0]
            if len(raw) >= _TI_BYTES_SENT_OFFSET + 8
            else 0
        ),
    )
