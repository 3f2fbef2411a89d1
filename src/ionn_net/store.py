"""Content-addressed layer-blob store: in memory, durable in a directory, or shared on Redis.

This module owns where verified weight blobs live on the server and how partial
uploads survive a disconnect or a crash (protocol.md §10.5, §14.5):

* Blobs are named by the SHA-256 of their bytes. A blob is only ever stored after its
  digest has been verified, and it is verified again on every read from disk; a blob
  that no longer verifies is deleted and reported missing, never served.
* Durable writes follow git: write a temporary file in the same directory, ``fsync`` it,
  ``rename`` it into place, ``fsync`` the directory. A crash at any point leaves either
  no blob or a complete, verified one.
* Partial uploads are append-only files whose size is the authoritative resume offset
  (§10.5.2). A process crash keeps what was written (the page cache survives the
  process); a torn or corrupt partial is caught by the final digest check and discarded.
* Tenant scoping: which session uploaded which blob is recorded in a per-session index,
  so the server reveals only a session's own blobs (§14.5), even after a restart.
* Several processes may share one directory (``ionn-server --workers``): what another
  process stored after this one opened the store is found on demand (a blob by one
  ``stat``; a session's owner records by reading the new tail of its append-only file),
  appends to a partial upload hold an exclusive ``flock`` on it, and the temporary files
  of live writers are left alone when a process opens the store.
* Public records: a blob a session uploaded under a public marking (§10.3.4) is recorded
  as published, in the store itself, so that every server sharing the store reveals it
  (§14.5.1). A blob discarded as corrupt loses its public record with it.

:func:`open_store` picks the backend from a spec: ``None`` (memory), a directory path
(:class:`DirectoryStore`, the embedded default) or a ``redis://host:port/db`` URL
(:class:`~ionn_net.store_redis.RedisStore`, shared by the servers of one site; needs the
``redis`` extra).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ionn_net.errors import StoreError
from ionn_net.extras import REDIS_EXTRA

__all__ = [
    "REDIS_SCHEMES",
    "BlobCorruptError",
    "BlobStore",
    "DirectoryStore",
    "MemoryStore",
    "StoreUnavailableError",
    "check_digest",
    "check_session_hash",
    "open_store",
    "partial_key",
    "redact_url",
    "sha256_hex",
]

#: URL schemes :func:`open_store` hands to the Redis backend.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class BlobCorruptError(StoreError):
    """A stored blob no longer hashes to its name (bit rot, tampering, a lost chunk): it
    was never served and was removed from the store, so it counts as not held."""


class StoreUnavailableError(StoreError):
    """The store's backend could not be reached or refused the operation (e.g. Redis down,
    restarting, out of memory). Nothing was changed that a later retry would not redo;
    the message names the store and the cause."""


_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_SESSION_RE = re.compile(r"^[0-9a-f]{16,64}$")


def check_session_hash(session_hash: str) -> None:
    """:class:`StoreError` unless ``session_hash`` is 16-64 lowercase hex digits."""
    if not isinstance(session_hash, str) or not _SESSION_RE.match(session_hash):
        raise StoreError(f"session hash: expected 16-64 hex digits, got {session_hash!r}")


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def partial_key(session_hash: str, digest: str) -> str:
    """The name of a session's partial upload of ``digest`` (64 hex digits)."""
    return hashlib.sha256(f"{session_hash}:{digest}".encode()).hexdigest()


def redact_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def check_digest(digest: str) -> None:
    """:class:`StoreError` unless ``digest`` is 64 lowercase hex digits (also used for
    partial-upload keys, which are digests too)."""
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise StoreError(f"blob digest: expected 64 lowercase hex digits, got {digest!r}")


