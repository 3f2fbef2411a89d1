"""A Hypothesis state machine over two real Connections (client and server) joined by a pipe.

Rules open requests with bodies (RAW or zstd codecs), answer them, reset streams from either
side, ping, close gracefully, and deliver the bytes in flight in random splits. Invariants:

* neither endpoint ever detects a protocol violation by the other (both are the core);
* credit is never exceeded: every DATA byte the client emits on a stream fits the limit the
  server granted so far (its initial window or a delivered CREDIT), and no sender ever shows
  negative available credit;
* once nothing is in flight or queued, each stream's state on one side mirrors the other
  (open/open, half_closed_local/half_closed_remote, closed/closed);
* every message that completes is received byte for byte as it was sent.
"""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from tests.helpers.core_app import CoreApp
from tests.refpeer import wire as rw

from ionn_net.config import Limits
from ionn_net.proto import events as ev
from ionn_net.proto.codecs import Codec
from ionn_net.proto.connection import Connection
from ionn_net.proto.errors import ErrorCode, UsageError
from ionn_net.proto.streams import StreamState

LIMITS = Limits(initial_stream_credit=65536, max_chunk=16384)
DEFAULT_STREAM_CREDIT = 1 << 20
MIRROR = {
    StreamState.OPEN: StreamState.OPEN,
    StreamState.HALF_CLOSED_LOCAL: StreamState.HALF_CLOSED_REMOTE,
    StreamState.HALF_CLOSED_REMOTE: StreamState.HALF_CLOSED_LOCAL,
    StreamState.CLOSED: StreamState.CLOSED,
}
CODECS = [None, Codec.ZSTD, Codec.ZSTD_SHUFFLE4, Codec.ZSTD_SHUFFLE2]


