"""Head members of protocol.md §10: the checks every message's ``parse`` is built from.

This module owns the error types of the application layer and the validation of single
head members: each ``get_*`` reads one member of an untrusted head and returns it typed,
or raises :class:`MemberError` naming the member, what was expected and what arrived. A
request refused this way is answered with an ``error`` message (§10.9) and changes
nothing. Members a function is not asked about are never looked at (§10.1.3).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Mapping
from typing import Any, Final

from ionn_net.errors import IonnError

__all__ = [
    "CONTROL_URGENCY",
    "ERROR_CODES",
    "MAX_LAYER_LIST",
    "QUERY_URGENCY",
    "UPLOAD_URGENCY",
    "MemberError",
    "RequestError",
    "bad_member",
    "check_body_len",
    "get_body_len",
    "get_bool",
    "get_choice",
    "get_digest",
    "get_digest_list",
    "get_hex",
    "get_int",
    "get_int_map",
    "get_layer_list",
    "get_layer_sets",
    "get_number",
    "get_offsets",
    "get_optional_layer_list",
    "get_reasons",
    "get_str",
    "hmac_proof",
    "optional_str",
]

#: §8.1: urgency classes used by version-1 messages.
QUERY_URGENCY: Final = 1
CONTROL_URGENCY: Final = 2
UPLOAD_URGENCY: Final = 5

#: §10.9 error codes, and those of §15.
ERROR_CODES: Final = frozenset(
    {
        "unknown_message",
        "no_session",
        "bad_request",
        "bad_manifest",
        "unknown_model",
        "unknown_blob",
        "offset_conflict",
        "digest_mismatch",
        "stage_order",
        "missing_blobs",
        "layer_not_ready",
        "bad_tensor",
        "limit_exceeded",
        "busy",
        "deadline_exceeded",
        "internal",
        # §15 handoff
        "bad_grant",
        "grant_expired",
        "grant_used_up",
        "out_of_scope",
        "unknown_peer",
        "unreachable",
    }
)

#: Longest list of layer names (or digests) a head member may hold.
MAX_LAYER_LIST: Final = 4096

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_LAYER = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")  # §10.1.4


class RequestError(IonnError):
    """A request the server refuses with an ``error`` message (protocol.md §10.9).

    ``offset`` (``offset_conflict``, §10.5.2) and ``layers`` (``missing_blobs``, §10.6)
    are the code-specific members the ``error`` message carries.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        offset: int | None = None,
        layers: list[str] | None = None,
    ) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.offset = offset
        self.layers = layers


class MemberError(RequestError):
    """A head member is missing or malformed (code ``bad_request``): names the member,
    what was expected and what arrived. Raised by every ``parse`` of a request or a
    reply; a client that gets it from a reply treats the exchange as failed."""

    def __init__(self, member: str, expected: str, got: object) -> None:
        shown = repr(got)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__("bad_request", f"{member}: expected {expected}, got {shown}")
        self.member = member
        self.expected = expected
        self.got = got


def bad_member(member: str, expected: str, got: object) -> MemberError:
    """The error for ``member`` (for checks that need context a ``parse`` lacks)."""
    return MemberError(member, expected, got)


def get_str(head: Mapping[str, Any], member: str, *, max_len: int = 256) -> str:
    value = head.get(member)
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise MemberError(member, f"a string of 1..{max_len} characters", value)
    return value


def optional_str(head: Mapping[str, Any], member: str) -> str | None:
    """An informational member the receiver does not act on: its value when it is a
    string, else None (never a reason to refuse the message)."""
    value = head.get(member)
    return value if isinstance(value, str) else None


def get_int(head: Mapping[str, Any], member: str, *, lo: int = 0, hi: int = 2**62) -> int:
    value = head.get(member)
    if type(value) is not int or not lo <= value <= hi:
        raise MemberError(member, f"an integer in {lo}..{hi}", value)
    return value


def get_number(head: Mapping[str, Any], member: str, *, lo: float = 0.0, hi: float = 1e15) -> float:
    """A finite JSON number (integer or not) in ``lo..hi``."""
    value = head.get(member)
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not lo <= value <= hi
    ):
        raise MemberError(member, f"a number in {lo:g}..{hi:g}", value)
    return float(value)


def get_bool(head: Mapping[str, Any], member: str) -> bool:
    value = head.get(member)
    if not isinstance(value, bool):
        raise MemberError(member, "true or false", value)
    return value


def get_hex(head: Mapping[str, Any], member: str, *, digits: int) -> str:
    value = head.get(member)
    if not isinstance(value, str) or not re.fullmatch(f"[0-9a-f]{{{digits}}}", value):
        raise MemberError(member, f"{digits} lowercase hex digits", value)
    return value


