"""Drivers shared by the conformance modules: the core under test, and the verifier.

``CoreUnderTest`` wraps one :class:`ionn_net.proto.Connection` and feeds it raw bytes built by
the reference peer (never by the library's serializer). Everything the core emits is parsed by
the reference peer's :class:`~tests.refpeer.wire.FrameReader` with the limits this test peer
announced, so the core's output is itself checked against §3/§4 as a sender.

Outcomes follow the h2spec rule: for an error case every legal outcome is accepted (GOAWAY with
the code for a connection error; RESET with the code, or a GOAWAY with the code, for a stream
error), and silence is a failure.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tests.conformance.vectors import Vector
from tests.refpeer import wire as rw
from tests.refpeer.channels import PeerTimeout, PipeChannel, SocketChannel
from tests.refpeer.manifest import Weight
from tests.refpeer.peer import PeerClosed, RefPeer
from tests.refpeer.session import hello
from tests.refpeer.wire import PeerError

from ionn_net.config import Limits
from ionn_net.proto import events as ev
from ionn_net.proto import wire
from ionn_net.proto.connection import Connection
from ionn_net.proto.errors import ErrorCode

CLIENT_HANDSHAKE = rw.client_preface() + rw.settings_frame() + rw.settings_ack()
SERVER_HANDSHAKE = rw.server_preface() + rw.settings_frame() + rw.settings_ack()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an endpoint did with some input: ``ignored``, or an error with scope and code."""

    kind: str  # "ignored" | "connection" | "stream"
    code: str | None = None
    stream_id: int | None = None

    def label(self) -> str:
        return "ignored" if self.kind == "ignored" else str(self.code)


# ----- vector fields <-> core frames ---------------------------------------------------------


def core_frame(fields: dict[str, Any]) -> wire.Frame:
    """The core's typed frame for the expected fields of a ``valid`` vector."""
    kind = fields["type"]
    if kind == "DATA":
        return wire.DataFrame(
            stream_id=fields["stream_id"],
            data=bytes.fromhex(fields["data_hex"]),
            codec=fields["codec"],
            decoded_length=fields["decoded_length"],
            end_stream=fields["end_stream"],
        )
    if kind == "HEADERS":
        return wire.HeadersFrame(
            stream_id=fields["stream_id"],
            urgency=fields["urgency"],
            incremental=fields["incremental"],
            head=fields["head"],
            end_stream=fields["end_stream"],
            raw=bytes.fromhex(fields["head_hex"]),
        )
    simple: dict[str, Any] = {
        "RESET": lambda f: wire.ResetFrame(stream_id=f["stream_id"], error_code=f["error_code"]),
        "SETTINGS": lambda f: wire.SettingsFrame(
            ack=f["ack"], entries=tuple((k, v) for k, v in f["entries"])
        ),
        "PING": lambda f: wire.PingFrame(ack=f["ack"], payload=bytes.fromhex(f["payload_hex"])),
        "GOAWAY": lambda f: wire.GoAwayFrame(
            last_stream_id=f["last_stream_id"], error_code=f["error_code"], debug=f["debug"]
        ),
        "CREDIT": lambda f: wire.CreditFrame(stream_id=f["stream_id"], limit=f["limit"]),
        "UNKNOWN": lambda f: wire.UnknownFrame(
            type=f["type_code"],
            flags=f["flags"],
            stream_id=f["stream_id"],
            payload=bytes.fromhex(f["payload_hex"]),
        ),
    }
    frame: wire.Frame = simple[kind](fields)
    return frame


