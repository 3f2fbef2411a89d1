"""Message envelope rules the core enforces (protocol.md §4.2, §10.1.2).

This module owns the checks on a message head that do not depend on its type: a head is a
JSON object with a string ``"m"``; a message with a body announces ``"body_len"`` within
MAX_MESSAGE_SIZE; a message without a body announces none (or 0). Received heads violate
them as stream errors; heads we are asked to send violate them as :class:`UsageError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ionn_net.proto.errors import MessageTooLarge, ProtocolViolation, UsageError
from ionn_net.proto.wire import encode_head

__all__ = ["received_body_len", "sendable_body_len", "sendable_head"]


def received_body_len(
    sid: int, head: Mapping[str, Any], end_stream: bool, max_message_size: int
) -> int | None:
    """The announced body length of a received message; raises a stream error (§10.1.2)."""
    value = head.get("body_len")
    if end_stream:
        if value not in (None, 0):
            raise ProtocolViolation(
                f"HEADERS+END_STREAM on stream {sid}: body_len {value!r} announced but the "
                "message ends without a body",
                stream_id=sid,
            )
        return None
    if type(value) is not int or value < 0:
        raise ProtocolViolation(
            f"HEADERS on stream {sid}: expected a non-negative integer body_len, got {value!r}",
            stream_id=sid,
        )
    if value > max_message_size:
        raise MessageTooLarge(
            f"HEADERS on stream {sid}: body_len {value} exceeds MAX_MESSAGE_SIZE "
            f"{max_message_size}",
            stream_id=sid,
        )
    return value


def sendable_body_len(
    head: Mapping[str, Any], end_stream: bool, peer_max_message_size: int
) -> int | None:
    """The body length a head we send announces; :class:`UsageError` if it breaks §10.1.2."""
    value = head.get("body_len")
    if end_stream:
        if value not in (None, 0):
            raise UsageError(f"head: body_len {value!r} announced with end_stream=True")
        return None
    if type(value) is not int or value < 0:
        raise UsageError(f"head: a message with a body needs an int body_len, got {value!r}")
    if value > peer_max_message_size:
        raise UsageError(
            f"head: body_len {value} exceeds the peer's MAX_MESSAGE_SIZE {peer_max_message_size}"
        )
    return value


def sendable_head(head: Mapping[str, Any], peer_max_header_size: int) -> bytes:
    """The JSON bytes of a head we send; it must fit the peer's MAX_HEADER_SIZE (§4.2)."""
    if not isinstance(head, Mapping) or not isinstance(head.get("m"), str):
        raise UsageError(f"head: expected a JSON object with a string 'm', got {head!r:.200}")
    raw = encode_head(head)
    if len(raw) + 4 > peer_max_header_size:
        raise UsageError(
            f"head: expected at most {peer_max_header_size - 4} bytes of JSON, got {len(raw)}"
        )
    return raw