class BlobStore:
    """Interface and in-memory bookkeeping shared by both stores.

    Subclasses implement ``_load``, ``_save``, ``_delete`` and the partial-upload
    primitives. All methods are thread-safe (the server calls them from worker threads).
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._sessions: dict[str, set[str]] = {}
        self._public: set[str] = set()

    # -- complete blobs -----------------------------------------------------------

    def has(self, digest: str) -> bool:
        raise NotImplementedError

    def get(self, digest: str) -> bytes:
        """The verified bytes of ``digest``; :class:`StoreError` if absent or corrupt."""
        raise NotImplementedError

    def put(self, digest: str, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` after checking that it hashes to ``digest``."""
        check_digest(digest)
        actual = sha256_hex(data)
        if actual != digest:
            raise StoreError(f"blob digest mismatch: expected {digest}, bytes hash to {actual}")
        with self._lock:
            if not self.has(digest):
                self._save(digest, bytes(data))

    def _save(self, digest: str, data: bytes) -> None:
        raise NotImplementedError

    # -- partial uploads (protocol.md §10.5) --------------------------------------

    def partial_offset(self, digest: str) -> int:
        raise NotImplementedError

    def append_partial(self, digest: str, offset: int, data: bytes | memoryview) -> int:
        """Append ``data`` at ``offset`` of the partial blob; returns the new offset.

        A mismatched ``offset`` changes nothing and raises :class:`StoreError` (the server
        answers ``offset_conflict`` with the authoritative offset)."""
        raise NotImplementedError

    def partial_bytes(self, digest: str) -> bytes:
        raise NotImplementedError

    def drop_partial(self, digest: str) -> None:
        raise NotImplementedError

    def complete_partial(
        self,
        digest: str,
        *,
        key: str | None = None,
        owner: str | None = None,
        public: bool = False,
    ) -> None:
        """Verify the finished partial blob and move it into the store; a blob whose
        bytes do not hash to ``digest`` is discarded and :class:`StoreError` raised.

        ``key`` names the partial upload when it is not the digest itself: the server
        keys partials per session (:func:`partial_key`) so that one tenant's resume
        offset never reveals another tenant's upload (protocol.md §14.5). ``owner`` (a
        session hash) is recorded as the blob's uploader, and with ``public`` the blob
        is recorded as published (§10.3.4), both only once the bytes verified and were
        stored, under the same lock (a crash in between leaves the blob stored and
        unrecorded: its uploader sends it again, nothing acknowledged is lost)."""
        key = key or digest
        with self._lock:
            data = self.partial_bytes(key)
            try:
                self.put(digest, data)
            finally:
                self.drop_partial(key)
            self._record_uploaded(digest, owner, public)

    def _record_uploaded(self, digest: str, owner: str | None, public: bool) -> None:
        if owner is not None:
            self.record_owner(owner, digest)
        if public:
            self.record_public(digest)

    # -- tenant scoping (protocol.md §14.5) ---------------------------------------

    def record_owner(self, session_hash: str, digest: str) -> None:
        with self._lock:
            self._sessions.setdefault(session_hash, set()).add(digest)

    def owned_by(self, session_hash: str) -> frozenset[str]:
        """Blobs this session uploaded and that are still held and verified."""
        with self._lock:
            return frozenset(d for d in self._sessions.get(session_hash, ()) if self.has(d))

    def bytes_owned_by(self, session_hash: str) -> int:
        raise NotImplementedError

    def usage(self) -> tuple[int, int] | None:
        """(verified blobs, their bytes) as this process knows them, in O(1); None when
        the store cannot tell cheaply (the server's metrics then leave it out)."""
        return None

    # -- public blobs (protocol.md §10.3.4, §14.5.1) ------------------------------

    def record_public(self, digest: str) -> None:
        """Record ``digest`` as published. Only for a blob held and verified from the
        publishing session's own upload: the caller checks that (§14.5.1)."""
        check_digest(digest)
        with self._lock:
            self._public.add(digest)

    def public_held(self, digests: Iterable[str]) -> frozenset[str]:
        """Those of ``digests`` that are published and still held."""
        with self._lock:
            return frozenset(d for d in digests if d in self._public and self.has(d))

    def _forget_public(self, digest: str) -> None:
        """A discarded blob is no longer public: a later private upload of the same
        bytes must not be revealed through an old record (§14.5.1)."""
        with self._lock:
            self._public.discard(digest)

    # -- small documents kept with the store --------------------------------------

    def read_note(self, name: str) -> str | None:
        """A small text document kept in the store under ``name`` (e.g. the server's
        calibrated cost model where the store has no directory), or None. Only stores
        shared across restarts keep notes; this one does not."""
        return None

    def write_note(self, name: str, text: str) -> bool:
        """Keep ``text`` under ``name``; False when this store keeps no notes."""
        return False

    # -- maintenance --------------------------------------------------------------

    def close(self) -> None:
        """Release what the store holds open (connections); nothing for a local store.
        The store stays usable."""

    def digests(self) -> Iterable[str]:
        """Every complete blob held (verified when it was stored; ``get`` verifies it
        again)."""
        raise NotImplementedError

    def sweep_partials(self, *, now: float | None = None) -> int:
        """Delete partial uploads not appended to for the store's time-to-live; returns
        how many were deleted (§14.5 lets a server expire them)."""
        raise NotImplementedError


