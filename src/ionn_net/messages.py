"""Application messages of protocol.md §10: names, priorities and head validation.

Shared by the client and the server: what each head member must look like, checked
at the boundary with an :class:`RequestError` that names the member, what was
expected and what arrived. A request refused this way is answered with an ``error``
message (§10.9) and changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any, Final

from ionn_net.errors import IonnError

__all__ = [
    "CONTROL_URGENCY",
    "ERROR_CODES",
    "QUERY_URGENCY",
    "UPLOAD_URGENCY",
    "RemoteError",
    "RequestError",
    "error_head",
    "get_body_len",
    "get_digest",
    "get_hex",
    "get_int",
    "get_layer_list",
    "get_str",
    "hmac_proof",
    "layer_sets",
]

#: §8.1: urgency classes used by version-1 messages.
QUERY_URGENCY: Final = 1
CONTROL_URGENCY: Final = 2
UPLOAD_URGENCY: Final = 5

#: §10.9 error codes.
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
        "missing_blobs",
        "layer_not_ready",
        "bad_tensor",
        "limit_exceeded",
        "busy",
        "deadline_exceeded",
        "internal",
    }
)

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_LAYER = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_MAX_LIST = 4096


class RequestError(IonnError):
    """A request the server refuses with an ``error`` message (protocol.md §10.9)."""

    def __init__(self, code: str, message: str, **extra: object) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.extra = extra


class RemoteError(IonnError):
    """The peer answered a request with an ``error`` message."""

    def __init__(self, code: str, message: str, head: Mapping[str, Any]) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.head = head


def error_head(code: str, message: str, **extra: object) -> dict[str, object]:
    return {"m": "error", "code": code, "message": message, **extra}


def _bad(member: str, expected: str, got: object) -> RequestError:
    shown = repr(got)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return RequestError("bad_request", f"{member}: expected {expected}, got {shown}")


def get_str(head: Mapping[str, Any], member: str, *, max_len: int = 256) -> str:
    value = head.get(member)
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise _bad(member, f"a string of 1..{max_len} characters", value)
    return value


def get_int(head: Mapping[str, Any], member: str, *, lo: int = 0, hi: int = 2**62) -> int:
    value = head.get(member)
    if type(value) is not int or not lo <= value <= hi:
        raise _bad(member, f"an integer in {lo}..{hi}", value)
    return value


def get_hex(head: Mapping[str, Any], member: str, *, digits: int) -> str:
    value = head.get(member)
    if not isinstance(value, str) or not re.fullmatch(f"[0-9a-f]{{{digits}}}", value):
        raise _bad(member, f"{digits} lowercase hex digits", value)
    return value


def get_digest(head: Mapping[str, Any], member: str) -> str:
    value = head.get(member)
    if not isinstance(value, str) or not _DIGEST.match(value):
        raise _bad(member, "a SHA-256 digest (64 lowercase hex digits)", value)
    return value


def get_layer_list(head: Mapping[str, Any], member: str, *, max_len: int = _MAX_LIST) -> list[str]:
    value = head.get(member)
    if not isinstance(value, list) or len(value) > max_len:
        raise _bad(member, f"a list of at most {max_len} layer names", value)
    for item in value:
        if not isinstance(item, str) or not _LAYER.match(item):
            raise _bad(member, "layer names matching [A-Za-z0-9_.-]{1,64}", item)
    return list(value)


def get_body_len(head: Mapping[str, Any], *, limit: int) -> int:
    """§10.1.2: a request with a body declares its decoded length, within ``limit``."""
    value = head.get("body_len", 0)
    if type(value) is not int or value < 0:
        raise _bad("body_len", "an integer >= 0", value)
    if value > limit:
        raise RequestError("limit_exceeded", f"body_len: expected at most {limit}, got {value}")
    return value


def hmac_proof(secret: bytes, role: str, client_nonce: bytes, server_nonce: bytes) -> str:
    """§10.2.3: HMAC-SHA256(secret, "ionn-<role>" || client_nonce || server_nonce), hex."""
    msg = f"ionn-{role}".encode() + client_nonce + server_nonce
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def layer_sets(value: object, *, member: str, max_sets: int = 16) -> list[list[str]]:
    """A list of layer-name lists (the ``prepare`` member of ``load``, §10.6)."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > max_sets:
        raise _bad(member, f"a list of at most {max_sets} layer lists", value)
    return [get_layer_list({"x": item}, "x") for item in value]
