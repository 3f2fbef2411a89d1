"""The asyncio adapter around the sans-I/O core: bytes in, frames out, timers, backpressure.

Owns one connection's socket-level behaviour and nothing about streams:

* **Receive**: an ``asyncio.BufferedProtocol`` reads into one preallocated buffer and feeds
  ``Connection.receive_data(view, now=loop.time())``. The buffer starts small and doubles
  (up to ``read_buffer_size``) each time a read fills it, so a bulk transfer is read in
  large pieces while an idle connection holds 64 KiB.
* **Three-call contract**: after every receive, send or timer call into the core, the
  writer drains frames first and the events are dispatched second (to the
  :class:`ConnectionSink`, the stream layer of :mod:`ionn_net.aio.api`).
* **Writer**: takes frames from the core's scheduler in small batches
  (``frames_to_send()``) only while the transport is below its high-water mark, and hands
  each batch over with one ``writelines``: vectored and copy-free on uvloop; asyncio's
  transports of Python 3.11 join the buffers and write once. (The flow-control bugs of
  cpython #103462 and #127655 were in the ``sendmsg`` writelines added in 3.12.) Over TLS
  the batch is joined first: SSL transports make a record of every buffer they are
  given, and a 16-byte frame header would become a record of its own. Together
  with ``TCP_NOTSENT_LOWAT`` and small transport buffers this bounds the bytes that a newly
  queued urgent frame can wait behind (head-of-line blocking, §8.3).
* **Read backpressure**: ``pause_reading()`` while the application holds more than the read
  budget of received-but-unconsumed bytes; reading resumes when it drops to half.
* **Outbound cap**: bytes queued in the core plus the transport are observable through
  :attr:`IonnProtocol.outbound_bytes` (the connection adds the bodies its streams hold,
  §14.3.1); senders wait while it is at ``max_outbound_bytes`` and a connection that makes
  no write progress for the stall timeout while stuck is closed with TIMEOUT (§14.3.2) and
  a message naming the queued bytes.
* **Timers**: the core's single deadline (``get_timer``) is one ``loop.call_at`` handle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from typing import Any, Protocol, cast

from ionn_net.aio.options import TransportOptions
from ionn_net.aio.pacing import LinkRateMeter
from ionn_net.aio.sockopts import (
    TCP_NOTSENT_LOWAT,
    AppliedOptions,
    SocketLike,
    TcpInfo,
    configure_socket,
)
from ionn_net.aio.sockopts import read_tcp_info as _read_tcp_info
from ionn_net.config import Limits
from ionn_net.proto import Connection, ErrorCode, Event

__all__ = ["ConnectionSink", "IonnProtocol", "logger"]

logger = logging.getLogger("ionn_net.aio")

# Frames taken from the scheduler in one flush are joined into writes of about this size:
# the order is already decided, so joining costs no priority, and one 256 KiB write is far
# cheaper than eight 32 KiB ones (a system call each). A frame this large goes alone.
_COALESCE = 256 * 1024
_MIN_COALESCE = 16 * 1024
_LOWAT_BOUNDS = (16 * 1024, 4 * 1024 * 1024)  # adaptive TCP_NOTSENT_LOWAT range
_LOWAT_SAMPLE_S = 0.05  # how often the delivery rate is read while sending
_RTT_SAMPLE_S = 0.1  # how often the kernel's RTT estimate is read while receiving
_FIRST_READ_BUFFER = 64 * 1024  # doubles, up to TransportOptions.read_buffer_size, when filled
#: After our GOAWAY and FIN, how long we keep reading (and discarding) before closing:
#: closing a socket with unread input makes the kernel send RST, which can destroy the
#: GOAWAY in the peer's receive queue before it reads the reason (protocol.md §5.2).
_LINGER_S = 2.0


class ConnectionSink(Protocol):
    """What the protocol reports to the stream layer."""

    def transport_made(self) -> None:
        """The socket (and TLS, if any) is up; the handshake starts."""

    def events_received(self, events: list[Event]) -> None:
        """Core events, after the frames they caused have been handed to the transport."""

    def transport_lost(self, exc: BaseException | None, reason: str | None) -> None:
        """The socket is gone (``reason`` set when we closed it on purpose, e.g. a stall)."""

    def send_room(self) -> None:
        """The outbound queue shrank or the transport resumed: blocked senders may go on."""


class IonnProtocol(asyncio.BufferedProtocol):
    """One IONN-NET connection's socket adapter (see the module docstring)."""

    def __init__(
        self, core: Connection, sink: ConnectionSink, limits: Limits, options: TransportOptions
    ) -> None:
        self.core = core
        self.sink = sink
        self.limits = limits
        self.options = options
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.socket: SocketLike | None = None
        self.applied = AppliedOptions(nodelay=False, notsent_lowat=None)
        self._view = memoryview(bytearray(min(options.read_buffer_size, _FIRST_READ_BUFFER)))
        self._write_paused = False
        self._read_paused = False
        self._unconsumed = 0
        # The connection's receive window bounds what the peer may send ahead (it may grow
        # up to max_connection_credit with auto-tuning).
        self._read_budget = options.read_budget or max(
            limits.initial_connection_credit, limits.max_connection_credit
        )
        self._rtt_sampled = -1e18
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when: float | None = None
        self._stall_timeout = options.stall_timeout_s or limits.heartbeat_timeout_s
        self._stall_handle: asyncio.TimerHandle | None = None
        self._last_progress = self.loop.time()
        self._closing_reason: str | None = None
        self._lost = False
        self._linger: asyncio.TimerHandle | None = None
        self.bytes_written = 0
        self.bytes_received = 0
        self._flush_scheduled = False
        self._meter = LinkRateMeter(window_s=5.0, min_span_s=0.05)
        self._lowat_sampled = -1e18
        self._vectored = True  # writelines of frame batches (not over TLS, see flush)

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport: cast, do not check.
        self.transport = cast(asyncio.Transport, transport)
        self._vectored = transport.get_extra_info("ssl_object") is None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.socket = cast(SocketLike, sock)
            wanted = self.options.congestion_to_set
            self.applied = configure_socket(
                self.socket, notsent_lowat=self.options.notsent_lowat, congestion=wanted
            )
            if wanted is not None and self.applied.congestion not in (None, wanted):
                # e.g. an unprivileged process and cubic missing from
                # net.ipv4.tcp_allowed_congestion_control (TransportOptions.congestion)
                logger.warning(
                    "congestion control %r refused by the kernel: keeping %r",
                    wanted,
                    self.applied.congestion,
                )
        high = self.options.write_high_water
        low = self.options.write_low_water
        self.transport.set_write_buffer_limits(high=high, low=high // 4 if low is None else low)
        self._last_progress = self.loop.time()
        self.sink.transport_made()
        if self.core_is_client:
            self.core.initiate()
        self.after_core_call([])

    @property
    def core_is_client(self) -> bool:
        return bool(getattr(self.core, "client", False))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes_received += nbytes
        if self._linger is not None:
            return  # closing: the core is done, input is drained and dropped
        now = self.loop.time()
        if now - self._rtt_sampled >= _RTT_SAMPLE_S:
            self._sample_rtt(now)
        view = self._view
        events = self.core.receive_data(view[:nbytes], now)
        if nbytes == len(view) and nbytes < self.options.read_buffer_size:
            # A full read: a bulk transfer. Larger reads cut the per-read cost (system call,
            # core call, one event per read) several fold; idle connections stay small.
            # The core keeps no reference to its input once receive_data returns.
            size = min(2 * nbytes, self.options.read_buffer_size)
            self._view = memoryview(bytearray(size))
        self.after_core_call(events)

    def _sample_rtt(self, now: float) -> None:
        """Feed the kernel's smoothed RTT to the core (receive-window auto-tuning)."""
        self._rtt_sampled = now
        info = None if self.socket is None else _read_tcp_info(self.socket)
        if info is not None and info.rtt_s > 0:
            self.core.observe_rtt(info.rtt_s)

    def eof_received(self) -> bool | None:
        logger.debug("peer closed its sending side")
        return False  # close our side too: the protocol has no half-closed connections

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        self._cancel_timer()
        if self._linger is not None:
            self._linger.cancel()
        if self._stall_handle is not None:
            self._stall_handle.cancel()
            self._stall_handle = None
        self._write_paused = True
        self.sink.transport_lost(exc, self._closing_reason)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._arm_stall_watchdog()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._last_progress = self.loop.time()
        self.flush()
        self._maybe_close()
        self.sink.send_room()

    # ------------------------------------------------------------------ writer

    @property
    def writes_vectored(self) -> bool:
        """Frame batches go to ``transport.writelines`` as is (False over TLS: joined)."""
        return self._vectored

    @property
    def headers_sent_own(self) -> int:
        """Highest id of a stream we opened whose HEADERS has been written, or that was reset
        before it was (the peer never sees it). The writer writes all it takes from the core."""
        return int(self.core.opened_streams_sent)

    @property
    def outbound_bytes(self) -> int:
        """Bytes queued for the peer: in the core plus in the transport's buffer."""
        queued = int(self.core.outbound_buffered_bytes)
        if self.transport is not None and not self._lost:
            queued += self.transport.get_write_buffer_size()
        return queued

    @property
    def send_room(self) -> int:
        """How many more bytes senders may queue before the outbound cap."""
        return self.limits.max_outbound_bytes - self.outbound_bytes

    @property
    def writable(self) -> bool:
        return self.transport is not None and not self._lost and not self._write_paused

    def flush(self) -> None:
        """Hand frames to the transport while it is below high water.

        Frames are taken from the core's scheduler in batches of up to ``_COALESCE`` bytes,
        and no more than the kernel's low-water mark (a request's HEADERS and first DATA
        leave in one write, one wake-up at the peer; a bulk body needs fewer system calls).
        Each batch is one ``writelines`` of headers and payloads: uvloop sends it with one
        ``writev`` and keeps references instead of copying (payloads are memoryviews of
        read-only bodies, see ``Connection.send_data``); asyncio's transports join it.
        """
        transport = self.transport
        if transport is None or self._lost:
            return
        core = self.core
        written = 0
        # No larger than what the kernel takes at once (the low-water mark): a batch the
        # kernel refuses would sit in the transport's buffer, past the scheduler.
        limit = min(_COALESCE, max(_MIN_COALESCE, self.applied.notsent_lowat or _COALESCE))
        # pause_writing() is called synchronously from inside write() once the transport's
        # buffer passes high water, which ends this loop with the rest still in the core.
        while not self._write_paused:
            parts, size = core.frames_to_send(limit)
            if not size:
                break
            if len(parts) == 1:
                transport.write(parts[0])
            elif self._vectored:
                transport.writelines(parts)
            else:
                transport.write(b"".join(parts))  # TLS: one record per buffer otherwise
            written += size
        if written:
            self.bytes_written += written
            now = self.loop.time()
            if not self._write_paused:
                self._last_progress = now
            if now - self._lowat_sampled >= _LOWAT_SAMPLE_S:
                self._lowat_sampled = now
                self._adapt_lowat(now)
            self.sink.send_room()  # body bytes left the core: blocked senders may go on

    def _adapt_lowat(self, now: float) -> None:
        """Keep about ``hol_budget_s`` of link time unsent in the kernel (see options)."""
        budget = self.options.hol_budget_s
        current = self.applied.notsent_lowat
        if budget is None or current is None or self.socket is None:
            return
        info = _read_tcp_info(self.socket)
        if info is None:
            return
        self._meter.update(info, now)
        rate = self._meter.estimate(now)
        if rate is None:
            return
        low, high = _LOWAT_BOUNDS
        wanted = max(low, min(high, int(rate * budget)))
        if abs(wanted - current) * 4 < current:
            return  # within 25%: not worth a syscall
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, wanted)
        except OSError:
            return
        self.applied = dataclasses.replace(self.applied, notsent_lowat=wanted)

    def after_core_call(self, events: list[Event]) -> None:
        """The three-call contract: drain frames, dispatch events, re-arm the core's timer.

        Used after receive and timer calls and after control calls (ping, close, open,
        reset) that may move the core's deadline earlier.
        """
        self.flush()
        # Dispatched even without events: a CREDIT frame raises send limits silently and
        # blocked senders must re-check.
        self.sink.events_received(events)
        if events:
            self.flush()  # dispatching may have queued more (credit, answers)
        self._arm_timer()
        self._maybe_close()

    def after_send(self) -> None:
        """After queueing body bytes or acknowledging data: drain frames only.

        Sending and consuming only move the core's deadlines later (activity), so the
        timer is not re-armed here; an early wake-up finds nothing due and re-arms.
        """
        # Deferred to the end of this loop turn: what else the application queues in the
        # same turn (a request's HEADERS then its body) is written together.
        if not self._flush_scheduled and not self._lost:
            self._flush_scheduled = True
            self.loop.call_soon(self._deferred_flush)

    def _deferred_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()
        self._maybe_close()

    def _maybe_close(self) -> None:
        """Close the socket once a finished core has nothing left to send."""
        if self.transport is None or self._lost or not self.core.closed:
            return
        if not self.core.has_data_to_send():
            self._close_lingering()

    def _close_lingering(self) -> None:
        """Half-close after the last frame (GOAWAY), then drain the peer's input until it
        closes too or ``_LINGER_S`` passes, so that unread input does not turn our close
        into an RST that may destroy the GOAWAY before the peer reads it."""
        transport = self.transport
        if transport is None or self._linger is not None:
            return
        if transport.is_closing():
            return
        if not transport.can_write_eof():  # TLS: no half-close
            transport.close()  # flushes the transport's own buffer first
            return
        try:
            transport.write_eof()  # after the transport's buffered bytes
        except OSError:  # the peer is already gone (ENOTCONN): nothing to linger for
            transport.close()
            return
        self._linger = self.loop.call_later(_LINGER_S, transport.close)
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()

    # ------------------------------------------------------------------ read backpressure

    def add_unconsumed(self, nbytes: int) -> None:
        """Received bytes were queued for the application."""
        self._unconsumed += nbytes
        if not self._read_paused and self._unconsumed > self._read_budget:
            self._read_paused = True
            if self.transport is not None and not self._lost:
                self.transport.pause_reading()
                logger.debug("reading paused: %d bytes unconsumed", self._unconsumed)

    def consumed(self, nbytes: int) -> None:
        """The application consumed (or discarded) queued bytes."""
        self._unconsumed -= nbytes
        if self._read_paused and self._unconsumed <= self._read_budget // 2:
            self._read_paused = False
            if self.transport is not None and not self._lost:
                self.transport.resume_reading()
                logger.debug("reading resumed: %d bytes unconsumed", self._unconsumed)

    @property
    def unconsumed_bytes(self) -> int:
        return self._unconsumed

    @property
    def reading_paused(self) -> bool:
        return self._read_paused

    # ------------------------------------------------------------------ timers

    def _arm_timer(self) -> None:
        if self._lost:
            return
        when = self.core.get_timer()
        if when == self._timer_when:
            return
        self._cancel_timer()
        if when is not None:
            self._timer_when = when
            self._timer = self.loop.call_at(when, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_when = None

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_when = None
        if self._lost:
            return
        events = self.core.handle_timer(self.loop.time())
        self.after_core_call(events)

    # ------------------------------------------------------------------ stall watchdog

    def _arm_stall_watchdog(self) -> None:
        if self._stall_handle is None and not self._lost:
            delay = max(self._stall_timeout / 4, 0.05)
            self._stall_handle = self.loop.call_later(delay, self._check_stall)

    def _check_stall(self) -> None:
        self._stall_handle = None
        if self._lost:
            return
        stuck = self._write_paused or self.send_room <= 0
        if not stuck:
            return
        idle = self.loop.time() - self._last_progress
        if idle < self._stall_timeout:
            self._arm_stall_watchdog()
            return
        self.abort(
            ErrorCode.TIMEOUT,
            f"peer stopped reading: {self.outbound_bytes} bytes queued for it "
            f"(cap {self.limits.max_outbound_bytes}) without progress for {idle:.1f} s",
        )

    def note_blocked_sender(self) -> None:
        """A sender waits for room: watch for a stall even if the transport never paused."""
        self._arm_stall_watchdog()

    # ------------------------------------------------------------------ shutdown

    def abort(self, error_code: ErrorCode, reason: str) -> None:
        """Give up on the connection now: try to queue GOAWAY, drop the socket."""
        if self._lost or self.transport is None:
            return
        logger.warning("closing connection: %s", reason)
        self._closing_reason = reason
        if not self.core.closed:
            self.core.close(error_code, reason[: self.limits.max_goaway_debug])
        # Best effort: the GOAWAY goes out if the socket has room; we do not wait for it.
        frame = self.core.next_frame()
        if frame is not None and self.transport.get_write_buffer_size() == 0:
            self.transport.write(frame)
        self.transport.abort()

    def close_transport(self) -> None:
        """Close after the transport's buffer drains (the core has been flushed)."""
        if self.transport is not None and not self._lost:
            self.transport.close()

    # ------------------------------------------------------------------ introspection

    def tcp_info(self) -> TcpInfo | None:
        return None if self.socket is None or self._lost else _read_tcp_info(self.socket)

    def extra(self, name: str) -> Any:
        return None if self.transport is None else self.transport.get_extra_info(name)
