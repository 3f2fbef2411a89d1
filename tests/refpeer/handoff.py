"""The handoff of protocol.md §15 for the reference peer, written from protocol.md alone.

Two roles:

* the client that moves (§15.4.4): :func:`stage_tag`, :func:`open_session` and :func:`move`
  (hello with the same key, manifest first, ``fetch``, then upload whatever the new server does
  not report held, planning only from what the new server says);
* a *source* server that answers a next server's pulls (§15.3), :class:`ReferenceSource`, run
  on a listening socket in a thread. It can misbehave on purpose, for the tests of what a next
  server must do with an untrusted peer: send wrong bytes, answer another range, or vanish
  after serving some bytes.

Imports nothing from ``ionn_net``.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .channels import PeerTimeout, SocketChannel
from .peer import Message, PeerClosed, RefPeer
from .session import hello
from .wire import PeerError


def stage_tag(session_key: str) -> str:
    """§15.5.2: hex SHA-256("ionn-stage/1" || 0x00 || the key's 32 hex digits in ASCII)."""
    return hashlib.sha256(b"ionn-stage/1\x00" + session_key.encode("ascii")).hexdigest()


def open_session(port: int, key: str, timeout: float = 30.0) -> RefPeer:
    """A connection to a server on loopback with the session ``key`` established."""
    peer = RefPeer(SocketChannel.connect("127.0.0.1", port), client=True, timeout=timeout)
    peer.handshake()
    answer = hello(peer, session=key)[-1]
    assert answer.head.get("m") == "welcome", answer.head
    return peer


def upload(peer: RefPeer, digest: str, blobs: dict[str, bytes], offsets: dict[str, int]) -> None:
    """§10.5: each blob from the server's offset (``offsets``, from its holdings)."""
    for sha, data in blobs.items():
        offset = int(offsets.get(sha, 0))
        head = {"m": "blob", "model": digest, "sha256": sha, "size": len(data), "offset": offset}
        reply = peer.request(head, data[offset:])
        assert reply.head.get("m") == "blob_ok", reply.head


def move(
    port: int,
    key: str,
    body: bytes,
    blobs: dict[str, bytes],
    *,
    source: str | None,
    grant: str | None,
) -> tuple[RefPeer, dict[str, object], dict[str, object] | None]:
    """§15.4.4: the client moves to the server on ``port``: hello with the same ``key``, its
    manifest first, ``fetch`` from ``source`` with ``grant`` (when it holds one), then upload
    what the new server does not report held. Returns the connection, the ``manifest_ok`` head
    and the ``fetch_ok`` head (None without a fetch)."""
    peer = open_session(port, key)
    digest = hashlib.sha256(body).hexdigest()
    manifest = peer.request({"m": "manifest", "model": digest}, body).head
    assert manifest.get("m") == "manifest_ok", manifest
    held = set(manifest["blobs_held"])  # type: ignore[arg-type]
    partial = dict(manifest["partial"])  # type: ignore[call-overload]
    fetched = None
    missing = [d for d in blobs if d not in held]
    if source is not None and grant is not None and missing:
        head = {"m": "fetch", "model": digest, "source": source, "grant": grant,
                "blobs": missing, "deadline_ms": 30_000}  # fmt: skip
        fetched = peer.request(head).head
        assert fetched.get("m") == "fetch_ok", fetched
        held = set(fetched["blobs_held"])  # type: ignore[arg-type]
        partial = dict(fetched["partial"])  # type: ignore[call-overload]
    upload(peer, digest, {d: b for d, b in blobs.items() if d not in held}, partial)
    return peer, manifest, fetched


@dataclass
class SourceBehaviour:
    """How a :class:`ReferenceSource` answers. ``corrupt``: flip one byte of every pulled
    range; ``wrong_offset``: answer a range shifted by one byte; ``vanish_after``: close the
    connection once this many blob bytes were served (None: never); ``refuse``: answer every
    redeem with this error code."""

    corrupt: bool = False
    wrong_offset: bool = False
    vanish_after: int | None = None
    refuse: str | None = None


@dataclass
class ReferenceSource:
    """A previous server reduced to §15.3: it welcomes any hello, answers ``redeem`` with the
    blobs it was given (whatever the grant, unless told to refuse) and ``pull`` with their
    bytes, per :class:`SourceBehaviour`."""

    model: str
    blobs: dict[str, bytes]
    behaviour: SourceBehaviour = field(default_factory=SourceBehaviour)
    served: int = 0
    requests: list[dict[str, object]] = field(default_factory=list)

    @contextmanager
    def serving(self) -> Iterator[int]:
        """Listen on loopback in a thread; yields the port."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        stop = threading.Event()

        def accept() -> None:
            listener.settimeout(0.2)
            while not stop.is_set():
                try:
                    sock, _ = listener.accept()
                except (TimeoutError, OSError):
                    continue
                threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield listener.getsockname()[1]
        finally:
            stop.set()
            thread.join(5)
            listener.close()

    def _serve(self, sock: socket.socket) -> None:
        peer = RefPeer(SocketChannel(sock), client=False, timeout=30.0)
        try:
            peer.handshake()
            while not peer.closed:
                msg = peer.accept_request()
                self.requests.append(dict(msg.head))
                if not self._answer(peer, msg):
                    break
        except (PeerClosed, PeerTimeout, PeerError, OSError):
            pass
        finally:
            sock.close()

    def _answer(self, peer: RefPeer, msg: Message) -> bool:
        head, kind = msg.head, msg.head.get("m")
        if kind == "hello":
            peer.send_message(msg.stream_id, {"m": "welcome", "server": "refpeer-source/1",
                                        "session": head["session"], "cost_model": None,
                                        "limits": {}})  # fmt: skip
        elif kind == "redeem" and self.behaviour.refuse:
            code = self.behaviour.refuse
            peer.send_message(msg.stream_id, {"m": "error", "code": code, "message": "refused"})
        elif kind == "redeem":
            sizes = {d: len(b) for d, b in self.blobs.items()}
            peer.send_message(
                msg.stream_id, {"m": "redeem_ok", "model": self.model, "blobs": sizes}
            )
        elif kind == "pull":
            return self._pull(peer, msg)
        else:
            peer.send_message(
                msg.stream_id, {"m": "error", "code": "unknown_message", "message": "?"}
            )
        return True

    def _pull(self, peer: RefPeer, msg: Message) -> bool:
        b = self.behaviour
        sha, offset, length = msg.head["sha256"], int(msg.head["offset"]), int(msg.head["length"])  # type: ignore[call-overload]
        data = self.blobs[str(sha)][offset : offset + length]
        if b.vanish_after is not None and self.served + len(data) > b.vanish_after:
            peer.channel.close()  # gone, without a word
            return False
        if b.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        answered = offset + 1 if b.wrong_offset else offset
        self.served += len(data)
        head = {"m": "pull_ok", "sha256": sha, "offset": answered}
        peer.send_message(msg.stream_id, head, data)
        return True


def random_key() -> str:
    return os.urandom(16).hex()
