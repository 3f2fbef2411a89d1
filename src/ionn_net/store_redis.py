"""The layer-blob store on Redis, shared by the edge servers of one site (protocol.md §10.5,
§14.5).

A :class:`RedisStore` behaves as :class:`~ionn_net.store.DirectoryStore` does (same
interface, same guarantees), with its state in one Redis database so that every server of a
site sees every blob any of them verified, and the owner records of every session.

Layout, every key under ``prefix`` (default ``ionn:``)::

    config                      hash: chunk_size, fixed when the store is first used
    blob:<digest>               hash: size, chunks, gen; present <=> the blob is held
    blob:<digest>:<i>           bytes [i*chunk_size, (i+1)*chunk_size) of the blob
    blobs                       set of the digests held (digests())
    stage:<digest>:<token>:<i>  chunk of a put() in progress, with a TTL
    part:<key>                  hash: len, touched; a partial upload (key: partial_key)
    part:<key>:<i>              chunk i of that partial upload
    partials                    sorted set: partial key -> time of its last append
    owner:<session hash>        set of the digests that session uploaded
    public                      set of the digests published (protocol.md §10.3.4)
    note:<name>                 a small text document (the calibrated cost model of a host)

Guarantees and how they are kept:

* **Chunked.** No value is larger than ``chunk_size`` (4 MiB by default) and no command
  moves more than one chunk, so no single command holds Redis (single-threaded) for long.
  The chunk size is stored in ``config`` by the first store that opens the database and
  every later store uses that value.
* **Content-addressed, verified on read.** A blob is named by its SHA-256 and is stored only
  after its bytes were verified. :meth:`get` checks every chunk's presence and length and the
  SHA-256 of the whole; a blob that fails is **deleted** (all its keys, guarded by the
  ``gen`` token of the copy that was read so that a good copy stored meanwhile survives),
  reported with :class:`~ionn_net.store.BlobCorruptError` and from then on counts as not
  held, so owners upload it again. It is never served.
* **Atomic commits.** A complete blob appears in one Lua script that renames staged chunks
  into place and writes its ``blob:<digest>`` hash last. ``put`` stages the chunks it is
  given; ``complete_partial`` stages exact-length copies of the partial's chunks (``COPY``
  inside Redis: appended strings keep APPEND's preallocated slack, up to 1 MiB each). Staged
  chunks carry a TTL, so a writer that dies before its commit leaves nothing for good. Two
  servers completing the same blob both verify it; the second finds it held and drops its
  own copy: idempotent.
* **Owner and public records atomic with the commit.** ``complete_partial(owner=...,
  public=...)`` records the uploading session and, for a blob uploaded under a public
  marking, the public record in the same script that commits the blob (also when the blob
  was already held: the partial's bytes were verified first). Deleting a corrupt blob
  removes its public record in the same script, so an old record never makes a later
  private upload of the same bytes public (§14.5.1).
* **Partial appends atomic with respect to the offset** (§10.5.2). One Lua script checks
  that the partial's length equals the caller's offset (and that the chunk it extends has
  the matching length) before appending, so two servers racing on one partial upload never
  interleave: one append lands, the other gets an offset conflict and changes nothing.
* **Nothing acknowledged is lost when a server dies.** Every method returns only after
  Redis applied the write, and the server acknowledges (``blob_ok``) after the method
  returned. What survives a crash of **Redis itself** is Redis's configuration: with
  ``appendonly yes`` and ``appendfsync always`` every acknowledged write is on disk; with
  ``appendfsync everysec`` (Redis's default) up to about one second of writes can be lost;
  RDB snapshots alone lose everything since the last snapshot. A lost write shows up as a
  blob that is not held or a shorter partial (the client resumes from the authoritative
  offset), never as a corrupt blob served.
* **Typed errors.** Any Redis failure (unreachable, restarting, loading its AOF, out of
  memory, ...) raises :class:`~ionn_net.store.StoreUnavailableError` naming the store's URL
  (without password) and the cause. Connection errors are retried a few times with capped,
  jittered backoff, so a restarted Redis is picked up again without the caller's help.

Requirements: Redis >= 6.2 (``COPY``), standalone or a Sentinel-managed primary; Redis
Cluster is not supported (the scripts touch keys of several hash slots).
``maxmemory-policy`` must be ``noeviction``: an evicted chunk would turn a held blob into a
missing one. The ``hiredis`` parser (in the ``redis`` extra) reads blobs ~3x faster than
redis-py's own.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ionn_net.errors import StoreError
from ionn_net.store import (
    BlobCorruptError,
    BlobStore,
    StoreUnavailableError,
    check_digest,
    check_session_hash,
    redact_url,
    sha256_hex,
)

__all__ = ["DEFAULT_CHUNK_SIZE", "RedisStore"]

logger = logging.getLogger(__name__)

#: Bytes per Redis value: large enough that a 100 MB model is ~25 round trips, small
#: enough that no command copies more than a few MiB while Redis serves nobody else.
DEFAULT_CHUNK_SIZE = 4 << 20
_MIN_CHUNK, _MAX_CHUNK = 4096, 64 << 20
#: Chunks fetched per pipelined round trip when reading a blob.
_READ_BATCH = 4

# KEYS: partial hash, chunk, partials zset.  ARGV: offset, data, now, member, chunk start.
_APPEND = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'len') or '0')
if cur ~= tonumber(ARGV[1]) then return {0, cur} end
if redis.call('STRLEN', KEYS[2]) ~= cur - tonumber(ARGV[5]) then return {-1, cur} end
redis.call('APPEND', KEYS[2], ARGV[2])
local new = cur + string.len(ARGV[2])
redis.call('HSET', KEYS[1], 'len', new, 'touched', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return {1, new}
"""