def _body(size: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    words = [rnd.choice([0, 0, 1, 7, 255, 1000]) for _ in range(size // 4 + 1)]
    return b"".join(w.to_bytes(4, "little") for w in words)[:size]


class Tap:
    """Parses one direction's bytes with the reference reader and sums DATA / CREDIT."""

    def __init__(self) -> None:
        self.reader = rw.FrameReader({k: v for k, (_, _, v) in rw.SETTINGS_TABLE.items()})
        self.preface = bytearray()
        self.data: dict[int, int] = {}
        self.credit: dict[int, int] = {}

    def feed(self, data: bytes) -> None:
        if len(self.preface) < rw.PREFACE_SIZE:
            need = rw.PREFACE_SIZE - len(self.preface)
            self.preface += data[:need]
            data = data[need:]
        for frame in self.reader.feed(data):
            if frame.type == rw.T.DATA:
                self.data[frame.stream_id] = self.data.get(frame.stream_id, 0) + len(frame.payload)
            elif frame.type == rw.T.CREDIT:
                limit = int.from_bytes(frame.payload, "big")
                self.credit[frame.stream_id] = max(self.credit.get(frame.stream_id, 0), limit)


class TwoConnections(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.client = CoreApp(Connection(client=True, limits=LIMITS))
        self.server = CoreApp(Connection(client=False, limits=LIMITS))
        self.client.conn.initiate()
        self.c2s = bytearray()
        self.s2c = bytearray()
        self.c_tap, self.s_tap = Tap(), Tap()  # what the client sent / the client received
        self.requests: dict[int, bytes] = {}
        self.responses: dict[int, bytes] = {}
        self.responded: set[int] = set()
        self.pings = 0

    # ----- moving bytes
    def _pull(self) -> None:
        out = self.client.conn.data_to_send()
        self.c_tap.feed(out)
        self.c2s += out
        self.s2c += self.server.conn.data_to_send()

    def _deliver(self, to_server: bool, n: int) -> None:
        self._pull()
        pipe = self.c2s if to_server else self.s2c
        chunk = bytes(pipe[:n])
        del pipe[:n]
        if to_server:
            self.server.receive(chunk)
        else:
            self.s_tap.feed(chunk)
            self.client.receive(chunk)
        self._pull()

    @rule(to_server=st.booleans(), fraction=st.floats(0.0, 1.0))
    def deliver(self, to_server: bool, fraction: float) -> None:
        self._pull()
        pipe = self.c2s if to_server else self.s2c
        self._deliver(to_server, max(1, int(len(pipe) * fraction)))

    @rule()
    def flush(self) -> None:
        for _ in range(500):
            self._pull()
            if not self.c2s and not self.s2c:
                return
            self._deliver(True, len(self.c2s))
            self._deliver(False, len(self.s2c))

    # ----- application actions
    @precondition(lambda self: not self.client.conn.closed)
    @rule(size=st.integers(0, 150_000), codec=st.sampled_from(CODECS), urgency=st.integers(0, 7))
    def open_request(self, size: int, codec: Codec | None, urgency: int) -> None:
        if codec in (Codec.ZSTD_SHUFFLE4, Codec.ZSTD_SHUFFLE2):
            size -= size % 4
        body = _body(size, len(self.requests))
        try:
            sid = self.client.request({"m": "up"}, body, codec=codec, urgency=urgency)
        except UsageError:  # concurrency limit or GOAWAY: a legal refusal to open
            return
        self.requests[sid] = body

    @rule(pick=st.integers(0, 1000), size=st.integers(0, 100_000))
    def respond(self, pick: int, size: int) -> None:
        ready = [
            sid
            for sid, rec in sorted(self.server.streams.items())
            if rec.complete
            and rec.reset is None
            and sid not in self.responded
            and self.server.conn.stream_state(sid) is not StreamState.CLOSED
        ]
        if not ready:
            return
        sid = ready[pick % len(ready)]
        body = _body(size, -sid)
        self.server.respond(sid, {"m": "down"}, body, Codec.ZSTD if size % 2 else None)
        self.responded.add(sid)
        self.responses[sid] = body

    @rule(from_client=st.booleans(), pick=st.integers(0, 1000))
    def reset(self, from_client: bool, pick: int) -> None:
        app = self.client if from_client else self.server
        live = [s for s in app.conn.open_streams if app.conn.stream_state(s) != StreamState.CLOSED]
        if live:
            app.conn.reset_stream(live[pick % len(live)], ErrorCode.CANCEL)

    @rule(from_client=st.booleans())
    def ping(self, from_client: bool) -> None:
        app = self.client if from_client else self.server
        if app.conn.closed:
            return
        self.pings += 1
        with contextlib.suppress(UsageError):  # too many outstanding PINGs: a local refusal
            app.conn.ping(self.pings.to_bytes(8, "big"))

    @precondition(lambda self: len(self.requests) >= 2)
    @rule()
    def client_goaway(self) -> None:
        self.client.conn.close()

    # ----- invariants
    @invariant()
    def no_protocol_error(self) -> None:
        for app in (self.client, self.server):
            for event in app.events:
                if isinstance(event, ev.ConnectionTerminated):
                    assert event.error is None, event
                if isinstance(event, ev.StreamReset):
                    assert event.error_code == ErrorCode.CANCEL, event

    @invariant()
    def credit_never_exceeded(self) -> None:
        for sid, sent in self.c_tap.data.items():
            granted = max(DEFAULT_STREAM_CREDIT, self.s_tap.credit.get(sid, 0))
            assert sent <= granted, (sid, sent, granted)
        for app in (self.client, self.server):
            for sid in app.conn.open_streams:
                assert app.conn.available_credit(sid) >= 0

    @invariant()
    def completed_messages_are_intact(self) -> None:
        for sid, rec in self.server.streams.items():
            if rec.complete:
                assert bytes(rec.body) == self.requests[sid], sid
        for sid, rec in self.client.streams.items():
            if rec.complete and sid in self.responses:
                assert bytes(rec.body) == self.responses[sid], sid

    @invariant()
    def states_mirror_when_quiet(self) -> None:
        self._pull()
        quiet = not self.c2s and not self.s2c
        quiet = quiet and not self.client.conn.outbound_buffered_bytes
        quiet = quiet and not self.server.conn.outbound_buffered_bytes
        if not quiet or self.client.conn.closed or self.server.conn.closed:
            return
        for sid in self.requests:
            c, s = self.client.conn.stream_state(sid), self.server.conn.stream_state(sid)
            assert MIRROR[c] is s, (sid, c, s)


TestTwoConnections = TwoConnections.TestCase
TestTwoConnections.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestTwoConnections.pytestmark = [  # type: ignore[attr-defined]
    pytest.mark.spec("6.2"),
    pytest.mark.spec("7.2"),
    pytest.mark.spec("10.1.1"),
]