def splits(data: bytes, *, every_offset: bool = True) -> Iterator[list[bytes]]:
    """Ways to cut ``data``: whole, one byte at a time, and in two at every offset."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    if every_offset:
        for i in range(1, len(data)):
            yield [data[:i], data[i:]]


def decode_all(chunks: Iterable[bytes], limits: Limits | None = None) -> list[wire.Frame]:
    decoder = wire.FrameDecoder(limits or Limits())
    frames: list[wire.Frame] = []
    for chunk in chunks:
        frames.extend(decoder.feed(chunk))
    assert decoder.buffered == 0, "bytes left over after the last frame"
    return frames


# ----- the core under test -------------------------------------------------------------------


class CoreUnderTest:
    """A Connection fed raw bytes; its output parsed and checked by the reference reader."""

    def __init__(
        self,
        *,
        client: bool = False,
        limits: Limits | None = None,
        peer_settings: dict[int, int] | None = None,
        now: float = 0.0,
        versions: tuple[int, int] = (1, 1),
    ) -> None:
        self.client = client
        self.now = now
        self.conn = Connection(client=client, limits=limits or Limits(), now=now, versions=versions)
        self.conn.initiate()
        self.events: list[ev.Event] = []
        self.frames: list[rw.Frame] = []
        self.out = bytearray()
        self.preface: bytes | None = None
        self.output_error: PeerError | None = None
        self._reader = rw.FrameReader({**rw.DEFAULT_SETTINGS, **(peer_settings or {})})
        self._pre = bytearray()
        self.drain()

    # input
    def feed(self, data: bytes, now: float | None = None, *, drain: bool = True) -> list[ev.Event]:
        """Hand ``data`` to the core; by default its output is drained and parsed at once."""
        if now is not None:
            self.now = now
        new = self.conn.receive_data(data, self.now)
        self.events.extend(new)
        if drain:
            self.drain()
        return new

    def pull_one(self) -> rw.Frame | None:
        """Exactly one frame from the core (``next_frame``), parsed like all output."""
        raw = self.conn.next_frame()
        if raw is None:
            return None
        n = len(self.frames)
        self._parse(raw)
        assert len(self.frames) == n + 1 or self.preface is None
        return self.frames[-1]

    def feed_chunks(self, chunks: Sequence[bytes]) -> list[ev.Event]:
        out: list[ev.Event] = []
        for chunk in chunks:
            out.extend(self.feed(chunk))
        return out

    def timer(self, now: float) -> list[ev.Event]:
        self.now = now
        new = self.conn.handle_timer(now)
        self.events.extend(new)
        self.drain()
        return new

    def handshake(self, settings: Sequence[tuple[int, int]] = ()) -> CoreUnderTest:
        """Complete the handshake as the peer would (preface, SETTINGS, ACK).

        The announced ``settings`` also become the limits the core's output is checked against.
        """
        self.announce(settings)
        if self.client:
            self.feed(rw.server_preface() + rw.settings_frame(list(settings)) + rw.settings_ack())
        else:
            self.feed(rw.client_preface() + rw.settings_frame(list(settings)) + rw.settings_ack())
        assert not self.conn.closed, self.events
        self.frames.clear()
        self.events.clear()
        return self

    def announce(self, settings: Sequence[tuple[int, int]]) -> bytes:
        """A SETTINGS frame from the test peer; its limits now judge the core's output."""
        self._reader.local.update(dict(settings))
        return rw.settings_frame(list(settings))

    # output
    def drain(self) -> list[rw.Frame]:
        """Move the core's pending output into ``frames`` (checked by the reference reader)."""
        return self._parse(self.conn.data_to_send())

    def _parse(self, data: bytes) -> list[rw.Frame]:
        self.out += data
        if self.preface is None:
            self._pre += data
            if len(self._pre) < rw.PREFACE_SIZE:
                return []
            self.preface = bytes(self._pre[: rw.PREFACE_SIZE])
            data = bytes(self._pre[rw.PREFACE_SIZE :])
            if self.preface[:4] != rw.PREFACE_MAGIC:
                raise AssertionError(f"the core's output does not start with a preface: {data!r}")
        try:
            new = self._reader.feed(data)
        except PeerError as exc:  # the core sent a frame the test peer must refuse
            self.output_error = exc
            raise AssertionError(f"the core emitted an invalid frame: {exc}") from exc
        if self._reader.error is not None:  # valid frames came first, then an invalid one
            self.output_error = self._reader.error
            raise AssertionError(f"the core emitted an invalid frame: {self._reader.error}")
        self.frames.extend(new)
        return new

    def sent(self, ftype: int) -> list[rw.Frame]:
        return [f for f in self.frames if f.type == ftype]

    def goaways(self) -> list[tuple[int, int]]:
        return [rw_goaway(f) for f in self.sent(rw.T.GOAWAY)]

    def resets(self) -> list[tuple[int, int]]:
        return [(f.stream_id, int.from_bytes(f.payload, "big")) for f in self.sent(rw.T.RESET)]

    def terminated(self) -> ev.ConnectionTerminated | None:
        found = [e for e in self.events if isinstance(e, ev.ConnectionTerminated)]
        return found[-1] if found else None

    def outcome(self) -> Outcome:
        """The error this core signalled for the last input, or ``ignored``."""
        if self.goaways():
            _, code = self.goaways()[-1]
            if code != ErrorCode.NO_ERROR:
                return Outcome("connection", ErrorCode(code).name)
        local_resets = [e for e in self.events if isinstance(e, ev.StreamReset) and not e.remote]
        if self.resets():
            sid, code = self.resets()[-1]
            return Outcome("stream", ErrorCode(code).name, sid)
        assert not local_resets, f"StreamReset event without a RESET frame: {local_resets}"
        return Outcome("ignored")