def get_digest(head: Mapping[str, Any], member: str) -> str:
    value = head.get(member)
    if not isinstance(value, str) or not _DIGEST.match(value):
        raise MemberError(member, "a SHA-256 digest (64 lowercase hex digits)", value)
    return value


def get_layer_list(
    head: Mapping[str, Any], member: str, *, max_len: int = MAX_LAYER_LIST
) -> tuple[str, ...]:
    value = head.get(member)
    return _layer_list(member, value, max_len)


def _layer_list(member: str, value: object, max_len: int) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > max_len:
        raise MemberError(member, f"a list of at most {max_len} layer names", value)
    for item in value:
        if not isinstance(item, str) or not _LAYER.match(item):
            raise MemberError(member, "layer names matching [A-Za-z0-9_.-]{1,64}", item)
    return tuple(value)


def get_optional_layer_list(head: Mapping[str, Any], member: str) -> tuple[str, ...] | None:
    """A layer list that a head may leave out (None when absent)."""
    return get_layer_list(head, member) if member in head else None


def get_choice(
    head: Mapping[str, Any], member: str, choices: tuple[str, ...], *, default: str
) -> str:
    """One of ``choices``; ``default`` when the member is absent."""
    if member not in head:
        return default
    value = head[member]
    if not isinstance(value, str) or value not in choices:
        raise MemberError(member, f"one of {list(choices)}", value)
    return value


def get_layer_sets(
    head: Mapping[str, Any], member: str, *, max_sets: int = MAX_LAYER_LIST
) -> tuple[tuple[str, ...], ...]:
    """A list of layer-name lists (``prepare`` of ``load``, ``prepared`` of ``load_ok``,
    §10.6); absent means none."""
    value = head.get(member)
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > max_sets:
        raise MemberError(member, f"a list of at most {max_sets} layer lists", value)
    return tuple(_layer_list(member, item, MAX_LAYER_LIST) for item in value)


def get_digest_list(head: Mapping[str, Any], member: str) -> tuple[str, ...]:
    value = head.get(member)
    if not isinstance(value, list) or len(value) > MAX_LAYER_LIST:
        raise MemberError(member, f"a list of at most {MAX_LAYER_LIST} digests", value)
    for item in value:
        if not isinstance(item, str) or not _DIGEST.match(item):
            raise MemberError(member, "SHA-256 digests (64 lowercase hex digits)", item)
    return tuple(value)


def get_offsets(head: Mapping[str, Any], member: str) -> dict[str, int]:
    """``{"<digest>": offset}`` (``partial`` of §10.3.3, §10.4)."""
    value = head.get(member)
    if not isinstance(value, dict) or len(value) > MAX_LAYER_LIST:
        raise MemberError(member, "an object of blob digests to byte offsets", value)
    for key, offset in value.items():
        if not _DIGEST.match(key) or type(offset) is not int or offset < 0:
            raise MemberError(member, "digest keys with integer offsets >= 0", {key: offset})
    return dict(value)


def get_reasons(head: Mapping[str, Any], member: str) -> dict[str, str]:
    """``{"<layer>": "<reason>"}`` (``refused`` of §10.3.3)."""
    value = head.get(member)
    if not isinstance(value, dict) or len(value) > MAX_LAYER_LIST:
        raise MemberError(member, "an object of layer names to reasons", value)
    for key, why in value.items():
        if not _LAYER.match(key) or not isinstance(why, str):
            raise MemberError(member, "layer-name keys with string reasons", {key: why})
    return dict(value)


def get_int_map(head: Mapping[str, Any], member: str) -> dict[str, int]:
    """An object of names to integers (``limits`` of ``welcome``, §10.2.2)."""
    value = head.get(member)
    if not isinstance(value, dict) or len(value) > 64:
        raise MemberError(member, "an object of at most 64 names to integers", value)
    for key, number in value.items():
        if type(number) is not int:
            raise MemberError(f"{member}.{key}", "an integer", number)
    return dict(value)


def get_body_len(head: Mapping[str, Any]) -> int:
    """§10.1.2: the decoded length of the body the head announces (0 when absent)."""
    value = head.get("body_len", 0)
    if type(value) is not int or value < 0:
        raise MemberError("body_len", "an integer >= 0", value)
    return value


def check_body_len(body_len: int, *, limit: int) -> int:
    """§10.1.2: a request with a body declares its decoded length, within ``limit``."""
    if body_len > limit:
        raise RequestError("limit_exceeded", f"body_len: expected at most {limit}, got {body_len}")
    return body_len


def hmac_proof(secret: bytes, role: str, client_nonce: bytes, server_nonce: bytes) -> str:
    """§10.2.3: HMAC-SHA256(secret, "ionn-<role>" || client_nonce || server_nonce), hex."""
    msg = f"ionn-{role}".encode() + client_nonce + server_nonce
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()
