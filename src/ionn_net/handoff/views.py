"""What the handoff service sees of the server it runs in (protocol.md §15).

Owns the structural types :class:`ModelView`, :class:`SessionView`, :class:`ConnView` and
:class:`ServerView`: the handoff service reads a session's key, owner hash, manifests and
unfinished blobs, and asks the server for a session's model by owner hash and for what the
server holds of a model for a session; nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ionn_net.messages import Holdings, RequestError
from ionn_net.model.spec import ModelManifest

__all__ = ["ConnView", "ModelView", "ServerView", "SessionView", "model_of", "session_of"]


class ModelView(Protocol):
    """One validated manifest of a session, and its layers ready (§10.6)."""

    @property
    def manifest(self) -> ModelManifest: ...

    @property
    def blob_sizes(self) -> Mapping[str, int]: ...

    @property
    def ready(self) -> set[str]: ...

    @property
    def public_marked(self) -> frozenset[str]:
        """The blobs its client marked public (§10.3.4)."""
        ...


class SessionView(Protocol):
    """One client session: its key (§10.2.1), its owner hash in the store (§14.5), its
    manifests and the blobs it has unfinished uploads of."""

    @property
    def key(self) -> str: ...

    @property
    def hash(self) -> str: ...

    @property
    def models(self) -> Mapping[str, ModelView]: ...

    @property
    def partials(self) -> set[str]: ...


class ConnView(Protocol):
    """A connection's state: its session, once established."""

    @property
    def session(self) -> SessionView | None: ...


class ServerView(Protocol):
    """The server, as the handoff service asks it."""

    def find_session(self, session_hash: str) -> SessionView | None:
        """The session whose owner hash is ``session_hash``, if the server remembers it."""
        ...

    def holdings_of(self, session_key: str, model: str) -> Holdings:
        """What the server holds of ``model`` for the session ``session_key`` (§10.3.3)."""
        ...

    def new_model(self, body: bytes) -> ModelView:
        """A model from a manifest body, validated as a client's (worker thread)."""
        ...

    async def build(
        self, model: Any, names: Sequence[str], sets: Sequence[Sequence[str]]
    ) -> tuple[list[list[str]], int]:
        """Build ``names`` of ``model`` (one :meth:`new_model` made) and compile ``sets``;
        the sets compiled and how many layers were built."""
        ...


def session_of(state: ConnView) -> SessionView:
    session = state.session
    if session is None:  # the dispatcher answers no_session first (§10.2.1)
        raise RequestError("no_session", "send hello first (protocol.md §10.2.1)")
    return session


def model_of(session: SessionView, digest: str) -> ModelView:
    model = session.models.get(digest)
    if model is None:
        raise RequestError("unknown_model", f"model {digest}: send its manifest first")
    return model
