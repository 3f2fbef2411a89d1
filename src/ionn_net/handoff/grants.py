"""Grants: capabilities a server issues to a session and alone can verify (protocol.md §15.2).

Owns :class:`GrantIssuer`: it signs grants with a secret only this server holds and, when a
peer redeems one, checks it and counts its uses. No key is shared between servers: like a
presigned object-store URL, a grant is verified only by the server that issued it.

Format (the reference server's; opaque to everyone else, §15.2)::

    g1.<payload>.<mac>
    payload = base64url(canonical JSON {"exp", "id", "model", "session", "uses"})
    mac     = base64url(HMAC-SHA256(key, "ionn-grant/1" || 0x00 || payload))

``exp`` is the expiry in whole seconds of the Unix epoch, ``id`` 32 random hex digits,
``model`` the manifest digest, ``session`` the issuing session's owner hash in the store,
``uses`` how many times the grant may be redeemed. Only ``id`` and the remaining uses are
remembered, from a grant's first redemption until it expires, so that a replay beyond its
uses is refused (§15.2.4); the table is bounded, and a redemption that would need to forget
an unexpired grant is refused instead (``busy``).

Pure: every method takes ``now`` (wall-clock seconds); nothing here reads a clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass

from ionn_net.errors import ConfigError
from ionn_net.messages import RequestError

__all__ = ["GrantIssuer", "GrantScope"]

_PREFIX = "g1"
_CONTEXT = b"ionn-grant/1\x00"
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HASH = re.compile(r"^[0-9a-f]{16,64}$")


@dataclass(frozen=True, slots=True)
class GrantScope:
    """What a verified grant allows: the blobs of ``model`` held by the session whose
    owner hash is ``session``, until ``expires`` (Unix seconds)."""

    grant_id: str
    session: str
    model: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class GrantIssuer:
    """Issues and redeems this server's grants (see the module docstring).

    ``key``: at least 16 bytes, held by this server alone (and its worker processes, which
    must share it); ``max_ttl_s`` caps a grant's life, ``uses`` its redemptions,
    ``max_remembered`` the redeemed grants remembered at once.
    """

    def __init__(
        self,
        key: bytes | None = None,
        *,
        max_ttl_s: int = 600,
        uses: int = 4,
        max_remembered: int = 4096,
    ) -> None:
        key = os.urandom(32) if key is None else key
        if not isinstance(key, bytes) or len(key) < 16:
            raise ConfigError("grant key: expected at least 16 bytes")
        for name, value in (("max_ttl_s", max_ttl_s), ("uses", uses)):
            if type(value) is not int or not 1 <= value <= 86400:
                raise ConfigError(f"grant {name}: expected an integer 1..86400, got {value!r}")
        self._key = key
        self.max_ttl_s = max_ttl_s
        self.uses = uses
        self._max_remembered = max_remembered
        #: grant id -> (expiry, uses left), from its first redemption until it expires
        self._redeemed: dict[str, tuple[int, int]] = {}

    def _mac(self, payload: str) -> bytes:
        return hmac.new(self._key, _CONTEXT + payload.encode(), hashlib.sha256).digest()

    def issue(self, session: str, model: str, ttl_s: int, *, now: float) -> tuple[str, int]:
        """A grant for ``session``'s blobs of ``model``; returns it and its life in seconds
        (``ttl_s`` capped at ``max_ttl_s``)."""
        if not _HASH.match(session) or not _HEX64.match(model):
            raise ConfigError("grant scope: expected a session hash and a model digest")
        life = max(1, min(int(ttl_s), self.max_ttl_s))
        doc = {
            "exp": int(now) + life,
            "id": os.urandom(16).hex(),
            "model": model,
            "session": session,
            "uses": self.uses,
        }
        payload = _b64(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
        return f"{_PREFIX}.{payload}.{_b64(self._mac(payload))}", life

    def verify(self, grant: str, *, now: float) -> tuple[GrantScope, int]:
        """The scope of a genuine, unexpired grant and the uses it was issued with; a forged
        or malformed one raises ``bad_grant``, an expired one ``grant_expired``. Changes
        nothing (uses are counted by :meth:`consume`)."""
        parts = grant.split(".")
        if len(parts) != 3 or parts[0] != _PREFIX:
            raise RequestError("bad_grant", "grant: not a grant of this server")
        try:
            mac = _unb64(parts[2])
        except (binascii.Error, ValueError):
            raise RequestError("bad_grant", "grant: malformed signature") from None
        # The MAC is checked before the payload is even decoded: nothing a forger wrote is
        # interpreted (§15.2.3).
        if not hmac.compare_digest(mac, self._mac(parts[1])):
            raise RequestError("bad_grant", "grant: the signature does not verify")
        try:
            doc = json.loads(_unb64(parts[1]))
            scope = GrantScope(
                grant_id=str(doc["id"]),
                session=str(doc["session"]),
                model=str(doc["model"]),
                expires=int(doc["exp"]),
            )
            uses = int(doc["uses"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise RequestError("bad_grant", "grant: malformed payload") from None
        if not _HEX32.match(scope.grant_id):  # only this server signs: never expected
            raise RequestError("bad_grant", "grant: malformed payload")
        if now >= scope.expires:
            raise RequestError("grant_expired", f"grant: expired {now - scope.expires:.0f} s ago")
        return scope, uses

    def consume(self, scope: GrantScope, uses: int, *, now: float) -> int:
        """Count one redemption of a verified grant; returns the uses left. A grant
        already redeemed ``uses`` times raises ``grant_used_up`` and changes nothing."""
        self._forget_expired(now)
        left = self._redeemed.get(scope.grant_id, (scope.expires, uses))[1]
        if left <= 0:
            raise RequestError("grant_used_up", f"grant: already redeemed {uses} times")
        if scope.grant_id not in self._redeemed and len(self._redeemed) >= self._max_remembered:
            raise RequestError("busy", "too many grants redeemed recently: try again later")
        self._redeemed[scope.grant_id] = (scope.expires, left - 1)
        return left - 1

    def _forget_expired(self, now: float) -> None:
        if len(self._redeemed) < self._max_remembered // 2:
            return
        for grant_id in [g for g, (exp, _) in self._redeemed.items() if now >= exp]:
            del self._redeemed[grant_id]

    @property
    def remembered(self) -> int:
        """Redeemed grants remembered now (until each expires)."""
        return len(self._redeemed)