class MemoryStore(BlobStore):
    """Blobs in a dict; partial uploads in bytearrays. Lost when the process ends."""

    def __init__(self) -> None:
        super().__init__()
        self._blobs: dict[str, bytes] = {}
        self._bytes = 0
        self._partials: dict[str, bytearray] = {}

    def has(self, digest: str) -> bool:
        return digest in self._blobs

    def get(self, digest: str) -> bytes:
        try:
            return self._blobs[digest]
        except KeyError:
            raise StoreError(f"blob {digest} is not held") from None

    def _save(self, digest: str, data: bytes) -> None:
        self._blobs[digest] = data
        self._bytes += len(data)

    def usage(self) -> tuple[int, int] | None:
        return len(self._blobs), self._bytes

    def partial_offset(self, digest: str) -> int:
        with self._lock:
            return len(self._partials.get(digest, b""))

    def append_partial(self, digest: str, offset: int, data: bytes | memoryview) -> int:
        check_digest(digest)
        with self._lock:
            buf = self._partials.setdefault(digest, bytearray())
            if offset != len(buf):
                raise StoreError(f"offset conflict for {digest}: expected {len(buf)}, got {offset}")
            buf += data
            return len(buf)

    def partial_bytes(self, digest: str) -> bytes:
        with self._lock:
            return bytes(self._partials.get(digest, b""))

    def drop_partial(self, digest: str) -> None:
        with self._lock:
            self._partials.pop(digest, None)

    def bytes_owned_by(self, session_hash: str) -> int:
        with self._lock:
            return sum(len(self._blobs[d]) for d in self.owned_by(session_hash))

    def digests(self) -> Iterable[str]:
        with self._lock:
            return tuple(self._blobs)

    def sweep_partials(self, *, now: float | None = None) -> int:
        """Nothing to sweep: partials live as long as the process, and the server drops
        those of a session it forgets."""
        return 0


