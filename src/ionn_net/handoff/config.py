"""Policy and limits of server-to-server handoff (protocol.md §14.7, §15).

Owns :class:`HandoffConfig` (a field of :class:`~ionn_net.server.ServerConfig`) and
:func:`stage_tag`, the name under which pushed blobs wait for their session (§15.5).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ionn_net.errors import ConfigError

__all__ = ["HandoffConfig", "parse_address", "stage_tag"]

_ADDRESS = re.compile(
    r"^(?:(?P<name>[A-Za-z0-9.\-]{1,253})|\[(?P<v6>[0-9A-Fa-f:.]{2,45})\]):(?P<port>[0-9]{1,5})$"
)


def parse_address(text: str) -> tuple[str, int]:
    """``"host:port"`` (an IPv6 host in brackets) as ``(host, port)``."""
    match = _ADDRESS.match(text) if isinstance(text, str) else None
    port = int(match.group("port")) if match else 0
    if match is None or not 1 <= port <= 65535:
        raise ConfigError(f'peer address: expected "host:port", got {text!r}')
    return match.group("name") or match.group("v6"), port


def stage_tag(session_key: str) -> str:
    """§15.5: the tag under which blobs pushed for the session ``session_key`` are staged:
    hex SHA-256 of ``"ionn-stage/1" || 0x00 || key`` (the key's 32 hex digits in ASCII)."""
    return hashlib.sha256(b"ionn-stage/1\x00" + session_key.encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class HandoffConfig:
    """Handoff policy of one server (the defaults are §14.7's).

    ``peers`` maps a server's address *as clients name it* (``"host:port"``, what a client
    connects to) to the address this server reaches it at over the backhaul; a server opens
    peer connections only to the servers listed (§15.1), so that no client can make it
    connect elsewhere. Empty: handoff to and from this server is refused (``unknown_peer``);
    grants are still issued and redeemed.

    ``grant_key`` signs this server's grants (random per process when None: grants then
    die with the process; give every worker process of one server the same key).
    ``peer_secret`` is the shared secret of §10.2.3 that the peers require, if any.
    """

    peers: Mapping[str, str] = field(default_factory=dict)
    grant_key: bytes | None = None
    peer_secret: bytes | None = None
    grant_ttl_s: int = 600
    grant_uses: int = 4
    max_grants_remembered: int = 4096
    max_peer_links: int = 8
    peer_idle_s: float = 30.0
    max_transfer_s: float = 120.0
    pull_piece: int = 4 << 20
    pulls_in_flight: int = 4
    max_staged_bytes_per_peer: int = 2 << 30
    max_staged_models_per_peer: int = 16
    stage_ttl_s: float = 600.0

    def __post_init__(self) -> None:
        peers = dict(self.peers)
        for public, backhaul in peers.items():
            parse_address(public)
            parse_address(backhaul)
        object.__setattr__(self, "peers", MappingProxyType(peers))
        for name in (
            "grant_ttl_s",
            "grant_uses",
            "max_grants_remembered",
            "max_peer_links",
            "pull_piece",
            "pulls_in_flight",
            "max_staged_bytes_per_peer",
            "max_staged_models_per_peer",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"handoff {name}: expected an integer >= 1, got {value!r}")
        if self.grant_uses > 1024 or self.grant_ttl_s > 86400:
            raise ConfigError("handoff: grant_uses at most 1024, grant_ttl_s at most 86400")
        for name in ("peer_idle_s", "max_transfer_s", "stage_ttl_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value < 1e7:
                raise ConfigError(f"handoff {name}: expected seconds > 0, got {value!r}")
        for name in ("grant_key", "peer_secret"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, bytes) or len(value) < 16):
                raise ConfigError(f"handoff {name}: expected at least 16 bytes or None")

    def peer_hosts(self) -> frozenset[str]:
        """The backhaul hosts of the peers: where a peer's connections come from (§15.5.2)."""
        return frozenset(parse_address(a)[0] for a in self.peers.values())

    def backhaul(self, public: str) -> tuple[str, int] | None:
        """Where this server reaches the peer clients call ``public`` (None: not a peer)."""
        address = self.peers.get(public)
        return None if address is None else parse_address(address)
