"""Stream state of protocol.md §6.2: the half-stream table and the per-stream record.

This module owns :data:`HALF_TABLE` -- the §6.2 table as a dict
``(HalfState, FrameKind) -> HalfState | ErrorCode`` applied separately to the frames a
stream sends (local half) and receives (remote half) -- the derived :class:`StreamState`,
and :class:`Stream`, the mutable record a connection keeps per live stream (both halves,
priority, credit counters both ways, body accounting and pending outbound frames).
The conformance suite walks every ``(state, kind)`` pair of :data:`HALF_TABLE`.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping
from types import MappingProxyType

from ionn_net.proto.codecs import Codec
from ionn_net.proto.errors import ErrorCode, UsageError, exception_for

__all__ = [
    "HALF_TABLE",
    "FrameKind",
    "HalfState",
    "OutChunk",
    "Stream",
    "StreamState",
    "apply_half",
    "derive_state",
    "frame_kind",
]


class HalfState(enum.IntEnum):
    """State of one direction of a stream (§6.2). (IntEnum: C-speed hashing in the hot path.)"""

    EXPECT_HEADERS = 0
    BODY = 1
    ENDED = 2


class FrameKind(enum.IntEnum):
    """The inputs of the half-stream table."""

    HEADERS = 0
    HEADERS_END = 1
    DATA = 2
    DATA_END = 3


class StreamState(enum.Enum):
    """Stream states derived from the two halves (§6.2); IDLE before HEADERS opens it."""

    IDLE = "idle"
    OPEN = "open"
    HALF_CLOSED_LOCAL = "half_closed_local"
    HALF_CLOSED_REMOTE = "half_closed_remote"
    CLOSED = "closed"


_H, _E, _B = HalfState.EXPECT_HEADERS, HalfState.ENDED, HalfState.BODY

#: §6.2: (half state, frame kind) -> next half state, or the error code of a stream error.
HALF_TABLE: Mapping[tuple[HalfState, FrameKind], HalfState | ErrorCode] = MappingProxyType(
    {
        (_H, FrameKind.HEADERS): _B,
        (_H, FrameKind.HEADERS_END): _E,
        (_H, FrameKind.DATA): ErrorCode.PROTOCOL_ERROR,
        (_H, FrameKind.DATA_END): ErrorCode.PROTOCOL_ERROR,
        (_B, FrameKind.HEADERS): ErrorCode.PROTOCOL_ERROR,
        (_B, FrameKind.HEADERS_END): ErrorCode.PROTOCOL_ERROR,
        (_B, FrameKind.DATA): _B,
        (_B, FrameKind.DATA_END): _E,
        (_E, FrameKind.HEADERS): ErrorCode.STREAM_CLOSED,
        (_E, FrameKind.HEADERS_END): ErrorCode.STREAM_CLOSED,
        (_E, FrameKind.DATA): ErrorCode.STREAM_CLOSED,
        (_E, FrameKind.DATA_END): ErrorCode.STREAM_CLOSED,
    }
)

_KINDS: Mapping[tuple[bool, bool], FrameKind] = MappingProxyType(
    {
        (True, False): FrameKind.HEADERS,
        (True, True): FrameKind.HEADERS_END,
        (False, False): FrameKind.DATA,
        (False, True): FrameKind.DATA_END,
    }
)

#: §6.2 second table: (local ENDED, remote ENDED) -> stream state (RESET aside).
_DERIVED: Mapping[tuple[bool, bool], StreamState] = MappingProxyType(
    {
        (False, False): StreamState.OPEN,
        (True, False): StreamState.HALF_CLOSED_LOCAL,
        (False, True): StreamState.HALF_CLOSED_REMOTE,
        (True, True): StreamState.CLOSED,
    }
)


def frame_kind(*, headers: bool, end_stream: bool) -> FrameKind:
    """The table input for a HEADERS or DATA frame with or without END_STREAM."""
    return _KINDS[headers, end_stream]


def derive_state(local: HalfState, remote: HalfState, *, reset: bool = False) -> StreamState:
    """The stream state of §6.2 from its two halves (closed from any state after RESET)."""
    if reset:
        return StreamState.CLOSED
    return _DERIVED[local is HalfState.ENDED, remote is HalfState.ENDED]


def apply_half(state: HalfState, kind: FrameKind) -> HalfState | ErrorCode:
    """One lookup in :data:`HALF_TABLE`."""
    return HALF_TABLE[state, kind]


class OutChunk:
    """A body piece queued by ``send_data``; frames are cut from it when emitted (§8.3)."""

    __slots__ = ("align", "codec", "data", "end_stream", "offset")

    def __init__(self, data: memoryview, codec: Codec, end_stream: bool, align: int = 1) -> None:
        self.data = data
        self.offset = 0
        self.codec = codec
        self.end_stream = end_stream
        self.align = align  # frame cuts fall on multiples of this (element width)

    @property
    def remaining(self) -> int:
        return len(self.data) - self.offset


class Stream:
    """Everything a connection tracks for one live stream.

    Credit counters are cumulative wire bytes (§7): ``sent <= send_limit`` (peer's grant)
    and ``received <= recv_limit`` (our grant); ``consumed`` counts what the application
    acknowledged and ``window`` is what each CREDIT grants beyond it.
    ``body_len``/``body_received`` enforce §10.1.2 on the remote message.
    """

    __slots__ = (
        "body_len",
        "body_received",
        "consumed",
        "credit_at",
        "end_emitted",
        "incremental",
        "local",
        "local_initiated",
        "out_bytes",
        "outq",
        "pending_headers",
        "received",
        "recv_limit",
        "remote",
        "reset",
        "reset_after",
        "scheduled",
        "send_body_len",
        "send_body_queued",
        "send_limit",
        "sent",
        "seq",
        "stream_id",
        "urgency",
        "window",
    )

    def __init__(
        self,
        stream_id: int,
        *,
        local_initiated: bool,
        urgency: int,
        incremental: bool,
        seq: int,
        send_limit: int,
        recv_limit: int,
        window: int | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.local_initiated = local_initiated
        self.local = HalfState.EXPECT_HEADERS
        self.remote = HalfState.EXPECT_HEADERS
        self.reset = False
        self.reset_after: int | None = None  # RESET code to send once the output is written
        self.urgency = urgency
        self.incremental = incremental
        self.seq = seq
        self.send_limit = send_limit
        self.sent = 0
        self.recv_limit = recv_limit
        self.received = 0
        self.consumed = 0
        # Receive window a CREDIT grants beyond consumed bytes (auto-tuned, flowtune.py) and
        # when the last CREDIT of this stream was sent.
        self.window = recv_limit if window is None else window
        self.credit_at: float | None = None
        self.body_len = 0  # announced by the remote HEADERS (0: no body)
        self.body_received = 0
        self.send_body_len: int | None = None
        self.send_body_queued = 0
        self.pending_headers: bytes | None = None
        self.outq: deque[OutChunk] = deque()
        self.out_bytes = 0
        self.end_emitted = False
        self.scheduled = False

    @property
    def state(self) -> StreamState:
        return derive_state(self.local, self.remote, reset=self.reset)

    @property
    def finished(self) -> bool:
        """Nothing more will be sent or received: reset, or both ENDs exchanged."""
        return self.reset or (self.remote is HalfState.ENDED and self.end_emitted)

    @property
    def has_output(self) -> bool:
        return self.pending_headers is not None or bool(self.outq)

    @property
    def send_credit(self) -> int:
        return self.send_limit - self.sent

    def apply_remote(self, kind: FrameKind, ftype: str) -> None:
        """Apply a received frame to the remote half; a table error raises a stream error."""
        nxt = HALF_TABLE[self.remote, kind]
        if isinstance(nxt, ErrorCode):
            raise exception_for(nxt)(
                f"{ftype} frame on stream {self.stream_id}: not allowed while the peer's half "
                f"is {self.remote.name} (expected "
                f"{'HEADERS' if self.remote is HalfState.EXPECT_HEADERS else 'DATA'})",
                stream_id=self.stream_id,
            )
        self.remote = nxt

    def check_local(self, kind: FrameKind) -> HalfState:
        """The local half after sending ``kind``; a table error is a :class:`UsageError`."""
        if self.reset:
            raise UsageError(f"stream {self.stream_id} was reset: nothing more may be sent")
        nxt = HALF_TABLE[self.local, kind]
        if isinstance(nxt, ErrorCode):
            raise UsageError(
                f"stream {self.stream_id}: cannot send {kind.name} while the local half is "
                f"{self.local.name}"
            )
        return nxt
