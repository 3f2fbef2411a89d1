"""Which message a head is: the tables of §10's requests and replies, by ``"m"``.

A server looks the request type up first (:func:`request_type`; an unknown ``"m"`` is
``unknown_message``, §10.1.3), checks what the connection's state allows, then parses
(``cls.parse(head)``). A client parses each reply as one of the types it expects
(:func:`parse_reply`); an ``error`` reply raises :class:`RemoteError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, TypeVar, overload

from ionn_net.errors import IonnError
from ionn_net.messages.handoff import (
    Fetch,
    FetchOk,
    Grant,
    GrantOk,
    Pull,
    PullOk,
    Push,
    PushOk,
    Redeem,
    RedeemOk,
    Stage,
    StageBlob,
    StageOk,
)
from ionn_net.messages.members import RequestError
from ionn_net.messages.query import Error, Query, RemoteError, Result
from ionn_net.messages.session import Auth, Challenge, Hello, Welcome
from ionn_net.messages.timing import Timings, TimingsOk
from ionn_net.messages.upload import (
    Blob,
    BlobOk,
    Have,
    HaveOk,
    Load,
    LoadOk,
    Manifest,
    ManifestOk,
)

__all__ = [
    "REPLIES",
    "REQUESTS",
    "Reply",
    "Request",
    "UnexpectedReply",
    "parse_reply",
    "parse_request",
    "request_type",
]

Request = (
    Hello
    | Auth
    | Manifest
    | Have
    | Blob
    | Load
    | Query
    | Grant
    | Redeem
    | Pull
    | Fetch
    | Push
    | Stage
    | StageBlob
    | Timings
)
Reply = (
    Challenge
    | Welcome
    | ManifestOk
    | HaveOk
    | BlobOk
    | LoadOk
    | Result
    | Error
    | GrantOk
    | RedeemOk
    | PullOk
    | FetchOk
    | PushOk
    | StageOk
    | TimingsOk
)

#: §10 and §15 requests by ``"m"``.
REQUESTS: Final[Mapping[str, type[Request]]] = {
    cls.KIND: cls
    for cls in (
        *(Hello, Auth, Manifest, Have, Blob, Load, Query),
        *(Grant, Redeem, Pull, Fetch, Push, Stage, StageBlob),
        Timings,
    )
}
#: §10 and §15 replies by ``"m"``.
REPLIES: Final[Mapping[str, type[Reply]]] = {
    cls.KIND: cls
    for cls in (
        *(Challenge, Welcome, ManifestOk, HaveOk, BlobOk, LoadOk, Result, Error),
        *(GrantOk, RedeemOk, PullOk, FetchOk, PushOk, StageOk),
        TimingsOk,
    )
}

R = TypeVar("R", bound=Reply)
S = TypeVar("S", bound=Reply)


class UnexpectedReply(IonnError):
    """The peer answered with a message type the request does not allow."""

    def __init__(self, expected: tuple[str, ...], got: object) -> None:
        super().__init__(f"reply: expected {' or '.join(expected)}, got {got!r:.80}")
        self.expected = expected
        self.got = got


def request_type(head: Mapping[str, Any]) -> type[Request]:
    """The request type ``head`` names, or ``unknown_message`` (§10.1.3)."""
    kind = head.get("m")
    cls = REQUESTS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise RequestError("unknown_message", f"m: unknown message type {kind!r}")
    return cls


def parse_request(head: Mapping[str, Any]) -> Request:
    """``head`` as the typed request it names (:func:`request_type`, then its parse)."""
    return request_type(head).parse(head)


@overload
def parse_reply(head: Mapping[str, Any], expected: type[R], /) -> R: ...
@overload
def parse_reply(head: Mapping[str, Any], expected: type[R], other: type[S], /) -> R | S: ...
def parse_reply(head: Mapping[str, Any], *expected: Any) -> Any:
    """``head`` as one of the ``expected`` reply types; :class:`RemoteError` for an
    ``error`` (unless ``Error`` is expected), :class:`UnexpectedReply` for anything else,
    :class:`~ionn_net.messages.members.MemberError` for a malformed one."""
    kind = head.get("m")
    for cls in expected:
        if kind == cls.KIND:
            return cls.parse(head)
    if kind == Error.KIND:
        raise RemoteError(Error.parse(head))
    raise UnexpectedReply(tuple(cls.KIND for cls in expected), kind)