# Deletes a partial upload's chunks (computed from its length), its hash and its zset entry.
_DROP_PARTIAL_FN = """
local function drop_partial(meta, zset, member, prefix, chunk)
  local len = tonumber(redis.call('HGET', meta, 'len') or '0')
  for i = 0, math.ceil(len / chunk) - 1 do redis.call('DEL', prefix .. i) end
  redis.call('DEL', meta)
  redis.call('ZREM', zset, member)
end
"""

# KEYS: partial hash, partials zset.  ARGV: member, chunk prefix, chunk size, cutoff or ''.
_DROP_PARTIAL = (
    _DROP_PARTIAL_FN
    + """
local touched = redis.call('HGET', KEYS[1], 'touched')
if not touched then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if ARGV[4] ~= '' and tonumber(touched) >= tonumber(ARGV[4]) then return 0 end
drop_partial(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]))
return 1
"""
)

# KEYS: source chunk, staged copy.  ARGV: TTL of the copy (ms).  COPY allocates the exact
# length, where the appended source carries the slack of APPEND's preallocation.
_STAGE_COPY = """
if redis.call('COPY', KEYS[1], KEYS[2]) == 0 then return 0 end
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""

# KEYS: partial hash, blob hash, blobs set, partials zset, owner set, public set.
# ARGV: verified length, digest, chunk size, gen, partial chunk prefix, staged prefix, blob
# chunk prefix, member, record the owner ('1'/''), record public ('1'/'').
_COMMIT_PARTIAL = (
    _DROP_PARTIAL_FN
    + """
local len, cs = tonumber(ARGV[1]), tonumber(ARGV[3])
local n = math.ceil(len / cs)
local function unstage()
  for i = 0, n - 1 do redis.call('DEL', ARGV[6] .. i) end
end
local function recorded()
  if ARGV[9] == '1' then redis.call('SADD', KEYS[5], ARGV[2]) end
  if ARGV[10] == '1' then redis.call('SADD', KEYS[6], ARGV[2]) end
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  unstage()
  drop_partial(KEYS[1], KEYS[4], ARGV[8], ARGV[5], cs)
  recorded()
  return 2
end
if tonumber(redis.call('HGET', KEYS[1], 'len') or '-1') ~= len then
  unstage()
  return 0
end
for i = 0, n - 1 do
  if redis.call('EXISTS', ARGV[6] .. i) == 0 then
    unstage()
    return 0
  end
end
for i = 0, n - 1 do
  redis.call('RENAME', ARGV[6] .. i, ARGV[7] .. i)
  redis.call('PERSIST', ARGV[7] .. i)