def rw_goaway(frame: rw.Frame) -> tuple[int, int]:
    return int.from_bytes(frame.payload[:4], "big"), int.from_bytes(frame.payload[4:8], "big")


def assert_legal(outcome: Outcome, code: str, scope: str, core: CoreUnderTest | None) -> None:
    """h2spec rule: a connection error needs GOAWAY(code); a stream error RESET or GOAWAY."""
    if scope == "connection":
        assert outcome == Outcome("connection", code), f"expected GOAWAY {code}, got {outcome}"
    else:
        assert outcome.kind in ("stream", "connection"), f"expected RESET {code}, got silence"
        assert outcome.code == code, f"expected {code}, got {outcome}"
    if core is not None and outcome.kind == "connection":
        term = core.terminated()
        assert term is not None and term.error_code.name == code, core.events
        assert term.error is not None and term.error.error_code.name == code
        assert core.conn.closed


def core_outcome(
    prefix: bytes, chunks: Sequence[bytes], limits: Limits | None = None
) -> tuple[Outcome, CoreUnderTest]:
    """A server core after the handshake, fed ``prefix`` then ``chunks``."""
    core = CoreUnderTest(limits=limits).handshake()
    core.feed(prefix)
    assert core.outcome() == Outcome("ignored"), f"the prefix alone failed: {core.outcome()}"
    core.feed_chunks(chunks)
    return core.outcome(), core


def check_invalid_vector(vector: Vector, *, every_offset: bool | None = None) -> None:
    """The vector's error, from the core (under every split) and from the reference peer."""
    data = bytes.fromhex(vector["hex"])
    prefix = bytes.fromhex(vector.get("prefix_hex", ""))
    ref = refpeer_outcome(prefix + data)
    assert ref.label() == vector["code"], f"reference peer: {ref} (the vector may be wrong)"
    if every_offset is None:
        every_offset = len(data) <= 4096
    for chunks in splits(data, every_offset=every_offset):
        outcome, core = core_outcome(prefix, chunks)
        assert_legal(outcome, vector["code"], vector["scope"], core)


def check_acceptable_vector(vector: Vector) -> None:
    data = bytes.fromhex(vector["hex"])
    prefix = bytes.fromhex(vector.get("prefix_hex", ""))
    allowed = set(vector["outcomes"])
    assert refpeer_outcome(prefix + data).label() in allowed
    for chunks in splits(data):
        outcome, _ = core_outcome(prefix, chunks)
        assert outcome.label() in allowed, f"{outcome} not in {allowed}"


# ----- the reference peer as the judge of a vector ---------------------------------------------


def refpeer_outcome(data: bytes, settings: dict[int, int] | None = None) -> Outcome:
    """What the reference peer (as a server after the handshake) does with ``data``."""
    pipe = PipeChannel()
    pipe.inbound += CLIENT_HANDSHAKE + data
    pipe.eof = True
    peer = RefPeer(pipe, client=False, settings=settings)
    peer.handshake(wait_ack=True)
    try:
        for _ in itertools.count():
            inc = peer.poll()
            if inc.kind == "stream_error":
                assert inc.code is not None
                return Outcome("stream", inc.code.name, inc.stream_id)
            if inc.kind == "refused":
                return Outcome("stream", "REFUSED_STREAM", inc.stream_id)
    except PeerError as exc:
        return Outcome("connection" if exc.stream_id is None else "stream", exc.code.name)
    except (PeerClosed, PeerTimeout):
        pass
    return Outcome("ignored")


def session(server: Any, *, timeout: float = 30.0) -> RefPeer:
    """A reference-peer connection to the live ``server`` (anything with a ``port``), past
    the §10.2 exchange: the server's answer to ``hello`` was ``welcome``."""
    peer = RefPeer(SocketChannel.connect("127.0.0.1", server.port), client=True, timeout=timeout)
    peer.handshake()
    (welcome,) = hello(peer)
    assert welcome.head["m"] == "welcome", welcome.head
    return peer


def f32(a: np.ndarray) -> Weight:
    """A manifest weight of ``a``'s shape, its values as little-endian float32 (§10.3.1)."""
    return Weight(list(a.shape), np.ascontiguousarray(a, dtype="<f4").tobytes())
