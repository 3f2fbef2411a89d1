"""Helpers for the core's unit tests: an in-memory pipe between two Connections and raw frames.

``Pair`` moves bytes between a client and a server Connection (optionally in small pieces,
optionally one frame at a time) and collects the events each side reported.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ionn_net.config import Limits
from ionn_net.proto import (
    Connection,
    CreditFrame,
    DataReceived,
    Event,
    FrameDecoder,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    ResetFrame,
    SettingsFrame,
    serialize,
)

PREFACE = b"IONN\x01\x01\x00\x00"
HDR = struct.Struct(">BBBBIII")


def settings(*entries: tuple[int, int]) -> bytes:
    return serialize(SettingsFrame(entries=tuple(entries)))


def headers(sid: int, head: dict[str, object], *, end: bool = False, urgency: int = 3) -> bytes:
    return serialize(HeadersFrame(stream_id=sid, head=head, end_stream=end, urgency=urgency))


def data(sid: int, payload: bytes, *, end: bool = False) -> bytes:
    return HDR.pack(0, int(end), 0, 0, sid, len(payload), len(payload)) + payload


def raw_frame(ftype: int, sid: int, payload: bytes, *, flags: int = 0, codec: int = 0) -> bytes:
    return HDR.pack(ftype, flags, codec, 0, sid, len(payload), len(payload)) + payload


def reset(sid: int, code: int) -> bytes:
    return serialize(ResetFrame(stream_id=sid, error_code=code))


def ping(payload: bytes = b"12345678", *, ack: bool = False) -> bytes:
    return serialize(PingFrame(payload=payload, ack=ack))


def credit(sid: int, limit: int) -> bytes:
    return serialize(CreditFrame(stream_id=sid, limit=limit))


def goaway(last: int, code: int, debug: str = "") -> bytes:
    return serialize(GoAwayFrame(last_stream_id=last, error_code=code, debug=debug))


def parse(wire: bytes, *, skip_preface: bool = False) -> list[object]:
    """Frames in ``wire`` (what a core sent), parsed with a roomy decoder."""
    if skip_preface:
        wire = wire[8:]
    return list(FrameDecoder(Limits(max_frame_size=16777215)).feed(wire))


def server_after_handshake(limits: Limits | None = None, now: float = 0.0) -> Connection:
    """A server Connection that received a client preface + SETTINGS; its output drained."""
    conn = Connection(client=False, limits=limits or Limits(), now=now)
    conn.receive_data(PREFACE + settings(), now)
    conn.data_to_send()
    return conn


@dataclass
class Pair:
    """A client and a server Connection joined by an in-memory pipe."""

    client_limits: Limits = field(default_factory=Limits)
    server_limits: Limits = field(default_factory=Limits)
    client_events: list[Event] = field(default_factory=list)
    server_events: list[Event] = field(default_factory=list)
    piece: int | None = None  # deliver in pieces of this many bytes
    auto_ack: bool = True  # acknowledge every DataReceived at once
    now: float = 0.0

    def __post_init__(self) -> None:
        self.client = Connection(client=True, limits=self.client_limits, now=self.now)
        self.server = Connection(client=False, limits=self.server_limits, now=self.now)
        self.client.initiate()
        self.pump()

    def _deliver(self, src: Connection, dst: Connection, sink: list[Event], budget: int) -> int:
        wire = src.data_to_send(budget)
        step = self.piece or max(1, len(wire))
        for i in range(0, len(wire), step):
            evs = dst.receive_data(wire[i : i + step], self.now)
            sink.extend(evs)
            if self.auto_ack:
                for ev in evs:
                    if isinstance(ev, DataReceived):
                        dst.acknowledge_received_data(ev.stream_id, ev.wire_length)
        return len(wire)

    def pump(self, *, budget: int = 1 << 20, rounds: int = 100_000) -> None:
        """Move bytes both ways until both sides are quiet (bounded by ``rounds``)."""
        for _ in range(rounds):
            moved = self._deliver(self.client, self.server, self.server_events, budget)
            moved += self._deliver(self.server, self.client, self.client_events, budget)
            if not moved:
                return
        raise AssertionError("pipe did not settle")

    def events(self, side: str, kind: type) -> list[Event]:
        evs = self.client_events if side == "client" else self.server_events
        return [e for e in evs if isinstance(e, kind)]
