"""§10.2 session messages: ``hello``, ``challenge``, ``auth``, ``welcome``.

Each is a frozen dataclass with :meth:`parse` (an untrusted head in, the typed message
out, or :class:`~ionn_net.messages.members.MemberError`) and :meth:`to_head` (the head
to send, members in the order the reference peers send them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ionn_net.messages.members import (
    get_hex,
    get_int_map,
    get_str,
    optional_str,
)

__all__ = ["Auth", "Challenge", "Hello", "Welcome"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """§10.2.1: the first request of a connection. ``client`` names the software and is
    informational (None when absent or not a string: nothing acts on it)."""

    KIND: ClassVar[str] = "hello"
    session: str
    nonce: str
    client: str | None = None

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> Hello:
        return cls(
            session=get_hex(head, "session", digits=32),
            nonce=get_hex(head, "nonce", digits=32),
            client=optional_str(head, "client"),
        )

    def to_head(self) -> dict[str, object]:
        head: dict[str, object] = {"m": self.KIND}
        if self.client is not None:
            head["client"] = self.client
        head["session"] = self.session
        head["nonce"] = self.nonce
        return head


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """§10.2.3: the server's nonce and its proof of the shared secret. ``proof`` is None
    when absent or not a string: a malformed proof is a wrong proof, which the client
    answers by closing with AUTH_FAILED, not by refusing the message."""

    KIND: ClassVar[str] = "challenge"
    nonce: str
    proof: str | None

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> Challenge:
        return cls(nonce=get_hex(head, "nonce", digits=32), proof=optional_str(head, "proof"))

    def to_head(self) -> dict[str, object]:
        return {"m": self.KIND, "nonce": self.nonce, "proof": self.proof}


@dataclass(frozen=True, slots=True, kw_only=True)
class Auth:
    """§10.2.3: the client's proof. ``proof`` is None when absent or not a string: a
    malformed proof is a wrong proof (GOAWAY AUTH_FAILED), never ``bad_request``."""

    KIND: ClassVar[str] = "auth"
    proof: str | None

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> Auth:
        return cls(proof=optional_str(head, "proof"))

    def to_head(self) -> dict[str, object]:
        return {"m": self.KIND, "proof": self.proof}


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    """§10.2.2: the session is established.

    ``cost_model`` is the §10.10 document as received: the client validates it when it
    adopts it (``ServerCostModel.from_doc``), because an invalid one is not a malformed
    message but a reason to fall back to its own estimate (§10.10).
    """

    KIND: ClassVar[str] = "welcome"
    server: str
    session: str
    cost_model: object
    limits: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, head: Mapping[str, Any]) -> Welcome:
        return cls(
            server=get_str(head, "server"),
            session=get_hex(head, "session", digits=32),
            cost_model=head.get("cost_model"),
            limits=get_int_map(head, "limits"),
        )

    def to_head(self) -> dict[str, object]:
        return {
            "m": self.KIND,
            "server": self.server,
            "session": self.session,
            "cost_model": self.cost_model,
            "limits": dict(self.limits),
        }
