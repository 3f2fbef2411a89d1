"""How blob bytes enter the server's store for a session, whoever sends them.

Owns :class:`BlobIngest`: the one path by which bytes of a blob become a session's verified
blob (protocol.md §10.5, §14.5), shared by a client's ``blob`` upload and by blobs a peer
server delivers (§15.4 pulled, §15.5 pushed): the session's byte budget (an unfinished blob
reserves its whole size), appends to the session's partial blob as bytes arrive (so a
transfer cut at any byte resumes from what arrived), the SHA-256 of the whole blob checked
before it is stored, and the owner record that lets the server tell this session, and no
other, that it holds the blob.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Collection, Mapping

from ionn_net.errors import StoreError
from ionn_net.messages import RequestError
from ionn_net.offthread import to_thread_to_the_end
from ionn_net.store import BlobStore, StoreUnavailableError

__all__ = ["BlobIngest", "one_chunk"]

#: Appends reach the store about this many bytes at a time.
_APPEND_BYTES = 1 << 20


class BlobIngest:
    """Budget, append, verify and record (see the module docstring)."""

    def __init__(
        self,
        store: BlobStore,
        max_bytes_per_session: int,
        *,
        received: Callable[[str, int], None] | None = None,
    ) -> None:
        self.store = store
        self.max_bytes_per_session = max_bytes_per_session
        #: told the bytes of each body read (kind, bytes), also of one cut short
        self._received = received

    def check_budget(
        self,
        owner: str,
        partials: Collection[str],
        sizes: Mapping[str, int],
        digest: str,
        size: int,
        *,
        reserve: int | None = None,
    ) -> None:
        """§14.5: ``limit_exceeded`` unless the session's stored blobs plus its unfinished
        ones (each reserving its whole size, ``sizes`` by digest) plus this blob fit (it
        reserves ``reserve`` bytes when given: a refinement stage its exact blob, §10.12.3)."""
        reserved = sum(sizes.get(d, 0) for d in set(partials) - {digest})
        reserved += size if reserve is None else reserve
        if self.store.bytes_owned_by(owner) + reserved > self.max_bytes_per_session:
            raise RequestError("limit_exceeded", "this session stores too many bytes")

    async def append(
        self,
        key: str,
        offset: int,
        chunks: AsyncIterable[bytes],
        body_len: int,
        *,
        kind: str = "blob",
    ) -> int:
        """Append ``chunks`` to the partial blob ``key`` as they arrive, about 1 MiB at a
        time; returns the new offset. What arrived is kept also when the sender vanishes
        (§10.5.2); more or fewer than ``body_len`` bytes is ``bad_request``."""
        pending: list[bytes] = []
        pending_bytes = 0
        received = 0
        try:
            async for chunk in chunks:
                received += len(chunk)
                if received > body_len:
                    raise RequestError("bad_request", f"body: more than body_len={body_len}")
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= _APPEND_BYTES:
                    data, pending, pending_bytes = b"".join(pending), [], 0
                    offset = await to_thread_to_the_end(
                        self.store.append_partial, key, offset, data
                    )
        finally:
            if self._received is not None:
                self._received(kind, received)
            if pending:  # also when the sender vanished: keep what arrived
                data = b"".join(pending)
                offset = await to_thread_to_the_end(self.store.append_partial, key, offset, data)
        if received != body_len:
            raise RequestError("bad_request", f"body: expected {body_len} bytes, got {received}")
        return offset

    async def complete(
        self,
        owner: str | None,
        digest: str,
        key: str,
        *,
        public: bool = False,
        via: Callable[[], object] | None = None,
    ) -> None:
        """Verify and store the finished partial ``key`` as ``digest``; the store records
        ``owner`` as its owner (and, with ``public``, the blob as published, §10.3.4) with
        the commit, also when the sender vanished while the digest was checked: the partial
        is consumed by then, so without the record it would have to be sent again. Bytes
        that do not hash to ``digest`` are discarded: ``digest_mismatch``; a store that
        cannot be reached keeps the partial: ``internal``. With no ``owner`` (a blob staged
        for a session yet to come, §15.5) nobody is recorded. ``via`` completes it instead
        (worker thread): a model with weight stages (§10.12.3) rebuilds a refinement's
        exact blob there."""
        try:
            await to_thread_to_the_end(
                via
                or (
                    lambda: self.store.complete_partial(digest, key=key, owner=owner, public=public)
                )
            )
        except StoreUnavailableError as exc:
            # Not the sender's bytes: the partial stays (nothing acknowledged is lost) and
            # the blob is completed again once the store is back.
            raise RequestError("internal", f"blob {digest}: {exc}") from None
        except StoreError:
            raise RequestError("digest_mismatch", f"blob {digest}: bytes do not match") from None


async def one_chunk(data: bytes) -> AsyncIterable[bytes]:
    """``data`` as the chunks :meth:`BlobIngest.append` reads."""
    yield data
