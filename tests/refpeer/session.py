"""The session exchange of protocol.md §10.2 (hello, challenge/auth, welcome) for the peer.

Written from protocol.md alone; used by the CLI and by server-side conformance tests.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from .manifest import cost_model_problems
from .peer import Message, RefPeer
from .wire import Code, PeerError


def server_proof(secret: bytes, client_nonce: bytes, server_nonce: bytes) -> str:
    return hmac.new(
        secret, b"ionn-server" + client_nonce + server_nonce, hashlib.sha256
    ).hexdigest()


def client_proof(secret: bytes, client_nonce: bytes, server_nonce: bytes) -> str:
    return hmac.new(
        secret, b"ionn-client" + client_nonce + server_nonce, hashlib.sha256
    ).hexdigest()


def hello(
    peer: RefPeer, *, session: str | None = None, secret: bytes | None = None
) -> list[Message]:
    """Open the session; returns every response (hello's, then auth's when challenged).

    A challenge whose proof is wrong is a connection error AUTH_FAILED (§10.2.3).
    """
    nonce = os.urandom(16)
    head: dict[str, object] = {
        "m": "hello",
        "client": "ionn-refpeer/1",
        "session": session or os.urandom(16).hex(),
        "nonce": nonce.hex(),
    }
    first = peer.request(head)
    if first.head.get("m") != "challenge":
        return [first]
    server_nonce_hex = first.head.get("nonce")
    if secret is None or not isinstance(server_nonce_hex, str):
        peer.goaway(Code.AUTH_FAILED, "challenged without a secret")
        raise PeerError(Code.AUTH_FAILED, "challenge received but no secret configured")
    server_nonce = bytes.fromhex(server_nonce_hex)
    expected = server_proof(secret, nonce, server_nonce)
    if not hmac.compare_digest(expected, str(first.head.get("proof", ""))):
        peer.goaway(Code.AUTH_FAILED, "bad server proof")
        raise PeerError(Code.AUTH_FAILED, "the server's proof does not match the secret")
    second = peer.request({"m": "auth", "proof": client_proof(secret, nonce, server_nonce)})
    return [first, second]


def welcome_cost_model(welcome: Message) -> dict[str, object] | None:
    """§10.10: the server's cost model if it follows every rule, else None (the client then
    falls back to its own estimate)."""
    doc = welcome.head.get("cost_model")
    if cost_model_problems(doc):
        return None
    assert isinstance(doc, dict)
    return doc
