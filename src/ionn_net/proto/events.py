"""Events the sans-I/O :class:`~ionn_net.proto.connection.Connection` reports.

This module owns the event value types: frozen, slotted, keyword-only dataclasses that
are complete when created. ``receive_data`` and ``handle_timer`` return them in the
order the underlying frames were processed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ionn_net.proto.errors import ErrorCode, ProtocolError

__all__ = [
    "ConnectionTerminated",
    "DataReceived",
    "Event",
    "GoAwayReceived",
    "HeadersReceived",
    "PingAcked",
    "PingReceived",
    "PrefaceReceived",
    "SettingsAcked",
    "SettingsReceived",
    "StreamReset",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefaceReceived:
    """The peer's preface arrived and ``version`` was agreed (§2)."""

    version: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SettingsReceived:
    """The peer's SETTINGS were applied (and acknowledged); every entry, in id order."""

    settings: Mapping[int, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class SettingsAcked:
    """The peer acknowledged our SETTINGS (§4.4)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HeadersReceived:
    """A HEADERS frame started a message on ``stream_id`` (§4.2, §10.1)."""

    stream_id: int
    head: Mapping[str, Any]
    urgency: int
    incremental: bool
    end_stream: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DataReceived:
    """Decoded body bytes of ``stream_id``.

    One DATA frame, or a run of consecutive RAW DATA frames of the stream that arrived in
    one ``receive_data`` input, joined up to 64 KiB (fewer events for a bulk body).
    ``wire_length`` is what counted against flow control (the sum over the run): hand it
    to ``Connection.acknowledge_received_data`` once the data is consumed (§7).
    """

    stream_id: int
    data: bytes
    wire_length: int
    end_stream: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamReset:
    """``stream_id`` was reset: by the peer (``remote``) or by us after a stream error."""

    stream_id: int
    error_code: ErrorCode
    remote: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class PingReceived:
    """The peer sent a PING; the ACK is already queued (§4.5)."""

    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class PingAcked:
    """The peer answered one of our PINGs."""

    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class GoAwayReceived:
    """The peer sent GOAWAY (§13)."""

    last_stream_id: int
    error_code: ErrorCode
    debug: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionTerminated:
    """The connection is over; no further events follow.

    ``remote`` says which side ended it. ``error`` is the typed exception of a connection
    error (ours or reported by the peer's GOAWAY), ``None`` for a graceful close.
    """

    error_code: ErrorCode
    reason: str
    remote: bool
    error: ProtocolError | None


Event = (
    PrefaceReceived
    | SettingsReceived
    | SettingsAcked
    | HeadersReceived
    | DataReceived
    | StreamReset
    | PingReceived
    | PingAcked
    | GoAwayReceived
    | ConnectionTerminated
)