end
redis.call('HSET', KEYS[2], 'size', len, 'chunks', n, 'gen', ARGV[4])
redis.call('SADD', KEYS[3], ARGV[2])
drop_partial(KEYS[1], KEYS[4], ARGV[8], ARGV[5], cs)
recorded()
return 1
"""
)

# KEYS: blob hash, blobs set.  ARGV: digest, size, chunks, gen, stage prefix, blob prefix.
_COMMIT_STAGED = """
local n = tonumber(ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 1 then
  for i = 0, n - 1 do redis.call('DEL', ARGV[5] .. i) end
  return 2
end
for i = 0, n - 1 do
  if redis.call('EXISTS', ARGV[5] .. i) == 0 then return 0 end
end
for i = 0, n - 1 do
  redis.call('RENAME', ARGV[5] .. i, ARGV[6] .. i)
  redis.call('PERSIST', ARGV[6] .. i)
end
redis.call('HSET', KEYS[1], 'size', ARGV[2], 'chunks', n, 'gen', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

# KEYS: blob hash, blobs set, public set.  ARGV: gen, blob chunk prefix, digest.
_DELETE_IF_GEN = """
if (redis.call('HGET', KEYS[1], 'gen') or '') ~= ARGV[1] then return 0 end
local n = tonumber(redis.call('HGET', KEYS[1], 'chunks') or '0') or 0
for i = 0, n - 1 do redis.call('DEL', ARGV[2] .. i) end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[3])
redis.call('SREM', KEYS[3], ARGV[3])
return 1
"""


def _text(value: object) -> str:
    """A member of a Redis set or sorted set as text (replies are bytes)."""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _chunks(size: int, chunk_size: int) -> int:
    return math.ceil(size / chunk_size)


class RedisStore(BlobStore):
    """Blobs, partial uploads and owner records in a Redis database (see the module doc).

    ``url`` is a redis-py URL: ``redis://[[user]:password@]host:port/db``, ``rediss://``
    for TLS, ``unix:///path/redis.sock?db=N``. ``prefix`` separates several stores in one
    database. ``partial_ttl_s`` is how long a partial upload may go without an append
    before :meth:`sweep_partials` deletes it (``None``: never); ``stage_ttl_s`` bounds how
    long the chunks of a ``put`` that never committed stay. ``fault_hook`` is called with
    ``"staged"`` after each staged chunk (``put``, ``complete_partial``), ``"appended"``
    after each appended piece and
    ``"committed"`` after a blob is committed (crash tests kill the process there).
    Opening pings Redis (:class:`StoreUnavailableError` if it does not answer) and sweeps
    stale partial uploads.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "ionn:",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        partial_ttl_s: float | None = 86400.0,
        stage_ttl_s: float = 3600.0,
        socket_timeout_s: float = 10.0,
        retries: int = 3,
        fault_hook: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self.url = redact_url(url)
        if partial_ttl_s is not None and not partial_ttl_s > 0:
            raise StoreError(f"partial_ttl_s: expected a time > 0 or None, got {partial_ttl_s!r}")
        if not _MIN_CHUNK <= chunk_size <= _MAX_CHUNK:
            raise StoreError(
                f"chunk_size: expected {_MIN_CHUNK}..{_MAX_CHUNK} bytes, got {chunk_size!r}"
            )
        if not stage_ttl_s >= 1:
            raise StoreError(f"stage_ttl_s: expected a time >= 1 s, got {stage_ttl_s!r}")
        self._p = prefix
        self._partial_ttl_s = partial_ttl_s
        self._stage_ttl_ms = int(stage_ttl_s * 1000)
        self._fault_hook = fault_hook or (lambda _point: None)
        retry = Retry(
            ExponentialWithJitterBackoff(cap=0.5, base=0.05),
            retries,
            supported_errors=(RedisConnectionError, RedisTimeoutError, TimeoutError),
        )
        try:
            self._r: redis.Redis = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=min(socket_timeout_s, 5.0),
                retry=retry,
            )
        except ValueError as exc:
            raise StoreError(f"store {self.url}: not a usable Redis URL: {exc}") from None
        self._append = self._r.register_script(_APPEND)
        self._drop = self._r.register_script(_DROP_PARTIAL)
        self._stage_copy = self._r.register_script(_STAGE_COPY)
        self._commit_partial = self._r.register_script(_COMMIT_PARTIAL)
        self._commit_staged = self._r.register_script(_COMMIT_STAGED)
        self._delete_if_gen = self._r.register_script(_DELETE_IF_GEN)
        with self._errors("open"):
            self._r.ping()
            self._r.hsetnx(self._key("config"), "chunk_size", chunk_size)
            stored = int(self._r.hget(self._key("config"), "chunk_size") or chunk_size)
        if stored != chunk_size:
            logger.info(
                "store %s: using its chunk size %d (asked %d)", self.url, stored, chunk_size
            )
        #: Bytes per chunk: fixed for the database by the first store that opened it.
        self.chunk_size = stored
        self.sweep_partials()

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, prefix={self._p!r})"

    def close(self) -> None:
        """Close the connections to Redis (the store can still be used: it reconnects)."""
        self._r.close()

    def ping(self) -> None:
        """:class:`StoreUnavailableError` unless Redis answers (a readiness check)."""
        with self._errors("ping"):
            self._r.ping()

    # -- keys and errors ----------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except RedisError as exc:
            raise StoreUnavailableError(
                f"store {self.url}: {what} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _read(self, prefix: str, count: int) -> list[bytes | None]:
        """Chunks ``prefix0 .. prefix{count-1}``, a few per pipelined round trip."""
        out: list[bytes | None] = []
        for start in range(0, count, _READ_BATCH):
            pipe = self._r.pipeline(transaction=False)
            for i in range(start, min(count, start + _READ_BATCH)):
                pipe.get(f"{prefix}{i}")
            out.extend(pipe.execute())
        return out

    # -- complete blobs -----------------------------------------------------------------

    def has(self, digest: str) -> bool:
        check_digest(digest)
        with self._errors(f"has {digest}"):
            return bool(self._r.exists(self._key("blob", digest)))

    def get(self, digest: str) -> bytes:
        check_digest(digest)
        meta_key, prefix = self._key("blob", digest), self._key("blob", digest, "")
        with self._errors(f"get {digest}"):
            meta = self._r.hgetall(meta_key)
            if not meta:
                raise StoreError(f"blob {digest} is not held")
            try:
                size, count = int(meta[b"size"]), int(meta[b"chunks"])
            except (KeyError, ValueError):
                size, count = -1, 0
            chunks = self._read(prefix, count)
        problem = "has a malformed record" if size < 0 else self._check_chunks(digest, size, chunks)
        if problem is None:
            return b"".join(c for c in chunks if c is not None)
        with self._errors(f"delete corrupt {digest}"):
            self._delete_if_gen(
                keys=[meta_key, self._key("blobs"), self._key("public")],
                args=[meta.get(b"gen", b""), prefix, digest],
            )
        logger.warning("store %s: blob %s %s; deleted", self.url, digest, problem)
        raise BlobCorruptError(
            f"blob {digest} failed verification on read ({problem}) and was discarded"
        )

    def _check_chunks(self, digest: str, size: int, chunks: Sequence[bytes | None]) -> str | None:
        """What is wrong with a blob read back, or ``None`` when it verifies."""
        if len(chunks) != _chunks(size, self.chunk_size):
            return f"has {len(chunks)} chunks for {size} bytes"
        hasher = hashlib.sha256()
        for i, chunk in enumerate(chunks):
            want = min(self.chunk_size, size - i * self.chunk_size)
            if chunk is None:
                return f"chunk {i} is missing"
            if len(chunk) != want:
                return f"chunk {i} holds {len(chunk)} bytes, expected {want}"
            hasher.update(chunk)
        got = hasher.hexdigest()
        return None if got == digest else f"hashes to {got}"

    def put(self, digest: str, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` after checking that it hashes to ``digest``: the chunks are staged
        under a private name with a TTL, then renamed into place by one script that also
        writes the blob's hash; a blob already held is left alone (idempotent)."""
        check_digest(digest)
        actual = sha256_hex(data)
        if actual != digest:
            raise StoreError(f"blob digest mismatch: expected {digest}, bytes hash to {actual}")
        view = memoryview(data).cast("B")
        count = _chunks(view.nbytes, self.chunk_size)
        stage = self._key("stage", digest, secrets.token_hex(8), "")
        meta_key = self._key("blob", digest)
        with self._errors(f"put {digest}"):
            if self._r.exists(meta_key):
                return
            for i in range(count):
                piece = view[i * self.chunk_size : (i + 1) * self.chunk_size]
                self._r.set(f"{stage}{i}", piece, px=self._stage_ttl_ms)
                self._fault_hook("staged")
            gen = secrets.token_hex(8)
            done = self._commit_staged(
                keys=[meta_key, self._key("blobs")],
                args=[digest, view.nbytes, count, gen, stage, self._key("blob", digest, "")],
            )
        if done == 0:
            raise StoreError(
                f"store {self.url}: blob {digest}: staged chunks expired before the commit"
            )
        self._fault_hook("committed")

    # -- partial uploads (protocol.md §10.5) --------------------------------------------

    def _partial_keys(self, key: str) -> tuple[str, str]:
        return self._key("part", key), self._key("part", key, "")

    def partial_offset(self, digest: str) -> int:
        check_digest(digest)
        with self._errors(f"partial offset {digest}"):
            return int(self._r.hget(self._key("part", digest), "len") or 0)

    def append_partial(self, digest: str, offset: int, data: bytes | memoryview) -> int:
        """Append at ``offset``, one chunk-sized piece per script call; each call checks the
        offset first, so a conflict (e.g. another server appending to the same partial)
        changes nothing of that piece and raises :class:`StoreError`."""
        check_digest(digest)
        meta, prefix = self._partial_keys(digest)
        view = memoryview(data).cast("B")
        if view.nbytes == 0:
            current = self.partial_offset(digest)
            if offset != current:
                raise StoreError(f"offset conflict for {digest}: expected {current}, got {offset}")
            return current
        pos = 0
        while pos < view.nbytes:
            at = offset + pos
            index = at // self.chunk_size
            piece = view[pos : pos + (index + 1) * self.chunk_size - at]
            with self._errors(f"append {digest}"):
                status, current = self._append(
                    keys=[meta, f"{prefix}{index}", self._key("partials")],
                    args=[at, piece, f"{time.time():.3f}", digest, index * self.chunk_size],
                )
            if status == 0:
                raise StoreError(f"offset conflict for {digest}: expected {current}, got {at}")
            if status == -1:
                self.drop_partial(digest)
                raise BlobCorruptError(
                    f"partial upload {digest}: chunk {index} does not match its length "
                    f"{current}; discarded"
                )
            pos += piece.nbytes
            self._fault_hook("appended")
        return offset + view.nbytes

    def partial_bytes(self, digest: str) -> bytes:
        check_digest(digest)
        meta, prefix = self._partial_keys(digest)
        with self._errors(f"read partial {digest}"):
            length = int(self._r.hget(meta, "len") or 0)
            chunks = self._read(prefix, _chunks(length, self.chunk_size))
        return b"".join(c for c in chunks if c is not None)[:length]

    def drop_partial(self, digest: str) -> None:
        self._drop_partial(digest, cutoff=None)

    def _drop_partial(self, digest: str, *, cutoff: float | None) -> bool:
        check_digest(digest)
        meta, prefix = self._partial_keys(digest)
        with self._errors(f"drop partial {digest}"):
            dropped = self._drop(
                keys=[meta, self._key("partials")],
                args=[digest, prefix, self.chunk_size, "" if cutoff is None else cutoff],
            )
        return bool(dropped)

    def complete_partial(
        self,
        digest: str,
        *,
        key: str | None = None,
        owner: str | None = None,
        public: bool = False,
    ) -> None:
        """Verify the finished partial upload, copy its chunks inside Redis to staged keys
        of exactly their length (``COPY``, one chunk per command; the appended originals
        carry APPEND's preallocated slack) and commit them with one script that also drops
        the partial; bytes that do not hash to ``digest`` are discarded with
        :class:`StoreError`. A blob already held (another server or session completed it
        first) is kept and this partial, once verified, dropped (§14.5: the bytes of every
        session are verified, so "complete" never reveals another tenant's blob).
        ``owner`` and ``public`` are recorded by the committing script itself (see the
        module docstring)."""
        key = key or digest
        check_digest(digest)
        check_digest(key)
        if owner is not None:
            check_session_hash(owner)
        meta, prefix = self._partial_keys(key)
        with self._errors(f"read partial {key}"):
            length = int(self._r.hget(meta, "len") or 0)
            chunks = self._read(prefix, _chunks(length, self.chunk_size))
        data = b"".join(c for c in chunks if c is not None)
        actual = sha256_hex(data)
        if actual != digest or len(data) != length:
            self.drop_partial(key)
            raise StoreError(f"blob digest mismatch: expected {digest}, bytes hash to {actual}")
        if length == 0:  # nothing to rename: the empty blob is stored directly
            self.put(digest, b"")
            self.drop_partial(key)
            self._record_uploaded(digest, owner, public)
            return
        count = _chunks(length, self.chunk_size)
        stage = self._key("stage", digest, secrets.token_hex(8), "")
        with self._errors(f"commit {digest}"):
            if not self._r.exists(self._key("blob", digest)):  # else: verified, then dropped
                for i in range(count):
                    self._stage_copy(
                        keys=[f"{prefix}{i}", f"{stage}{i}"], args=[self._stage_ttl_ms]
                    )
                    self._fault_hook("staged")
            done = self._commit_partial(
                keys=[meta, self._key("blob", digest), self._key("blobs"), self._key("partials"),
                      self._key("owner", owner or "-"), self._key("public")],
                args=[length, digest, self.chunk_size, secrets.token_hex(8), prefix, stage,
                      self._key("blob", digest, ""), key, "1" if owner else "",
                      "1" if public else ""],
            )  # fmt: skip
        if done == 0:
            if not self.has(digest):
                raise StoreError(f"blob {digest}: the partial upload changed while it was verified")
            self._record_uploaded(digest, owner, public)  # verified here, committed elsewhere
        self._fault_hook("committed")

    # -- tenant scoping (protocol.md §14.5) ---------------------------------------------

    def record_owner(self, session_hash: str, digest: str) -> None:
        check_digest(digest)
        check_session_hash(session_hash)
        with self._errors(f"record owner {session_hash}"):
            self._r.sadd(self._key("owner", session_hash), digest)

    def _owned(self, session_hash: str) -> list[str]:
        with self._errors(f"owner records {session_hash}"):
            return sorted(_text(m) for m in self._r.smembers(self._key("owner", session_hash)))

    def owned_by(self, session_hash: str) -> frozenset[str]:
        """Blobs this session uploaded (on any server of the site) that are still held."""
        owned = self._owned(session_hash)
        with self._errors(f"owned by {session_hash}"):
            pipe = self._r.pipeline(transaction=False)
            for digest in owned:
                pipe.exists(self._key("blob", digest))
            held = pipe.execute()
        return frozenset(d for d, h in zip(owned, held, strict=True) if h)

    def bytes_owned_by(self, session_hash: str) -> int:
        owned = self._owned(session_hash)
        with self._errors(f"bytes owned by {session_hash}"):
            pipe = self._r.pipeline(transaction=False)
            for digest in owned:
                pipe.hget(self._key("blob", digest), "size")
            sizes = pipe.execute()
        return sum(int(s) for s in sizes if s is not None)

    # -- public blobs (protocol.md §10.3.4, §14.5.1) --------------------------------------

    def record_public(self, digest: str) -> None:
        check_digest(digest)
        with self._errors(f"record public {digest}"):
            self._r.sadd(self._key("public"), digest)

    def public_held(self, digests: Iterable[str]) -> frozenset[str]:
        """Those of ``digests`` published (by any server of the site) and still held."""
        wanted = sorted(set(digests))
        if not wanted:
            return frozenset()
        for digest in wanted:
            check_digest(digest)
        with self._errors("public records"):
            pipe = self._r.pipeline(transaction=False)
            pipe.smismember(self._key("public"), wanted)
            for digest in wanted:
                pipe.exists(self._key("blob", digest))
            flags, *held = pipe.execute()
        return frozenset(d for d, p, h in zip(wanted, flags, held, strict=True) if p and h)

    # -- notes --------------------------------------------------------------------------

    def read_note(self, name: str) -> str | None:
        with self._errors(f"read note {name}"):
            value = self._r.get(self._key("note", name))
        return None if value is None else _text(value)

    def write_note(self, name: str, text: str) -> bool:
        with self._errors(f"write note {name}"):
            self._r.set(self._key("note", name), text.encode())
        return True

    # -- maintenance --------------------------------------------------------------------

    def digests(self) -> Iterable[str]:
        with self._errors("digests"):
            return tuple(sorted(_text(m) for m in self._r.smembers(self._key("blobs"))))

    def sweep_partials(self, *, now: float | None = None) -> int:
        """Delete partial uploads not appended to for ``partial_ttl_s`` seconds (by the
        append times the servers recorded); returns how many were deleted. Runs when the
        store opens; any server of the site may call it again."""
        if self._partial_ttl_s is None:
            return 0
        cutoff = (time.time() if now is None else now) - self._partial_ttl_s
        with self._errors("sweep partials"):
            stale = self._r.zrangebyscore(self._key("partials"), "-inf", f"({cutoff}")
        return sum(self._drop_partial(_text(m), cutoff=cutoff) for m in stale)

    def describe(self) -> dict[str, Any]:
        """Counts for logs and health pages: blobs held, their bytes, partial uploads."""
        with self._errors("describe"):
            digests = [_text(m) for m in self._r.smembers(self._key("blobs"))]
            pipe = self._r.pipeline(transaction=False)
            for digest in digests:
                pipe.hget(self._key("blob", digest), "size")
            sizes = pipe.execute()
            partials = self._r.zcard(self._key("partials"))
        return {
            "url": self.url,
            "blobs": len(digests),
            "bytes": sum(int(s) for s in sizes if s is not None),
            "partials": int(partials),
            "chunk_size": self.chunk_size,
        }
