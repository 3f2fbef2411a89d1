"""Blobs pushed ahead of a client, waiting for it (protocol.md §15.5, §14.7).

Owns :class:`StagingArea`: per pushing peer (its IP address), per session tag
(:func:`~ionn_net.handoff.config.stage_tag`) and manifest digest, the validated manifest's
blob sizes, the blobs that arrived whole and verified, and the unfinished ones. Nothing
staged is revealed to anyone (§14.5) until a session whose key hashes to the tag sends the
manifest with that digest; :meth:`claim` then hands the verified blobs to that session,
and the entry goes. Entries expire ``stage_ttl_s`` after their last activity; a peer may
hold at most ``max_staged_models_per_peer`` entries and ``max_staged_bytes_per_peer`` bytes
(an unfinished blob reserves its whole size).

Verified staged blobs live in the server's blob store (they were hashed before being
stored, like any upload); the staging records are in memory, so a restart forgets them
and the client uploads or fetches those blobs instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ionn_net.handoff.config import HandoffConfig
from ionn_net.handoff.views import ModelView
from ionn_net.messages import RequestError
from ionn_net.store import BlobStore, partial_key

__all__ = ["Staged", "StagingArea"]


@dataclass(slots=True, eq=False)
class Staged:
    """One staged manifest of one peer for one session tag: its blobs' sizes, each layer's
    blob, the run sets the pushing peer asked to prepare (§15.5.5) and, once any is being
    built, the model object they are built into."""

    peer: str
    tag: str
    model: str
    sizes: Mapping[str, int]
    touched: float
    body: bytes = b""
    layer_blob: Mapping[str, str | None] = field(default_factory=dict)
    prepare: tuple[tuple[str, ...], ...] = ()
    blobs: set[str] = field(default_factory=set)
    partials: set[str] = field(default_factory=set)
    built: ModelView | None = None
    dirty: bool = False

    def buildable(self, run: Sequence[str]) -> bool:
        """Every layer of ``run`` has its blob staged (or none)."""
        return all(self.layer_blob.get(n) in (None, *self.blobs) for n in run)

    @property
    def owner(self) -> str:
        """The name its unfinished blobs are kept under (never a session's)."""
        text = f"ionn-stage:{self.peer}:{self.tag}:{self.model}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def partial_key(self, digest: str) -> str:
        return partial_key(self.owner, digest)

    def reserved(self) -> int:
        """Bytes this entry holds or reserves."""
        return sum(self.sizes[d] for d in self.blobs | self.partials)


class StagingArea:
    """Staged manifests and blobs (see the module docstring). ``now`` is monotonic time."""

    def __init__(self, store: BlobStore, config: HandoffConfig) -> None:
        self._store = store
        self._config = config
        self._entries: dict[tuple[str, str, str], Staged] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def stage(
        self, peer: str, tag: str, model: str, sizes: Mapping[str, int], *, now: float
    ) -> Staged:
        """Stage a validated manifest (``sizes``: its blobs); again is a refresh."""
        self.expire(now)
        entry = self._entries.get((peer, tag, model))
        if entry is None:
            held = sum(1 for e in self._entries.values() if e.peer == peer)
            if held >= self._config.max_staged_models_per_peer:
                raise RequestError("limit_exceeded", "this peer has staged too many models")
            entry = Staged(peer, tag, model, dict(sizes), now)
            self._entries[(peer, tag, model)] = entry
        entry.touched = now
        return entry

    def entry(self, peer: str, tag: str, model: str, *, now: float) -> Staged:
        """The entry a ``stage_blob`` names; ``unknown_model`` if not staged (or expired)."""
        self.expire(now)
        entry = self._entries.get((peer, tag, model))
        if entry is None:
            raise RequestError("unknown_model", f"model {model}: stage its manifest first")
        entry.touched = now
        return entry

    def live(self, entry: Staged) -> bool:
        """``entry`` is still staged (not claimed, not expired)."""
        return self._entries.get((entry.peer, entry.tag, entry.model)) is entry

    def check_budget(self, entry: Staged, digest: str) -> None:
        """``limit_exceeded`` unless the peer's staged bytes, with ``digest`` reserved, fit."""
        total = sum(e.reserved() for e in self._entries.values() if e.peer == entry.peer)
        if digest not in entry.blobs | entry.partials:
            total += entry.sizes[digest]
        if total > self._config.max_staged_bytes_per_peer:
            raise RequestError("limit_exceeded", "this peer has staged too many bytes")

    def claim(self, tag: str, model: str, *, now: float) -> list[Staged]:
        """The entries staged for ``tag`` and ``model`` by any peer; they go (their
        unfinished blobs are dropped; their verified blobs are in the store)."""
        self.expire(now)
        found = []
        for key in [k for k in self._entries if k[1:] == (tag, model)]:
            entry = self._entries.pop(key)
            entry.blobs = {d for d in entry.blobs if self._store.has(d)}
            self._drop_partials(entry)
            found.append(entry)
        return found

    def expire(self, now: float) -> None:
        """Forget entries idle for ``stage_ttl_s`` (their unfinished blobs are dropped)."""
        ttl = self._config.stage_ttl_s
        for key in [k for k, e in self._entries.items() if now - e.touched > ttl]:
            self._drop_partials(self._entries.pop(key))

    def _drop_partials(self, entry: Staged) -> None:
        for digest in entry.partials:
            self._store.drop_partial(entry.partial_key(digest))
        entry.partials.clear()