class DirectoryStore(BlobStore):
    """Blobs as files under ``root/blobs/ab/<digest>``, durable against crashes.

    Layout: ``blobs/`` complete verified blobs; ``partial/<digest>`` append-only partial
    uploads; ``sessions/<session hash>`` one digest per line, appended and fsynced when a
    blob completes for that session; ``public/<digest>`` an empty file per published blob
    (§10.3.4), created and fsynced when it is published, removed with the blob when it is
    discarded as corrupt.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        fsync: bool = True,
        fault_hook: Callable[[str], None] | None = None,
        partial_ttl_s: float | None = 86400.0,
    ) -> None:
        super().__init__()
        if partial_ttl_s is not None and not partial_ttl_s > 0:
            raise StoreError(f"partial_ttl_s: expected a time > 0 or None, got {partial_ttl_s!r}")
        self.root = Path(root)
        self._fsync = fsync
        self._partial_ttl_s = partial_ttl_s
        # Crash tests kill the process at each named step of a durable write.
        self._fault_hook = fault_hook or (lambda _point: None)
        for sub in ("blobs", "partial", "sessions", "tmp", "public"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._sizes: dict[str, int] = {}
        self._bytes = 0  # sum of self._sizes, kept as it changes
        # bytes of each session file already read into self._sessions (append-only files)
        self._session_read: dict[str, int] = {}
        self._scan()

    # -- layout -------------------------------------------------------------------

    def _blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest[:2] / digest

    def _partial_path(self, digest: str) -> Path:
        return self.root / "partial" / digest

    def _scan(self) -> None:
        """Index blobs and session records left by an earlier process; temp files
        from an interrupted write are removed (they were never renamed into place),
        except those of a writer that is still running (another process on this store)."""
        for tmp in (self.root / "tmp").iterdir():
            if not _writer_alive(tmp.name):
                tmp.unlink(missing_ok=True)
        for path in (self.root / "blobs").glob("*/*"):
            if _DIGEST_RE.match(path.name):
                with contextlib.suppress(FileNotFoundError):
                    self._index(path.name, path.stat().st_size)
        for path in (self.root / "sessions").iterdir():
            self._read_session(path.name)
        self._public = {
            p.name for p in (self.root / "public").iterdir() if _DIGEST_RE.match(p.name)
        }
        self.sweep_partials()

    def _index(self, digest: str, size: int) -> None:
        self._bytes += size - self._sizes.get(digest, 0)
        self._sizes[digest] = size

    def _unindex(self, digest: str) -> None:
        self._bytes -= self._sizes.pop(digest, 0)

    def _read_session(self, session_hash: str) -> None:
        """Add the owner records appended to ``sessions/<hash>`` since the last read (by
        this process or another): one ``stat`` when nothing is new. Only whole lines are
        taken; a line being appended right now is read next time."""
        path = self.root / "sessions" / session_hash
        done = self._session_read.get(session_hash, 0)
        try:
            if path.stat().st_size <= done:
                return
            with open(path, "rb") as fh:
                fh.seek(done)
                tail = fh.read()
        except FileNotFoundError:
            return
        whole = tail[: tail.rfind(b"\n") + 1]
        digests = {ln for ln in whole.decode("ascii", "replace").split() if _DIGEST_RE.match(ln)}
        self._sessions.setdefault(session_hash, set()).update(digests)
        self._session_read[session_hash] = done + len(whole)

    def sweep_partials(self, *, now: float | None = None) -> int:
        """Delete partial uploads not appended to for ``partial_ttl_s`` seconds (those
        of sessions never seen again, e.g. after a restart forgot them); returns how
        many were deleted. Runs when the store opens; a server may call it again."""
        if self._partial_ttl_s is None:
            return 0
        cutoff = (time.time() if now is None else now) - self._partial_ttl_s
        deleted = 0
        with self._lock:
            for path in (self.root / "partial").iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        deleted += 1
        return deleted

    # -- complete blobs -----------------------------------------------------------

    def has(self, digest: str) -> bool:
        if digest in self._sizes:
            return True
        if not _DIGEST_RE.match(digest):
            return False
        try:  # stored by another process since this one opened the store?
            size = self._blob_path(digest).stat().st_size
        except FileNotFoundError:
            return False
        with self._lock:
            self._index(digest, size)
        return True

    def usage(self) -> tuple[int, int] | None:
        """Blobs indexed at open and stored or found since (another process's blobs are
        found when first asked for), and their bytes (kept as they change)."""
        return len(self._sizes), self._bytes

    def get(self, digest: str) -> bytes:
        check_digest(digest)
        path = self._blob_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            with self._lock:
                self._unindex(digest)
            raise StoreError(f"blob {digest} is not held") from None
        if sha256_hex(data) != digest:
            # Bit rot or tampering: never serve it; forget it so it is uploaded again.
            with self._lock:
                path.unlink(missing_ok=True)
                self._unindex(digest)
                self._forget_public(digest)
            raise BlobCorruptError(f"blob {digest} failed verification on read and was discarded")
        return data

    def _save(self, digest: str, data: bytes) -> None:
        final = self._blob_path(digest)
        final.parent.mkdir(exist_ok=True)
        tmp = self.root / "tmp" / f"{digest}.{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            self._fault_hook("written")
            if self._fsync:
                os.fsync(fh.fileno())
        self._fault_hook("fsynced")
        os.replace(tmp, final)
        self._fault_hook("renamed")
        self._fsync_dir(final.parent)
        self._fault_hook("dir_fsynced")
        self._index(digest, len(data))

    def _fsync_dir(self, path: Path) -> None:
        if not self._fsync:
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- partial uploads ----------------------------------------------------------

    def partial_offset(self, digest: str) -> int:
        check_digest(digest)
        try:
            return self._partial_path(digest).stat().st_size
        except FileNotFoundError:
            return 0

    def append_partial(self, digest: str, offset: int, data: bytes | memoryview) -> int:
        check_digest(digest)
        with self._lock, open(self._partial_path(digest), "ab") as fh:
            # Another process may append to the same partial (a client that reconnected to
            # another worker while the old one still writes what it received): the offset
            # check and the write happen under one exclusive lock on the file.
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            current = os.fstat(fh.fileno()).st_size
            if offset != current:
                raise StoreError(f"offset conflict for {digest}: expected {current}, got {offset}")
            fh.write(data)
            return current + len(data)

    def partial_bytes(self, digest: str) -> bytes:
        try:
            return self._partial_path(digest).read_bytes()
        except FileNotFoundError:
            return b""

    def drop_partial(self, digest: str) -> None:
        self._partial_path(digest).unlink(missing_ok=True)

    def complete_partial(
        self,
        digest: str,
        *,
        key: str | None = None,
        owner: str | None = None,
        public: bool = False,
    ) -> None:
        path = self._partial_path(key or digest)
        try:
            fh = open(path, "rb")  # noqa: SIM115  (held across the whole completion)
        except FileNotFoundError:
            fh = None
        try:
            if fh is not None:  # no other process appends while it is checked and moved
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            super().complete_partial(digest, key=key, owner=owner, public=public)
        finally:
            if fh is not None:
                fh.close()

    # -- tenant scoping -----------------------------------------------------------

    def record_owner(self, session_hash: str, digest: str) -> None:
        check_digest(digest)
        check_session_hash(session_hash)
        with self._lock:
            self._read_session(session_hash)
            if digest in self._sessions.get(session_hash, ()):
                return
            super().record_owner(session_hash, digest)
            path = self.root / "sessions" / session_hash
            # One write of one short line to an O_APPEND file: other processes appending
            # to the same session file never interleave inside it.
            with open(path, "a") as fh:
                fh.write(digest + "\n")
                fh.flush()
                if self._fsync:
                    os.fsync(fh.fileno())

    def owned_by(self, session_hash: str) -> frozenset[str]:
        with self._lock:
            if _SESSION_RE.match(session_hash):
                self._read_session(session_hash)
            return super().owned_by(session_hash)

    def bytes_owned_by(self, session_hash: str) -> int:
        with self._lock:
            return sum(self._sizes.get(d, 0) for d in self.owned_by(session_hash))

    def record_public(self, digest: str) -> None:
        check_digest(digest)
        with self._lock:
            if digest in self._public:
                return
            marker = self.root / "public" / digest
            marker.touch()
            self._fsync_dir(marker.parent)
            super().record_public(digest)

    def _forget_public(self, digest: str) -> None:
        with self._lock:
            (self.root / "public" / digest).unlink(missing_ok=True)
            super()._forget_public(digest)

    def public_held(self, digests: Iterable[str]) -> frozenset[str]:
        """One ``stat`` per digest asked for: another process sharing the directory
        (``--workers``) may have published a blob, or discarded one, since this one
        looked."""
        digests = tuple(digests)
        with self._lock:
            for digest in digests:
                if _DIGEST_RE.match(digest) and (self.root / "public" / digest).exists():
                    self._public.add(digest)
                else:
                    self._public.discard(digest)
            return super().public_held(digests)

    def digests(self) -> Iterable[str]:
        return tuple(self._sizes)


def _writer_alive(tmp_name: str) -> bool:
    """Whether the process that named this temporary file (``<digest>.<pid>.<thread>``,
    see ``_save``) is still running; an unparsable name counts as dead."""
    parts = tmp_name.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False  # this process is opening the store: nothing of its own is in flight
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def open_store(spec: BlobStore | str | os.PathLike[str] | None, **options: Any) -> BlobStore:
    """The store a spec names: ``None`` -> :class:`MemoryStore`; a
    ``redis://host:port/db`` (or ``rediss://``, ``unix://``) URL ->
    :class:`~ionn_net.store_redis.RedisStore`; any other string or path ->
    :class:`DirectoryStore` on that directory; a :class:`BlobStore` is returned as is.

    ``options`` go to the backend's constructor. A Redis URL without the ``redis``
    package installed raises :class:`StoreError` naming the extra to install."""
    if isinstance(spec, BlobStore):
        return spec
    if spec is None:
        return MemoryStore()
    if isinstance(spec, str) and spec.startswith(REDIS_SCHEMES):
        absent = [m for m in REDIS_EXTRA.modules if importlib.util.find_spec(m) is None]
        if absent:
            raise StoreError(
                f"store {redact_url(spec)}: a Redis store needs {', '.join(absent)}, not "
                f"installed; install it with: {REDIS_EXTRA.install_hint()}"
            )
        from ionn_net.store_redis import RedisStore  # the redis package is an extra

        return RedisStore(spec, **options)
    if isinstance(spec, str | os.PathLike):
        return DirectoryStore(spec, **options)
    raise StoreError(
        f"store: expected None, a directory, a redis:// URL or a BlobStore, "
        f"got {type(spec).__name__}"
    )
