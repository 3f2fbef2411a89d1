"""§15 handoff messages: a session moves from one edge server to the next.

Client to its current server: ``grant``/``grant_ok`` (a capability for the next server to
pull this session's blobs, §15.2) and ``push``/``push_ok`` (pre-migration: send them to a
candidate next server ahead of the client, §15.5). Client to its new server:
``fetch``/``fetch_ok`` (pull them from the previous server, §15.4). Server to server, on a
peer connection (§15.3): ``redeem``/``redeem_ok`` and ``pull``/``pull_ok`` (the new server
pulls), ``stage``/``stage_ok`` and ``stage_blob`` (answered ``blob_ok``; the previous server
pushes).

Each is a frozen dataclass with :meth:`parse` and :meth:`to_head`, as in the other message
modules; what depends on the receiver's state (the session's manifest, its peer table, a
grant's validity) is checked by the receiver.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ionn_net.messages.members import (
    MAX_LAYER_LIST,
    MemberError,
    get_body_len,
    get_digest,
    get_digest_list,
    get_hex,
    get_int,
    get_layer_sets,
)
from ionn_net.messages.upload import Holdings

__all__ = [
    "MAX_GRANT_CHARS",
    "MAX_PREPARE_SETS",
    "Fetch",
    "FetchOk",
    "Grant",
    "GrantOk",
    "Pull",
    "PullOk",
    "Push",
    "PushOk",
    "Redeem",
    "RedeemOk",
    "Stage",
    "StageBlob",
    "StageOk",
    "get_peer",
]

#: Most run sets a ``push`` or ``stage`` may ask to build ahead (§15.5.5), as ``load``'s.
MAX_PREPARE_SETS = 16
#: Longest grant a receiver accepts (§15.2): the reference server's are about 250.
MAX_GRANT_CHARS = 1024
#: A peer as the client knows it: "host:port" (§15.1), host a name or an IPv4/IPv6 literal.
_PEER = re.compile(r"^(?:[A-Za-z0-9.\-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5}$")
_GRANT = re.compile(r"^[A-Za-z0-9_.\-]+$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def get_peer(head: Mapping[str, Any], member: str) -> str:
    """``"host:port"`` naming a server as the client reaches it (§15.1)."""
    value = head.get(member)
    if not isinstance(value, str) or not _PEER.match(value):
        raise MemberError(member, '"host:port" (an IPv6 host in brackets)', value)
    port = int(value.rsplit(":", 1)[1])
    if not 1 <= port <= 65535:
        raise MemberError(member, "a port in 1..65535", value)
    return value


def _get_grant(head: Mapping[str, Any], member: str = "grant") -> str:
    value = head.get(member)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_GRANT_CHARS:
        raise MemberError(member, f"a grant of 1..{MAX_GRANT_CHARS} characters", value)
    if not _GRANT.match(value):
        raise MemberError(member, "a grant of characters [A-Za-z0-9_.-]", value[:40])
    return value


def _get_codes(head: Mapping[str, Any], member: str) -> dict[str, str]:
    """``{"<digest>": "<error code>"}``: why each blob was not moved."""
    value = head.get(member)
    if not isinstance(value, dict) or len(value) > MAX_LAYER_LIST:
        raise MemberError(member, "an object of blob digests to error codes", value)
    for key, code in value.items():
        if not _DIGEST.match(key) or not isinstance(code, str) or not 0 < len(code) <= 64:
            raise MemberError(member, "digest keys with error codes", {key: code})
    return dict(value)


def _optional_code(head: Mapping[str, Any], member: str) -> str | None:
    value = head.get(member)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise MemberError(member, "an error code", value)
    return value


def _get_sizes(head: Mapping[str, Any], member: str) -> dict[str, int]:
    """``{"<digest>": size}``."""
    value = head.get(member)
    if not isinstance(value, dict) or len(value) > MAX_LAYER_LIST:
        raise MemberError(member, "an object of blob digests to sizes", value)
    for key, size in value.items():
        if not _DIGEST.match(key) or type(size) is not int or not 0 <= size <= 2**62:
            raise MemberError(member, "digest keys with integer sizes >= 0", {key: size})
    return dict(value)


# -- §15.2: the client asks its server for a grant ------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """§15.2: a capability for the next server to pull this session's blobs of ``model``,
    valid for at most ``ttl_s`` seconds (the server may shorten it)."""

    KIND: ClassVar[str] = "grant"
    model: str
    ttl_s: int

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> Grant:
        return cls(model=get_digest(head, "model"), ttl_s=get_int(head, "ttl_s", lo=1, hi=86400))

    def to_head(self) -> dict[str, object]:
        return {"m": self.KIND, "model": self.model, "ttl_s": self.ttl_s}


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantOk:
    """§15.2: the grant (opaque to everyone but its issuer), how long it stays valid and
    how many times it may be redeemed."""

    KIND: ClassVar[str] = "grant_ok"
    grant: str
    ttl_s: int
    uses: int

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> GrantOk:
        return cls(
            grant=_get_grant(head),
            ttl_s=get_int(head, "ttl_s", lo=1, hi=86400),
            uses=get_int(head, "uses", lo=1, hi=1024),
        )

    def to_head(self) -> dict[str, object]:
        return {"m": self.KIND, "grant": self.grant, "ttl_s": self.ttl_s, "uses": self.uses}


# -- §15.3: the new server pulls from the previous one ---------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Redeem:
    """§15.3: open the scope of ``grant`` on this peer connection, for ``model``, on behalf
    of the session whose key hashes to ``tag`` (§15.5's tag) on the redeeming server."""

    KIND: ClassVar[str] = "redeem"
    grant: str
    model: str
    tag: str

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> Redeem:
        return cls(
            grant=_get_grant(head),
            model=get_digest(head, "model"),
            tag=get_hex(head, "tag", digits=64),
        )

    def to_head(self) -> dict[str, object]:
        return {"m": self.KIND, "grant": self.grant, "model": self.model, "tag": self.tag}


@dataclass(frozen=True, slots=True, kw_only=True)
class RedeemOk:
    """§15.3: the blobs of ``model`` that the granting session holds here, with sizes."""

    KIND: ClassVar[str] = "redeem_ok"
    model: str
    blobs: Mapping[str, int]

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> RedeemOk:
        return cls(model=get_digest(head, "model"), blobs=_get_sizes(head, "blobs"))

    def to_head(self) -> dict[str, object]:
        return {"m": self.KIND, "model": self.model, "blobs": dict(self.blobs)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Pull:
    """§15.3: bytes ``[offset, offset + length)`` of blob ``sha256`` of ``model``."""

    KIND: ClassVar[str] = "pull"
    model: str
    sha256: str
    offset: int
    length: int

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> Pull:
        return cls(
            model=get_digest(head, "model"),
            sha256=get_digest(head, "sha256"),
            offset=get_int(head, "offset"),
            length=get_int(head, "length", lo=1),
        )

    def to_head(self) -> dict[str, object]:
        return {
            "m": self.KIND,
            "model": self.model,
            "sha256": self.sha256,
            "offset": self.offset,
            "length": self.length,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PullOk:
    """§15.3: the asked bytes as body (``body_len`` of them, never more than asked)."""

    KIND: ClassVar[str] = "pull_ok"
    sha256: str
    offset: int
    body_len: int

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> PullOk:
        return cls(
            sha256=get_digest(head, "sha256"),
            offset=get_int(head, "offset"),
            body_len=get_body_len(head),
        )

    def to_head(self) -> dict[str, object]:
        return {
            "m": self.KIND,
            "sha256": self.sha256,
            "offset": self.offset,
            "body_len": self.body_len,
        }


# -- §15.4: the client asks its new server to fetch ------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Fetch:
    """§15.4: pull ``blobs`` of ``model`` (in this order) from ``source`` with ``grant``."""

    KIND: ClassVar[str] = "fetch"
    model: str
    source: str
    grant: str
    blobs: tuple[str, ...]
    deadline_ms: int

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> Fetch:
        return cls(
            model=get_digest(head, "model"),
            source=get_peer(head, "source"),
            grant=_get_grant(head),
            blobs=get_digest_list(head, "blobs"),
            deadline_ms=get_int(head, "deadline_ms", lo=1, hi=3_600_000),
        )

    def to_head(self) -> dict[str, object]:
        return {
            "m": self.KIND,
            "model": self.model,
            "source": self.source,
            "grant": self.grant,
            "blobs": list(self.blobs),
            "deadline_ms": self.deadline_ms,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchOk:
    """§15.4: which blobs arrived and verified, why the others did not (``failed``: a code
    per blob; ``source_error``: why the source could not be used at all, if so), and what
    the server now holds of the model for this session."""

    KIND: ClassVar[str] = "fetch_ok"
    fetched: tuple[str, ...]
    failed: Mapping[str, str] = field(default_factory=dict)
    source_error: str | None = None
    holdings: Holdings = field(default_factory=Holdings)

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> FetchOk:
        return cls(
            fetched=get_digest_list(head, "fetched"),
            failed=_get_codes(head, "failed"),
            source_error=_optional_code(head, "source_error"),
            holdings=Holdings.parse(head),
        )

    def to_head(self) -> dict[str, object]:
        head: dict[str, object] = {
            "m": self.KIND,
            "fetched": list(self.fetched),
            "failed": dict(self.failed),
        }
        if self.source_error is not None:
            head["source_error"] = self.source_error
        return {**head, **self.holdings.members()}


# -- §15.5: pre-migration ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Push:
    """§15.5: send ``blobs`` of ``model`` (in this order) to the candidate ``target``,
    staged for this session until the client arrives there; ``prepare``: the run sets the
    client expects to use there, which the target may build ahead (§15.5.5)."""

    KIND: ClassVar[str] = "push"
    model: str
    target: str
    blobs: tuple[str, ...]
    deadline_ms: int
    prepare: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> Push:
        return cls(
            model=get_digest(head, "model"),
            target=get_peer(head, "target"),
            blobs=get_digest_list(head, "blobs"),
            deadline_ms=get_int(head, "deadline_ms", lo=1, hi=3_600_000),
            prepare=get_layer_sets(head, "prepare", max_sets=MAX_PREPARE_SETS),
        )

    def to_head(self) -> dict[str, object]:
        head: dict[str, object] = {
            "m": self.KIND,
            "model": self.model,
            "target": self.target,
            "blobs": list(self.blobs),
            "deadline_ms": self.deadline_ms,
        }
        if self.prepare:
            head["prepare"] = [list(s) for s in self.prepare]
        return head


@dataclass(frozen=True, slots=True, kw_only=True)
class PushOk:
    """§15.5: which blobs the target accepted, why the others were not sent."""

    KIND: ClassVar[str] = "push_ok"
    pushed: tuple[str, ...]
    failed: Mapping[str, str] = field(default_factory=dict)
    target_error: str | None = None

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> PushOk:
        return cls(
            pushed=get_digest_list(head, "pushed"),
            failed=_get_codes(head, "failed"),
            target_error=_optional_code(head, "target_error"),
        )

    def to_head(self) -> dict[str, object]:
        head: dict[str, object] = {
            "m": self.KIND,
            "pushed": list(self.pushed),
            "failed": dict(self.failed),
        }
        if self.target_error is not None:
            head["target_error"] = self.target_error
        return head


@dataclass(frozen=True, slots=True, kw_only=True)
class Stage:
    """§15.5: a manifest (the body, ``model`` its SHA-256) staged for the session whose
    key hashes to ``tag``; ``prepare``: run sets the receiver may build ahead (§15.5.5)."""

    KIND: ClassVar[str] = "stage"
    model: str
    tag: str
    body_len: int
    prepare: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> Stage:
        return cls(
            model=get_digest(head, "model"),
            tag=get_hex(head, "tag", digits=64),
            body_len=get_body_len(head),
            prepare=get_layer_sets(head, "prepare", max_sets=MAX_PREPARE_SETS),
        )

    def to_head(self) -> dict[str, object]:
        head: dict[str, object] = {"m": self.KIND, "model": self.model, "tag": self.tag}
        if self.prepare:
            head["prepare"] = [list(s) for s in self.prepare]
        head["body_len"] = self.body_len
        return head


@dataclass(frozen=True, slots=True, kw_only=True)
class StageOk:
    """§15.5: the manifest is valid and staged."""

    KIND: ClassVar[str] = "stage_ok"
    model: str

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> StageOk:
        return cls(model=get_digest(head, "model"))

    def to_head(self) -> dict[str, object]:
        return {"m": self.KIND, "model": self.model}


@dataclass(frozen=True, slots=True, kw_only=True)
class StageBlob:
    """§15.5: bytes ``[offset, offset + body_len)`` of a blob of a staged manifest
    (answered ``blob_ok``, §10.5.3)."""

    KIND: ClassVar[str] = "stage_blob"
    model: str
    tag: str
    sha256: str
    size: int
    offset: int
    body_len: int

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> StageBlob:
        return cls(
            model=get_digest(head, "model"),
            tag=get_hex(head, "tag", digits=64),
            sha256=get_digest(head, "sha256"),
            size=get_int(head, "size"),
            offset=get_int(head, "offset"),
            body_len=get_body_len(head),
        )

    def to_head(self) -> dict[str, object]:
        return {
            "m": self.KIND,
            "model": self.model,
            "tag": self.tag,
            "sha256": self.sha256,
            "size": self.size,
            "offset": self.offset,
            "body_len": self.body_len,
        }
